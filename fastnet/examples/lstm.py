"""An LSTM reading handwritten digits row by row: each 28x28 MNIST image is a sequence of 28
steps of 28 pixels, LSTM(128) reads it top to bottom, Dense(10, softmax) classifies the final
state.  ``fastnet demo --model lstm`` (or ``python -m fastnet.examples.lstm``) trains it on
the bundled sample (4,000 training / 1,000 test images) and prints the test accuracy: about
0.96 after 10 epochs (batch 32, Adam 3e-3, seed 0).
"""
import sys

import numpy as np

DEFAULT_EPOCHS, DEFAULT_BATCH = 10, 32


def load_rows(source="bundled"):
    """MNIST as sequences: x (N, 28, 28) float32 in [0, 1] (28 steps of 28 features), y (N,)."""
    from fastnet.datasets import mnist
    (x_train, y_train), (x_test, y_test) = mnist.load_data(source=source)
    scale = np.float32(1.0 / 255.0)
    return (x_train.astype(np.float32) * scale, y_train), (x_test.astype(np.float32) * scale,
                                                           y_test)


def build_model(units=128, steps=28, features=28, classes=10):
    """Sequential([LSTM(units), Dense(classes, softmax)]) for (steps, features) inputs."""
    from fastnet import layers, models
    return models.Sequential([
        layers.LSTM(units, input_shape=(steps, features)),
        layers.Dense(classes, activation="softmax"),
    ], name="lstm_digits")


def demo(args):
    """Train on the bundled digits and report the test accuracy (``args``: the options of
    ``fastnet demo``: epochs, batch_size, threads, seed, min_accuracy, verbose)."""
    from fastnet.examples._demo import train_and_report
    return train_and_report(
        args, "LSTM(128) reading the bundled MNIST sample row by row (28 steps of 28 pixels)",
        load_rows, build_model, 3e-3, unit="sequences")


def main(argv=None):
    from fastnet.examples._demo import command_line
    return command_line(argv, "lstm", __doc__, demo, DEFAULT_EPOCHS, DEFAULT_BATCH)


if __name__ == "__main__":
    sys.exit(main())

"""What the shipped examples share: train a model on the bundled digits and report, and their
``python -m fastnet.examples.<name>`` command line (the options of ``fastnet demo``)."""
import argparse
import time


def train_and_report(args, title, data, model, learning_rate, unit="images"):
    """Seed and threads from ``args``, compile ``model`` (Adam(learning_rate), sparse
    categorical cross-entropy, accuracy), fit on ``data`` = ((x_train, y_train), (x_test,
    y_test)), print the test loss, accuracy and training rate; returns the exit status
    (1 when the accuracy is below ``args.min_accuracy``).  ``model`` is a function of no
    argument, called after the seed is set."""
    import fastnet
    from fastnet.utils import set_random_seed

    if getattr(args, "threads", None) is not None:
        fastnet.set_num_threads(args.threads)
    set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = data()
    print(f"fastnet demo: {title} ({len(x_train)} train / {len(x_test)} test images), "
          f"{fastnet.get_num_threads()} thread(s)")
    model = model()
    model.compile(optimizer=fastnet.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.verbose:
        model.summary()
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
              verbose=1 if args.verbose else 0)
    wall = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    rate = model._train_samples / model._train_seconds if model._train_seconds else 0.0
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    print(f"training: {rate:,.0f} {unit}/s ({args.epochs} epochs in {wall:.1f} s, batch "
          f"{args.batch_size}, {fastnet.get_num_threads()} thread(s))")
    return 0 if acc >= args.min_accuracy else 1


def command_line(argv, name, doc, demo, epochs, batch_size):
    """``python -m fastnet.examples.<name>``: parse ``argv`` and run ``demo(args)``."""
    parser = argparse.ArgumentParser(prog=f"python -m fastnet.examples.{name}",
                                     description=doc.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.0)
    parser.add_argument("--quiet", dest="verbose", action="store_false")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--epochs, --batch-size and --threads must be >= 1")
    return demo(args)

"""fastnet.distillation.Distiller: the Keras example's loss, its exact gradient, and training.

Stated accuracy: a small CNN teacher (~57K parameters) trained 3 epochs on the bundled MNIST
split, then a 2-layer MLP student (~25K parameters) distilled from it for 3 epochs (T = 3,
alpha = 0.1) reaches at least 85% on the 1,000 test images.
"""
import numpy as np
import pytest

from fastnet import datasets, layers, losses, models, optimizers
from fastnet.distillation import Distiller
from fastnet.utils import set_random_seed


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dense_model(activation, seed):
    set_random_seed(seed)
    return models.Sequential([layers.Dense(3, activation=activation, input_shape=(4,),
                                           dtype="float64")])


@pytest.mark.parametrize("student_act,teacher_act", [(None, "softmax"), ("softmax", None),
                                                     ("softmax", "softmax")])
def test_step_is_exact_gradient_of_keras_loss(student_act, teacher_act):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, 6)
    teacher, student = _dense_model(teacher_act, 1), _dense_model(student_act, 2)
    t, a = 2.5, 0.3
    distiller = Distiller(student, teacher, temperature=t, alpha=a)
    distiller.compile(optimizer=optimizers.SGD(learning_rate=1.0),
                      student_loss_fn=losses.SparseCategoricalCrossentropy(
                          from_logits=student_act is None))
    w0, b0 = student.get_weights()
    tw, tb = teacher.get_weights()
    z_teacher = x @ tw + tb

    def keras_loss(w, b):   # the Keras example's compute_loss, in float64
        z = x @ w + b
        hard = -np.mean(np.log(_softmax(z)[np.arange(6), y]))
        pt = np.clip(_softmax(z_teacher / t), 1e-7, 1)
        ps = np.clip(_softmax(z / t), 1e-7, 1)
        soft = np.mean(np.sum(pt * np.log(pt / ps), axis=1))
        return a * hard + (1 - a) * soft * t * t

    loss = distiller.train_on_batch(x, y)
    assert loss == pytest.approx(keras_loss(w0, b0), rel=1e-12)
    w1, b1 = student.get_weights()          # SGD, lr 1: the step is minus the gradient
    eps = 1e-6
    num_w = np.zeros_like(w0)
    for i in range(4):
        for j in range(3):
            d = np.zeros_like(w0)
            d[i, j] = eps
            num_w[i, j] = (keras_loss(w0 + d, b0) - keras_loss(w0 - d, b0)) / (2 * eps)
    num_b = np.array([(keras_loss(w0, b0 + e) - keras_loss(w0, b0 - e)) / (2 * eps)
                      for e in np.eye(3) * eps])
    np.testing.assert_allclose(w0 - w1, num_w, atol=1e-8)
    np.testing.assert_allclose(b0 - b1, num_b, atol=1e-8)
    np.testing.assert_array_equal(teacher.get_weights()[0], tw)   # the teacher never moves
    assert distiller.last_student_loss is not None and distiller.last_distillation_loss >= 0


def test_alpha_one_is_plain_training():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    teacher, student, twin = (_dense_model("softmax", 4), _dense_model("softmax", 5),
                              _dense_model("softmax", 5))
    d = Distiller(student, teacher, alpha=1.0)
    d.compile(optimizer=optimizers.SGD(learning_rate=0.1),
              student_loss_fn="sparse_categorical_crossentropy")
    twin.compile(optimizer=optimizers.SGD(learning_rate=0.1),
                 loss="sparse_categorical_crossentropy")
    d.train_on_batch(x, y)
    twin.train_on_batch(x, y)
    for u, v in zip(student.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)


def test_distills_a_smaller_student():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    set_random_seed(0)
    teacher = models.Sequential([
        layers.Conv2D(16, 3, activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    teacher.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    set_random_seed(1)
    student = models.Sequential([layers.Flatten(input_shape=(28, 28, 1)),
                                 layers.Dense(32, activation="relu"),
                                 layers.Dense(10, activation="softmax")])
    assert student.count_params() < teacher.count_params() / 2
    before = student.get_weights()
    distiller = Distiller(student, teacher, temperature=3, alpha=0.1)
    distiller.compile(optimizer="adam", metrics=["accuracy"],
                      student_loss_fn="sparse_categorical_crossentropy")
    history = distiller.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    loss, acc = distiller.evaluate(x_test, y_test, batch_size=256, verbose=0)
    assert acc >= 0.85, acc
    # the trained weights are the student's own: it predicts, evaluates and trains on its own
    assert not np.array_equal(student.get_weights()[1], before[1])
    np.testing.assert_array_equal(student.predict(x_test[:50], verbose=0),
                                  distiller.predict(x_test[:50], verbose=0))
    student.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    assert student.evaluate(x_test, y_test, batch_size=256, verbose=0)[1] == pytest.approx(acc)
    student.fit(x_train[:256], y_train[:256], epochs=1, verbose=0)   # the same layers
    np.testing.assert_array_equal(student.predict(x_test[:50], verbose=0),
                                  distiller.predict(x_test[:50], verbose=0))


def test_bad_arguments():
    teacher, student = _dense_model("softmax", 0), _dense_model(None, 1)
    with pytest.raises(ValueError, match="temperature"):
        Distiller(student, teacher, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        Distiller(student, teacher, alpha=1.5)
    with pytest.raises(ValueError, match="not built"):
        Distiller(models.Sequential([layers.Dense(3)]), teacher)
    other = models.Sequential([layers.Dense(3, input_shape=(5,), dtype="float64")])
    with pytest.raises(ValueError, match="different inputs"):
        Distiller(other, teacher)
    with pytest.raises(ValueError, match="share layers"):
        Distiller(teacher, teacher)
    with pytest.raises(TypeError, match="fastnet model"):
        Distiller(student, "teacher")
    d = Distiller(_dense_model("softmax", 2), teacher)
    with pytest.raises(ValueError, match="student_loss_fn is required"):
        d.compile(optimizer="adam")
    with pytest.raises(ValueError, match="cross-entropy"):
        d.compile(optimizer="adam", student_loss_fn="mse")
    with pytest.raises(TypeError, match="not saved"):
        d.save("/tmp/never_written.fnet")

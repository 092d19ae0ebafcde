"""fastnet.pruning: magnitude pruning (one-shot and scheduled during fit) and filter pruning.

Accuracy tolerance checked here: a small CNN (Conv 16 -> pool -> Conv 32 + BN -> pool -> Dense
64 -> Dense 10) trained 2 epochs on the bundled MNIST split, then pruned to 60% sparsity while
fine-tuning 1 epoch (a PolynomialDecay over the first 30 steps), stays within 2 accuracy points
of the dense model.  (80% costs ~15 points after this one short epoch: tiny layers need longer
fine-tuning at high sparsity.)
"""
import numpy as np
import pytest

from fastnet import callbacks, datasets, layers, models, pruning
from fastnet.utils import set_random_seed


def _cnn():
    return models.Sequential([
        layers.Conv2D(16, 3, activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dropout(0.1),
        layers.Dense(10, activation="softmax"),
    ])


def _compiled(model):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def data():
    return datasets.load_digits()


def test_polynomial_decay_matches_formula():
    s = pruning.PolynomialDecay(0.1, 0.9, begin_step=10, end_step=110, power=3, frequency=20)
    for step in (0, 10, 30, 50, 60, 110, 200):
        p = min(1.0, max(0.0, (step - 10) / 100))
        prune, value = s(step)
        assert value == pytest.approx(0.9 + (0.1 - 0.9) * (1 - p) ** 3)
        assert prune == (10 <= step <= 110 and (step - 10) % 20 == 0)
    c = pruning.ConstantSparsity(0.5, begin_step=5, frequency=10)
    assert c(5) == (True, 0.5) and c(6) == (False, 0.5) and c(10**6 + 5)[0]
    assert pruning.PolynomialDecay.from_config(s.get_config()).get_config() == s.get_config()
    with pytest.raises(ValueError, match="final_sparsity"):
        pruning.PolynomialDecay(0.0, 1.0, 0, 10)
    with pytest.raises(ValueError, match="end_step"):
        pruning.PolynomialDecay(0.0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="frequency"):
        pruning.ConstantSparsity(0.5, frequency=0)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_one_shot_reaches_target(scope):
    set_random_seed(0)
    model = _cnn()
    model.build((None, 28, 28, 1))
    before = {l.name: l.params["kernel"].copy() for l, _ in pruning.prunable_kernels(model)}
    masks = pruning.prune_low_magnitude(model, 0.7, scope=scope)
    report = pruning.get_sparsity(model)
    total = sum(k.size for k in before.values())
    zeros = round(0.7 * total) if scope == "global" else \
        sum(round(0.7 * k.size) for k in before.values())
    assert report["total"] == pytest.approx(zeros / total, abs=1e-12)
    for name, k in before.items():
        layer = model.get_layer(name)
        if scope == "layer":
            assert np.count_nonzero(~masks[name]) == round(0.7 * k.size)
        kept = layer.params["kernel"][masks[name]]
        np.testing.assert_array_equal(kept, k[masks[name]])      # survivors untouched
        assert (layer.params["kernel"][~masks[name]] == 0).all()
        if scope == "layer" and (~masks[name]).any() and masks[name].any():
            assert np.abs(k[~masks[name]]).max() <= np.abs(k[masks[name]]).min()
    if scope == "global":   # the global threshold: nothing pruned is larger than a survivor
        pruned = np.concatenate([before[n][~m] for n, m in masks.items()])
        kept = np.concatenate([before[n][m] for n, m in masks.items()])
        assert np.abs(pruned).max() <= np.abs(kept).min()


def test_schedule_during_fit_keeps_masks_and_accuracy(data):
    (x_train, y_train), (x_test, y_test) = data
    set_random_seed(0)
    model = _compiled(_cnn())
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    acc_dense = model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]

    steps = len(x_train) // 64 + 1                     # one epoch of batches
    cb = pruning.Pruning(pruning.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=30,
                                                 frequency=5))
    violations = []

    def check(batch, logs):          # after the pruning callback: masked weights are 0 now
        if cb.masks:
            for layer, k in pruning.prunable_kernels(model):
                if (k[~cb.masks[layer.name]] != 0).any():
                    violations.append(batch)

    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0,
              callbacks=[cb, callbacks.LambdaCallback(on_train_batch_end=check)])
    assert cb.step == steps and not violations
    report = pruning.get_sparsity(model)
    for layer, k in pruning.prunable_kernels(model):
        assert report[layer.name] == pytest.approx(round(0.6 * k.size) / k.size)
    acc_pruned = model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
    assert acc_dense >= 0.9 and acc_pruned >= acc_dense - 0.02, (acc_dense, acc_pruned)

    # a second fit continues the schedule (past end_step: no new masks) and keeps the zeros
    model.fit(x_train[:640], y_train[:640], epochs=1, batch_size=64, verbose=0, callbacks=[cb])
    assert cb.step == steps + 10
    assert pruning.get_sparsity(model)["total"] == pytest.approx(report["total"])


def test_global_schedule_and_layer_subset(data):
    (x_train, y_train), _ = data
    set_random_seed(1)
    model = _compiled(_cnn())
    model.build((None, 28, 28, 1))
    dense = [l.name for l in model.layers if isinstance(l, layers.Dense)]
    cb = pruning.Pruning(pruning.ConstantSparsity(0.5, begin_step=0, frequency=5),
                         scope="global", layers=dense)
    model.fit(x_train[:320], y_train[:320], epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    report = pruning.get_sparsity(model, layers=dense)
    sizes = {l.name: k.size for l, k in pruning.prunable_kernels(model, dense)}
    assert report["total"] == pytest.approx(round(0.5 * sum(sizes.values())) / sum(sizes.values()))
    conv = [l for l in model.layers if isinstance(l, layers.Conv2D)]
    assert all(np.count_nonzero(l.params["kernel"]) == l.params["kernel"].size for l in conv)


def test_prune_filters_removes_dead_filters_exactly():
    set_random_seed(2)
    model = _cnn()
    model.build((None, 28, 28, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:   # random BN statistics so the channel slicing matters
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, 32), rng.standard_normal(32) * 0.1,
                               rng.standard_normal(32) * 0.1, rng.uniform(0.5, 2, 32)])
    # zero half the filters of the first conv (weights and bias): dead channels
    conv1 = model.layers[0]
    k, b = conv1.get_weights()
    k[..., ::2] = 0.0
    b[::2] = 0.0
    conv1.set_weights([k, b])
    x = rng.random((5, 28, 28, 1)).astype(np.float32)
    small = pruning.prune_filters(model, 0.5, layers=[conv1.name])
    assert small.layers[0].filters == 8 and small.layers[2].params["kernel"].shape[2] == 8
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # every layer but the last: widths shrink, the output does not
    half = pruning.prune_filters(model, 0.5)
    widths = [l.params["kernel"].shape[-1] for l in half.layers
              if isinstance(l, (layers.Conv2D, layers.Dense))]
    assert widths == [8, 16, 32, 10]
    assert half.predict(x, verbose=0).shape == (5, 10)
    same = pruning.prune_filters(model, 0.0)
    np.testing.assert_allclose(same.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-7)


def test_bad_calls():
    with pytest.raises(ValueError, match="not built"):
        pruning.prune_low_magnitude(models.Sequential([layers.Dense(3)]), 0.5)
    model = _cnn()
    with pytest.raises(ValueError, match="sparsity"):
        pruning.prune_low_magnitude(model, 1.0)
    with pytest.raises(ValueError, match="scope"):
        pruning.prune_low_magnitude(model, 0.5, scope="row")
    with pytest.raises(ValueError, match="no Conv2D/Dense layer named"):
        pruning.prune_low_magnitude(model, 0.5, layers=["nope"])
    with pytest.raises(TypeError, match="schedule"):
        pruning.Pruning(0.5)
    with pytest.raises(ValueError, match="fraction"):
        pruning.prune_filters(model, 1.0)
    flat = models.Sequential([layers.Flatten(input_shape=(4, 4)), layers.Dense(3)])
    with pytest.raises(ValueError, match="no Conv2D"):
        pruning.prune_low_magnitude(models.Sequential([layers.Flatten(input_shape=(2, 2))]),
                                    0.5)
    assert pruning.prune_low_magnitude(flat, 0.0)[flat.layers[1].name].all()

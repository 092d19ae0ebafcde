"""Model files: round trips, resumed training, and refusal of damaged or foreign files."""
import json
import os
import zipfile

import numpy as np
import pytest

from fastnet import layers, models
from fastnet.utils import set_random_seed


def cnn():
    set_random_seed(0)
    model = models.Sequential([layers.Input(shape=(8, 8, 1)),
                               layers.Conv2D(4, 3, activation="relu", padding="same"),
                               layers.MaxPooling2D(), layers.Flatten(),
                               layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    return model


X = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
Y = np.arange(40) % 3


def test_round_trip_and_resume(tmp_path):
    model = cnn()
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.fnet")
    loaded = models.load_model(tmp_path / "m.fnet")
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    if hasattr(model.optimizer, "get_state"):  # training resumes bit for bit
        model.fit(X, Y, epochs=1, batch_size=8, verbose=0, shuffle=False)
        loaded.fit(X, Y, epochs=1, batch_size=8, verbose=0, shuffle=False)
        for a, b in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_refuses_damaged_files(tmp_path):
    path = tmp_path / "m.fnet"
    cnn().save(path)
    data = path.read_bytes()
    for name, content in [("truncated", data[: len(data) // 2]), ("empty", b""),
                          ("garbage", os.urandom(2000))]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a valid fastnet file"):
            models.load_model(bad)
    # a newer format version
    newer = tmp_path / "newer.fnet"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename == "fastnet.json":
                meta = json.loads(payload)
                meta["version"] = 99
                payload = json.dumps(meta).encode()
            dst.writestr(item, payload)
    with pytest.raises(ValueError, match="newer fastnet"):
        models.load_model(newer)


def test_refuses_wrong_shapes_and_unknown_classes(tmp_path):
    path = tmp_path / "m.fnet"
    cnn().save(path)
    tampered = tmp_path / "t.fnet"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename == "fastnet.json":
                meta = json.loads(payload)
                meta["model"]["config"]["layers"][0]["class_name"] = "os.system"
                payload = json.dumps(meta).encode()
            dst.writestr(item, payload)
    with pytest.raises(ValueError, match="unknown Layer class 'os.system'"):
        models.load_model(tampered)
    other = models.Sequential([layers.Dense(2, input_shape=(3,))])
    with pytest.raises(ValueError, match="weight arrays but the model has 2"):
        other.load_weights(path)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.fnet"
    model = cnn()
    model.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np.lib.format, "write_array", boom)
    model.fit(X, Y, epochs=1, verbose=0)
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.fnet"]  # no temporary file left behind

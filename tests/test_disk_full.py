"""A full disk during save: the save raises OSError (ENOSPC) and the previous file stays intact,
byte for byte, and loadable; no temporary file is left behind.  The write error is injected at
the file level (every byte budget from nothing to the whole file, and at fsync); as root on
Linux, a real 64 KiB tmpfs is filled as well."""
import errno
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

from fastnet import layers, models
from fastnet.utils import set_random_seed


def small_model(units=3, seed=0):
    set_random_seed(seed)
    model = models.Sequential([layers.Input(shape=(6, 6, 1)),
                               layers.Conv2D(2, 3, activation="relu"),
                               layers.Flatten(), layers.Dense(units, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    x = np.random.default_rng(seed).random((8, 6, 6, 1)).astype(np.float32)
    model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    return model, x


def enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile(io.FileIO):
    """A file on a disk with ``budget`` free bytes: a write beyond it stores what fits and then
    fails with ENOSPC, as write(2) does."""

    def __init__(self, path, mode, budget):
        super().__init__(path, mode)
        self.budget = budget

    def write(self, data):
        data = memoryview(data).cast("B")
        room = self.budget - self.tell()
        if len(data) > room:
            if room > 0:
                super().write(data[:room])
            raise enospc()
        return super().write(data)


def full_disk_zipfile(budget):
    """A ZipFile class whose files opened for writing by path get only ``budget`` bytes."""
    real = zipfile.ZipFile

    class FullDiskZipFile(real):
        def __init__(self, file, mode="r", *args, **kwargs):
            self._own_fp = None
            if mode in ("w", "x") and isinstance(file, (str, os.PathLike)):
                file = self._own_fp = _FullDiskFile(file, "w+", budget)
            super().__init__(file, mode, *args, **kwargs)

        def close(self):
            try:
                super().close()
            finally:
                if self._own_fp is not None:
                    self._own_fp.close()

    return FullDiskZipFile


def file_state(path):
    with open(path, "rb") as f:
        data = f.read()
    return data, sorted(os.listdir(os.path.dirname(path)))


def assert_previous_intact(path, before, model, x):
    data, names = file_state(path)
    assert data == before[0], "the previous file was changed"
    assert names == before[1], f"files left behind: {sorted(set(names) - set(before[1]))}"
    loaded = models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, model, x, size): a saved model; the models the tests try to save differ from it."""
    model, x = small_model()
    path = str(tmp_path_factory.mktemp("disk") / "model.fastnet")
    model.save(path)
    return path, model, x, os.path.getsize(path)


@pytest.mark.parametrize("what", ["save", "save_weights"])
def test_enospc_at_every_budget_keeps_previous_file(saved, monkeypatch, what):
    path, model, x, size = saved
    if what == "save_weights":
        path = path + ".weights"
        model.save_weights(path)
        size = os.path.getsize(path)
    before = file_state(path)
    other, _ = small_model(seed=1)   # same architecture, other weights: a different file
    budgets = sorted({0, 1, 30, 64, 100, 200, 512} | set(range(0, size, max(size // 23, 1)))
                     | {size - 1})
    failures = 0
    for budget in budgets:
        with monkeypatch.context() as m:
            m.setattr(zipfile, "ZipFile", full_disk_zipfile(budget))
            with pytest.raises(OSError) as info:
                getattr(other, what)(path)
        assert info.value.errno == errno.ENOSPC, info.value
        failures += 1
        if what == "save":
            assert_previous_intact(path, before, model, x)
        else:
            assert file_state(path) == before
            probe, _ = small_model(seed=2)
            probe.load_weights(path)
            np.testing.assert_array_equal(probe.predict(x, verbose=0), model.predict(x, verbose=0))
    assert failures == len(budgets) > 10
    # with room enough the same save goes through (the injection itself is not what fails)
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZipFile", full_disk_zipfile(10 * size))
        getattr(other, what)(path)
    assert file_state(path)[0] != before[0]
    getattr(model, what)(path)   # restore for the next test


def test_enospc_at_fsync_keeps_previous_file(saved, monkeypatch):
    """Delayed allocation: on some file systems the full disk shows only at fsync."""
    path, model, x, _ = saved
    model.save(path)
    before = file_state(path)
    other, _ = small_model(seed=3)

    def fsync(fd):
        raise enospc()

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        other.save(path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert_previous_intact(path, before, model, x)


def test_model_still_usable_after_failed_save(saved, monkeypatch):
    path, model, x, _ = saved
    other, xo = small_model(seed=4)
    want = other.predict(xo, verbose=0)
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZipFile", full_disk_zipfile(100))
        with pytest.raises(OSError):
            other.save(path)
    np.testing.assert_array_equal(other.predict(xo, verbose=0), want)
    other.fit(xo, np.arange(8) % 3, epochs=1, verbose=0)
    assert np.isfinite(other.predict(xo, verbose=0)).all()


# --- a real full file system: a 64 KiB tmpfs (root on Linux only) -----------------------------

def _mount_tmpfs(where, size):
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


@pytest.fixture
def tiny_tmpfs():
    where = tempfile.mkdtemp(prefix="fastnet-tmpfs-")
    if not _mount_tmpfs(where, "64k"):
        os.rmdir(where)
        pytest.skip("needs root on Linux and a working `mount -t tmpfs`")
    try:
        yield where
    finally:
        subprocess.run(["umount", where], capture_output=True, timeout=60)
        os.rmdir(where)


def test_real_full_tmpfs_keeps_previous_file(tiny_tmpfs):
    small, x = small_model(units=3)
    path = os.path.join(tiny_tmpfs, "model.fastnet")
    small.save(path)
    before = file_state(path)
    assert len(before[0]) < 16 << 10
    # the same architecture widened: ~ 4 * 128 * 4000 bytes of weights, far beyond 64 KiB
    set_random_seed(5)
    big = models.Sequential([layers.Input(shape=(6, 6, 1)), layers.Conv2D(2, 3, activation="relu"),
                             layers.Flatten(), layers.Dense(4000, activation="softmax")])
    big.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(OSError) as info:
        big.save(path)
    assert info.value.errno == errno.ENOSPC, info.value
    assert_previous_intact(path, before, small, x)
    # the failed save freed its space: a save of the small model fits again (its bytes differ:
    # the file records the random generator's state)
    small.save(path)
    assert file_state(path)[1] == before[1]
    np.testing.assert_array_equal(models.load_model(path).predict(x, verbose=0),
                                  small.predict(x, verbose=0))

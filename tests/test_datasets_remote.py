"""Fashion-MNIST and CIFAR-10 loaders, the shared cache and checksum rules, corrupt files, and
``from_folder`` / ``from_arrays``.  No network: the mirrors are file:// folders made here (or a
dead port on 127.0.0.1), and the checksum tables are patched to match the tiny files."""
import gzip
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

from fastnet import datasets
from fastnet.datasets import _download, cifar10, fashion_mnist, mnist
from fastnet.datasets._idx import write_idx
from test_datasets import _dead_url

OFFICIAL = {"fashion": dict(fashion_mnist.CHECKSUMS), "cifar": dict(cifar10.CHECKSUMS)}


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch):
    for module in (mnist, fashion_mnist, cifar10):
        monkeypatch.setattr(module, "MIRRORS", (_dead_url(),))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FASTNET_DATA_DIR", raising=False)


def _md5(raw):
    return "md5:" + hashlib.md5(raw).hexdigest()


# ---- Fashion-MNIST ----------------------------------------------------------------------------

@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    data = {"train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
            "train_labels": (np.arange(12) % 10).astype(np.uint8),
            "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
            "test_labels": np.array([9, 0, 3, 3], np.uint8)}
    root = tmp_path / "mirror"
    root.mkdir()
    sums = {}
    for role, name in fashion_mnist.FILES.items():
        write_idx(root / name, data[role])
        raw = (root / name).read_bytes()
        sums[name] = (_md5(raw), None)                  # md5 as the real table has
    monkeypatch.setattr(fashion_mnist, "CHECKSUMS", sums)
    monkeypatch.setattr(fashion_mnist, "MIRRORS", (_dead_url(), root.as_uri() + "/"))
    return data, root, tmp_path / "cache"


def test_fashion_mnist_downloads_verifies_and_caches(tiny_fashion, monkeypatch):
    data, root, cache = tiny_fashion
    (xtr, ytr), (xte, yte) = fashion_mnist.load_data(cache_dir=cache)
    np.testing.assert_array_equal(xtr, data["train_images"])
    np.testing.assert_array_equal(yte, data["test_labels"])
    assert sorted(os.listdir(cache)) == sorted(fashion_mnist.FILES.values())
    monkeypatch.setattr(fashion_mnist, "MIRRORS", (_dead_url(),))        # offline: the cache
    np.testing.assert_array_equal(fashion_mnist.load_data(cache_dir=cache)[0][0], xtr)
    monkeypatch.setenv("FASTNET_DATA_DIR", str(cache.parent / "root"))
    assert fashion_mnist.default_cache_dir() == str(cache.parent / "root" / "fashion_mnist")


def test_fashion_mnist_offline_message_points_to_the_bundled_sample(tmp_path):
    with pytest.raises(datasets.DownloadError) as info:
        fashion_mnist.load_data(cache_dir=tmp_path / "c")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "c") in msg
    assert "bundled" in msg and "mnist.load_data()" in msg


def test_damaged_cached_file_is_removed_and_the_error_says_so(tiny_fashion, monkeypatch):
    data, root, cache = tiny_fashion
    fashion_mnist.load_data(cache_dir=cache)
    victim = cache / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(b"garbage")
    monkeypatch.setattr(fashion_mnist, "MIRRORS", (_dead_url(),))
    with pytest.warns(RuntimeWarning, match="did not match its checksum"):
        with pytest.raises(datasets.DownloadError) as info:
            fashion_mnist.load_data(cache_dir=cache)
    assert f"The cached file {victim} did not match its checksum" in str(info.value)
    assert "was removed" in str(info.value) and not victim.exists()
    # back online: the damaged file is replaced by a verified one
    monkeypatch.setattr(fashion_mnist, "MIRRORS", (root.as_uri() + "/",))
    victim.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="Downloading it again"):
        (_, _), (_, yte) = fashion_mnist.load_data(cache_dir=cache)
    np.testing.assert_array_equal(yte, data["test_labels"])


def test_download_checksum_mismatch_keeps_nothing(tiny_fashion, monkeypatch):
    _, _, cache = tiny_fashion
    name = "train-labels-idx1-ubyte.gz"
    sums = dict(fashion_mnist.CHECKSUMS)
    sums[name] = ("md5:" + "0" * 32, None)
    monkeypatch.setattr(fashion_mnist, "CHECKSUMS", sums)
    with pytest.raises(datasets.DownloadError, match="md5 mismatch") as info:
        fashion_mnist.load_data(cache_dir=cache)
    assert "discarded" in str(info.value) and str(cache) in str(info.value)
    assert name not in os.listdir(cache) and not [f for f in os.listdir(cache)
                                                 if f.endswith(".part")]


def test_corrupt_idx_that_passes_its_checksum_names_the_file(tiny_fashion, monkeypatch):
    _, root, cache = tiny_fashion
    name = "t10k-images-idx3-ubyte.gz"
    raw = gzip.compress(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x04" * 3 + b"\x01" * 10)
    (root / name).write_bytes(raw)
    sums = dict(fashion_mnist.CHECKSUMS)
    sums[name] = (_md5(raw), len(raw))
    monkeypatch.setattr(fashion_mnist, "CHECKSUMS", sums)
    with pytest.raises(ValueError, match="truncated") as info:
        fashion_mnist.load_data(cache_dir=cache)
    assert name in str(info.value)
    write_idx(root / name, np.zeros((4, 28, 27), np.uint8))
    raw = (root / name).read_bytes()
    sums[name] = (_md5(raw), len(raw))
    (cache / name).unlink()
    with pytest.raises(ValueError, match=r"Fashion-MNIST test images in .*t10k-images"):
        fashion_mnist.load_data(cache_dir=cache)


def test_official_checksum_tables_are_well_formed():
    for name, (checksum, size) in OFFICIAL["fashion"].items():
        algo, digest = _download.parse_checksum(checksum)
        assert algo == "md5" and len(digest) == 32 and name in fashion_mnist.FILES.values()
    (checksum, size), = OFFICIAL["cifar"].values()
    assert _download.parse_checksum(checksum)[0] == "md5" and size == 170052171
    assert _download.parse_checksum("a" * 64) == ("sha256", "a" * 64)
    with pytest.raises(ValueError, match="algorithm"):
        _download.parse_checksum("crc32:1234")


# ---- CIFAR-10 ---------------------------------------------------------------------------------

def _cifar_batch(rng, n):
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([labels[:, None], planes.reshape(n, -1)], axis=1).tobytes()
    return raw, planes.transpose(0, 2, 3, 1), labels[:, None]


def _write_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    members, train, test = {"cifar-10-batches-bin/batches.meta.txt": b"airplane\n"}, [], None
    for i, name in enumerate(cifar10.TRAIN_MEMBERS):
        raw, x, y = _cifar_batch(rng, 2 + i)
        members[name] = raw
        train.append((x, y))
    raw, xt, yt = _cifar_batch(rng, 3)
    members[cifar10.TEST_MEMBERS[0]] = raw
    root = tmp_path / "mirror"
    root.mkdir()
    _write_tar(root / cifar10.ARCHIVE, members)
    archive = (root / cifar10.ARCHIVE).read_bytes()
    monkeypatch.setattr(cifar10, "CHECKSUMS", {cifar10.ARCHIVE: (_md5(archive), len(archive))})
    monkeypatch.setattr(cifar10, "MIRRORS", (root.as_uri() + "/",))
    x_train = np.concatenate([p[0] for p in train])
    y_train = np.concatenate([p[1] for p in train])
    return (x_train, y_train, xt, yt), members, root, tmp_path / "cache"


def test_cifar10_reads_the_binary_archive_channels_last(tiny_cifar):
    (x_train, y_train, xt, yt), _, _, cache = tiny_cifar
    (a, b), (c, d) = cifar10.load_data(cache_dir=cache)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8 and b.shape == (20, 1)
    np.testing.assert_array_equal(a, x_train)
    np.testing.assert_array_equal(b, y_train)
    np.testing.assert_array_equal(c, xt)
    np.testing.assert_array_equal(d, yt)
    assert os.listdir(cache) == [cifar10.ARCHIVE]            # read in place, not extracted
    # pixel (row 0, col 1) of image 0: bytes 1 + 1 (red), 1 + 1024 + 1 (green), ...
    raw = np.frombuffer(tiny_cifar[1][cifar10.TRAIN_MEMBERS[0]], np.uint8)
    assert a[0, 0, 1].tolist() == [raw[2], raw[1026], raw[2050]]


def test_cifar10_corrupt_or_incomplete_archives_name_the_file(tiny_cifar, monkeypatch):
    _, members, root, cache = tiny_cifar

    def serve(raw_members, name="cifar-10-binary.tar.gz", corrupt=False):
        _write_tar(root / name, raw_members)
        data = (root / name).read_bytes()
        if corrupt:
            data = data[: len(data) // 2]
            (root / name).write_bytes(data)
        monkeypatch.setattr(cifar10, "CHECKSUMS", {name: (_md5(data), len(data))})
        for f in cache.glob("*") if cache.exists() else []:
            f.unlink()

    serve(members, corrupt=True)
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        cifar10.load_data(cache_dir=cache)
    assert str(cache / cifar10.ARCHIVE) in str(info.value)
    serve({k: v for k, v in members.items() if k != cifar10.TEST_MEMBERS[0]})
    with pytest.raises(ValueError, match="lacks the CIFAR-10 member"):
        cifar10.load_data(cache_dir=cache)
    bad = dict(members)
    bad[cifar10.TRAIN_MEMBERS[2]] = bad[cifar10.TRAIN_MEMBERS[2]][:-5]
    serve(bad)
    with pytest.raises(ValueError, match="data_batch_3.bin has .* bytes"):
        cifar10.load_data(cache_dir=cache)
    with pytest.raises(ValueError, match="CIFAR-100"):
        cifar10.read_binary_batch(bytes([42]) + bytes(3072))


def test_cifar10_offline_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "MIRRORS", (_dead_url(),))
    with pytest.raises(OSError, match="cifar-10-binary.tar.gz") as info:
        cifar10.load_data(cache_dir=tmp_path)
    assert "bundled" in str(info.value)


# ---- from_folder / from_arrays ---------------------------------------------------------------

def test_from_folder_loads_class_subfolders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(8)
    saved = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
            saved[(cls, i)] = arr
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    x, y, names = datasets.from_folder(tmp_path)
    assert names == ["cat", "dog"] and x.shape == (6, 5, 4, 3) and y.tolist() == [0] * 3 + [1] * 3
    np.testing.assert_array_equal(x[4], saved[("dog", 1)])
    g, _, _ = datasets.from_folder(tmp_path, color_mode="grayscale", image_size=(8, 6))
    assert g.shape == (6, 8, 6, 1)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "cat" / "big.png")
    with pytest.raises(ValueError, match="mixed sizes") as info:
        datasets.from_folder(tmp_path)
    assert "big.png" in str(info.value)
    (tmp_path / "cat" / "big.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ValueError, match="not a readable image") as info:
        datasets.from_folder(tmp_path)
    assert str(tmp_path / "cat" / "big.png") in str(info.value)
    with pytest.raises(ValueError, match="no class sub-folders"):
        datasets.from_folder(tmp_path / "cat")


def test_from_arrays_makes_a_checked_dataset():
    x = np.zeros((5, 2, 2, 1), np.uint8)
    ds = datasets.from_arrays(x, np.arange(5))
    assert len(list(ds.batch(2))) == 3
    with pytest.raises(ValueError, match="4 labels but x has 5"):
        datasets.from_arrays(x, np.arange(4))

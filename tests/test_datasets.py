"""Tests of fastnet.datasets: the bundled MNIST sample, the IDX reader/writer and the full-MNIST
downloader.  The downloader is exercised only against a local HTTP server on 127.0.0.1 and
file:// URLs serving tiny IDX files made here; the real network is never used."""
import gzip
import hashlib
import http.server
import io
import os
import socket
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastnet import datasets
from fastnet.datasets import _download, mnist
from fastnet.datasets._idx import read_idx, write_idx

OFFICIAL_MIRRORS = tuple(mnist.MIRRORS)           # captured before any fixture patches them
OFFICIAL_CHECKSUMS = dict(mnist.CHECKSUMS)


# ------------------------------------------------------------------------------------ bundled

def test_bundled_shapes_dtypes_and_stratification():
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8
    assert np.array_equal(np.bincount(y_train, minlength=10), [400] * 10)
    assert np.array_equal(np.bincount(y_test, minlength=10), [100] * 10)
    assert x_train.max() == 255 and x_train.min() == 0
    # Classes are interleaved, not in label blocks (Keras validation_split takes the tail).
    assert len(np.unique(y_train[-400:])) == 10 and len(np.unique(y_test[:100])) == 10


def test_bundled_split_is_a_partition_and_matches_the_arrays():
    images, labels, train_idx, test_idx = mnist._bundled()
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(5000))
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    assert np.array_equal(x_train, images[train_idx]) and np.array_equal(y_train, labels[train_idx])
    assert np.array_equal(x_test, images[test_idx]) and np.array_equal(y_test, labels[test_idx])


def test_bundled_split_is_pinned():
    # The rule is pure hashlib + sorting, so these values hold on every machine and NumPy.
    _, _, train_idx, test_idx = mnist._bundled()
    assert list(test_idx[:10]) == [1191, 4660, 4796, 733, 4026, 4887, 1680, 4133, 1119, 1029]
    digest = hashlib.sha256(np.asarray(test_idx).astype("<i8").tobytes()).hexdigest()
    assert digest == "fedf6e33891fe7c22cd85c35707ace934b1f63af0c2cffec71c9b83bd21e595e"
    (_, _), (x_test, y_test) = mnist.load_data()
    digest = hashlib.sha256(x_test.tobytes() + y_test.tobytes()).hexdigest()
    assert digest == "5b92a82be44c429c8e1f923092b81d0f02d98a22148adb516e191f36c83dbf69"


def test_bundled_split_rule_recomputes_identically():
    _, labels, train_idx, test_idx = mnist._bundled()
    tr, te = mnist._split_indices(np.array(labels))
    assert np.array_equal(tr, train_idx) and np.array_equal(te, test_idx)


def test_bundled_returns_fresh_writable_arrays():
    (x1, y1), _ = mnist.load_data()
    x1[:] = 0
    y1[:] = 0
    (x2, y2), _ = mnist.load_data()
    assert x2.any() and y2.any() and x2.flags.writeable


def test_bundled_damaged_package_data_is_refused(monkeypatch):
    raw = bytearray(mnist._read_bundled_bytes())
    raw[len(raw) // 2] ^= 0xFF
    mnist._bundled.cache_clear()
    try:
        with monkeypatch.context() as m:
            m.setattr(mnist, "_read_bundled_bytes", lambda: bytes(raw))
            with pytest.raises(RuntimeError, match="damaged"):
                mnist.load_data()
    finally:
        mnist._bundled.cache_clear()
    assert mnist.load_data()[0][0].shape == (4000, 28, 28)


def test_load_data_arguments():
    with pytest.raises(ValueError, match="source"):
        mnist.load_data(source="nope")
    with pytest.raises(ValueError, match="cache_dir"):
        mnist.load_data(cache_dir="/tmp/x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mnist.load_data("mnist.npz")            # the Keras default: silently accepted
    with pytest.warns(UserWarning, match="ignores `path`"):
        mnist.load_data("elsewhere.npz")


def test_load_digits():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    (xr, yr), _ = mnist.load_data()
    assert np.array_equal(y_train, yr)
    assert np.allclose(x_train[..., 0] * 255.0, xr)


# ------------------------------------------------------------------------------------ IDX

TYPES = [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
         (0x0D, np.float32), (0x0E, np.float64)]


def _sample(dtype, shape=(3, 4, 5)):
    n = int(np.prod(shape))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = np.linspace(info.min, info.max, n).astype(dtype)
    else:
        a = np.linspace(-1e3, 1e3, n).astype(dtype)
        a[:3] = [np.finfo(dtype).max, np.finfo(dtype).tiny, -0.0]
    return a.reshape(shape)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("code,dtype", TYPES, ids=[t[1].__name__ for t in TYPES])
def test_idx_round_trip(tmp_path, code, dtype, gz):
    a = _sample(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    raw = path.read_bytes()
    if gz:
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, code, 3]) and raw[4:16] == struct.pack(">3i", 3, 4, 5)
    assert raw[16:] == a.astype(np.dtype(dtype).newbyteorder(">")).tobytes()   # big-endian
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and b.flags.writeable
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    with open(path, "rb") as f:                 # file object input as well
        np.testing.assert_array_equal(read_idx(f), a)


def test_idx_reads_hand_built_file_and_detects_gzip_by_content(tmp_path):
    # int16 values 1, -2, 258 in a (3,) array: written by hand, independent of write_idx.
    raw = bytes([0, 0, 0x0B, 1]) + struct.pack(">i", 3) + struct.pack(">3h", 1, -2, 258)
    assert read_idx(io.BytesIO(raw)).tolist() == [1, -2, 258]
    p = tmp_path / "no_extension"
    p.write_bytes(gzip.compress(raw))
    assert read_idx(p).tolist() == [1, -2, 258]
    assert read_idx(str(p)).dtype == np.int16


def test_idx_unseekable_stream():
    raw = bytes([0, 0, 8, 2]) + struct.pack(">2i", 2, 2) + bytes([1, 2, 3, 4])

    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self._b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self._b.readinto(b)

    assert read_idx(Pipe(raw)).tolist() == [[1, 2], [3, 4]]
    assert read_idx(Pipe(gzip.compress(raw))).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="truncated"):
        read_idx(Pipe(raw[:-1]))


def test_idx_empty_and_1d(tmp_path):
    for a in (np.zeros((0, 28, 28), np.uint8), np.arange(7, dtype=np.int32)):
        p = tmp_path / "e.idx"
        write_idx(p, a)
        b = read_idx(p)
        assert b.shape == a.shape and b.dtype == a.dtype and np.array_equal(a, b)


def _idx_bytes(a):
    buf = io.BytesIO()
    write_idx(buf, a)
    return buf.getvalue()


GOOD = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("raw,match", [
    (b"", "truncated"),
    (GOOD[:3], "truncated"),
    (GOOD[:10], "truncated"),                           # inside the dimension sizes
    (GOOD[:-1], "truncated"),
    (GOOD[:16], "truncated"),                           # header only
    (GOOD + b"\x00", "longer than its header"),
    (b"\x01\x00" + GOOD[2:], "magic"),
    (b"\x00\x01" + GOOD[2:], "magic"),
    (b"PK\x03\x04" + GOOD[4:], "magic"),
    (GOOD[:2] + b"\x0A" + GOOD[3:], "type code"),
    (GOOD[:2] + b"\x07" + GOOD[3:], "type code"),
    (GOOD[:3] + b"\x00" + GOOD[4:], "0 dimensions"),
    (GOOD[:4] + struct.pack(">i", -2) + GOOD[8:], "negative"),
    # Absurd sizes (2**31-1)**3 bytes: refused from the file size, nothing allocated.
    (GOOD[:4] + struct.pack(">3i", 2**31 - 1, 2**31 - 1, 2**31 - 1) + GOOD[16:], "truncated"),
], ids=["empty", "short-header", "short-dims", "short-data", "no-data", "trailing",
        "magic1", "magic2", "zip", "type0A", "type07", "ndim0", "negative", "absurd"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_malformed_raises_value_error(tmp_path, raw, match, gz):
    if gz:
        raw = gzip.compress(raw)
    p = tmp_path / "bad.idx"
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        read_idx(p)
    with pytest.raises(ValueError, match=match):
        read_idx(io.BytesIO(raw))


def test_idx_corrupted_and_truncated_gzip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    packed = gzip.compress(_idx_bytes(a))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="gzip|truncated"):
        read_idx(cut)
    bad = bytearray(packed)
    for i in range(20, len(bad) - 20, 97):
        bad[i] ^= 0x5A
    p = tmp_path / "bad.gz"
    p.write_bytes(bytes(bad))
    with pytest.raises(ValueError):
        read_idx(p)
    crc = bytearray(packed)
    crc[-6] ^= 0xFF                                  # CRC32 field of the gzip trailer
    p.write_bytes(bytes(crc))
    with pytest.raises(ValueError, match="gzip"):
        read_idx(p)


def test_write_idx_refuses_unsupported_arrays(tmp_path):
    for a in (np.zeros(3, np.int64), np.zeros(3, np.uint16), np.zeros(3, bool),
              np.zeros(3, np.float16), np.array(5, np.uint8)):
        with pytest.raises(ValueError):
            write_idx(tmp_path / "x.idx", a)


def test_write_idx_gz_is_reproducible(tmp_path):
    a = np.arange(100, dtype=np.float32)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b.gz", a)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    big = np.arange(12, dtype=">i4")                 # non-native input byte order
    write_idx(tmp_path / "c.idx", big)
    np.testing.assert_array_equal(read_idx(tmp_path / "c.idx"), np.arange(12))


# ------------------------------------------------------------------------------- full MNIST

def _dead_url():
    """An http URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch):
    """Every test gets dead mirrors unless it installs its own, so nothing here can reach
    the real MNIST hosts; proxy settings are cleared so 127.0.0.1 is contacted directly."""
    monkeypatch.setattr(mnist, "MIRRORS", (_dead_url(),))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FASTNET_DATA_DIR", raising=False)


class _Server:
    def __init__(self, root):
        self.requests = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                log.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        if self.thread is None:
            return
        self.thread = None
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """Four tiny MNIST-format .gz files served over HTTP; CHECKSUMS patched to match."""
    rng = np.random.default_rng(1234)
    data = {
        "train_images": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(30) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(10, dtype=np.uint8)[::-1].copy(),
    }
    root = tmp_path / "server"
    root.mkdir()
    sums = {}
    for role, name in mnist.FILES.items():
        write_idx(root / name, data[role])
        raw = (root / name).read_bytes()
        sums[name] = (hashlib.sha256(raw).hexdigest(), len(raw))
    monkeypatch.setattr(mnist, "CHECKSUMS", sums)
    server = _Server(root)
    monkeypatch.setattr(mnist, "MIRRORS", (server.url,))
    yield server, data, root, tmp_path / "cache"
    server.close()


def _check(result, data):
    (x_train, y_train), (x_test, y_test) = result
    for got, role in ((x_train, "train_images"), (y_train, "train_labels"),
                      (x_test, "test_images"), (y_test, "test_labels")):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, data[role])


def _cache_listing(cache):
    return sorted(os.listdir(cache)) if cache.exists() else []


def test_full_download_then_cache_hit(tiny_mnist):
    server, data, _, cache = tiny_mnist
    _check(mnist.load_data(source="full", cache_dir=cache), data)
    assert sorted(server.requests) == sorted("/" + n for n in mnist.FILES.values())
    assert _cache_listing(cache) == sorted(mnist.FILES.values())      # no temp files left
    _check(mnist.load_data(source="full", cache_dir=cache), data)
    assert len(server.requests) == 4                                   # second load: cached
    (x, _), _ = datasets.load_digits(source="full", cache_dir=cache)
    assert x.shape == (30, 28, 28, 1) and len(server.requests) == 4


def test_full_corrupted_cache_file_is_replaced(tiny_mnist):
    server, data, _, cache = tiny_mnist
    mnist.load_data(source="full", cache_dir=cache)
    victim = cache / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    raw[-10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="did not match its checksum .* was removed"):
        _check(mnist.load_data(source="full", cache_dir=cache), data)
    assert server.requests[4:] == ["/t10k-images-idx3-ubyte.gz"]
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"")           # truncated to nothing
    with pytest.warns(RuntimeWarning, match="0 bytes, expected"):
        _check(mnist.load_data(source="full", cache_dir=cache), data)
    assert server.requests[5:] == ["/train-labels-idx1-ubyte.gz"]


def test_full_checksum_mismatch_is_refused_and_not_kept(tiny_mnist, monkeypatch):
    server, _, _, cache = tiny_mnist
    name = "train-labels-idx1-ubyte.gz"
    sums = dict(mnist.CHECKSUMS)
    sums[name] = ("0" * 64, sums[name][1])
    monkeypatch.setattr(mnist, "CHECKSUMS", sums)
    with pytest.raises(mnist.DownloadError, match="sha256 mismatch") as info:
        mnist.load_data(source="full", cache_dir=cache)
    assert server.url + name in str(info.value)
    assert name not in _cache_listing(cache)
    assert not [f for f in _cache_listing(cache) if f.endswith(".part")]


def test_full_size_mismatch_is_refused(tiny_mnist, monkeypatch):
    _, _, _, cache = tiny_mnist
    name = "t10k-labels-idx1-ubyte.gz"
    sums = dict(mnist.CHECKSUMS)
    sums[name] = (sums[name][0], sums[name][1] - 1)
    monkeypatch.setattr(mnist, "CHECKSUMS", sums)
    with pytest.raises(mnist.DownloadError, match="expected"):
        mnist.load_data(source="full", cache_dir=cache)
    assert name not in _cache_listing(cache)
    assert not [f for f in _cache_listing(cache) if f.endswith(".part")]


def test_full_mirror_fallback_including_file_urls(tiny_mnist, monkeypatch, tmp_path):
    server, data, root, cache = tiny_mnist
    missing = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setattr(mnist, "MIRRORS", (_dead_url(), missing, server.url))
    _check(mnist.load_data(source="full", cache_dir=cache), data)
    assert len(server.requests) == 4
    # A file:// mirror works on its own too.
    monkeypatch.setattr(mnist, "MIRRORS", (root.as_uri() + "/",))
    _check(mnist.load_data(source="full", cache_dir=tmp_path / "cache2"), data)
    assert len(server.requests) == 4


def test_full_offline_error_message(tiny_mnist, monkeypatch):
    _, _, _, cache = tiny_mnist
    dead1, dead2 = _dead_url(), _dead_url()
    monkeypatch.setattr(mnist, "MIRRORS", (dead1, dead2))
    with pytest.raises(OSError) as info:
        mnist.load_data(source="full", cache_dir=cache)
    assert isinstance(info.value, datasets.DownloadError)
    msg = str(info.value)
    assert dead1 + "train-images-idx3-ubyte.gz" in msg
    assert dead2 + "train-images-idx3-ubyte.gz" in msg
    assert "load_data()" in msg and "bundled" in msg
    assert str(cache) in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert not [f for f in _cache_listing(cache) if f.endswith(".part")]


def test_full_manually_placed_files_need_no_network(tiny_mnist, monkeypatch):
    server, data, root, cache = tiny_mnist
    cache.mkdir()
    for name in mnist.FILES.values():
        (cache / name).write_bytes((root / name).read_bytes())
    server.close()
    monkeypatch.setattr(mnist, "MIRRORS", (_dead_url(),))
    _check(mnist.load_data(source="full", cache_dir=cache), data)


def test_full_cache_dir_resolution(tiny_mnist, monkeypatch, tmp_path):
    server, data, _, _ = tiny_mnist
    monkeypatch.setenv("FASTNET_DATA_DIR", str(tmp_path / "envroot"))
    assert mnist.default_cache_dir() == str(tmp_path / "envroot" / "mnist")
    _check(mnist.load_data(source="full"), data)
    assert _cache_listing(tmp_path / "envroot" / "mnist") == sorted(mnist.FILES.values())
    monkeypatch.delenv("FASTNET_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Path(mnist.default_cache_dir()) == tmp_path / "home" / ".fastnet" / "datasets" / "mnist"


def test_full_rejects_wrong_shapes(tiny_mnist, monkeypatch):
    _, _, root, cache = tiny_mnist
    name = "t10k-images-idx3-ubyte.gz"
    write_idx(root / name, np.zeros((10, 28, 27), np.uint8))
    sums = dict(mnist.CHECKSUMS)
    raw = (root / name).read_bytes()
    sums[name] = (hashlib.sha256(raw).hexdigest(), len(raw))
    monkeypatch.setattr(mnist, "CHECKSUMS", sums)
    with pytest.raises(ValueError, match="28, 28"):
        mnist.load_data(source="full", cache_dir=cache)


def test_download_stops_at_the_expected_size_without_content_length(tmp_path, monkeypatch):
    class Resp(io.BytesIO):
        headers = {}

    payload = b"x" * 1000
    monkeypatch.setattr(_download, "_open_url", lambda url, timeout: Resp(payload))
    sha = hashlib.sha256(payload).hexdigest()
    with pytest.raises(ValueError, match="more than"):
        _download.download_url("http://unused/f", str(tmp_path), "f", sha, size=10)
    with pytest.raises(ValueError, match="received 1000 bytes"):
        _download.download_url("http://unused/f", str(tmp_path), "f", sha, size=2000)
    assert os.listdir(tmp_path) == []
    path = _download.download_url("http://unused/f", str(tmp_path), "f", sha, size=1000)
    assert os.listdir(tmp_path) == ["f"] and _download.file_sha256(path) == sha


def test_official_checksum_table_is_well_formed():
    assert set(OFFICIAL_CHECKSUMS) == set(mnist.FILES.values())
    for sha, size in OFFICIAL_CHECKSUMS.values():
        assert len(sha) == 64 and int(sha, 16) >= 0 and size > 0
    assert len(OFFICIAL_MIRRORS) >= 2
    assert all(m.startswith("https://") and m.endswith("/") for m in OFFICIAL_MIRRORS)


def test_package_does_not_reference_shared_folder():
    pkg = Path(mnist.__file__).parent
    for f in pkg.glob("*.py"):
        assert "/work/shared" not in f.read_text() and "shared/data" not in f.read_text()

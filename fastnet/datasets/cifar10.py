"""CIFAR-10, Keras style: ``(x_train, y_train), (x_test, y_test) = load_data()``.

50,000 training and 10,000 test colour images, 32x32, of 10 classes.  fastnet reads the
*binary* version of the data set (``cifar-10-binary.tar.gz``), never the Python version: that
one is a pickle, and unpickling a downloaded file can run arbitrary code.  The archive is
downloaded once into the cache folder (``cache_dir``, else ``$FASTNET_DATA_DIR/cifar10``, else
``~/.fastnet/datasets/cifar10``), verified against the publishers' md5 and size on every load,
and read in place: the six data members are parsed straight out of the tar stream, nothing is
extracted to disk.

Binary layout (each ``*.bin`` member): records of 3,073 bytes, one label byte (0-9) then the
image as 1,024 red, 1,024 green and 1,024 blue bytes, each a 32x32 plane in row-major order.

Returns images uint8 (N, 32, 32, 3) (channels last) and labels uint8 (N, 1), as
``keras.datasets.cifar10``; ``CLASS_NAMES`` names the labels.
"""
import tarfile
import zlib

import numpy as np

from fastnet.datasets import _download, _remote
from fastnet.datasets._download import DownloadError

__all__ = ["load_data", "read_binary_batch", "default_cache_dir", "DownloadError", "MIRRORS",
           "ARCHIVE", "CHECKSUMS", "TRAIN_MEMBERS", "TEST_MEMBERS", "CLASS_NAMES"]

MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
ARCHIVE = "cifar-10-binary.tar.gz"
#: File name -> (checksum, size in bytes), as published with the data set.
CHECKSUMS = {ARCHIVE: ("md5:c32a1d4ab5d03f1284b67883e8d87530", 170052171)}
TRAIN_MEMBERS = tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBERS = ("cifar-10-batches-bin/test_batch.bin",)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")

RECORD = 1 + 3 * 32 * 32


def default_cache_dir():
    """``$FASTNET_DATA_DIR/cifar10`` or ``~/.fastnet/datasets/cifar10``."""
    return _remote.default_cache_dir("cifar10")


def read_binary_batch(raw, label="<bytes>"):
    """(images uint8 (N, 32, 32, 3), labels uint8 (N, 1)) from the bytes of one ``*.bin``
    member; ``label`` names it in errors."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise ValueError(f"CIFAR-10 batch {label} has {len(raw)} bytes, not a positive "
                         f"multiple of the {RECORD}-byte record")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = rec[:, :1].copy()
    if labels.max() > 9:
        raise ValueError(f"CIFAR-10 batch {label} holds label {int(labels.max())}; labels are "
                         "0-9 (is it the CIFAR-100 binary format?)")
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels


def _read_archive(path):
    wanted = set(TRAIN_MEMBERS + TEST_MEMBERS)
    found = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if member.name in wanted:
                    if not member.isfile():
                        raise ValueError(f"{path}: archive member {member.name} is not a "
                                         "regular file")
                    f = tar.extractfile(member)
                    found[member.name] = read_binary_batch(f.read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR-10 binary archive (corrupt or "
                         f"truncated): {exc}") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{path} lacks the CIFAR-10 member(s) {', '.join(missing)}")

    def join(names):
        parts = [found[n] for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return join(TRAIN_MEMBERS), join(TEST_MEMBERS)


def load_data(*, cache_dir=None, timeout=_download.DEFAULT_TIMEOUT):
    """``(x_train, y_train), (x_test, y_test)``: uint8 (N, 32, 32, 3) and uint8 (N, 1).

    Raises DownloadError (an OSError) when the archive is neither cached nor downloadable,
    ValueError naming the file when it is corrupt or not the CIFAR-10 binary archive.
    """
    cache_dir = _remote.resolve_cache_dir(cache_dir, "cifar10")
    hint = _remote.offline_hint([ARCHIVE], cache_dir, "fastnet.datasets.cifar10.load_data()")
    paths = _remote.fetch_files([ARCHIVE], CHECKSUMS, MIRRORS, cache_dir, timeout, hint)
    return _read_archive(paths[ARCHIVE])

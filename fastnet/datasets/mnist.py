"""MNIST handwritten digits, Keras style: ``(x_train, y_train), (x_test, y_test) = load_data()``.

Two sources:

``source='bundled'`` (default, offline)
    A 5,000-image sample of MNIST (500 per digit) shipped inside the package, split into
    4,000 training and 1,000 test images with exactly 100 test images per digit.  The split
    is fixed: it depends on nothing but the file, so it is identical on every machine and
    with every NumPy version (see :func:`_split_indices` for the rule).  The package file is
    checked against its sha256 the first time it is loaded in a process.

``source='full'``
    The standard MNIST set (60,000 training + 10,000 test images), read from the four gzipped
    IDX files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.  They are downloaded
    once into a cache folder and verified against their sha256 on every load.  The folder
    is, in order of precedence: the ``cache_dir`` argument; ``$FASTNET_DATA_DIR/mnist``;
    ``~/.fastnet/datasets/mnist``.  To work without a network, copy the four files into that
    folder yourself.

The images are uint8 arrays of shape (N, 28, 28) (0 = background, 255 = ink) and the labels
uint8 arrays of shape (N,) with values 0-9, as in ``keras.datasets.mnist``.  Every call
returns new arrays that the caller may modify.
"""
import functools
import hashlib
import io
import warnings
from importlib import resources

import numpy as np

from fastnet.datasets import _download, _remote
from fastnet.datasets._download import DownloadError
from fastnet.datasets._idx import read_idx

__all__ = ["load_data", "default_cache_dir", "DownloadError", "MIRRORS", "FILES", "CHECKSUMS"]

# ---------------------------------------------------------------------------------------------
# Bundled sample

_BUNDLED_RESOURCE = "data/mnist_5k.npz"
_BUNDLED_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
_BUNDLED_N = 5000
_TEST_PER_CLASS = 100
_SPLIT_SALT = "fastnet.datasets.mnist.bundled-split.v1"


def _read_bundled_bytes():
    return resources.files("fastnet.datasets").joinpath(_BUNDLED_RESOURCE).read_bytes()


def _decode_bundled(raw):
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _BUNDLED_SHA256:
        raise RuntimeError(
            f"fastnet's bundled MNIST sample (fastnet/datasets/{_BUNDLED_RESOURCE}) is damaged: "
            f"sha256 {digest}, expected {_BUNDLED_SHA256}. Reinstall fastnet.")
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if (images.shape != (_BUNDLED_N, 28, 28) or images.dtype != np.uint8
            or labels.shape != (_BUNDLED_N,) or labels.dtype != np.uint8):
        raise RuntimeError("fastnet's bundled MNIST sample has unexpected arrays")
    return images, labels


def _rank_key(tag, i):
    """A 64-bit pseudo-random key for item ``i``: the first 8 bytes of a sha256 hash."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{tag}:{i}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big")


def _split_indices(labels, test_per_class=_TEST_PER_CLASS):
    """The fixed stratified split of the bundled sample, as (train_idx, test_idx).

    Rule: every index ``i`` gets a key ``sha256(f"{salt}:split:{i}")[:8]`` (big-endian).
    Within each class the ``test_per_class`` indices with the smallest keys form the test
    set and the rest the training set.  Each set is then ordered by a second key
    ``sha256(f"{salt}:order:{i}")[:8]``, so the classes are interleaved (the file itself is
    sorted by label, and Keras' ``validation_split`` takes the last rows).  The rule uses
    only hashlib and integer sorting, so it never changes across machines or NumPy versions.
    """
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        members = sorted((int(i) for i in np.flatnonzero(labels == c)),
                         key=lambda i: (_rank_key("split", i), i))
        test += members[:test_per_class]
        train += members[test_per_class:]

    def order(ix):
        return np.array(sorted(ix, key=lambda i: (_rank_key("order", i), i)), dtype=np.intp)

    return order(train), order(test)


@functools.lru_cache(maxsize=1)
def _bundled():
    """(images, labels, train_idx, test_idx), read-only, verified once per process."""
    images, labels = _decode_bundled(_read_bundled_bytes())
    train_idx, test_idx = _split_indices(labels)
    for a in (images, labels, train_idx, test_idx):
        a.flags.writeable = False
    return images, labels, train_idx, test_idx


def _load_bundled():
    images, labels, train_idx, test_idx = _bundled()
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


# ---------------------------------------------------------------------------------------------
# Full MNIST

#: Base URLs tried in order (the mirrors torchvision and TensorFlow use).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: Role -> file name.
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: File name -> (sha256, size in bytes) of the canonical gzipped files.
CHECKSUMS = {
    "train-images-idx3-ubyte.gz":
        ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "train-labels-idx1-ubyte.gz":
        ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "t10k-images-idx3-ubyte.gz":
        ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "t10k-labels-idx1-ubyte.gz":
        ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
}
# For reference, the md5 sums of the same files as listed by torchvision:
#   train-images f68b3c2dcbeaaa9fbdd348bbdeb94873, train-labels d53e105ee54ea40749a09fcbcd1e9432,
#   t10k-images 9fb629c4189551a2d022fa330f9573f3, t10k-labels ec29112dd5afa0611ce80d1b7f02629c


def default_cache_dir():
    """The folder used for the full MNIST files when ``cache_dir`` is not given:
    ``$FASTNET_DATA_DIR/mnist`` if that variable is set, else ``~/.fastnet/datasets/mnist``."""
    return _remote.default_cache_dir("mnist")


def _offline_hint(cache_dir):
    names = ", ".join(FILES.values())
    return ("To work offline, use the bundled 5,000-image sample: "
            "fastnet.datasets.mnist.load_data() (the default source='bundled'); "
            f"or place the four files ({names}) in {cache_dir} yourself "
            "(they are checked against their sha256 before use).")


def _load_full(cache_dir, timeout):
    cache_dir = _remote.resolve_cache_dir(cache_dir, "mnist")
    paths = _remote.fetch_files(FILES.values(), CHECKSUMS, MIRRORS, cache_dir, timeout,
                                _offline_hint(cache_dir))
    return idx_image_pairs(paths, FILES, "MNIST")


def idx_image_pairs(paths, files, title):
    """((x_train, y_train), (x_test, y_test)) from the four verified IDX files of an
    MNIST-format data set; a file of the wrong shape or type raises ValueError with its path."""
    out = []
    for part in ("train", "test"):
        x_path, y_path = paths[files[f"{part}_images"]], paths[files[f"{part}_labels"]]
        x, y = read_idx(x_path), read_idx(y_path)
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{title} {part} images in {x_path}: expected uint8 (N, 28, 28), "
                             f"got {x.dtype} {x.shape}")
        if y.dtype != np.uint8 or y.shape != (x.shape[0],) or (y.size and y.max() > 9):
            raise ValueError(f"{title} {part} labels in {y_path}: expected {x.shape[0]} uint8 "
                             f"values 0-9, got {y.dtype} {y.shape}")
        out.append((x, y))
    return tuple(out)


# ---------------------------------------------------------------------------------------------

def load_data(path=None, *, source="bundled", cache_dir=None, timeout=_download.DEFAULT_TIMEOUT):
    """Load MNIST as ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    path : ignored
        Accepted so that calls written for ``keras.datasets.mnist.load_data(path="mnist.npz")``
        keep working; fastnet does not use a Keras ``.npz``.  Use ``cache_dir`` to choose where
        the full set is stored.  A value other than None or ``"mnist.npz"`` warns.
    source : {'bundled', 'full'}
        ``'bundled'`` (default): the 5,000-image sample in the package, split into 4,000 train
        / 1,000 test (100 per digit), no network.  ``'full'``: the standard 60,000 / 10,000
        set, downloaded on first use and cached.
    cache_dir : str or os.PathLike, optional
        Folder for the full set's four ``.gz`` files (only with ``source='full'``).  Default:
        ``$FASTNET_DATA_DIR/mnist`` or ``~/.fastnet/datasets/mnist``.
    timeout : float
        Seconds allowed for each blocking network operation of a download.

    Returns
    -------
    ``(x_train, y_train), (x_test, y_test)``: images uint8 (N, 28, 28), labels uint8 (N,).

    Raises
    ------
    DownloadError (an OSError)
        ``source='full'`` and a file is neither cached nor downloadable; the message lists the
        URLs tried and how to work offline.
    """
    if path is not None and path != "mnist.npz":
        warnings.warn("fastnet.datasets.mnist.load_data ignores `path`; use cache_dir= with "
                      "source='full' to choose where the files are stored", stacklevel=2)
    if source == "bundled":
        if cache_dir is not None:
            raise ValueError("cache_dir applies only to source='full'")
        return _load_bundled()
    if source == "full":
        return _load_full(cache_dir, timeout)
    raise ValueError(f"source must be 'bundled' or 'full', got {source!r}")

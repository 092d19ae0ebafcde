"""Data sets for fastnet.

``mnist.load_data()`` mirrors ``keras.datasets.mnist.load_data()``; by default it returns a
5,000-image sample shipped with the package (no network), and with ``source='full'`` the
standard 70,000-image MNIST, downloaded once and cached.  ``fashion_mnist.load_data()`` and
``cifar10.load_data()`` (the binary version, never a pickle) download and cache the same way;
every cached file is verified against its checksum on each load.
``from_arrays(x, y)`` makes a checked ``fastnet.data.Dataset``; ``from_folder(path)`` loads a
folder of class sub-folders of images (needs Pillow).  ``read_idx`` / ``write_idx`` read and
write the IDX format of the MNIST files.
"""
import numpy as np

from fastnet.datasets import cifar10, fashion_mnist, mnist
from fastnet.datasets._download import DownloadError
from fastnet.datasets._idx import read_idx, write_idx
from fastnet.datasets.folder import from_folder

__all__ = ["mnist", "fashion_mnist", "cifar10", "load_digits", "read_idx", "write_idx",
           "DownloadError", "from_arrays", "from_folder"]


def from_arrays(x, y=None, sample_weight=None):
    """A ``fastnet.data.Dataset`` of (x[i], y[i]) after checking the arrays (numeric, one label
    per sample); chain ``.shuffle(...).batch(...)`` and pass it to ``fit``."""
    from fastnet.data import Dataset
    return Dataset.from_arrays(x, y, sample_weight)


def load_digits(*, source="bundled", cache_dir=None):
    """MNIST ready for a CNN: ``(x_train, y_train), (x_test, y_test)`` where x is float32
    NHWC of shape (N, 28, 28, 1) scaled to [0, 1] and y is uint8 (N,) with digits 0-9.

    Same data and split as :func:`fastnet.datasets.mnist.load_data` (default: the bundled
    4,000 / 1,000 sample; ``source='full'`` for 60,000 / 10,000).
    """
    (x_train, y_train), (x_test, y_test) = mnist.load_data(source=source, cache_dir=cache_dir)

    def prep(x):
        return (x.astype(np.float32) / np.float32(255.0))[..., np.newaxis]

    return (prep(x_train), y_train), (prep(x_test), y_test)

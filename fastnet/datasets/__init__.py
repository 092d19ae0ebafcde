"""Data sets for fastnet.

``fastnet.datasets.mnist.load_data()`` mirrors ``keras.datasets.mnist.load_data()``; by default
it returns a 5,000-image sample shipped with the package (no network), and with
``source='full'`` the standard 70,000-image MNIST, downloaded once and cached.
``read_idx`` / ``write_idx`` read and write the IDX format of the MNIST files.
"""
import numpy as np

from fastnet.datasets import mnist
from fastnet.datasets._download import DownloadError
from fastnet.datasets._idx import read_idx, write_idx

__all__ = ["mnist", "load_digits", "read_idx", "write_idx", "DownloadError"]


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

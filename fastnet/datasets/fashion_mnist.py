"""Fashion-MNIST (Zalando), Keras style: ``(x_train, y_train), (x_test, y_test) = load_data()``.

60,000 training and 10,000 test grayscale 28x28 images of 10 kinds of clothing, in the MNIST
IDX format (four gzipped files with the same names as MNIST's).  They are downloaded once into
the cache folder (``cache_dir``, else ``$FASTNET_DATA_DIR/fashion_mnist``, else
``~/.fastnet/datasets/fashion_mnist``) and verified on every load against the md5 sums the
data set's publishers list (and torchvision uses).  Images are uint8 (N, 28, 28), labels uint8
(N,) in 0-9, as ``keras.datasets.fashion_mnist``; ``CLASS_NAMES`` names the labels.
"""
from fastnet.datasets import _download, _remote, mnist
from fastnet.datasets._download import DownloadError
from fastnet.datasets.mnist import idx_image_pairs

__all__ = ["load_data", "default_cache_dir", "DownloadError", "MIRRORS", "FILES", "CHECKSUMS",
           "CLASS_NAMES"]

#: Base URLs tried in order (Keras's copy, then the publishers').
MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

#: Role -> file name.
FILES = dict(mnist.FILES)  # the same four file names as MNIST

#: File name -> (checksum, size in bytes or None).
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": ("md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d", None),
    "train-labels-idx1-ubyte.gz": ("md5:25c81989df183df01b3e8a0aad5dffbe", None),
    "t10k-images-idx3-ubyte.gz": ("md5:bef4ecab320f06d8554ea6380940ec79", None),
    "t10k-labels-idx1-ubyte.gz": ("md5:bb300cfdad3c16e7a12a480ee83cd310", None),
}

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")


def default_cache_dir():
    """``$FASTNET_DATA_DIR/fashion_mnist`` or ``~/.fastnet/datasets/fashion_mnist``."""
    return _remote.default_cache_dir("fashion_mnist")


def load_data(*, cache_dir=None, timeout=_download.DEFAULT_TIMEOUT):
    """``(x_train, y_train), (x_test, y_test)``: uint8 images (N, 28, 28), uint8 labels (N,).

    Raises DownloadError (an OSError) when a file is neither cached nor downloadable (the
    message lists the URLs tried and how to work offline), ValueError naming the file when a
    verified file does not hold what Fashion-MNIST holds.
    """
    cache_dir = _remote.resolve_cache_dir(cache_dir, "fashion_mnist")
    hint = _remote.offline_hint(list(FILES.values()), cache_dir,
                                "fastnet.datasets.fashion_mnist.load_data()")
    paths = _remote.fetch_files(FILES.values(), CHECKSUMS, MIRRORS, cache_dir, timeout, hint)
    return idx_image_pairs(paths, FILES, "Fashion-MNIST")

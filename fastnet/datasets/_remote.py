"""Where downloaded data sets live, and fetching a data set's files into that folder.

Every data set has a cache folder: the ``cache_dir`` argument of its ``load_data``, else
``$FASTNET_DATA_DIR/<name>``, else ``~/.fastnet/datasets/<name>``.  Files are verified against
their checksum on every load (:func:`fastnet.datasets._download.fetch`); copying the files into
the folder by hand is how to work without a network.
"""
import os

from fastnet.datasets import _download

__all__ = ["default_cache_dir", "resolve_cache_dir", "fetch_files", "offline_hint"]


def default_cache_dir(name):
    """``$FASTNET_DATA_DIR/<name>`` if that variable is set, else ``~/.fastnet/datasets/<name>``."""
    root = os.environ.get("FASTNET_DATA_DIR")
    if root:
        return os.path.join(os.path.expanduser(root), name)
    return os.path.join(os.path.expanduser("~"), ".fastnet", "datasets", name)


def resolve_cache_dir(cache_dir, name):
    """The absolute cache folder for data set ``name`` (``cache_dir`` wins when given)."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    return default_cache_dir(name)


def offline_hint(filenames, cache_dir, load_call):
    """The end of the error raised when files are neither cached nor downloadable."""
    names = ", ".join(filenames)
    return (f"Offline? Place the file(s) ({names}) in {cache_dir} yourself (they are checked "
            f"against their checksum before use) and call {load_call} again; to work without "
            "any download, use the bundled 5,000-image MNIST sample: "
            "fastnet.datasets.mnist.load_data() (the default source='bundled').")


def fetch_files(filenames, checksums, mirrors, cache_dir, timeout, hint):
    """{filename: verified path} for every file, downloading what is missing or damaged.

    ``checksums`` maps a file name to (checksum, size or None); see ``_download.fetch``."""
    paths = {}
    for name in filenames:
        checksum, size = checksums[name]
        paths[name] = _download.fetch(name, checksum, cache_dir, mirrors, size=size,
                                      timeout=timeout, hint=hint)
    return paths

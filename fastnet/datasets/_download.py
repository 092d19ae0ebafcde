"""Checksummed, cached downloads (standard library only).

:func:`fetch` returns the path of a verified file in a cache folder.  A file already cached is
re-hashed before use; a damaged one is deleted and downloaded again.  Downloads go to a
temporary file in the cache folder, are hashed while they stream, and are renamed into place
(``os.replace``, atomic on one file system) only after the checksum matches, so an interrupted
or corrupted download never leaves a file under the final name.  Mirrors are tried in order.
"""
import hashlib
import http.client
import os
import tempfile
import urllib.request

__all__ = ["DownloadError", "fetch", "file_sha256", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0          # seconds, per blocking socket operation
_CHUNK = 1 << 16
_USER_AGENT = "fastnet-datasets (python urllib)"


class DownloadError(OSError):
    """A data file could not be obtained from any mirror (network error or bad checksum)."""


def file_sha256(path):
    """Hex sha256 of the file at ``path`` (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _is_valid(path, sha256, size):
    try:
        if size is not None and os.path.getsize(path) != size:
            return False
        return file_sha256(path) == sha256
    except OSError:
        return False


def _open_url(url, timeout):
    # A fresh opener per call reads the proxy environment variables at call time
    # (urllib.request.urlopen caches its opener and its proxy settings forever).
    opener = urllib.request.build_opener()
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    return opener.open(req, timeout=timeout)


def download_url(url, dest_dir, filename, sha256, size=None, timeout=DEFAULT_TIMEOUT):
    """Download ``url`` into ``dest_dir/filename`` if and only if its sha256 matches.

    Streams into a temporary file in ``dest_dir`` while hashing; when ``size`` is known the
    download stops as soon as more bytes arrive than expected.  Raises OSError (network
    failure) or ValueError (wrong size or checksum); the temporary file is always removed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    try:
        h = hashlib.sha256()
        got = 0
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout) as resp:
            length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            if size is not None and length is not None and length.isdigit() \
                    and int(length) != size:
                raise ValueError(f"server announces {length} bytes, expected {size}")
            while True:
                block = resp.read(_CHUNK)
                if not block:
                    break
                got += len(block)
                if size is not None and got > size:
                    raise ValueError(f"received more than the expected {size} bytes")
                h.update(block)
                out.write(block)
        if size is not None and got != size:
            raise ValueError(f"received {got} bytes, expected {size}")
        digest = h.hexdigest()
        if digest != sha256:
            raise ValueError(f"sha256 mismatch: got {digest}, expected {sha256}")
        final = os.path.join(dest_dir, filename)
        os.replace(tmp, final)
        tmp = None
        return final
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def fetch(filename, sha256, cache_dir, mirrors, *, size=None, timeout=DEFAULT_TIMEOUT,
          hint=""):
    """Return the path of ``cache_dir/filename``, downloading it if it is missing or damaged.

    ``mirrors`` is a sequence of base URLs (ending in ``/``); ``mirror + filename`` is tried in
    order.  A cached file whose size or sha256 is wrong is deleted before downloading.  Raises
    :class:`DownloadError` listing every URL tried and why it failed; ``hint`` is appended to
    the message.
    """
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, filename)
    if os.path.exists(path):
        if _is_valid(path, sha256, size):
            return path
        os.unlink(path)                 # corrupted or partial: never use it, fetch again
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            return download_url(url, cache_dir, filename, sha256, size=size, timeout=timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"  {url}: {type(exc).__name__}: {reason}")
    msg = (f"could not download {filename!r} into {cache_dir!r}; URLs tried:\n"
           + "\n".join(failures))
    if hint:
        msg += "\n" + hint
    raise DownloadError(msg)

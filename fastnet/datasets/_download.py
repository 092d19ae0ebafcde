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
import warnings

__all__ = ["DownloadError", "fetch", "file_sha256", "file_digest", "parse_checksum",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0          # seconds, per blocking socket operation
_CHUNK = 1 << 16
_USER_AGENT = "fastnet-datasets (python urllib)"


class DownloadError(OSError):
    """A data file could not be obtained from any mirror (network error or bad checksum)."""


def parse_checksum(checksum):
    """(algorithm, hex digest) from ``"<64 hex>"`` (sha256), ``"sha256:<hex>"`` or
    ``"md5:<hex>"`` (for data sets whose publishers list only md5 sums)."""
    algo, _, digest = checksum.rpartition(":")
    algo = algo or "sha256"
    if algo not in ("sha256", "md5"):
        raise ValueError(f"unsupported checksum algorithm {algo!r} (sha256 or md5)")
    return algo, digest.lower()


def file_digest(path, algorithm="sha256"):
    """Hex digest of the file at ``path`` (read in chunks)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path):
    """Hex sha256 of the file at ``path`` (read in chunks)."""
    return file_digest(path, "sha256")


def _mismatch(path, checksum, size):
    """Why the file at ``path`` is not the expected one, or None when it is."""
    try:
        actual = os.path.getsize(path)
        if size is not None and actual != size:
            return f"{actual} bytes, expected {size}"
        algo, digest = parse_checksum(checksum)
        got = file_digest(path, algo)
        return None if got == digest else f"{algo} {got}, expected {digest}"
    except OSError as exc:
        return f"unreadable: {exc}"


def _open_url(url, timeout):
    # A fresh opener per call reads the proxy environment variables at call time
    # (urllib.request.urlopen caches its opener and its proxy settings forever).
    opener = urllib.request.build_opener()
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    return opener.open(req, timeout=timeout)


def download_url(url, dest_dir, filename, sha256, size=None, timeout=DEFAULT_TIMEOUT):
    """Download ``url`` into ``dest_dir/filename`` if and only if its checksum matches
    (``sha256``: a sha256 hex digest, or ``"md5:<hex>"``, see :func:`parse_checksum`).

    Streams into a temporary file in ``dest_dir`` while hashing; when ``size`` is known the
    download stops as soon as more bytes arrive than expected.  Raises OSError (network
    failure) or ValueError (wrong size or checksum); the temporary file is always removed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    try:
        algo, digest_expected = parse_checksum(sha256)
        h = hashlib.new(algo)
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
        if digest != digest_expected:
            raise ValueError(f"{algo} mismatch: got {digest}, expected {digest_expected} "
                             "(the download was discarded)")
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
    order.  A cached file whose size or checksum is wrong is deleted (with a RuntimeWarning)
    before downloading; if the download fails too, the error says the cached file was removed.  Raises
    :class:`DownloadError` listing every URL tried and why it failed; ``hint`` is appended to
    the message.
    """
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, filename)
    removed = None
    if os.path.exists(path):
        why = _mismatch(path, sha256, size)
        if why is None:
            return path
        os.unlink(path)                 # corrupted or partial: never use it, fetch again
        removed = (f"The cached file {path} did not match its checksum ({why}) and was "
                   "removed.")
        warnings.warn(f"{removed} Downloading it again.", RuntimeWarning, stacklevel=2)
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
    if removed:
        msg += "\n" + removed
    if hint:
        msg += "\n" + hint
    raise DownloadError(msg)

"""Reading and writing the IDX file format (the format of the MNIST files).

An IDX file is::

    byte 0-1   0x00 0x00                    magic
    byte 2     type code                    0x08 uint8, 0x09 int8, 0x0B int16,
                                            0x0C int32, 0x0D float32, 0x0E float64
    byte 3     ndim                         number of dimensions (1..255 accepted here)
    ndim x 4   big-endian int32 sizes       one per dimension
    ...        the data, big-endian, C order

Files may be gzip-compressed; :func:`read_idx` recognizes gzip by its magic bytes (0x1F 0x8B),
not by the file name.  Every malformed input raises :class:`ValueError` with a message naming
the file; sizes are checked before any large allocation is made.
"""
import gzip
import io
import os
import struct
import zlib

import numpy as np

__all__ = ["read_idx", "write_idx", "IDX_TYPE_CODES"]

#: IDX type code -> big-endian NumPy dtype as stored in the file.
IDX_TYPE_CODES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_TYPE_CODES.items()}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20          # bytes per read when the data size cannot be known in advance
_MAX_DIM = 2**31 - 1      # sizes are signed 32-bit integers


def _describe(source):
    if isinstance(source, (str, bytes, os.PathLike)):
        return repr(os.fsdecode(source))
    name = getattr(source, "name", None)
    return repr(name) if isinstance(name, (str, bytes)) else "<file object>"


def _read_exact(f, n, what, label):
    """Read exactly ``n`` bytes (small reads only: the header)."""
    buf = f.read(n)
    if buf is None:
        buf = b""
    if len(buf) != n:
        raise ValueError(f"IDX file {label} is truncated: expected {n} bytes of {what}, "
                         f"got {len(buf)}")
    return buf


def _remaining_size(f):
    """Bytes left in ``f`` if it is a plain seekable file, else None."""
    try:
        if not f.seekable():
            return None
        pos = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def _read_payload_known(f, nbytes, label):
    out = bytearray(nbytes)
    view = memoryview(out)
    got = 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"IDX file {label} is truncated: expected {nbytes} data bytes, "
                             f"got {got}")
        got += n
    return out


def _read_payload_stream(f, nbytes, label):
    """Read ``nbytes`` from a stream of unknown length, growing the buffer only as data arrives
    (so a header claiming an absurd size cannot trigger a huge allocation)."""
    out = bytearray()
    while len(out) < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - len(out)))
        if not chunk:
            raise ValueError(f"IDX file {label} is truncated: expected {nbytes} data bytes, "
                             f"got {len(out)}")
        out += chunk
    return out


def _parse(f, label, total_size):
    head = _read_exact(f, 4, "header", label)
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"{label} is not an IDX file: bad magic number {head[:4].hex()} "
                         "(the first two bytes must be zero)")
    code, ndim = head[2], head[3]
    if code not in IDX_TYPE_CODES:
        raise ValueError(f"IDX file {label} has unknown type code 0x{code:02X} (expected one of "
                         + ", ".join(f"0x{c:02X}" for c in IDX_TYPE_CODES) + ")")
    if ndim == 0:
        raise ValueError(f"IDX file {label} declares 0 dimensions")
    dims = struct.unpack(f">{ndim}i", _read_exact(f, 4 * ndim, "dimension sizes", label))
    if any(d < 0 for d in dims):
        raise ValueError(f"IDX file {label} has negative dimension sizes {dims}")
    dtype = IDX_TYPE_CODES[code]
    nbytes = dtype.itemsize
    for d in dims:
        nbytes *= d                       # Python ints: no overflow
    if total_size is not None and hasattr(f, "readinto"):
        remaining = total_size - 4 - 4 * ndim
        if remaining != nbytes:
            kind = "truncated" if remaining < nbytes else "longer than its header says"
            raise ValueError(f"IDX file {label} is {kind}: header shape {dims} of "
                             f"{dtype.name} needs {nbytes} data bytes, the file has {remaining}")
        payload = _read_payload_known(f, nbytes, label)
    else:
        payload = _read_payload_stream(f, nbytes, label)
        if f.read(1):
            raise ValueError(f"IDX file {label} is longer than its header says: header shape "
                             f"{dims} of {dtype.name} needs {nbytes} data bytes, "
                             "more data follows")
    arr = np.frombuffer(payload, dtype=dtype).reshape(dims)
    if not arr.dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def read_idx(path_or_fileobj):
    """Read an IDX file (plain or gzip-compressed) into a NumPy array.

    ``path_or_fileobj`` is a path (str or os.PathLike) or a binary file object opened for
    reading.  Returns a writable C-contiguous array in native byte order with the shape from
    the header and the dtype from the type code (uint8, int8, int16, int32, float32 or
    float64).  Raises ValueError for a bad magic number, unknown type code, zero dimensions,
    truncated or over-long data, or a corrupted gzip stream.
    """
    label = _describe(path_or_fileobj)
    if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        with open(path_or_fileobj, "rb") as f:
            return _read_from(f, label)
    return _read_from(path_or_fileobj, label)


def _read_from(f, label):
    start = f.read(2) or b""
    if _can_seek_back(f, len(start)):
        stream = f                                   # back at the first byte
    else:
        stream = io.BufferedReader(_Prefixed(start, f))
    if start == _GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
                return _parse(gz, label, None)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"IDX file {label} is a corrupted or truncated gzip stream: "
                             f"{exc}") from None
    return _parse(stream, label, _remaining_size(stream) if stream is f else None)


def _can_seek_back(f, n):
    """Seek ``f`` back by ``n`` bytes if possible; return whether it worked."""
    try:
        if f.seekable():
            f.seek(-n, io.SEEK_CUR)
            return True
    except (AttributeError, OSError, ValueError):
        pass
    return False


class _Prefixed(io.RawIOBase):
    """A raw stream that yields ``prefix`` and then the rest of ``f`` (for unseekable input)."""

    def __init__(self, prefix, f):
        self._prefix = bytes(prefix)
        self._f = f

    def readable(self):
        return True

    def readinto(self, b):
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._f.read(len(b))
        if not data:
            return 0
        b[:len(data)] = data
        return len(data)


def write_idx(path_or_fileobj, array, *, compress=None):
    """Write ``array`` as an IDX file.

    The dtype must be one the format supports (uint8, int8, int16, int32, float32, float64, in
    any byte order); other dtypes raise ValueError rather than being cast silently.  The array
    needs 1 to 255 dimensions, each smaller than 2**31.  ``compress`` (default: True when the
    path ends in ``.gz``, False for file objects) writes a gzip stream with a zero timestamp
    and no embedded file name, so identical arrays give identical bytes.
    """
    arr = np.asarray(array)
    key = (arr.dtype.kind, arr.dtype.itemsize)
    if key not in _CODE_BY_KIND:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}; supported: uint8, int8, int16, "
                         "int32, float32, float64")
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {arr.ndim}")
    if any(d > _MAX_DIM for d in arr.shape):
        raise ValueError(f"IDX dimension sizes must be < 2**31, got {arr.shape}")
    code = _CODE_BY_KIND[key]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    data = np.ascontiguousarray(arr, dtype=IDX_TYPE_CODES[code])

    def emit(f):
        f.write(header)
        f.write(data.reshape(-1).view(np.uint8))

    if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        if compress is None:
            compress = os.fsdecode(path_or_fileobj).endswith(".gz")
        with open(path_or_fileobj, "wb") as raw:
            _write(raw, emit, compress)
    else:
        _write(path_or_fileobj, emit, bool(compress))


def _write(raw, emit, compress):
    if compress:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            emit(gz)
    else:
        emit(raw)

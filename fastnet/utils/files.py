"""Atomic file writes: a crash or a full disk mid-write leaves the previous file intact.

The data goes to a temporary file in the target's folder, named
``.{target name}.{pid}@{host}.{random}.fastnet-tmp``, which is fsync'ed and renamed over the
target.  Any error (KeyboardInterrupt included) removes it; a writer killed outright (SIGKILL,
power loss) leaves it behind, and the next atomic write to the same target on the same host
removes the temporary files of that target whose writer process is gone (never a live one's).
"""
import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket

TMP_SUFFIX = ".fastnet-tmp"


def _host_tag():
    """8 hex digits of the host name: a pid means something only on its own host (a shared
    network folder may hold temporary files of writers on other machines)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid):
    if pid <= 0:
        return True         # not a pid we can judge: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:        # EPERM: it exists, owned by another user
        return e.errno != errno.ESRCH
    return True


def _tmp_pattern(base):
    return re.compile(re.escape(f".{base}.") + r"(\d+)@([0-9a-f]{8})\.[0-9a-f]{16}"
                      + re.escape(TMP_SUFFIX) + r"\Z")


def remove_stale_temporaries(path):
    """Remove the temporary files of atomic writes to ``path`` whose writer (a process of
    this host) no longer runs; returns the names removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern, host = _tmp_pattern(os.path.basename(path)), _host_tag()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m is None or m.group(2) != host or _pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass            # another writer cleaned it first
        except OSError:
            pass            # not ours to remove (permissions): harmless litter
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary file is flushed to disk before the rename and removed on any error
    (including KeyboardInterrupt); stale temporary files of ``path`` left by killed writers
    are removed first."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    tmp = None
    try:
        while tmp is None:
            name = (f".{os.path.basename(path)}.{os.getpid()}@{_host_tag()}."
                    f"{secrets.token_hex(8)}{TMP_SUFFIX}")
            candidate = os.path.join(directory, name)
            try:    # O_EXCL: never reuse (or follow a link planted at) an existing name
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            tmp = candidate
            os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        try:  # make the rename itself durable
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def atomic_write(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)

"""Data cleaning: drop samples with NaN or infinite values and duplicate samples, and say what
was dropped.

>>> x, y, report = drop_invalid_rows(x, y)
>>> print(report)
dropped 3 of 1000 rows: 2 with NaN or inf (rows 17, 512), 1 duplicate (row 40 repeats row 3)

A "row" is one sample: x[i] (any shape) with its label y[i].  Duplicates are exact repeats of
an earlier row (x and y alike; -0.0 equals 0.0); the first occurrence is kept.  Rows whose x is
repeated with a different label are kept and counted in ``report.conflicting``, since which
label is right is not a question a cleaner can answer.
"""
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CleaningReport", "drop_invalid_rows", "check_labels"]


@dataclass
class CleaningReport:
    """What ``drop_invalid_rows`` dropped: row indices into the original arrays."""
    n_rows: int
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    duplicates: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    duplicate_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    conflicting: int = 0

    @property
    def n_dropped(self):
        return int(self.nonfinite.size + self.duplicates.size)

    @property
    def n_kept(self):
        return self.n_rows - self.n_dropped

    def __str__(self):
        def rows(ix, limit=8):
            text = ", ".join(str(int(i)) for i in ix[:limit])
            return text + (f", ... ({ix.size - limit} more)" if ix.size > limit else "")

        if not self.n_dropped and not self.conflicting:
            return f"dropped 0 of {self.n_rows} rows: nothing to clean"
        parts = []
        if self.nonfinite.size:
            s = "" if self.nonfinite.size == 1 else "s"
            parts.append(f"{self.nonfinite.size} row{s} with NaN or inf "
                         f"(row{s} {rows(self.nonfinite)})")
        if self.duplicates.size:
            pairs = ", ".join(f"{int(d)} repeats {int(o)}" for d, o in
                              zip(self.duplicates[:5], self.duplicate_of[:5]))
            more = f", ... ({self.duplicates.size - 5} more)" if self.duplicates.size > 5 else ""
            parts.append(f"{self.duplicates.size} duplicate"
                         f"{'' if self.duplicates.size == 1 else 's'} (row {pairs}{more})")
        text = f"dropped {self.n_dropped} of {self.n_rows} rows"
        text += (": " + "; ".join(parts)) if parts else ""
        if self.conflicting:
            text += (f"; kept {self.conflicting} group(s) of identical inputs with different "
                     f"labels")
        return text


def check_labels(y, n, what="y"):
    """``y`` as an array after checking it has one numeric label per sample (n rows)."""
    arr = np.asarray(y)
    if arr.ndim == 0:
        raise ValueError(f"{what} must have one label per sample ({n}), got a scalar")
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} labels but x has {n} samples; "
                         "they must match")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what} must hold numbers (class ids or targets), got dtype "
                        f"{arr.dtype}")
    return arr


def _row_bytes(a, n):
    """(n, k) uint8 view of each row's bytes; floats with -0.0 made +0.0 first."""
    a = np.ascontiguousarray(a.reshape(n, -1))
    if a.dtype.kind == "f":
        a = a + a.dtype.type(0.0)          # -0.0 + 0.0 = +0.0: equal values, equal bytes
    return a.view(np.uint8).reshape(n, -1)


def drop_invalid_rows(x, y=None, *, drop_nonfinite=True, drop_duplicates=True):
    """Drop rows with NaN/inf (in x or y) and exact duplicate rows.

    Args:
        x: array (N, ...) of numbers.
        y: optional labels or targets (N, ...), checked for length and type.
        drop_nonfinite, drop_duplicates: which kinds of rows to drop.

    Returns ``(x_clean, y_clean, report)`` (``(x_clean, report)`` without y): new arrays in
    the original order and a :class:`CleaningReport`.
    """
    xa = np.asarray(x)
    if xa.ndim < 1:
        raise ValueError(f"x must have a sample axis, got shape {xa.shape}")
    if xa.dtype.kind not in "fiub":
        raise TypeError(f"x must hold numbers, got dtype {xa.dtype}")
    n = xa.shape[0]
    ya = None if y is None else check_labels(y, n)
    report = CleaningReport(n_rows=n)
    keep = np.ones(n, dtype=bool)
    if drop_nonfinite and n:
        bad = np.zeros(n, dtype=bool)
        for a in (xa, ya):
            if a is not None and a.dtype.kind == "f":
                bad |= ~np.isfinite(a.reshape(n, -1)).all(axis=1)
        report.nonfinite = np.flatnonzero(bad)
        keep &= ~bad
    if drop_duplicates and n:
        cand = np.flatnonzero(keep)
        xb = _row_bytes(xa[cand], cand.size)
        full = xb if ya is None else np.concatenate([xb, _row_bytes(ya[cand], cand.size)], 1)
        first, inverse = _first_occurrence(full)
        dup = first[inverse] != np.arange(cand.size)
        report.duplicates = cand[dup]
        report.duplicate_of = cand[first[inverse[dup]]]
        keep[report.duplicates] = False
        if ya is not None:
            # groups of equal x among the distinct (x, y) rows with more than one label
            distinct = np.flatnonzero(~dup)
            _, inv_x = _first_occurrence(xb[distinct])
            counts = np.bincount(inv_x)
            report.conflicting = int((counts > 1).sum())
    idx = np.flatnonzero(keep)
    x_out = xa[idx]
    if ya is None:
        return x_out, report
    return x_out, ya[idx], report


def _first_occurrence(rows):
    """For (n, k) uint8 rows: (first index of each distinct row, row -> distinct id)."""
    n = rows.shape[0]
    if rows.shape[1] == 0:
        return np.zeros(min(n, 1), np.intp), np.zeros(n, np.intp)
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).reshape(n)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.reshape(n)

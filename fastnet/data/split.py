"""Seeded, optionally stratified splits of arrays (scikit-learn's ``train_test_split``).

Stratification keeps every class's share: with n_test of n samples, class c (n_c samples) gets
floor(n_c * n_test / n) test samples, and the samples left over go, one each, to the classes
with the largest remainders (ties: the smaller class id first) — the largest-remainder rule,
so the shares are as exact as whole samples allow and sum to n_test.  Within each class, which
samples go to the test side is a seeded random choice.
"""
import numbers

import numpy as np

from fastnet.utils.random import make_rng

__all__ = ["train_test_split", "validation_split", "stratified_indices"]


def _sizes(n, test_size, train_size):
    def as_count(v, name):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a fraction in (0, 1), a count, or None; got {v!r}")
        if isinstance(v, numbers.Integral):
            if not 0 <= v <= n:
                raise ValueError(f"{name}={v} must be between 0 and the {n} samples")
            return int(v)
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name}={v} must be a fraction in (0, 1)")
        return v

    test, train = as_count(test_size, "test_size"), as_count(train_size, "train_size")
    if test is None and train is None:
        test = 0.25
    if isinstance(test, float):
        test = int(np.ceil(test * n))           # scikit-learn rounds the test side up
    if isinstance(train, float):
        train = int(np.floor(train * n))
    if test is None:
        test = n - train
    if train is None:
        train = n - test
    if train + test > n:
        raise ValueError(f"train_size + test_size = {train + test} exceeds the {n} samples")
    if train < 1 or test < 1:
        raise ValueError(f"the split leaves {train} training and {test} test samples out of "
                         f"{n}; both sides need at least one")
    return train, test


def _class_ids(stratify, n):
    s = np.asarray(stratify)
    if s.ndim == 0 or s.shape[0] != n:
        raise ValueError(f"stratify must have one label per sample ({n}), got shape {s.shape}")
    if s.ndim == 2 and s.shape[1] > 1:          # one-hot rows
        s = np.argmax(s, axis=1)
    elif s.ndim > 1:
        s = s.reshape(n, -1)
        if s.shape[1] != 1:
            raise ValueError(f"stratify must be class labels (n,) or one-hot (n, k), got shape "
                             f"{np.shape(stratify)}")
        s = s[:, 0]
    _, ids = np.unique(s, return_inverse=True)
    return ids.reshape(n)


def stratified_indices(labels, n_train, n_test, rng):
    """(train_idx, test_idx) keeping each class's share on both sides (largest remainders)."""
    ids = _class_ids(labels, len(labels))
    n = ids.size
    counts = np.bincount(ids)
    if (counts < 2).any():
        lonely = int(np.flatnonzero(counts < 2)[0])
        raise ValueError(f"stratify: class #{lonely} (in sorted label order) has a single "
                         "sample; every class needs at least 2 to appear on both sides")
    exact = counts * (n_test / n)
    take = np.floor(exact).astype(np.int64)
    left = n_test - int(take.sum())
    order = np.lexsort((np.arange(counts.size), -(exact - take)))
    take[order[:left]] += 1
    exact_train = counts * (n_train / n)
    keep = np.minimum(counts - take, np.floor(exact_train).astype(np.int64))
    left = n_train - int(keep.sum())
    room = counts - take - keep
    order = np.lexsort((np.arange(counts.size), -(exact_train - np.floor(exact_train))))
    for c in order:
        if left <= 0:
            break
        add = min(int(room[c]), left)
        keep[c] += add
        left -= add
    train, test = [], []
    by_class = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for c in range(counts.size):
        members = rng.permutation(by_class[starts[c]:starts[c + 1]])
        test.append(members[:take[c]])
        train.append(members[take[c]:take[c] + keep[c]])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def train_test_split(*arrays, test_size=None, train_size=None, seed=None, shuffle=True,
                     stratify=None, random_state=None):
    """Split arrays into train and test parts: ``x_tr, x_te, y_tr, y_te =
    train_test_split(x, y, test_size=0.2, stratify=y, seed=0)`` (scikit-learn's order).

    Args:
        *arrays: arrays with the same first dimension.
        test_size, train_size: fractions in (0, 1) or sample counts (default: 25% test).
        seed: integer seed (``random_state`` is accepted as scikit-learn's name for it);
            None draws from the global generator.
        shuffle: False takes the first samples for training and the next for testing.
        stratify: class labels (n,) or one-hot (n, k): keep every class's share on both sides.
    """
    if not arrays:
        raise ValueError("train_test_split needs at least one array")
    if random_state is not None:
        if seed is not None:
            raise ValueError("pass seed or random_state, not both")
        seed = random_state
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0] if arrs[0].ndim else 0
    for i, a in enumerate(arrs):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"array {i} has {a.shape[0] if a.ndim else 'no'} rows, array 0 "
                             f"has {n}: every array needs one row per sample")
    n_train, n_test = _sizes(n, test_size, train_size)
    rng = make_rng(seed)
    if stratify is not None:
        if not shuffle:
            raise ValueError("stratify needs shuffle=True")
        train, test = stratified_indices(stratify, n_train, n_test, rng)
    elif shuffle:
        perm = rng.permutation(n)
        train, test = perm[n_test:n_test + n_train], perm[:n_test]
    else:
        train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    out = []
    for a in arrs:
        out += [a[train], a[test]]
    return out


def validation_split(x, y, split=0.2, *, stratify=True, seed=None):
    """``(x_train, y_train), (x_val, y_val)`` with a fraction ``split`` held out for validation,
    stratified on the labels y by default (unlike ``fit(validation_split=...)``, which takes the
    last samples as Keras does).  ``stratify=False`` draws a plain seeded random subset."""
    if isinstance(split, bool) or not isinstance(split, numbers.Real) or not 0 < split < 1:
        raise ValueError(f"split must be a fraction in (0, 1), got {split!r}")
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=float(split), seed=seed,
                                                stratify=y if stratify else None)
    return (x_tr, y_tr), (x_val, y_val)

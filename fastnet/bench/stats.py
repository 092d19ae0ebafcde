"""Statistics of a benchmark: medians, quartiles, ratios and the interleaving of fresh processes.

Pure Python on lists of floats (seconds), so the tests can check them on synthetic timings.
"""
import math

__all__ = ["median", "quantile", "quartiles", "iqr", "ratio", "summarize", "rotated",
           "interleaved_order", "agree"]


def _sorted_finite(values, what):
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError(f"{what}: needs at least one value")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"{what}: values must be finite, got {xs}")
    return xs


def quantile(values, q):
    """The q-quantile (0 <= q <= 1) with linear interpolation between order statistics (NumPy's
    default method): q=0.5 is the median, 0.25 and 0.75 the quartiles."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must be in [0, 1], got {q}")
    xs = _sorted_finite(values, "quantile")
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values):
    """The median (the mean of the two middle values for an even count)."""
    return quantile(values, 0.5)


def quartiles(values):
    """(first quartile, median, third quartile)."""
    return quantile(values, 0.25), quantile(values, 0.5), quantile(values, 0.75)


def iqr(values):
    """The interquartile range q3 - q1: the spread of the middle half, blind to outliers."""
    q1, _, q3 = quartiles(values)
    return q3 - q1


def ratio(peer_seconds, fastnet_seconds):
    """How many times faster fastnet is: peer time / fastnet time (> 1: fastnet is faster)."""
    if not (peer_seconds > 0 and fastnet_seconds > 0):
        raise ValueError(f"ratio: times must be > 0, got {peer_seconds} and {fastnet_seconds}")
    return peer_seconds / fastnet_seconds


def summarize(rounds):
    """Summary of one cell measured in several fresh processes.

    ``rounds`` is a list (one per process) of lists of per-call seconds.  The median is the
    median of the per-process medians (one unlucky process cannot move it); the quartiles pool
    every call of every process, so the spread shows the variation within and between
    processes."""
    if not rounds or not all(rounds):
        raise ValueError("summarize: needs at least one non-empty round")
    pooled = [t for r in rounds for t in r]
    q1, _, q3 = quartiles(pooled)
    per_round = [median(r) for r in rounds]
    return {"median_s": median(per_round), "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1,
            "round_medians_s": per_round, "samples": len(pooled)}


def rotated(names, r):
    """``names`` rotated left by ``r`` places (round r's order)."""
    names = list(names)
    if not names:
        return names
    k = r % len(names)
    return names[k:] + names[:k]


def interleaved_order(names, rounds, groups=(None,)):
    """The order of fresh processes: in each round, for each group (thread count), every
    configuration once, the order rotated by one each round, so slow drift of the machine
    (clock, neighbours) hits every configuration alike and none is always first or last; the
    rounds are outermost, so each configuration's processes spread over the whole run.
    Returns a list of (round, group, name)."""
    if rounds < 1:
        raise ValueError(f"interleaved_order: rounds must be >= 1, got {rounds}")
    return [(r, g, n) for r in range(rounds) for g in groups for n in rotated(names, r)]


def agree(reference, values, rtol=1e-3):
    """True when two output checksums (sum, sum of squares, max) agree: each within ``rtol`` of
    its size, the plain sum also within ``rtol`` of the output's root sum of squares (a sum of
    mixed signs can be near zero, where a relative test means nothing)."""
    if len(reference) != len(values):
        return False
    scale = math.sqrt(abs(reference[1])) if len(reference) > 1 else 0.0
    for a, b in zip(reference, values):
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        if abs(a - b) > rtol * (abs(a) + abs(b) + scale):
            return False
    return True

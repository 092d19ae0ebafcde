"""Hypothesis fuzzing of the public ops (fastnet.ops): random shapes (0-sized dims, batch 1, odd
sizes), dtypes (float16, int32, float32, float64), memory orders (C, Fortran, strided slices) and
extreme values (NaN, inf, huge, subnormal).  Every case either matches a plain NumPy reference or
raises ValueError/TypeError; canonical inputs (C-contiguous float32/float64, non-empty) must not
be refused.  The cases run in a child process so that a crash is reported as a failure."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

CHILD = os.environ.get("FASTNET_FUZZ_CHILD") == "1"
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fastnet import ops  # noqa: E402
from fastnet.ops import activations as A, losses as LS  # noqa: E402

EXAMPLES = int(os.environ.get("FASTNET_FUZZ_EXAMPLES", "40"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
child_only = pytest.mark.skipif(not CHILD, reason="runs inside test_fuzz_in_subprocess")
CASES = {"matched": 0, "refused": 0}

DTYPES = [np.float32, np.float64, np.float16, np.int32]
LAYOUTS = ["C", "F", "strided"]


@st.composite
def arrays(draw, shape, dtypes=DTYPES, extreme=True):
    """(array, canonical): values from a normal draw, or with NaN/inf/huge/subnormal entries;
    canonical when C-contiguous float32/float64 with finite moderate values."""
    if draw(st.booleans()):   # half the arrays well-formed, so that most cases compute
        dtype = draw(st.sampled_from([np.float32, np.float64] if dtypes is DTYPES else dtypes[:1]))
        layout, kind = "C", "normal"
    else:
        dtype = draw(st.sampled_from(dtypes))
        layout = draw(st.sampled_from(LAYOUTS))
        kind = draw(st.sampled_from(["normal", "extreme"] if extreme else ["normal"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    full = tuple(2 * s if layout == "strided" else s for s in shape)
    a = rng.standard_normal(full)
    if kind == "extreme" and a.size:
        special = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-40, 0.0])
        mask = rng.random(full) < 0.3
        a[mask] = rng.choice(special, size=int(mask.sum()))
    with np.errstate(all="ignore"):
        a = a.astype(dtype)
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided":
        a = a[tuple(slice(None, None, 2) for _ in shape)]
    canonical = (dtype in (np.float32, np.float64) and a.flags.c_contiguous
                 and kind == "normal" and a.size > 0)
    return a, canonical


def check(call, reference, canonical, rtol):
    """Run the op: refused with ValueError/TypeError, or equal to the reference."""
    try:
        got = call()
    except (ValueError, TypeError) as e:
        assert not canonical, f"a canonical input was refused: {e}"
        CASES["refused"] += 1
        return
    want = reference()
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        g = np.asarray(g, np.float64)
        if canonical:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * (1 + np.abs(w).max(initial=0)))
        else:   # extreme values: same shape, no crash; finite where the reference is moderate
            assert g.shape == np.shape(w)
    CASES["matched"] += 1


def tol(*arrs):
    return 1e-4 if any(a.dtype == np.float32 for a in arrs) else 1e-10


# --- NumPy references -------------------------------------------------------------------------

def pads(size, k, s, padding):
    if padding == "valid":
        return (size - k) // s + 1, 0, 0
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def conv_geometry(xshape, kh, kw, s, padding):
    oh, t, b = pads(xshape[1], kh, s, padding)
    ow, l, r = pads(xshape[2], kw, s, padding)
    return oh, ow, ((0, 0), (t, b), (l, r), (0, 0))


def ref_conv(x, k, s, padding):
    x, k = x.astype(np.float64), k.astype(np.float64)
    oh, ow, p = conv_geometry(x.shape, k.shape[0], k.shape[1], s, padding)
    xp = np.pad(x, p)
    y = np.zeros((x.shape[0], oh, ow, k.shape[3]))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            y += xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :] @ k[i, j]
    return y


def ref_conv_dx(dy, k, xshape, s, padding):
    oh, ow, p = conv_geometry(xshape, k.shape[0], k.shape[1], s, padding)
    dxp = np.zeros((xshape[0], xshape[1] + sum(p[1]), xshape[2] + sum(p[2]), xshape[3]))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            dxp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :] += \
                dy.astype(np.float64) @ k[i, j].astype(np.float64).T
    return dxp[:, p[1][0]:p[1][0] + xshape[1], p[2][0]:p[2][0] + xshape[2], :]


def ref_conv_dk(x, dy, kh, kw, s, padding):
    oh, ow, p = conv_geometry(x.shape, kh, kw, s, padding)
    xp = np.pad(x.astype(np.float64), p)
    d = dy.astype(np.float64).reshape(-1, dy.shape[3])
    dk = np.zeros((kh, kw, x.shape[3], dy.shape[3]))
    for i in range(kh):
        for j in range(kw):
            dk[i, j] = xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :].reshape(
                -1, x.shape[3]).T @ d
    return dk


def pool_windows(shape, ps, s, padding):
    """[(row slice, col slice, out i, out j)] of the real elements of every window."""
    oh, t, _ = pads(shape[1], ps, s, padding)
    ow, l, _ = pads(shape[2], ps, s, padding)
    for i in range(oh):
        r0 = i * s - t
        for j in range(ow):
            c0 = j * s - l
            yield (slice(max(r0, 0), min(r0 + ps, shape[1])),
                   slice(max(c0, 0), min(c0 + ps, shape[2])), i, j)


def ref_pool(x, ps, s, padding, average):
    oh, ow = pads(x.shape[1], ps, s, padding)[0], pads(x.shape[2], ps, s, padding)[0]
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for rs, cs, i, j in pool_windows(x.shape, ps, s, padding):
        win = x[:, rs, cs, :].astype(np.float64)
        y[:, i, j] = win.mean(axis=(1, 2)) if average else win.max(axis=(1, 2))
    return y


def ref_avg_pool_dx(dy, xshape, ps, s, padding):
    dx = np.zeros(xshape)
    for rs, cs, i, j in pool_windows(xshape, ps, s, padding):
        n = (rs.stop - rs.start) * (cs.stop - cs.start)
        dx[:, rs, cs, :] += dy[:, i, j][:, None, None, :].astype(np.float64) / n
    return dx


def ref_max_pool_dx(x, dy, ps, s, padding):
    dx = np.zeros(x.shape)
    for rs, cs, i, j in pool_windows(x.shape, ps, s, padding):
        win = x[:, rs, cs, :]
        h, w = win.shape[1], win.shape[2]
        flat = win.reshape(x.shape[0], h * w, x.shape[3]).argmax(axis=1)
        for n in range(x.shape[0]):
            for c in range(x.shape[3]):
                dx[n, rs.start + flat[n, c] // w, cs.start + flat[n, c] % w, c] += dy[n, i, j, c]
    return dx


ACT_REF = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softplus": lambda x: np.logaddexp(0, x),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "linear": lambda x: x,
    "softmax": lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(
        x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
}

dim = st.integers(0, 7)
pos = st.integers(1, 7)


# --- the fuzz cases ---------------------------------------------------------------------------

@child_only
@fuzz
@given(st.data(), dim, dim, dim)
def test_fuzz_matmul(data, m, k, n):
    a, ca = data.draw(arrays((m, k)))
    b, cb = data.draw(arrays((k, n)))
    check(lambda: ops.matmul(a, b), lambda: a.astype(np.float64) @ b.astype(np.float64),
          ca and cb and a.dtype == b.dtype, tol(a, b))


@child_only
@fuzz
@given(st.data(), st.integers(0, 3), dim, dim, st.integers(0, 4), pos, st.integers(1, 4),
       st.integers(1, 4), st.integers(1, 3), st.sampled_from(["valid", "same"]))
def test_fuzz_conv2d_and_backward(data, n, h, w, cin, cout, kh, kw, s, padding):
    x, cx = data.draw(arrays((n, h, w, cin)))
    k, ck = data.draw(arrays((kh, kw, cin, cout), dtypes=[x.dtype.type, np.float16]))
    ok = cx and ck and x.dtype == k.dtype and ((h >= kh and w >= kw) or padding == "same")
    check(lambda: ops.conv2d(x, k, strides=s, padding=padding),
          lambda: ref_conv(x, k, s, padding), ok, tol(x))
    oh, ow, _ = conv_geometry(x.shape, kh, kw, s, padding)
    if oh <= 0 or ow <= 0:
        return
    dy, cdy = data.draw(arrays((n, oh, ow, cout), dtypes=[x.dtype.type, np.int32]))
    check(lambda: ops.conv2d_backward_input(dy, k, x.shape, strides=s, padding=padding),
          lambda: ref_conv_dx(dy, k, x.shape, s, padding), ok and cdy and dy.dtype == x.dtype,
          tol(x))
    check(lambda: ops.conv2d_backward_weight(x, dy, (kh, kw), strides=s, padding=padding)[0],
          lambda: ref_conv_dk(x, dy, kh, kw, s, padding), ok and cdy and dy.dtype == x.dtype,
          tol(x))


@child_only
@fuzz
@given(st.data(), st.integers(0, 3), dim, dim, st.integers(0, 4), st.integers(1, 3),
       st.sampled_from([None, 1, 2, 3]), st.sampled_from(["valid", "same"]))
def test_fuzz_pooling_and_backward(data, n, h, w, c, ps, s, padding):
    x, cx = data.draw(arrays((n, h, w, c)))
    stride = ps if s is None else s
    ok = cx and ((h >= ps and w >= ps) or padding == "same")
    check(lambda: ops.max_pool2d(x, ps, s, padding), lambda: ref_pool(x, ps, stride, padding, 0),
          ok, tol(x))
    check(lambda: ops.avg_pool2d(x, ps, s, padding), lambda: ref_pool(x, ps, stride, padding, 1),
          ok, tol(x))
    oh, ow = pads(h, ps, stride, padding)[0], pads(w, ps, stride, padding)[0]
    if oh <= 0 or ow <= 0:
        return
    dy, cdy = data.draw(arrays((n, oh, ow, c), dtypes=[x.dtype.type, np.float16]))
    ok = ok and cdy and dy.dtype == x.dtype
    check(lambda: ops.avg_pool2d_backward(dy, x.shape, ps, s, padding),
          lambda: ref_avg_pool_dx(dy, x.shape, ps, stride, padding), ok, tol(x))
    if ok:
        y = ops.max_pool2d(x, ps, s, padding)
        check(lambda: ops.max_pool2d_backward(x, y, dy, ps, s, padding),
              lambda: ref_max_pool_dx(x, dy, ps, stride, padding), ok, tol(x))


@child_only
@fuzz
@given(st.data(), st.sampled_from(sorted(ACT_REF)), st.integers(0, 5), st.integers(0, 9))
def test_fuzz_activations(data, name, rows, cols):
    x, cx = data.draw(arrays((rows, cols)))
    check(lambda: A.activation_forward(name, x),
          lambda: ACT_REF[name](x.astype(np.float64)), cx, 10 * tol(x))


@child_only
@fuzz
@given(st.data(), st.integers(0, 6), st.integers(0, 6),
       st.sampled_from(["mse", "mae", "sparse_ce"]))
def test_fuzz_losses(data, n, c, kind):
    pred, cp = data.draw(arrays((n, c)))
    if kind == "sparse_ce":
        probs = np.abs(pred.astype(np.float64)) + 0.1 if cp else None
        if cp:
            pred = (probs / probs.sum(1, keepdims=True)).astype(pred.dtype)
        labels = np.asarray(data.draw(st.lists(st.integers(0, max(c - 1, 0)), min_size=n,
                                               max_size=n)), np.int64)
        check(lambda: LS.sparse_categorical_crossentropy(pred, labels, from_logits=False),
              lambda: -np.log(np.clip(pred.astype(np.float64)[np.arange(n), labels],
                                      LS.EPSILON, 1)).mean(), cp and c > 0, 10 * tol(pred))
        return
    target, ct = data.draw(arrays((n, c), dtypes=[pred.dtype.type, np.int32]))
    fn = LS.mean_squared_error if kind == "mse" else LS.mean_absolute_error
    diff = lambda: pred.astype(np.float64) - target.astype(np.float64)  # noqa: E731
    ref = (lambda: (diff() ** 2).mean()) if kind == "mse" else (lambda: np.abs(diff()).mean())
    check(lambda: fn(pred, target), ref, cp and ct and target.dtype == pred.dtype, tol(pred))


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if CHILD:
        print(f"\nFUZZ CASES matched={CASES['matched']} refused={CASES['refused']}")


# --- the parent: the whole file in a child process -------------------------------------------

@pytest.mark.skipif(CHILD, reason="the parent's test")
def test_fuzz_in_subprocess():
    env = dict(os.environ, FASTNET_FUZZ_CHILD="1", OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))   # the same fastnet
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          "-W", "ignore::RuntimeWarning", __file__], env=env,
                         capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    report = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, f"fuzz child failed (exit code {out.returncode}):\n{report}"
    m = re.search(r"FUZZ CASES matched=(\d+) refused=(\d+)", out.stdout)
    assert m, report
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0, report

"""The C GEMM (fastnet._kernels.gemm) on every ISA path, and fastnet.ops.matmul.

Every path this build and CPU can run is forced with ``set_isa`` and checked against NumPy on
shapes around each block size of its table (MR, NR, KC, MC, NC), all transposes, strided
leading dimensions, alpha/beta/bias/relu epilogues.  Determinism: the design makes every choice
that affects rounding (path, depth blocking, split-K chunks) a function of the shape and ISA
only, so results are bitwise identical across repeated runs AND across thread counts.
"""
import itertools
import os
import subprocess
import sys
import threading

import math

import numpy as np
import pytest

import fastnet
from fastnet._kernels import gemm as G
from fastnet.ops import matmul

ISAS = G.available_isas()
DTYPES = (np.float64, np.float32)


# the AVX-512 path in both of its broadcast modes (embedded in the FMAs, or in a register)
PATHS = [(name, mode) for name in ISAS
         for mode in (("memory", "register") if name == "avx512" else (None,))]


@pytest.fixture(params=PATHS, ids=[f"{n}-{m}" if m else n for n, m in PATHS])
def isa(request):
    name, mode = request.param
    old, old_mode = G.isa(), G.broadcast()
    G.set_isa(name)
    if mode:
        G.set_broadcast(mode)
    yield name
    G.set_isa(old)
    if old_mode:
        G.set_broadcast(old_mode)


def _operands(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def _reference(a, b, ta, tb, alpha=1.0, beta=0.0, c=None, bias=None, relu=False):
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    r = alpha * np.matmul(a64.T if ta else a64, b64.T if tb else b64)
    if beta != 0.0:
        r = r + beta * c.astype(np.float64)
    if bias is not None:
        r = r + bias.astype(np.float64)
    if relu:
        r = np.maximum(r, 0.0)
    return r


def _assert_close(got, ref, k, dtype):
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    eps = 1e-13 if dtype == np.float64 else 2e-6
    tol = eps * scale * (4.0 + np.sqrt(max(k, 1)) * 4.0)
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


def _run(a, b, m, n, ta, tb, dtype, alpha=1.0, beta=0.0, c=None, bias=None, act=0, nthreads=2):
    out = np.empty((m, n), dtype) if c is None else c.copy()
    G.gemm_into(a, b, out, ta, tb, alpha, beta, bias, act, nthreads)
    return out


def _block_shapes(isa_name, dtype):
    """(M, N, K) around each block size of the path's table, plus primes and ones."""
    bl = G.blocking(isa_name, dtype)
    mr, nr, kc, mc, nc = bl["mr"], bl["nr"], bl["kc"], bl["mc"], bl["nc"]
    shapes = {(1, 1, 1), (1, 7, 1), (5, 1, 3), (13, 17, 19), (31, 37, 41), (1, 1, 97)}
    for x in (mr - 1, mr, mr + 1, 2 * mr + 1):
        shapes.add((max(x, 1), nr, 11))
    for x in (nr - 1, nr, nr + 1, 2 * nr + 3):
        shapes.add((mr, max(x, 1), 7))
    for x in (kc - 1, kc, kc + 1, 2 * kc + 1):
        shapes.add((mr + 1, nr + 1, x))
    shapes.add((mc - 1, 3, 5))
    shapes.add((mc + 1, 2 * nr + 1, 3))
    shapes.add((5, nc - 1, 3))
    shapes.add((2, nc + 1, kc + 1))
    return sorted(shapes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_edges_all_transposes(isa, dtype):
    rng = np.random.default_rng(1)
    for m, n, k in _block_shapes(isa, dtype):
        for ta, tb in itertools.product((False, True), repeat=2):
            a, b = _operands(rng, m, n, k, ta, tb, dtype)
            got = _run(a, b, m, n, ta, tb, dtype)
            _assert_close(got, _reference(a, b, ta, tb), k, dtype)


CNN_SHAPES = [  # (M, N, K, transa, transb): the MNIST CNN at batch 64, forward and backward
    (43264, 32, 9, False, False), (7744, 64, 288, False, False), (576, 64, 576, False, False),
    (64, 64, 576, False, False), (64, 10, 64, False, False),
    (9, 32, 43264, True, False), (288, 64, 7744, True, False), (576, 64, 576, True, False),
    (576, 64, 64, True, False), (64, 10, 64, True, False),
    (7744, 288, 64, False, True), (576, 576, 64, False, True), (64, 576, 64, False, True),
    (64, 64, 10, False, True),
]


@pytest.mark.parametrize("m,n,k,ta,tb", CNN_SHAPES)
def test_cnn_shapes_fused_epilogue(isa, m, n, k, ta, tb):
    if isa == "generic" and m * n * k > 10**7:
        pytest.skip("slow on the portable path; covered by the other paths")
    rng = np.random.default_rng(2)
    dtype = np.float32
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    bias = rng.standard_normal(n).astype(dtype)
    got = _run(a, b, m, n, ta, tb, dtype, bias=bias, act=1)
    _assert_close(got, _reference(a, b, ta, tb, bias=bias, relu=True), k, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (0.5, -0.75), (-2.0, 1.0)])
def test_alpha_beta_bias_relu(isa, dtype, alpha, beta):
    rng = np.random.default_rng(3)
    # (M, N, K, threads): the last two run split among 2 threads (by columns, by rows)
    shapes = [(37, 45, 29, 1), (200, 70, 800, 1), (25, 130, 3, 1), (16, 1000, 300, 2),
              (67, 300, 700, 2)]
    for m, n, k, nthreads in shapes:
        for ta, tb in itertools.product((False, True), repeat=2):
            a, b = _operands(rng, m, n, k, ta, tb, dtype)
            c = rng.standard_normal((m, n)).astype(dtype)
            bias = rng.standard_normal(n).astype(dtype)
            for use_bias, relu in [(False, False), (True, False), (True, True), (False, True)]:
                bb = bias if use_bias else None
                got = _run(a, b, m, n, ta, tb, dtype, alpha, beta, c, bb, int(relu), nthreads)
                ref = _reference(a, b, ta, tb, alpha, beta, c, bb, relu)
                _assert_close(got, ref, k, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_leading_dimensions(isa, dtype):
    rng = np.random.default_rng(4)
    for m, n, k in [(29, 35, 17), (130, 67, 401), (9, 33, 5000)]:
        for ta, tb in itertools.product((False, True), repeat=2):
            ash = (k, m) if ta else (m, k)
            bsh = (n, k) if tb else (k, n)
            abig = rng.standard_normal((ash[0], ash[1] + 7)).astype(dtype)
            bbig = rng.standard_normal((bsh[0], bsh[1] + 13)).astype(dtype)
            cbig = rng.standard_normal((m, n + 5)).astype(dtype)
            a, b = abig[:, 3:3 + ash[1]], bbig[:, :bsh[1]]
            before = cbig.copy()
            c = cbig[:, 2:2 + n]
            G.gemm_into(a, b, c, ta, tb, 1.5, 0.5, None, 0, 2)
            _assert_close(c, _reference(a, b, ta, tb, 1.5, 0.5, before[:, 2:2 + n]), k, dtype)
            # the columns of C outside the view are untouched
            np.testing.assert_array_equal(cbig[:, :2], before[:, :2])
            np.testing.assert_array_equal(cbig[:, n + 2:], before[:, n + 2:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_of_c_untouched(isa, dtype):
    rng = np.random.default_rng(5)
    m, n, k = 27, 41, 33
    a, b = _operands(rng, m, n, k, False, False, dtype)
    cbig = np.full((m, n + 9), 7.0, dtype)
    c = cbig[:, 4:4 + n]
    G.gemm_into(a, b, c, False, False, 1.0, 0.0, None, 1, 2)
    assert np.all(cbig[:, :4] == 7.0) and np.all(cbig[:, 4 + n:] == 7.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_zero_ignores_nan_in_c(isa, dtype):
    rng = np.random.default_rng(6)
    for m, n, k in [(13, 50, 7), (100, 64, 300), (9, 32, 8192)]:
        for ta, tb in itertools.product((False, True), repeat=2):
            a, b = _operands(rng, m, n, k, ta, tb, dtype)
            c = np.full((m, n), np.nan, dtype)
            G.gemm_into(a, b, c, ta, tb, 1.0, 0.0, None, 0, 2)
            assert np.isfinite(c).all()
            _assert_close(c, _reference(a, b, ta, tb), k, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_product_k0_or_alpha0(isa, dtype):
    rng = np.random.default_rng(7)
    m, n = 6, 5
    bias = rng.standard_normal(n).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    a = np.zeros((m, 0), dtype)
    b = np.zeros((0, n), dtype)
    got = _run(a, b, m, n, False, False, dtype, 1.0, 0.5, c, bias, 1)
    np.testing.assert_allclose(got, np.maximum(0.5 * c + bias, 0), rtol=1e-6)
    cn = np.full((m, n), np.nan, dtype)
    got = _run(a, b, m, n, False, False, dtype, 1.0, 0.0, cn, bias, 0)
    np.testing.assert_array_equal(got, np.broadcast_to(bias, (m, n)))
    a, b = _operands(rng, m, n, 4, False, False, dtype)
    a[0, 0] = np.nan  # alpha == 0: the product is not computed at all (BLAS convention)
    got = _run(a, b, m, n, False, False, dtype, 0.0, 2.0, c, None, 0)
    np.testing.assert_allclose(got, 2.0 * c, rtol=1e-6)


DETERMINISM_SHAPES = [  # one per path: packed, A in place (skinny N), split-K, tiny, a split
    (300, 700, 900, False, False), (2000, 64, 288, False, False),  # of N among the threads
    (9, 32, 43264, True, False), (64, 10, 64, False, True), (577, 65, 1025, True, True),
    (16, 1000, 300, False, True),
]


@pytest.mark.parametrize("m,n,k,ta,tb", DETERMINISM_SHAPES)
def test_bitwise_deterministic_runs_and_thread_counts(isa, m, n, k, ta, tb):
    rng = np.random.default_rng(8)
    dtype = np.float32
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    bias = rng.standard_normal(n).astype(dtype)
    first = _run(a, b, m, n, ta, tb, dtype, bias=bias, act=1, nthreads=1)
    for nthreads in (1, 2, 3, 2):
        again = _run(a, b, m, n, ta, tb, dtype, bias=bias, act=1, nthreads=nthreads)
        assert np.array_equal(first, again), f"differs with nthreads={nthreads}"


def test_flush_to_zero_is_restored():
    """The kernels set FTZ/DAZ in their workers only: the caller's denormals survive a call."""
    tiny = np.float32(1e-40)  # a float32 denormal
    for nthreads in (1, 2):
        rng = np.random.default_rng(13)
        a, b = _operands(rng, 200, 100, 300, False, False, np.float32)
        _run(a, b, 200, 100, False, False, np.float32, nthreads=nthreads)
        assert np.multiply(tiny, np.float32(1.0)) != 0.0
        assert (np.array([tiny]) * np.float32(2.0))[0] != 0.0


def test_concurrent_python_threads():
    """Several Python threads in the GEMM at once (the GIL is released): no shared scratch."""
    rng = np.random.default_rng(9)
    cases = []
    for i in range(4):
        m, n, k = 150 + 37 * i, 90 + 11 * i, 700 - 60 * i
        a, b = _operands(rng, m, n, k, bool(i & 1), bool(i & 2), np.float32)
        cases.append((a, b, m, n, bool(i & 1), bool(i & 2)))
    expected = [_run(a, b, m, n, ta, tb, np.float32, nthreads=1) for a, b, m, n, ta, tb in cases]
    errors = []

    def work(idx):
        a, b, m, n, ta, tb = cases[idx]
        for _ in range(5):
            got = _run(a, b, m, n, ta, tb, np.float32, nthreads=2)
            if not np.array_equal(got, expected[idx]):
                errors.append(idx)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_isa_selection():
    assert ISAS[-1] == "generic"
    assert G.isa() in ISAS
    old = G.isa()
    try:
        for name in ISAS:
            G.set_isa(name)
            assert G.isa() == name
        with pytest.raises(ValueError, match="isa must be one of"):
            G.set_isa("sse9")
    finally:
        G.set_isa(old)
    with pytest.raises(ValueError):
        G.blocking("sse9", np.float32)


def test_fma_peak_probe(isa):
    """The FMA loop behind the benchmarks' "% peak": a positive finite rate on every path and
    thread count (no figure asserted: timings are the benchmarks' business)."""
    for threads in (1, 2):
        r = G.fma_peak(threads, 0.002)
        assert math.isfinite(r) and r > 0
    for threads, seconds in ((0, 0.01), (1, 0.0), (1, -1.0), (1, 11.0)):
        with pytest.raises(ValueError):
            G.fma_peak(threads, seconds)


@pytest.mark.skipif("avx512" not in ISAS, reason="no AVX-512 path on this build or CPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_modes_are_bitwise_identical(dtype):
    """The two ways the AVX-512 kernels feed A to their FMAs do the same FMAs in the same
    order: identical bits on every kernel (packed, A in place, transposed A in place, half
    height, one vector column, edge tiles) and epilogue."""
    old, old_mode = G.isa(), G.broadcast()
    rng = np.random.default_rng(21)
    shapes = [(300, 700, 900, False, False), (2000, 64, 288, False, False),
              (9, 32, 431, True, False), (64, 10, 64, False, True), (577, 65, 129, True, True),
              (13, 37, 5, False, False)]
    try:
        G.set_isa("avx512")
        for m, n, k, ta, tb in shapes:
            a, b = _operands(rng, m, n, k, ta, tb, dtype)
            bias = rng.standard_normal(n).astype(dtype)
            got = {}
            for mode in ("memory", "register"):
                G.set_broadcast(mode)
                assert G.broadcast() == mode
                got[mode] = _run(a, b, m, n, ta, tb, dtype, bias=bias, act=1, nthreads=2)
            assert np.array_equal(got["memory"], got["register"]), (m, n, k, ta, tb)
    finally:
        G.set_isa(old)
        G.set_broadcast(old_mode)
    with pytest.raises(ValueError, match="'memory', 'register' or 'auto'"):
        G.set_broadcast("sideways")


@pytest.mark.skipif("avx512" not in ISAS, reason="no AVX-512 path on this build or CPU")
def test_broadcast_env_var_and_auto():
    code = "from fastnet._kernels import gemm; print(gemm.broadcast())"
    cwd = os.path.dirname(os.path.dirname(fastnet.__file__))
    seen = {}
    for value in ("memory", "register", "bogus", ""):
        env = dict(os.environ, FASTNET_GEMM_BROADCAST=value)
        seen[value] = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                                     capture_output=True, check=True, cwd=cwd).stdout.strip()
    assert seen["memory"] == "memory" and seen["register"] == "register"
    assert seen["bogus"] == seen[""] in ("memory", "register")   # unknown: the CPU's default
    old = G.broadcast()
    try:
        G.set_broadcast("auto")
        assert G.broadcast() == seen[""]
    finally:
        G.set_broadcast(old)


def _isa_in_subprocess(value):
    env = dict(os.environ)
    env["FASTNET_ISA"] = value
    code = "from fastnet._kernels import gemm; print(gemm.isa())"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(fastnet.__file__)))
    return res.stdout.strip()


def test_fastnet_isa_env_var():
    for name in ISAS:
        assert _isa_in_subprocess(name) == name
    assert _isa_in_subprocess("not-an-isa") == ISAS[0]  # invalid: the best path


# ---- fastnet.ops.matmul -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_matches_numpy(dtype):
    rng = np.random.default_rng(10)
    for ta, tb in itertools.product((False, True), repeat=2):
        a, b = _operands(rng, 33, 21, 17, ta, tb, dtype)
        bias = rng.standard_normal(21).astype(dtype)
        got = matmul(a, b, bias=bias, activation="relu", transpose_a=ta, transpose_b=tb)
        assert got.dtype == dtype and got.shape == (33, 21)
        _assert_close(got, _reference(a, b, ta, tb, bias=bias, relu=True), 17, dtype)
        got = matmul(a, b, activation="linear", transpose_a=ta, transpose_b=tb)
        _assert_close(got, _reference(a, b, ta, tb), 17, dtype)


def test_matmul_strided_inputs_and_out():
    rng = np.random.default_rng(11)
    big = rng.standard_normal((40, 50)).astype(np.float32)
    a = big[:30, 5:25]            # unit inner stride, row stride 50: read in place
    b = big[::2, 1:13][:20]       # row stride 100: read in place
    ref = a.astype(np.float64) @ b.astype(np.float64)
    _assert_close(matmul(a, b), ref, 20, np.float32)
    at = np.asfortranarray(a)     # inner stride != 1: copied
    _assert_close(matmul(at, b), ref, 20, np.float32)
    _assert_close(matmul(a[:, ::-1][:, ::-1], b[::-1][::-1]), ref, 20, np.float32)
    outbig = np.zeros((30, 16), np.float32)
    out = outbig[:, 2:14]
    res = matmul(a, b, out=out)
    assert res is out
    _assert_close(out, ref, 20, np.float32)
    assert np.all(outbig[:, :2] == 0) and np.all(outbig[:, 14:] == 0)
    ro = a.copy()
    ro.flags.writeable = False
    _assert_close(matmul(ro, b), ref, 20, np.float32)


def test_matmul_empty_and_thread_setting():
    z = matmul(np.ones((0, 3)), np.ones((3, 4)))
    assert z.shape == (0, 4)
    assert matmul(np.ones((3, 2)), np.ones((2, 0)), out=np.empty((3, 0))).shape == (3, 0)
    z = matmul(np.ones((3, 0)), np.ones((0, 4)), bias=np.arange(4.0))
    np.testing.assert_array_equal(z, np.broadcast_to(np.arange(4.0), (3, 4)))
    old = fastnet.get_num_threads()
    try:
        rng = np.random.default_rng(12)
        a, b = _operands(rng, 300, 200, 100, False, False, np.float32)
        fastnet.set_num_threads(1)
        r1 = matmul(a, b)
        fastnet.set_num_threads(2)
        assert np.array_equal(r1, matmul(a, b))
    finally:
        fastnet.set_num_threads(old)


def test_matmul_bad_inputs():
    f32 = np.ones((4, 3), np.float32)
    w32 = np.ones((3, 2), np.float32)
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        matmul([[1.0]], w32)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        matmul(f32, w32.astype(np.float64))
    with pytest.raises(TypeError, match="a must have dtype float32 or float64"):
        matmul(f32.astype(np.int32), w32)
    with pytest.raises(ValueError, match="a must have 2 dimensions"):
        matmul(np.ones(3, np.float32), w32)
    with pytest.raises(ValueError, match="b must have 2 dimensions"):
        matmul(f32, np.ones((1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        matmul(f32, w32, transpose_b=True)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        matmul(f32, w32, transpose_a=True)
    with pytest.raises(ValueError, match="bias must have shape"):
        matmul(f32, w32, bias=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="bias must have dtype"):
        matmul(f32, w32, bias=np.ones(2, np.float64))
    with pytest.raises(TypeError, match="bias must be a numpy.ndarray"):
        matmul(f32, w32, bias=[1.0, 2.0])
    with pytest.raises(ValueError, match="activation must be"):
        matmul(f32, w32, activation="sigmoid")
    with pytest.raises(ValueError, match="activation must be"):
        matmul(f32, w32, activation=1)
    with pytest.raises(TypeError, match="transpose_a must be a bool"):
        matmul(f32, w32, transpose_a=1)
    with pytest.raises(TypeError, match="transpose_b must be a bool"):
        matmul(f32, w32, transpose_b="no")
    with pytest.raises(ValueError, match="out must have shape"):
        matmul(f32, w32, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="out must have dtype"):
        matmul(f32, w32, out=np.empty((4, 2), np.float64))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        matmul(f32, w32, out=[[0.0] * 2] * 4)
    ro = np.empty((4, 2), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        matmul(f32, w32, out=ro)
    with pytest.raises(ValueError, match="out must have unit stride"):
        matmul(f32, w32, out=np.empty((4, 4), np.float32)[:, ::2])
    sq = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match="out must not overlap a"):
        matmul(sq, sq.copy(), out=sq)
    big = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="out must not overlap b"):
        matmul(sq, big[2:5, 3:6], out=big[4:7, 1:4])
    with pytest.raises(ValueError, match="out must not overlap bias"):
        matmul(sq, sq.copy(), bias=big[0, :3], out=big[:3, 2:5])
    matmul(sq, big[:3, :3], bias=big[7, :3], out=big[3:6, :3])  # disjoint views of one buffer

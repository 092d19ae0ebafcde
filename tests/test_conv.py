"""conv2d and its gradients against plain NumPy references, every kernel path forced."""
import numpy as np
import pytest

import fastnet
from fastnet._kernels import gemm as gemm_kernels
from fastnet.ops import conv as conv_ops
from fastnet.ops.conv import conv2d, conv2d_backward_input, conv2d_backward_weight


# ----------------------------------------------------------------------------- references
def _out_and_pads(size, k, s, padding):
    if padding == "valid":
        return (size - k) // s + 1, 0, 0
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _padded_geometry(xshape, kshape, strides, padding):
    (_, h, w, _), (kh, kw) = xshape, kshape[:2]
    oh, pt, pb = _out_and_pads(h, kh, strides[0], padding)
    ow, pl, pr = _out_and_pads(w, kw, strides[1], padding)
    return oh, ow, ((0, 0), (pt, pb), (pl, pr), (0, 0))


def _window(xp, i, j, oh, ow, strides):
    sh, sw = strides
    return xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]


def ref_conv2d(x, kernel, bias, strides, padding, activation=None):
    x, kernel = x.astype(np.float64), kernel.astype(np.float64)
    oh, ow, pads = _padded_geometry(x.shape, kernel.shape, strides, padding)
    xp = np.pad(x, pads)
    y = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            y += np.einsum("nhwc,cd->nhwd", _window(xp, i, j, oh, ow, strides), kernel[i, j])
    if bias is not None:
        y += bias
    return np.maximum(y, 0) if activation == "relu" else y


def ref_conv2d_backward_input(dy, kernel, input_shape, strides, padding):
    dy, kernel = dy.astype(np.float64), kernel.astype(np.float64)
    oh, ow, pads = _padded_geometry(input_shape, kernel.shape, strides, padding)
    n, h, w, c = input_shape
    dxp = np.zeros((n, h + sum(pads[1]), w + sum(pads[2]), c))
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            _window(dxp, i, j, oh, ow, strides)[...] += np.einsum("nhwd,cd->nhwc", dy,
                                                                   kernel[i, j])
    return dxp[:, pads[1][0]:pads[1][0] + h, pads[2][0]:pads[2][0] + w, :]


def ref_conv2d_backward_weight(x, dy, kernel_size, strides, padding):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    kh, kw = kernel_size
    oh, ow, pads = _padded_geometry(x.shape, (kh, kw), strides, padding)
    xp = np.pad(x, pads)
    dk = np.zeros((kh, kw, x.shape[3], dy.shape[3]))
    for i in range(kh):
        for j in range(kw):
            dk[i, j] = np.einsum("nhwc,nhwd->cd", _window(xp, i, j, oh, ow, strides), dy)
    return dk


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"t{t}")
def threads(request, monkeypatch):
    """Run with 1, 2 and 3 threads (3 > cores: uneven partitions), even on tiny shapes."""
    monkeypatch.setattr(conv_ops, "_PARALLEL_MIN_WORK", 0)
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    yield request.param
    fastnet.set_num_threads(old)


# (N, H, W, Cin, Cout, kh, kw, strides, padding)
CASES = [
    (1, 5, 5, 1, 3, 3, 3, (1, 1), "valid"),      # batch 1, Cin 1
    (2, 7, 6, 3, 5, 3, 2, (1, 2), "same"),       # non-square kernel and strides
    (3, 9, 9, 2, 4, 3, 3, (2, 2), "valid"),
    (1, 8, 7, 4, 6, 7, 7, (1, 1), "same"),       # 7x7, kernel larger than the image
    (4, 6, 5, 3, 4, 1, 1, (1, 1), "valid"),      # 1x1
    (2, 6, 5, 3, 4, 1, 1, (1, 1), "same"),       # 1x1 'same' == 'valid'
    (3, 7, 9, 2, 3, 1, 1, (2, 3), "valid"),      # 1x1 strided: im2col path
    (5, 11, 10, 4, 6, 5, 3, (3, 1), "same"),
    (2, 10, 13, 5, 7, 2, 4, (3, 2), "same"),     # even kernel: odd padding at bottom/right
    (3, 8, 8, 6, 2, 4, 4, (3, 3), "valid"),      # stride 3, leftover rows
    (1, 13, 11, 3, 8, 6, 5, (2, 3), "same"),
    (6, 5, 5, 1, 32, 3, 3, (1, 1), "valid"),     # the classic first layer, small
    (2, 9, 9, 16, 9, 3, 3, (1, 1), "same"),
    (2, 5, 17, 3, 40, 3, 3, (1, 1), "valid"),    # wide rows, Cout over two column tiles
    (1, 9, 20, 2, 7, 2, 3, (2, 2), "same"),      # strided pixel blocks, ragged Cout
]
IDS = ["n{}_{}x{}x{}_to{}_k{}x{}_s{}{}_{}".format(*c[:7], *c[7], c[8]) for c in CASES]


def _algorithms(case, direct):
    """Every kernel path for this case: 'direct' exists for forward and backward-weight."""
    kh, kw, strides = case[5], case[6], case[7]
    algs = (["direct"] if direct else []) + ["implicit", "gemm", "shared", None]
    if (kh, kw, *strides) == (1, 1, 1, 1):
        algs += ["1x1", "1x1_shared"]
    return algs


def _data(case, dtype=np.float64, seed=0):
    n, h, w, cin, cout, kh, kw, strides, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, cin)).astype(dtype)
    kernel = rng.standard_normal((kh, kw, cin, cout)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    oh, ow, _ = _padded_geometry(x.shape, kernel.shape, strides, padding)
    dy = rng.standard_normal((n, oh, ow, cout)).astype(dtype)
    return x, kernel, bias, dy, strides, padding


# ------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_matches_reference(case, threads):
    x, kernel, bias, _, strides, padding = _data(case)
    for activation in (None, "relu"):
        expected = ref_conv2d(x, kernel, bias, strides, padding, activation)
        for alg in _algorithms(case, True):
            y = conv2d(x, kernel, bias, strides=strides, padding=padding,
                       activation=activation, _algorithm=alg)
            np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12, err_msg=str(alg))
    y = conv2d(x, kernel, strides=strides, padding=padding)   # no bias
    np.testing.assert_allclose(y, ref_conv2d(x, kernel, None, strides, padding), atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_backward_input_matches_reference(case, threads):
    x, kernel, _, dy, strides, padding = _data(case)
    expected = ref_conv2d_backward_input(dy, kernel, x.shape, strides, padding)
    for alg in _algorithms(case, False):
        dx = conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding,
                                   _algorithm=alg)
        np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12, err_msg=str(alg))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_backward_weight_matches_reference(case, threads):
    x, kernel, _, dy, strides, padding = _data(case)
    expected = ref_conv2d_backward_weight(x, dy, kernel.shape[:2], strides, padding)
    for alg in _algorithms(case, True):
        db = np.full(kernel.shape[3], np.nan)
        dk, db_out = conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides,
                                            padding=padding, bias_grad=db, _algorithm=alg)
        assert db_out is db
        np.testing.assert_allclose(dk, expected, rtol=1e-12, atol=1e-12, err_msg=str(alg))
        np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2)), rtol=1e-12, atol=1e-12)
        dk2, none = conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides,
                                           padding=padding, _algorithm=alg)
        assert none is None
        np.testing.assert_array_equal(dk2, dk)


F32_CASES = [0, 1, 2, 3, 7, 8, 11, 12, 13, 14]


@pytest.mark.parametrize("case", [CASES[i] for i in F32_CASES], ids=[IDS[i] for i in F32_CASES])
def test_float32(case, threads):
    x, kernel, bias, dy, strides, padding = _data(case, np.float32, seed=1)
    tol = dict(rtol=2e-5, atol=2e-5 * np.sqrt(np.prod(kernel.shape[:3])))
    for alg in _algorithms(case, True):
        y = conv2d(x, kernel, bias, strides=strides, padding=padding, _algorithm=alg)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, ref_conv2d(x, kernel, bias, strides, padding), **tol)
    for alg in _algorithms(case, False):
        dx = conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding,
                                   _algorithm=alg)
        np.testing.assert_allclose(dx, ref_conv2d_backward_input(dy, kernel, x.shape, strides,
                                                                 padding), **tol)
    for alg in _algorithms(case, True):
        db = np.empty(kernel.shape[3], np.float32)
        dk, _ = conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides,
                                       padding=padding, bias_grad=db, _algorithm=alg)
        ref_dk = ref_conv2d_backward_weight(x, dy, kernel.shape[:2], strides, padding)
        np.testing.assert_allclose(dk, ref_dk, rtol=1e-4, atol=1e-4 * np.sqrt(dy[..., 0].size))
        np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-4,
                                   atol=1e-4 * np.sqrt(dy[..., 0].size))


def _random_cases(count, seed):
    """Random valid configurations, drawn once from a fixed seed."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kh, kw = rng.integers(1, 8, size=2)
        h, w = rng.integers(1, 13, size=2)
        padding = ["valid", "same"][rng.integers(2)]
        if padding == "valid" and (kh > h or kw > w):
            continue
        cases.append((int(rng.integers(1, 4)), int(h), int(w), int(rng.integers(1, 6)),
                      int(rng.integers(1, 7)), int(kh), int(kw),
                      tuple(int(v) for v in rng.integers(1, 4, size=2)), padding))
    return cases


@pytest.mark.parametrize("case", _random_cases(24, seed=2024), ids=lambda c: str(c))
def test_random_shapes_every_path(case, monkeypatch):
    monkeypatch.setattr(conv_ops, "_PARALLEL_MIN_WORK", 0)
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(2)
    try:
        x, kernel, bias, dy, strides, padding = _data(case, seed=7)
        y_ref = ref_conv2d(x, kernel, bias, strides, padding, "relu")
        dx_ref = ref_conv2d_backward_input(dy, kernel, x.shape, strides, padding)
        dk_ref = ref_conv2d_backward_weight(x, dy, kernel.shape[:2], strides, padding)
        for alg in _algorithms(case, True):
            np.testing.assert_allclose(
                conv2d(x, kernel, bias, strides=strides, padding=padding, activation="relu",
                       _algorithm=alg), y_ref, atol=1e-12, err_msg=str(alg))
            np.testing.assert_allclose(
                conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides,
                                       padding=padding, _algorithm=alg)[0],
                dk_ref, atol=1e-12, err_msg=str(alg))
            if alg != "direct":
                np.testing.assert_allclose(
                    conv2d_backward_input(dy, kernel, x.shape, strides=strides,
                                          padding=padding, _algorithm=alg),
                    dx_ref, atol=1e-12, err_msg=str(alg))
    finally:
        fastnet.set_num_threads(old)


def test_larger_batch_default_paths():
    """Shapes big enough for the default thresholds to pick the blocks schedule with tiles, and
    for the implicit backward weight to walk several chunks of output rows per thread."""
    case = (9, 14, 13, 8, 16, 3, 3, (1, 1), "same")
    x, kernel, bias, dy, strides, padding = _data(case)
    for alg in (None, "implicit", "gemm", "shared"):
        np.testing.assert_allclose(
            conv2d(x, kernel, bias, strides=strides, padding=padding, _algorithm=alg),
            ref_conv2d(x, kernel, bias, strides, padding), atol=1e-11)
        np.testing.assert_allclose(
            conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding,
                                  _algorithm=alg),
            ref_conv2d_backward_input(dy, kernel, x.shape, strides, padding), atol=1e-11)
        np.testing.assert_allclose(
            conv2d_backward_weight(x, dy, 3, strides=strides, padding=padding,
                                   _algorithm=alg)[0],
            ref_conv2d_backward_weight(x, dy, (3, 3), strides, padding), atol=1e-10)


def test_small_tiles(monkeypatch, threads):
    """Tiles of a few rows (panel budget tiny): tile edges inside images and rows."""
    monkeypatch.setattr(conv_ops, "_PANEL_BYTES", 3 * 8 * 18)
    monkeypatch.setattr(conv_ops, "_SHARED_BYTES", 5 * 8 * 18)
    case = (3, 7, 8, 2, 3, 3, 3, (2, 1), "same")
    x, kernel, bias, dy, strides, padding = _data(case)
    for alg in ("gemm", "shared"):
        np.testing.assert_allclose(
            conv2d(x, kernel, bias, strides=strides, padding=padding, _algorithm=alg),
            ref_conv2d(x, kernel, bias, strides, padding), atol=1e-12)
        np.testing.assert_allclose(
            conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding,
                                  _algorithm=alg),
            ref_conv2d_backward_input(dy, kernel, x.shape, strides, padding), atol=1e-12)
        np.testing.assert_allclose(
            conv2d_backward_weight(x, dy, 3, strides=strides, padding=padding,
                                   _algorithm=alg)[0],
            ref_conv2d_backward_weight(x, dy, (3, 3), strides, padding), atol=1e-12)


# ------------------------------------------------------------ the implicit GEMM: tiles, ISAs
# Channel counts that leave partial register tiles (pixels, input and output channels), kernels
# larger than the image, strides with gaps, 1x1.
EDGE_CASES = [
    (3, 9, 11, 37, 70, 3, 3, (1, 1), "same"),
    (2, 8, 8, 20, 33, 5, 5, (2, 2), "same"),
    (1, 6, 7, 48, 16, 1, 1, (1, 1), "valid"),
    (2, 7, 9, 9, 47, 3, 2, (1, 3), "valid"),
    (1, 3, 4, 17, 5, 7, 7, (1, 1), "same"),
    (5, 4, 3, 16, 8, 2, 2, (2, 2), "same"),
]
EDGE_IDS = ["n{}_{}x{}x{}_to{}_k{}x{}_s{}{}_{}".format(*c[:7], *c[7], c[8]) for c in EDGE_CASES]


def _check_implicit(case, seed=0, relu=False):
    x, kernel, bias, dy, strides, padding = _data(case, seed=seed)
    kw = dict(strides=strides, padding=padding, _algorithm="implicit")
    y = conv2d(x, kernel, bias, activation="relu", **kw)
    np.testing.assert_allclose(y, ref_conv2d(x, kernel, bias, strides, padding, "relu"),
                               atol=1e-11)
    g = dy * (y > 0) if relu else dy
    mask = dict(relu_output=y) if relu else {}
    np.testing.assert_allclose(conv2d_backward_input(dy, kernel, x.shape, **mask, **kw),
                               ref_conv2d_backward_input(g, kernel, x.shape, strides, padding),
                               atol=1e-11)
    db = np.empty(kernel.shape[3])
    dk, _ = conv2d_backward_weight(x, dy, kernel.shape[:2], bias_grad=db, **mask, **kw)
    np.testing.assert_allclose(dk, ref_conv2d_backward_weight(x, g, kernel.shape[:2], strides,
                                                              padding), atol=1e-11)
    np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), atol=1e-11)


@pytest.mark.parametrize("case", EDGE_CASES, ids=EDGE_IDS)
def test_implicit_tile_edges(case, threads):
    _check_implicit(case)
    _check_implicit(case, seed=1, relu=True)


# every ISA; AVX-512 in both broadcast modes (FMAs reading A from memory, or from a register)
ISA_PATHS = [(name, mode) for name in gemm_kernels.available_isas()
             for mode in (("memory", "register") if name == "avx512" else (None,))]


@pytest.mark.parametrize("isa,mode", ISA_PATHS,
                         ids=[f"{n}-{m}" if m else n for n, m in ISA_PATHS])
def test_implicit_every_isa(isa, mode, monkeypatch):
    """Each ISA has its own register tiles (AVX-512 8 x 2, AVX2 6 x 2, baseline 4 x 2)."""
    monkeypatch.setattr(conv_ops, "_PARALLEL_MIN_WORK", 0)
    old_isa, old_threads = gemm_kernels.isa(), fastnet.get_num_threads()
    old_mode = gemm_kernels.broadcast()
    gemm_kernels.set_isa(isa)
    if mode:
        gemm_kernels.set_broadcast(mode)
    try:
        for t in (1, 2):
            fastnet.set_num_threads(t)
            for case in EDGE_CASES[:4] + [CASES[1], CASES[13]]:
                _check_implicit(case, seed=t, relu=t == 2)
    finally:
        gemm_kernels.set_isa(old_isa)
        fastnet.set_num_threads(old_threads)
        if old_mode:
            gemm_kernels.set_broadcast(old_mode)


@pytest.mark.skipif("avx512" not in gemm_kernels.available_isas(), reason="no AVX-512 path")
def test_implicit_broadcast_modes_are_bitwise_identical(monkeypatch):
    """Forward, backward-input and backward-weight kernels give the same bits whether their
    FMAs read the broadcast value from memory or from a register (float32, edge tiles)."""
    monkeypatch.setattr(conv_ops, "_PARALLEL_MIN_WORK", 0)
    old_isa, old_mode = gemm_kernels.isa(), gemm_kernels.broadcast()
    gemm_kernels.set_isa("avx512")
    try:
        for case in EDGE_CASES[:4] + [CASES[1], CASES[13]]:
            x, kernel, bias, dy, strides, padding = _data(case, seed=3)
            x, kernel, bias, dy = (v.astype(np.float32) for v in (x, kernel, bias, dy))
            kw = dict(strides=strides, padding=padding, _algorithm="implicit")
            got = []
            for mode in ("memory", "register"):
                gemm_kernels.set_broadcast(mode)
                y = conv2d(x, kernel, bias, activation="relu", **kw)
                dx = conv2d_backward_input(dy, kernel, x.shape, relu_output=y, **kw)
                dk, _ = conv2d_backward_weight(x, dy, kernel.shape[:2], relu_output=y, **kw)
                got.append((y, dx, dk))
            for a, b in zip(*got):
                assert np.array_equal(a, b), case
    finally:
        gemm_kernels.set_isa(old_isa)
        gemm_kernels.set_broadcast(old_mode)


@pytest.mark.parametrize("isa", gemm_kernels.available_isas())
def test_implicit_forward_reads_a_one_panel_kernel_in_place(isa, monkeypatch):
    """A kernel of one panel of whole vectors (Cout a multiple of the vector width, at most
    one register tile wide) is read where it lies, without packing; with and without bias,
    both precisions, 1 and 2 threads, batch 1 and odd sizes."""
    monkeypatch.setattr(conv_ops, "_PARALLEL_MIN_WORK", 0)
    old_isa, old_threads = gemm_kernels.isa(), fastnet.get_num_threads()
    gemm_kernels.set_isa(isa)
    rng = np.random.default_rng(12)
    try:
        for t in (1, 2):
            fastnet.set_num_threads(t)
            for cout in (4, 8, 16, 24, 32, 48, 64):
                for dtype, tol in ((np.float64, 1e-11), (np.float32, 2e-4)):
                    n, h, w, cin = (1, 7, 9, 5) if cout % 16 else (2, 6, 5, 3)
                    x = rng.standard_normal((n, h, w, cin)).astype(dtype)
                    k = rng.standard_normal((3, 3, cin, cout)).astype(dtype)
                    b = rng.standard_normal(cout).astype(dtype)
                    for bias in (b, None):
                        for padding in ("valid", "same"):
                            y = conv2d(x, k, bias, padding=padding, activation="relu",
                                       _algorithm="implicit")
                            ref = ref_conv2d(x.astype(np.float64), k.astype(np.float64),
                                             None if bias is None else b.astype(np.float64),
                                             (1, 1), padding, "relu")
                            np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    finally:
        gemm_kernels.set_isa(old_isa)
        fastnet.set_num_threads(old_threads)


def test_implicit_forward_does_not_depend_on_threads(monkeypatch):
    """Each output is computed by one thread in a fixed order: bitwise equal for any team; the
    backward ops are bitwise reproducible for a given team size."""
    monkeypatch.setattr(conv_ops, "_PARALLEL_MIN_WORK", 0)
    x, kernel, bias, dy, strides, padding = _data(EDGE_CASES[0], np.float32)
    kw = dict(strides=strides, padding=padding, _algorithm="implicit")
    old = fastnet.get_num_threads()
    try:
        ys = []
        for t in (1, 2, 3):
            fastnet.set_num_threads(t)
            ys.append(conv2d(x, kernel, bias, **kw))
            runs = [(conv2d_backward_input(dy, kernel, x.shape, **kw),
                     conv2d_backward_weight(x, dy, 3, **kw)[0]) for _ in range(2)]
            np.testing.assert_array_equal(runs[0][0], runs[1][0])
            np.testing.assert_array_equal(runs[0][1], runs[1][1])
        np.testing.assert_array_equal(ys[0], ys[1])
        np.testing.assert_array_equal(ys[0], ys[2])
    finally:
        fastnet.set_num_threads(old)


# --------------------------------------------------------- the fused ReLU's mask in backward
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_relu_output(case, threads):
    """relu_output=y masks dy where the forward's ReLU output is not positive, in every path."""
    x, kernel, bias, dy, strides, padding = _data(case, seed=11)
    y = conv2d(x, kernel, bias, strides=strides, padding=padding, activation="relu")
    g = dy * (y > 0)
    dx_ref = ref_conv2d_backward_input(g, kernel, x.shape, strides, padding)
    dk_ref = ref_conv2d_backward_weight(x, g, kernel.shape[:2], strides, padding)
    for alg in _algorithms(case, False):
        dx = conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding,
                                   relu_output=y, _algorithm=alg)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12, err_msg=str(alg))
    for alg in _algorithms(case, True):
        db = np.empty(kernel.shape[3])
        dk, _ = conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides,
                                       padding=padding, bias_grad=db, relu_output=y,
                                       _algorithm=alg)
        np.testing.assert_allclose(dk, dk_ref, rtol=1e-12, atol=1e-12, err_msg=str(alg))
        np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), rtol=1e-12, atol=1e-12)


def test_backward_relu_output_float32():
    case = (4, 12, 11, 1, 32, 3, 3, (1, 1), "valid")   # the first layer: the direct kernels
    for case in (case, (3, 9, 9, 32, 24, 3, 3, (1, 1), "valid")):
        x, kernel, bias, dy, strides, padding = _data(case, np.float32, seed=2)
        y = conv2d(x, kernel, bias, activation="relu")
        g = dy * (y > 0)
        db = np.empty(kernel.shape[3], np.float32)
        dk, _ = conv2d_backward_weight(x, dy, 3, bias_grad=db, relu_output=y)
        np.testing.assert_allclose(dk, ref_conv2d_backward_weight(x, g, (3, 3), (1, 1),
                                                                  "valid"), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), rtol=1e-4, atol=1e-3)
        dx = conv2d_backward_input(dy, kernel, x.shape, relu_output=y)
        np.testing.assert_allclose(dx, ref_conv2d_backward_input(g, kernel, x.shape, (1, 1),
                                                                 "valid"), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------- finite-difference checks
def _finite_difference(f, a, idx, eps=1e-6):
    old = a[idx]
    a[idx] = old + eps
    fp = f()
    a[idx] = old - eps
    fm = f()
    a[idx] = old
    return (fp - fm) / (2 * eps)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[8], CASES[10]],
                         ids=[IDS[1], IDS[3], IDS[8], IDS[10]])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradients_finite_difference(case, activation):
    x, kernel, bias, _, strides, padding = _data(case, seed=3)
    g = np.random.default_rng(4).standard_normal(
        conv2d(x, kernel, bias, strides=strides, padding=padding).shape)

    def loss():
        return np.sum(conv2d(x, kernel, bias, strides=strides, padding=padding,
                             activation=activation) * g)

    y = conv2d(x, kernel, bias, strides=strides, padding=padding, activation=activation)
    dy = g * (y > 0) if activation == "relu" else g
    db = np.empty_like(bias)
    dx = conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding)
    dk, _ = conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides, padding=padding,
                                   bias_grad=db)
    rng = np.random.default_rng(5)
    for a, grad in ((x, dx), (kernel, dk), (bias, db)):
        for flat in rng.choice(a.size, size=min(a.size, 12), replace=False):
            idx = np.unravel_index(flat, a.shape)
            assert _finite_difference(loss, a, idx) == pytest.approx(grad[idx], rel=1e-6,
                                                                     abs=1e-7)


# ------------------------------------------------------------------------ buffers, determinism
def test_out_buffers_are_used():
    x, kernel, bias, dy, strides, padding = _data(CASES[2])
    y = np.empty((3, 4, 4, 4))
    assert conv2d(x, kernel, bias, strides=strides, out=y) is y
    dx = np.empty_like(x)
    assert conv2d_backward_input(dy, kernel, x.shape, strides=strides, out=dx) is dx
    dk = np.empty_like(kernel)
    assert conv2d_backward_weight(x, dy, 3, strides=strides, out=dk)[0] is dk
    np.testing.assert_allclose(dk, ref_conv2d_backward_weight(x, dy, (3, 3), strides, "valid"))


def test_backward_weight_is_deterministic(threads):
    case = (7, 10, 9, 3, 5, 3, 3, (1, 1), "same")
    x, _, _, dy, strides, padding = _data(case, np.float32)
    runs = []
    for _ in range(3):
        db = np.empty(5, np.float32)
        dk, _ = conv2d_backward_weight(x, dy, 3, padding=padding, bias_grad=db)
        runs.append((dk, db))
    for dk, db in runs[1:]:
        assert np.array_equal(dk, runs[0][0]) and np.array_equal(db, runs[0][1])


def test_read_only_inputs():
    x, kernel, bias, dy, strides, padding = _data(CASES[1])
    for a in (x, kernel, bias, dy):
        a.flags.writeable = False
    conv2d(x, kernel, bias, strides=strides, padding=padding)
    conv2d_backward_input(dy, kernel, x.shape, strides=strides, padding=padding)
    conv2d_backward_weight(x, dy, kernel.shape[:2], strides=strides, padding=padding)


# ---------------------------------------------------------------------------------- bad input
def _bad_cases():
    x = np.zeros((2, 6, 6, 3))
    k = np.zeros((3, 3, 3, 4))
    b = np.zeros(4)
    dy = np.zeros((2, 4, 4, 4))
    return [
        (lambda: conv2d(x.tolist(), k), TypeError, "x must be a numpy.ndarray"),
        (lambda: conv2d(x.astype(np.int32), k), TypeError, "x must have dtype float32"),
        (lambda: conv2d(x, k.astype(np.float32)), TypeError, "kernel must have dtype float64"),
        (lambda: conv2d(x, k, b.astype(np.float32)), TypeError, "bias must have dtype"),
        (lambda: conv2d(x[0], k), ValueError, "x must have 4 dimensions"),
        (lambda: conv2d(x, k[0]), ValueError, "kernel must have 4 dimensions"),
        (lambda: conv2d(x[:, :, ::2], k), ValueError, "x must be C-contiguous"),
        (lambda: conv2d(x, np.zeros((3, 3, 2, 4))), ValueError, "x has 3 channels"),
        (lambda: conv2d(x, k, np.zeros(5)), ValueError, r"bias must have shape \(4,\)"),
        (lambda: conv2d(x, k, np.zeros((4, 1))), ValueError, "bias must have 1 dimensions"),
        (lambda: conv2d(np.zeros((0, 6, 6, 3)), k), ValueError, "zero-sized"),
        (lambda: conv2d(x, np.zeros((3, 3, 3, 0))), ValueError, "zero-sized"),
        (lambda: conv2d(x, np.zeros((7, 3, 3, 4))), ValueError, "larger than the input"),
        (lambda: conv2d(x, k, strides=0), ValueError, "strides must be >= 1"),
        (lambda: conv2d(x, k, strides=(1, 2, 3)), ValueError, "strides must be an integer"),
        (lambda: conv2d(x, k, strides=1.5), TypeError, "strides must be an integer"),
        (lambda: conv2d(x, k, strides=(1, 1.0)), TypeError, "strides must be an integer"),
        (lambda: conv2d(x, k, padding="full"), ValueError, "padding must be 'valid' or 'same'"),
        (lambda: conv2d(x, k, activation="tanh"), ValueError, "activation must be"),
        (lambda: conv2d(x, k, activation=len), TypeError, "activation must be"),
        (lambda: conv2d(x, k, out=np.zeros((2, 4, 4, 5))), ValueError, "out must be"),
        (lambda: conv2d(x, k, out=np.zeros((2, 4, 4, 4), np.float32)), ValueError, "out must"),
        (lambda: conv2d(x, k, _algorithm="fft"), ValueError, "_algorithm must be one of"),
        (lambda: conv2d(x, k, _algorithm="1x1"), ValueError, "1x1 kernel"),
        (lambda: conv2d_backward_input(dy, k, (2, 6, 6)), ValueError, "input_shape must be"),
        (lambda: conv2d_backward_input(dy, k, (2, 6, 6, 0)), ValueError, "input_shape must be"),
        (lambda: conv2d_backward_input(dy, k, (2, 6, 6, 2)), ValueError, "input_shape has 2"),
        (lambda: conv2d_backward_input(dy, k, (2, 7, 6, 3)), ValueError, "dy must have shape"),
        (lambda: conv2d_backward_input(dy.astype(np.float32), k, (2, 6, 6, 3)), TypeError,
         "kernel must have dtype float32"),
        (lambda: conv2d_backward_input(dy, k, (2, 6, 6, 3), padding="same"), ValueError,
         "dy must have shape"),
        (lambda: conv2d_backward_input(dy, k, (2, 6, 6, 3), out=dy), ValueError, "out must be"),
        (lambda: conv2d_backward_weight(x, dy, 0), ValueError, "kernel_size must be >= 1"),
        (lambda: conv2d_backward_weight(x, dy, 2), ValueError, "dy must have shape"),
        (lambda: conv2d_backward_weight(x, dy.astype(np.float32), 3), TypeError,
         "dy must have dtype float64"),
        (lambda: conv2d_backward_weight(x, dy, 3, bias_grad=np.zeros(3)), ValueError,
         "bias_grad must be"),
        (lambda: conv2d_backward_weight(x, dy, 3, bias_grad=[0.0] * 4), TypeError,
         "bias_grad must be a numpy.ndarray"),
        (lambda: conv2d_backward_weight(x, dy, 3, out=np.zeros((3, 3, 3, 5))), ValueError,
         "out must be"),
        (lambda: conv2d_backward_weight(x, dy, 7), ValueError, "larger than the input"),
        (lambda: conv2d_backward_input(dy, k, x.shape, relu_output=dy[:1].copy()), ValueError,
         "relu_output must have the shape of dy"),
        (lambda: conv2d_backward_input(dy, k, x.shape, relu_output=dy.astype(np.float32)),
         TypeError, "relu_output must have dtype float64"),
        (lambda: conv2d_backward_weight(x, dy, 3, relu_output=dy.tolist()), TypeError,
         "relu_output must be a numpy.ndarray"),
        (lambda: conv2d_backward_weight(x, dy, 3, relu_output=dy[..., :2].copy()), ValueError,
         "relu_output must have the shape of dy"),
        (lambda: conv2d_backward_input(dy, k, x.shape, _algorithm="direct"), ValueError,
         "_algorithm must be one of"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_arguments(i):
    call, exc, match = _bad_cases()[i]
    with pytest.raises(exc, match=match):
        call()


def test_out_must_not_alias_input():
    x = np.zeros((1, 4, 4, 2))
    k = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="out must not overlap"):
        conv2d(x, k, out=x)

"""GEMM, float32: square products and the classic CNN's products at batch 64 (DESIGN.md).

fastnet ``ops.matmul`` against NumPy's ``matmul`` on its BLAS and ``torch.matmul``, every
operand and output preallocated (a transposed operand is a transposed view, as a layer's
backward pass passes it).  The ``+bias+relu`` rows time what a layer's forward needs, the
product followed by its bias and activation: fused into the GEMM's epilogue in fastnet, two
in-place passes over the output for NumPy and PyTorch (``torch.addmm`` takes the bias).
Every row also gives fastnet's rate as a fraction of the float32 FMA peak, measured with an
FMA loop (``fastnet._kernels.gemm.fma_peak``) in the same processes before and after the
cases."""
import numpy as np

from fastnet.bench.cases import Bench, Case, checksum

SUITE = "gemm"
LIBRARIES = ("fastnet", "numpy", "torch")

# name, M, N, K, transpose_a, transpose_b, in --quick
SQUARE = [("sq512", 512, 512, 512, False, False, False),
          ("sq1024", 1024, 1024, 1024, False, False, True),
          ("sq2048", 2048, 2048, 2048, False, False, False)]
CNN = [
    ("conv1 fwd", 43264, 32, 9, False, False, True),
    ("conv1 dW", 9, 32, 43264, True, False, False),
    ("conv2 fwd", 7744, 64, 288, False, False, True),
    ("conv2 dW", 288, 64, 7744, True, False, False),
    ("conv2 dX", 7744, 288, 64, False, True, False),
    ("conv3 fwd", 576, 64, 576, False, False, False),
    ("conv3 dW", 576, 64, 576, True, False, False),
    ("conv3 dX", 576, 576, 64, False, True, False),
    ("dense1 fwd", 64, 64, 576, False, False, True),
    ("dense1 dW", 576, 64, 64, True, False, False),
    ("dense1 dX", 64, 576, 64, False, True, False),
    ("dense2 fwd", 64, 10, 64, False, False, False),
    ("dense2 dW", 64, 10, 64, True, False, False),
    ("dense2 dX", 64, 64, 10, False, True, False),
]
# the forward products with the layer's epilogue: name, M, N, K, activation, in --quick
EPILOGUE = [
    ("conv1 fwd+bias+relu", 43264, 32, 9, "relu", True),
    ("conv2 fwd+bias+relu", 7744, 64, 288, "relu", False),
    ("conv3 fwd+bias+relu", 576, 64, 576, "relu", False),
    ("dense1 fwd+bias+relu", 64, 64, 576, "relu", False),
    ("dense2 fwd+bias", 64, 10, 64, None, False),
]


def cases(batches=None):
    out = []
    for name, m, n, k, ta, tb, quick in SQUARE + CNN:
        ops = ("T" if ta else "N") + ("T" if tb else "N")   # BLAS transa, transb
        out.append(Case(SUITE, name, f"{m}x{n}x{k} {ops}", 2.0 * m * n * k, "GFLOP/s",
                        params=(m, n, k, ta, tb), quick=quick))
    for name, m, n, k, act, quick in EPILOGUE:
        out.append(Case(SUITE, name, f"{m}x{n}x{k} NN", 2.0 * m * n * k, "GFLOP/s",
                        params=(m, n, k, False, False, act), quick=quick))
    return out


def operands(m, n, k, transpose_a, transpose_b, seed=0):
    """A (stored transposed when transpose_a), B (likewise) and an output, float32."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if transpose_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(np.float32)
    return a, b, np.empty((m, n), np.float32)


def make(case, config, ctx):
    if len(case.params) == 6:
        return _make_epilogue(case, config)
    m, n, k, ta, tb = case.params
    a, b, out = operands(m, n, k, ta, tb)
    if config.library == "fastnet":
        from fastnet.ops import matmul

        def fn():
            return matmul(a, b, transpose_a=ta, transpose_b=tb, out=out)
    elif config.library == "numpy":
        aa, bb = (a.T if ta else a), (b.T if tb else b)

        def fn():
            return np.matmul(aa, bb, out=out)
    elif config.library == "torch":
        import torch
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        at, bt = (at.T if ta else at), (bt.T if tb else bt)
        ot = torch.from_numpy(out)

        def fn():
            return torch.matmul(at, bt, out=ot)
    else:
        return None

    def probe():
        fn()
        return checksum(out)
    return Bench(fn, probe)


def _make_epilogue(case, config):
    m, n, k, _, _, act = case.params
    a, b, out = operands(m, n, k, False, False)
    bias = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    if config.library == "fastnet":
        from fastnet.ops import matmul

        def fn():
            return matmul(a, b, bias=bias, activation=act, out=out)
    elif config.library == "numpy":
        def fn():
            np.matmul(a, b, out=out)
            np.add(out, bias, out=out)
            if act == "relu":
                np.maximum(out, 0.0, out=out)
            return out
    elif config.library == "torch":
        import torch
        at, bt, ot, bias_t = (torch.from_numpy(v) for v in (a, b, out, bias))

        def fn():
            torch.addmm(bias_t, at, bt, out=ot)
            if act == "relu":
                torch.relu_(ot)
            return ot
    else:
        return None

    def probe():
        fn()
        return checksum(out)
    return Bench(fn, probe)

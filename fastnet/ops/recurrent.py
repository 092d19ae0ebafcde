"""Recurrent ops: SimpleRNN, LSTM and GRU over whole sequences (forward and backward through
time), and the embedding lookup and its gradient.

Keras semantics and weight layouts: kernel (features, G*units), recurrent_kernel (units,
G*units), gates in Keras order (LSTM i, f, c, o; GRU z, r, h), bias (G*units,) or, for GRU with
``reset_after=True``, (2, 3*units) = [input bias, recurrent bias].  The initial state is zero;
``go_backwards`` processes the steps last to first and, as Keras, returns the outputs in that
processing order.

The forward keeps what the backward needs in a ``RecurrentTape`` (time-major buffers, see
``fastnet/_kernels/recurrent.pyx``): the input projection of all steps is one GEMM, the time
loop runs compiled with the recurrent GEMM and fused gate kernels per step, and the backward's
weight gradients are GEMMs over all steps.  Buffers come from ``buffer(key, shape, dtype)``
(a layer's ``buffer`` method, reused across steps; default: fresh arrays).
"""
import numpy as np

from fastnet import activations as _activations
from fastnet import config
from fastnet._kernels import gemm as _gemm
from fastnet._kernels import recurrent as _k
from fastnet.ops._checks import check_array, check_out
from fastnet.ops.core import bias_grad as _column_sums
from fastnet.ops.matmul import matmul

__all__ = ["RecurrentTape", "recurrent_forward", "recurrent_backward", "embedding_lookup",
           "embedding_grad", "ACTIVATIONS", "check_activation"]

# cell name -> (kernel code, gate count)
_CELLS = {"simple_rnn": (_k.SIMPLE_RNN, 1), "lstm": (_k.LSTM, 4), "gru": (_k.GRU, 3)}
# The activations the fused gate kernels implement (canonical fastnet names; None = linear).
ACTIVATIONS = {None: _k.LINEAR, "tanh": _k.TANH, "sigmoid": _k.SIGMOID, "relu": _k.RELU}
_PANELS = {}
_MIN_PARALLEL_WORK = 200_000    # multiply-adds of a whole sequence below which 1 thread runs


def _alloc(key, shape, dtype):
    return np.empty(shape, dtype)


def check_activation(name, what):
    """The gate kernels' code for activation ``name`` (ValueError naming ``what`` if none)."""
    try:
        canonical = _activations.get(name)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from None
    if canonical not in ACTIVATIONS:
        raise ValueError(f"{what} must be one of 'tanh', 'sigmoid', 'relu', 'linear' (or None) "
                         f"for a recurrent layer, got {name!r}")
    return ACTIVATIONS[canonical]


def _panel_width(dtype):
    """Columns per pre-packed panel of the recurrent kernel: four register tiles of the GEMM
    path in use, so each per-step product reads its operands in place (no packing)."""
    key = (_gemm.isa(), dtype)
    pw = _PANELS.get(key)
    if pw is None:
        pw = _PANELS[key] = 4 * _gemm.blocking(key[0], dtype)["nr"]
    return pw


def _row_threads(batch, work):
    """Threads for a time loop split over batch rows (each thread needs a few GEMM tiles)."""
    n = config.get_num_threads()
    if n <= 1 or work < _MIN_PARALLEL_WORK:
        return 1
    return max(1, min(n, batch // 8))


class RecurrentTape:
    """What ``recurrent_forward`` keeps for ``recurrent_backward``: the time-major buffers
    (T, B, .) of every step in processing order, and the call's configuration.  Valid until
    the next forward with the same buffers."""

    __slots__ = ("cell", "code", "gates_per_unit", "act", "ract", "units", "reset_after",
                 "go_backwards", "kernel", "recurrent_kernel", "bias", "xs", "gates", "inner",
                 "rhp", "hs", "cs", "batch", "steps")

    @property
    def last_h(self):
        """The final hidden state (B, units), C-contiguous (a view of the tape)."""
        return self.hs[-1]

    @property
    def last_c(self):
        """The final LSTM cell state (B, units), or None for other cells."""
        return None if self.cs is None else self.cs[-1]

    def sequence(self, out=None):
        """Every step's hidden state as (B, T, units) in processing order (Keras'
        ``return_sequences`` output), into ``out`` (any writeable array of that shape)."""
        shape = (self.batch, self.steps, self.units)
        if out is None:
            out = np.empty(shape, self.hs.dtype)
        elif not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != self.hs.dtype:
            raise ValueError(f"out must be a {self.hs.dtype} array of shape {shape}")
        np.copyto(out, self.hs.transpose(1, 0, 2))
        return out


def recurrent_forward(cell, x, kernel, recurrent_kernel, bias=None, *, activation="tanh",
                      recurrent_activation="sigmoid", reset_after=True, go_backwards=False,
                      buffer=None):
    """Run ``cell`` ('simple_rnn', 'lstm' or 'gru') over x (B, T, features) from a zero state.

    kernel (features, G*u), recurrent_kernel (u, G*u) with G = 1, 4, 3; bias (G*u,) or None,
    GRU ``reset_after=True``: (2, 3u).  ``recurrent_activation`` is ignored by SimpleRNN.
    Returns a ``RecurrentTape`` (``last_h``, ``last_c``, ``sequence()``).
    """
    if cell not in _CELLS:
        raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
    code, G = _CELLS[cell]
    check_array(x, "x", ndim=3)
    dtype = x.dtype
    B, T, F = x.shape
    if B < 1 or T < 1 or F < 1:
        raise ValueError(f"x must have shape (batch, steps, features) with every size >= 1, "
                         f"got {x.shape}")
    check_array(recurrent_kernel, "recurrent_kernel", ndim=2, dtype=dtype)
    u = recurrent_kernel.shape[0]
    if u < 1 or recurrent_kernel.shape != (u, G * u):
        raise ValueError(f"recurrent_kernel must have shape (units, {G} * units) for {cell}, "
                         f"got {recurrent_kernel.shape}")
    check_array(kernel, "kernel", ndim=2, dtype=dtype)
    if kernel.shape != (F, G * u):
        raise ValueError(f"kernel must have shape ({F}, {G * u}) (features, {G} * units), got "
                         f"{kernel.shape}")
    gru3 = cell == "gru" and bool(reset_after)
    if bias is not None:
        check_array(bias, "bias", dtype=dtype)
        want = (2, G * u) if gru3 else (G * u,)
        if bias.shape != want:
            raise ValueError(f"bias must have shape {want}, got {bias.shape}")
    act = check_activation(activation, "activation")
    ract = check_activation(recurrent_activation, "recurrent_activation") \
        if cell != "simple_rnn" else _k.LINEAR
    buffer = buffer or _alloc
    if cell == "gru" and not reset_after:
        code = _k.GRU_V1

    tape = RecurrentTape()
    tape.cell, tape.code, tape.gates_per_unit, tape.act, tape.ract = cell, code, G, act, ract
    tape.units, tape.reset_after, tape.go_backwards = u, bool(reset_after), bool(go_backwards)
    tape.kernel, tape.recurrent_kernel, tape.bias = kernel, recurrent_kernel, bias
    tape.batch, tape.steps = B, T
    # time-major copy in processing order: every step's rows become one contiguous block
    xs = tape.xs = buffer("xs", (T, B, F), dtype)
    xt = x.transpose(1, 0, 2)
    np.copyto(xs, xt[::-1] if go_backwards else xt)
    gates = tape.gates = buffer("gates", (T, B, G * u), dtype)
    in_bias = bias[0] if (gru3 and bias is not None) else bias
    matmul(xs.reshape(T * B, F), kernel, bias=in_bias, out=gates.reshape(T * B, G * u))
    tape.hs = gates if cell == "simple_rnn" else buffer("hs", (T, B, u), dtype)
    tape.cs = buffer("cs", (T, B, u), dtype) if cell == "lstm" else None
    tape.inner = buffer("inner", (T, B, 3 * u), dtype) if gru3 else None
    tape.rhp = buffer("rhp", (T, B, u), dtype) if code == _k.GRU_V1 else None

    pw = _panel_width(dtype)
    uph = None
    if code == _k.GRU_V1:
        up = buffer("panels", (u * 2 * u,), dtype)
        _k.pack_panels(recurrent_kernel, 0, u, 2 * u, False, pw, up)
        uph = buffer("panels_h", (u * u,), dtype)
        _k.pack_panels(recurrent_kernel, 2 * u, u, u, False, pw, uph)
    else:
        up = buffer("panels", (u * G * u,), dtype)
        _k.pack_panels(recurrent_kernel, 0, u, G * u, False, pw, up)
    rbias = bias[1] if (gru3 and bias is not None) else None
    _k.forward(code, act, ract, gates, tape.inner, tape.rhp, tape.hs, tape.cs, up, uph, rbias,
               pw, _row_threads(B, B * T * G * u * u))
    return tape


def _check_state_grad(g, name, shape, dtype):
    if g is None:
        return None
    check_array(g, name, dtype=dtype, contiguous=False)
    if g.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {g.shape}")
    return np.ascontiguousarray(g)


def recurrent_backward(tape, dy=None, dh_last=None, dc_last=None, *, kernel_grad=None,
                       recurrent_grad=None, bias_grad=None, need_input_grad=True, buffer=None):
    """Backward through time of the forward that made ``tape``.

    dy (B, T, units): the gradient of ``sequence()`` (any strides with a unit last-axis
    stride; None when only the final state is used); dh_last / dc_last (B, units): gradients
    w.r.t. ``last_h`` / ``last_c`` (None: zero).  The weight gradients are WRITTEN (not
    accumulated) into ``kernel_grad``, ``recurrent_grad``, ``bias_grad`` when given (shapes of
    the weights, C-contiguous).  Returns dL/dx (B, T, features), or None when
    ``need_input_grad`` is false.
    """
    if not isinstance(tape, RecurrentTape):
        raise TypeError(f"tape must be a RecurrentTape from recurrent_forward, "
                        f"got {type(tape).__name__}")
    dtype = tape.hs.dtype
    B, T, u, G = tape.batch, tape.steps, tape.units, tape.gates_per_unit
    F = tape.xs.shape[2]
    item = np.dtype(dtype).itemsize
    dy_sb = dy_ss = 0
    if dy is not None:
        check_array(dy, "dy", ndim=3, dtype=dtype, contiguous=False)
        if dy.shape != (B, T, u):
            raise ValueError(f"dy must have shape {(B, T, u)}, got {dy.shape}")
        st = dy.strides
        if (st[2] != item and u > 1) or st[0] % item or st[1] % item:
            dy = np.ascontiguousarray(dy)
            st = dy.strides
        dy_sb, dy_ss = st[0] // item, st[1] // item
    dh_last = _check_state_grad(dh_last, "dh_last", (B, u), dtype)
    dc_last = _check_state_grad(dc_last, "dc_last", (B, u), dtype)
    if dc_last is not None and tape.cell != "lstm":
        raise ValueError("dc_last is only defined for an LSTM")
    gru3 = tape.cell == "gru" and tape.reset_after
    if kernel_grad is not None:
        check_out(kernel_grad, "kernel_grad", tape.kernel.shape, dtype)
    if recurrent_grad is not None:
        check_out(recurrent_grad, "recurrent_grad", tape.recurrent_kernel.shape, dtype)
    if bias_grad is not None:
        if tape.bias is None:
            raise ValueError("bias_grad given but the forward had no bias")
        check_out(bias_grad, "bias_grad", tape.bias.shape, dtype)
    buffer = buffer or _alloc

    dgx = buffer("dgx", (T, B, G * u), dtype)
    dgh = buffer("dgh", (T, B, 3 * u), dtype) if gru3 else None
    dhbuf = buffer("dhbuf", (2, B, u), dtype)
    dc = buffer("dc", (B, u), dtype)
    tmp = buffer("tmp", (B, 2 * u), dtype)
    pw = _panel_width(dtype)
    U = tape.recurrent_kernel
    uhtp = None
    if tape.code == _k.GRU_V1:
        utp = buffer("panels_t", (2 * u * u,), dtype)
        _k.pack_panels(U, 0, 2 * u, u, True, pw, utp)
        uhtp = buffer("panels_ht", (u * u,), dtype)
        _k.pack_panels(U, 2 * u, u, u, True, pw, uhtp)
    else:
        utp = buffer("panels_t", (G * u * u,), dtype)
        _k.pack_panels(U, 0, G * u, u, True, pw, utp)
    _k.backward(tape.code, tape.act, tape.ract, tape.gates, tape.inner, tape.rhp, tape.hs,
                tape.cs, dy, dy_sb, dy_ss, dh_last, dc_last, dgx, dgh, dhbuf, dc, tmp, utp,
                uhtp, pw, _row_threads(B, B * T * G * u * u))

    dg2 = dgx.reshape(T * B, G * u)
    if recurrent_grad is not None:
        if T == 1:   # the initial state is zero: the recurrent kernel had no effect
            recurrent_grad[...] = 0
        else:
            hprev = tape.hs[:T - 1].reshape((T - 1) * B, u)
            if tape.code == _k.GRU_V1:
                d1 = dgx[1:].reshape((T - 1) * B, 3 * u)
                matmul(hprev, d1[:, :2 * u], transpose_a=True, out=recurrent_grad[:, :2 * u])
                matmul(tape.rhp[1:].reshape((T - 1) * B, u), d1[:, 2 * u:], transpose_a=True,
                       out=recurrent_grad[:, 2 * u:])
            else:
                d1 = (dgh if gru3 else dgx)[1:].reshape((T - 1) * B, G * u)
                matmul(hprev, d1, transpose_a=True, out=recurrent_grad)
    if kernel_grad is not None:
        matmul(tape.xs.reshape(T * B, F), dg2, transpose_a=True, out=kernel_grad)
    if bias_grad is not None:
        if gru3:
            _column_sums(dg2, out=bias_grad[0])
            _column_sums(dgh.reshape(T * B, 3 * u), out=bias_grad[1])
        else:
            _column_sums(dg2, out=bias_grad)
    if not need_input_grad:
        return None
    dxs = buffer("dxs", (T, B, F), dtype)
    matmul(dg2, tape.kernel, transpose_b=True, out=dxs.reshape(T * B, F))
    dx = buffer("dx", (B, T, F), dtype)
    np.copyto(dx.transpose(1, 0, 2), dxs[::-1] if tape.go_backwards else dxs)
    return dx


# ------------------------------------------------------------------------------ embedding
_INDEX_DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "int32", "int64"))


def _check_indices(indices, input_dim):
    """indices as a flat C-contiguous array the kernels take, after checking every entry is
    an integer in [0, input_dim)."""
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype.kind not in "fiu" or indices.dtype.kind == "b":
        raise TypeError(f"indices must hold integers (any int or float dtype), "
                        f"got {indices.dtype}")
    if indices.dtype not in _INDEX_DTYPES:
        indices = indices.astype(np.float64 if indices.dtype.kind == "f" else np.int64)
    flat = np.ascontiguousarray(indices).reshape(-1)
    bad = _k.embedding_first_bad(flat, input_dim)
    if bad >= 0:
        raise ValueError(f"embedding indices must be integers in [0, {input_dim}) (input_dim), "
                         f"got {flat[bad].item()!r} at flat position {bad}")
    return flat


def embedding_lookup(indices, table, out=None):
    """out[..., :] = table[indices[...]]: indices of any shape (float or int dtype, each an
    integer in [0, rows)), table (rows, dim) -> (*indices.shape, dim)."""
    check_array(table, "table", ndim=2)
    flat = _check_indices(indices, table.shape[0])
    out = check_out(out, "out", indices.shape + (table.shape[1],), table.dtype)
    _k.embedding_gather(flat, table, out.reshape(flat.shape[0], table.shape[1]),
                        config.get_num_threads() if flat.shape[0] * table.shape[1] >= 1 << 16
                        else 1)
    return out


def embedding_grad(indices, dy, out):
    """out (rows, dim) = the table's gradient: zero, then out[indices[p]] += dy[p] for every
    position p (dy of shape (*indices.shape, dim)); race-free and in position order."""
    check_array(dy, "dy")
    if not isinstance(out, np.ndarray) or out.ndim != 2:
        raise TypeError("out must be the (rows, dim) gradient array of the table")
    check_out(out, "out", out.shape, dy.dtype)
    flat = _check_indices(indices, out.shape[0])
    if dy.shape != indices.shape + (out.shape[1],):
        raise ValueError(f"dy must have shape {indices.shape + (out.shape[1],)}, got {dy.shape}")
    d = out.shape[1]
    nthreads = config.get_num_threads() if d >= 64 and flat.shape[0] * d >= 1 << 15 else 1
    _k.embedding_scatter_add(flat, dy.reshape(flat.shape[0], d), out, nthreads)
    return out

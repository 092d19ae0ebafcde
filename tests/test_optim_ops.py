"""fastnet.ops.optim against NumPy versions of the Keras 3 update formulas, thread-count
determinism and bad inputs."""
import math

import numpy as np
import pytest

import fastnet
from fastnet.ops import optim as optim_ops
from fastnet.ops.optim import adagrad_update, adam_update, rmsprop_update, sgd_update

DTYPES = [np.float32, np.float64]
SIZES = [1, 7, 64, 1000, 100_003]


def np_adam(p, g, m, v, lr, beta_1, beta_2, epsilon, step):
    """Keras 3 Adam.update_step in NumPy, elementwise in the buffers' dtype."""
    t = p.dtype.type
    lr_t = t(lr * math.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step))
    m += (g - m) * t(1 - beta_1)
    v += (g * g - v) * t(1 - beta_2)
    p -= (m * lr_t) / (np.sqrt(v) + t(epsilon))


def np_sgd(p, g, vel, lr, momentum, nesterov):
    """Keras 3 SGD.update_step in NumPy."""
    t = p.dtype.type
    lr, momentum = t(lr), t(momentum)
    if momentum == 0:
        p -= g * lr
        return
    vel[...] = vel * momentum - g * lr
    if nesterov:
        p += vel * momentum - g * lr
    else:
        p += vel


@pytest.fixture
def parallel(monkeypatch):
    """Use the parallel path at every size and restore the thread count afterwards."""
    monkeypatch.setattr(optim_ops, "PARALLEL_MIN_PARAMS", 1)
    old = fastnet.get_num_threads()
    yield
    fastnet.set_num_threads(old)


def buffers(rng, n, dtype, count):
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", [dict(lr=1e-3), dict(lr=0.05, beta_1=0.5, beta_2=0.9,
                                                        epsilon=1e-3), dict(lr=0.0)])
def test_adam_matches_keras_formula(dtype, hyper, parallel):
    rng = np.random.default_rng(0)
    full = {**dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7), **hyper}
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        for n in SIZES:
            p, = buffers(rng, n, dtype, 1)
            m, v = np.zeros(n, dtype), np.zeros(n, dtype)
            p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
            for step in range(1, 6):
                g = (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 3)).astype(dtype)
                adam_update(p, g, m, v, step=step, **hyper)
                np_adam(p_ref, g, m_ref, v_ref, step=step, **full)
            # Same IEEE operations in the same order: bitwise equal to NumPy.
            np.testing.assert_array_equal(m, m_ref)
            np.testing.assert_array_equal(v, v_ref)
            np.testing.assert_array_equal(p, p_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True),
                                               (1.0, False), (0.5, True)])
def test_sgd_matches_keras_formula(dtype, momentum, nesterov, parallel):
    rng = np.random.default_rng(1)
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        for n in SIZES:
            p, = buffers(rng, n, dtype, 1)
            vel = np.zeros(n, dtype)
            p_ref, vel_ref = p.copy(), vel.copy()
            for _ in range(4):
                g, = buffers(rng, n, dtype, 1)
                sgd_update(p, g, vel if momentum else None, lr=0.01, momentum=momentum,
                           nesterov=nesterov)
                np_sgd(p_ref, g, vel_ref, 0.01, momentum, nesterov)
            np.testing.assert_array_equal(p, p_ref)
            np.testing.assert_array_equal(vel, vel_ref)


def test_sgd_without_momentum_leaves_velocity_alone():
    p, g, vel = np.ones(5), np.ones(5), np.full(5, 3.0)
    sgd_update(p, g, vel, lr=0.5)
    np.testing.assert_array_equal(p, 0.5)
    np.testing.assert_array_equal(vel, 3.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_bitwise_identical_on_misaligned_views(dtype, parallel):
    rng = np.random.default_rng(2)
    n = 100_003
    # Views starting one element into larger buffers: unaligned, odd length.
    base = [rng.standard_normal(n + 5).astype(dtype) for _ in range(4)]
    base[3] = np.abs(base[3])  # v >= 0
    results = []
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        p, g, m, v = (b.copy()[1:n + 1] for b in base)
        vel = m.copy()
        p2 = p.copy()
        for step in range(1, 4):
            adam_update(p, g, m, v, lr=1e-2, step=step)
            sgd_update(p2, g, vel, lr=1e-2, momentum=0.9, nesterov=True)
        results.append((p.tobytes(), m.tobytes(), v.tobytes(), p2.tobytes(), vel.tobytes()))
    assert results[0] == results[1]


def test_empty_buffers_are_a_no_op():
    e = np.zeros(0, np.float32)
    adam_update(e, e.copy(), e.copy(), e.copy(), lr=1e-3, step=1)
    sgd_update(e, e.copy(), lr=1e-3)


def test_bad_inputs():
    n = 8
    p, g, m, v = (np.zeros(n, np.float32) for _ in range(4))

    def adam(**kw):
        args = dict(param=p, grad=g, m=m, v=v, lr=1e-3, step=1)
        args.update(kw)
        adam_update(args.pop("param"), args.pop("grad"), args.pop("m"), args.pop("v"), **args)

    with pytest.raises(ValueError, match="grad must have the shape of param"):
        adam(grad=np.zeros(n + 1, np.float32))
    with pytest.raises(TypeError, match="m must have dtype float32"):
        adam(m=np.zeros(n))
    with pytest.raises(TypeError, match="param must have dtype float32 or float64"):
        adam(param=np.zeros(n, np.int32))
    with pytest.raises(TypeError, match="param must be a numpy.ndarray"):
        adam(param=[0.0] * n)
    with pytest.raises(ValueError, match="v must have 1 dimensions"):
        adam(v=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        adam(grad=np.zeros(2 * n, np.float32)[::2])
    with pytest.raises(ValueError, match="m and v must not overlap"):
        adam(v=m)
    buf = np.zeros(2 * n, np.float32)
    with pytest.raises(ValueError, match="param and grad must not overlap"):
        adam(param=buf[:n], grad=buf[4:n + 4])
    ro = np.zeros(n, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param must be writeable"):
        adam(param=ro)
    with pytest.raises(ValueError, match="v must be writeable"):
        adam(v=ro)
    adam(grad=ro)  # a read-only gradient is fine
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lr must be"):
            adam(lr=bad)
    with pytest.raises(TypeError, match="lr must be a real number"):
        adam(lr="0.1")
    with pytest.raises(ValueError, match=r"beta_1 must be in \[0.0, 1.0\)"):
        adam(beta_1=1.0)
    with pytest.raises(ValueError, match=r"beta_2 must be in \[0.0, 1.0\)"):
        adam(beta_2=-0.1)
    with pytest.raises(ValueError, match="epsilon must be in"):
        adam(epsilon=-1e-8)
    with pytest.raises(ValueError, match="step must be >= 1"):
        adam(step=0)
    with pytest.raises(TypeError, match="step must be an integer"):
        adam(step=1.0)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'step'"):
        adam_update(p, g, m, v, lr=1e-3)

    with pytest.raises(ValueError, match="velocity is required"):
        sgd_update(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum must be in \[0.0, 1.0\]"):
        sgd_update(p, g, m, lr=0.1, momentum=1.5)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        sgd_update(p, g, m, lr=0.1, momentum=0.9, nesterov="yes")
    with pytest.raises(ValueError, match="velocity must have the shape of param"):
        sgd_update(p, g, np.zeros(3, np.float32), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="velocity must be writeable"):
        sgd_update(p, g, ro, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="lr must be finite"):
        sgd_update(p, g, lr=math.nan)


# ---- RMSprop, Adagrad, AMSGrad and the shared options -------------------------------------------

def np_rmsprop(p, g, vel, mom, avg, lr, rho, momentum, epsilon, centered):
    """Keras 3 RMSprop.update_step in NumPy, in the buffers' dtype."""
    t = p.dtype.type
    lr, rho, omr, momentum, eps = t(lr), t(rho), t(1 - rho), t(momentum), t(epsilon)
    vel[...] = rho * vel + omr * (g * g)
    if centered:
        avg[...] = rho * avg + omr * g
        den = (vel - avg * avg) + eps
    else:
        den = vel + eps
    inc = (lr * g) / np.sqrt(den)
    if momentum > 0:
        mom[...] = momentum * mom + inc
        p -= mom
    else:
        p -= inc


def np_adagrad(p, g, acc, lr, epsilon):
    """Keras 3 Adagrad.update_step in NumPy, in the buffers' dtype."""
    t = p.dtype.type
    acc += g * g
    p -= (t(lr) * g) / np.sqrt(acc + t(epsilon))


def np_amsgrad(p, g, m, v, v_hat, lr, beta_1, beta_2, epsilon, step):
    t = p.dtype.type
    lr_t = t(lr * math.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step))
    m += (g - m) * t(1 - beta_1)
    v += (g * g - v) * t(1 - beta_2)
    np.maximum(v_hat, v, out=v_hat)
    p -= (m * lr_t) / (np.sqrt(v_hat) + t(epsilon))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True),
                                               (0.5, True)])
def test_rmsprop_matches_keras_formula(dtype, momentum, centered, parallel):
    rng = np.random.default_rng(5)
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        for n in SIZES:
            p, = buffers(rng, n, dtype, 1)
            vel, mom, avg = (np.zeros(n, dtype) for _ in range(3))
            ref = [p.copy(), vel.copy(), mom.copy(), avg.copy()]
            for _ in range(4):
                g = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 2)).astype(dtype)
                rmsprop_update(p, g, vel, mom if momentum else None, avg if centered else None,
                               lr=0.01, rho=0.8, momentum=momentum, epsilon=1e-6,
                               centered=centered)
                np_rmsprop(*ref[:1], g, *ref[1:], 0.01, 0.8, momentum, 1e-6, centered)
            for got, want in zip((p, vel, mom, avg), ref):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adagrad_and_amsgrad_match_keras_formulas(dtype, parallel):
    rng = np.random.default_rng(6)
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        for n in SIZES:
            p, = buffers(rng, n, dtype, 1)
            acc = np.full(n, 0.1, dtype)
            q, m, v, vh = p.copy(), *(np.zeros(n, dtype) for _ in range(3))
            ref = [p.copy(), acc.copy(), q.copy(), m.copy(), v.copy(), vh.copy()]
            for step in range(1, 5):
                g = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 2)).astype(dtype)
                adagrad_update(p, g, acc, lr=0.05, epsilon=1e-6)
                np_adagrad(ref[0], g, ref[1], 0.05, 1e-6)
                adam_update(q, g, m, v, lr=0.01, step=step, amsgrad=True, v_hat=vh)
                np_amsgrad(ref[2], g, *ref[3:], 0.01, 0.9, 0.999, 1e-7, step)
            for got, want in zip((p, acc, q, m, v, vh), ref):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_options_equal_a_transformed_gradient(dtype, parallel):
    """grad_scale (per segment), clipvalue and weight_decay inside the pass are bitwise the
    NumPy transformation followed by the plain rule, at 1 and 2 threads, also when a thread's
    range starts inside a segment."""
    rng = np.random.default_rng(7)
    n = 5000
    segments = [(0, 1000), (1000, 7), (1024, 2000), (3100, 1900)]   # gaps at 1007-1023, 3024-3099
    scales = np.array([0.5, 1.0, 0.125, 2.0])
    t = np.dtype(dtype).type
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        p0, g = (b * 3 for b in buffers(rng, n, dtype, 2))
        g_ref = g.copy()
        for (off, size), s in zip(segments, scales):
            g_ref[off:off + size] = g_ref[off:off + size] * t(s)
        g_ref = np.clip(g_ref, t(-1.5), t(1.5))
        p, vel = p0.copy(), np.zeros(n, dtype)
        sgd_update(p, g, vel, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.3,
                   clipvalue=1.5, grad_scale=scales, segments=segments)
        p_ref, vel_ref = p0 - (p0 * t(0.3)) * t(0.1), np.zeros(n, dtype)
        np_sgd(p_ref, g_ref, vel_ref, 0.1, 0.9, True)
        np.testing.assert_array_equal(p, p_ref)
        np.testing.assert_array_equal(vel, vel_ref)
        # one scale for the whole buffer
        p = p0.copy()
        sgd_update(p, g, lr=0.1, grad_scale=0.25)
        np.testing.assert_array_equal(p, p0 - (g * t(0.25)) * t(0.1))


def test_bad_inputs_new_ops():
    n = 8
    p, g, a, b, c = (np.zeros(n) for _ in range(5))
    with pytest.raises(ValueError, match="v_hat is required"):
        adam_update(p, g, a, b, lr=0.1, step=1, amsgrad=True)
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        adam_update(p, g, a, b, lr=0.1, step=1, amsgrad=1)
    with pytest.raises(ValueError, match="momentum_buffer is required"):
        rmsprop_update(p, g, a, lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="average_gradient is required"):
        rmsprop_update(p, g, a, lr=0.1, centered=True)
    with pytest.raises(ValueError, match=r"rho must be in \[0.0, 1.0\)"):
        rmsprop_update(p, g, a, lr=0.1, rho=1.0)
    with pytest.raises(ValueError, match="velocity and momentum_buffer must not overlap"):
        rmsprop_update(p, g, a, a, lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="epsilon must be in"):
        adagrad_update(p, g, a, lr=0.1, epsilon=-1.0)
    with pytest.raises(ValueError, match="accumulator must have the shape"):
        adagrad_update(p, g, np.zeros(3), lr=0.1)
    with pytest.raises(ValueError, match="weight_decay must be in"):
        sgd_update(p, g, lr=0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"clipvalue must be in \(0.0"):
        sgd_update(p, g, lr=0.1, clipvalue=0.0)
    with pytest.raises(ValueError, match="needs segments"):
        sgd_update(p, g, lr=0.1, grad_scale=np.ones(2))
    with pytest.raises(ValueError, match="2 scales for 1 segments"):
        sgd_update(p, g, lr=0.1, grad_scale=np.ones(2), segments=[(0, 8)])
    with pytest.raises(ValueError, match="grad_scale must be >= 0"):
        sgd_update(p, g, lr=0.1, grad_scale=-1.0)
    with pytest.raises(TypeError, match="grad_scale must be a real number"):
        sgd_update(p, g, lr=0.1, grad_scale="2")
    with pytest.raises(ValueError, match="does not fit"):
        sgd_update(p, g, lr=0.1, segments=[(4, 5)])
    with pytest.raises(ValueError, match="must not overlap"):
        sgd_update(p, g, lr=0.1, segments=[(0, 5), (4, 2)])
    with pytest.raises(TypeError, match="integer pairs"):
        sgd_update(p, g, lr=0.1, segments=[(0, 5, 1)])
    with pytest.raises(TypeError, match="list of"):
        optim_ops.segment_norms(g, 5)

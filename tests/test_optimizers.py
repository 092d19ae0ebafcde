"""fastnet.optimizers and fastnet.schedules: every optimizer and option against a NumPy
transcription of Keras 3's update rules, thread-count determinism, PyTorch's trajectory on a
small network, schedules in closed form, configs, state, and bad hyper-parameters."""
import json
import math

import numpy as np
import pytest

import fastnet
from fastnet import optimizers, schedules
from fastnet.ops import optim as optim_ops
from fastnet.optimizers.schedules import CosineDecay, ExponentialDecay, PiecewiseConstantDecay

# ---- a NumPy transcription of Keras 3 (BaseOptimizer.apply + each update_step) -----------------


class KerasReference:
    """Keras 3's optimizer step on a list of separate variables, written out in NumPy."""

    def __init__(self, kind, variables, learning_rate, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, **hp):
        self.kind, self.lr, self.wd = kind, learning_rate, weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.hp = hp
        self.iterations = 0
        init = hp.get("initial_accumulator_value", 0.1) if kind == "adagrad" else 0.0
        self.slots = {name: [np.full_like(v, init) for v in variables]
                      for name in ("a", "b", "c")}
        if kind == "adamw" and weight_decay is None:
            self.wd = 0.004

    def current_lr(self):
        lr = self.lr
        return lr(self.iterations) if callable(lr) else lr

    def clip(self, grads):
        if self.clipnorm:
            out = []
            for g in grads:
                l2sum = np.sum(np.square(g))
                l2norm = np.sqrt(l2sum) if l2sum > 0 else l2sum
                out.append(g * self.clipnorm / np.maximum(l2norm, self.clipnorm))
            return out
        if self.global_clipnorm:
            norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
            with np.errstate(divide="ignore"):
                scale = self.global_clipnorm * np.minimum(1.0 / norm, 1.0 / self.global_clipnorm)
            return [g * scale for g in grads]
        if self.clipvalue:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def step(self, variables, grads):
        lr = self.current_lr()
        grads = self.clip(grads)
        if self.wd is not None:
            for var in variables:
                var[...] = var - var * self.wd * lr
        for i, (var, g) in enumerate(zip(variables, grads)):
            self.update_step(i, var, g, lr)
        self.iterations += 1

    def update_step(self, i, var, g, lr):
        hp, a, b, c = self.hp, self.slots["a"][i], self.slots["b"][i], self.slots["c"][i]
        if self.kind == "sgd":
            momentum = hp.get("momentum", 0.0)
            if momentum == 0:
                var -= g * lr
                return
            a[...] = a * momentum - g * lr
            var += a * momentum - g * lr if hp.get("nesterov") else a
        elif self.kind in ("adam", "adamw"):
            b1, b2, eps = hp.get("beta_1", 0.9), hp.get("beta_2", 0.999), hp.get("epsilon", 1e-7)
            t = self.iterations + 1
            alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            a += (g - a) * (1 - b1)
            b += (np.square(g) - b) * (1 - b2)
            v = b
            if hp.get("amsgrad"):
                c[...] = np.maximum(c, b)
                v = c
            var -= (a * alpha) / (np.sqrt(v) + eps)
        elif self.kind == "rmsprop":
            rho, momentum = hp.get("rho", 0.9), hp.get("momentum", 0.0)
            eps = hp.get("epsilon", 1e-7)
            a[...] = rho * a + (1 - rho) * np.square(g)
            if hp.get("centered"):
                c[...] = rho * c + (1 - rho) * g
                denominator = a - np.square(c) + eps
            else:
                denominator = a + eps
            increment = (lr * g) / np.sqrt(denominator)
            if momentum > 0:
                b[...] = momentum * b + increment
                var -= b
            else:
                var -= increment
        elif self.kind == "adagrad":
            a += np.square(g)
            var -= (lr * g) / np.sqrt(a + hp.get("epsilon", 1e-7))
        else:
            raise AssertionError(self.kind)


CLASSES = {"sgd": optimizers.SGD, "adam": optimizers.Adam, "adamw": optimizers.AdamW,
           "rmsprop": optimizers.RMSprop, "adagrad": optimizers.Adagrad}
CONFIGS = [
    ("sgd", dict(learning_rate=0.05)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(learning_rate=0.01)),
    ("adam", dict(learning_rate=0.01, beta_1=0.5, beta_2=0.9, amsgrad=True, weight_decay=0.05)),
    ("adamw", dict(learning_rate=0.01)),
    ("adamw", dict(learning_rate=CosineDecay(0.01, 60, alpha=0.1, warmup_target=0.02,
                                             warmup_steps=10), amsgrad=True, weight_decay=0.1)),
    ("rmsprop", dict(learning_rate=0.01)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.8, momentum=0.9)),
    ("rmsprop", dict(learning_rate=0.01, centered=True)),
    ("rmsprop", dict(learning_rate=ExponentialDecay(0.01, 10, 0.9), centered=True, momentum=0.5,
                     weight_decay=0.01)),
    ("adagrad", dict(learning_rate=0.1)),
    ("adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=1e-3,
                     weight_decay=0.01)),
]
CLIPS = [{}, {"clipnorm": 1.0}, {"global_clipnorm": 30.0}, {"clipvalue": 0.5}]
SIZES = [37, 1, 200, 64, 1000, 5]   # variables, laid out with 16-element alignment gaps
ALIGN = 16


def layout(sizes):
    """Segments (offset, size) with alignment gaps, and the buffer length (as the model)."""
    segments, off = [], 0
    for s in sizes:
        segments.append((off, s))
        off += -(-s // ALIGN) * ALIGN
    return segments, off


def config_id(case):
    kind, hp = case
    return kind + "-" + "-".join(f"{k}" for k in hp if k != "learning_rate")


def random_grads(rng, segments, n, dtype, step):
    """Per-variable magnitudes from 1e-3 to 10 and a per-step factor, so that clipnorm clips
    some variables and not others and global_clipnorm clips on some steps only."""
    g = np.zeros(n, dtype)
    factor = 10.0 ** rng.uniform(-1.5, 0.5)
    for k, (off, size) in enumerate(segments):
        g[off:off + size] = rng.standard_normal(size) * 10.0 ** (k % 5 - 3) * factor
    return g


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c), "noclip"))
@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_matches_keras_reference_100_steps(case, clip):
    kind, hp = case
    rng = np.random.default_rng(0)
    segments, n = layout(SIZES)
    params = np.zeros(n)
    for off, size in segments:
        params[off:off + size] = rng.standard_normal(size)
    ref_vars = [params[off:off + size].copy() for off, size in segments]
    opt = CLASSES[kind](**hp, **clip)
    ref = KerasReference(kind, ref_vars, **hp, **clip)
    for step in range(100):
        grads = random_grads(rng, segments, n, np.float64, step)
        opt.apply(params, grads, segments)
        ref.step(ref_vars, [grads[off:off + size].copy() for off, size in segments])
    assert opt.iterations == 100
    for (off, size), want in zip(segments, ref_vars):
        np.testing.assert_allclose(params[off:off + size], want, rtol=1e-6, atol=1e-12)
    gaps = np.ones(n, bool)
    for off, size in segments:
        gaps[off:off + size] = False
    assert np.all(params[gaps] == 0)     # padding: zero gradient, zero parameter, stays zero
    # the slots too (Keras's names)
    names = {"sgd": {"momentum": "a"}, "adam": {"momentum": "a", "velocity": "b",
                                                "velocity_hat": "c"},
             "rmsprop": {"velocity": "a", "momentum": "b", "average_gradient": "c"},
             "adagrad": {"accumulator": "a"}}[kind.replace("adamw", "adam")]
    state = opt.get_state()
    for name, slot in state.items():
        if name in ("iterations", "learning_rate"):
            continue
        for (off, size), want in zip(segments, ref.slots[names[name]]):
            np.testing.assert_allclose(slot[off:off + size], want, rtol=1e-6, atol=1e-12)


# ---- determinism ---------------------------------------------------------------------------

@pytest.fixture
def parallel(monkeypatch):
    """The parallel path at every size; the thread count restored afterwards."""
    monkeypatch.setattr(optim_ops, "PARALLEL_MIN_PARAMS", 1)
    monkeypatch.setattr(optim_ops, "NORM_CHUNK", 1000)
    optim_ops._cached_plan.cache_clear()
    old = fastnet.get_num_threads()
    yield
    fastnet.set_num_threads(old)
    optim_ops._cached_plan.cache_clear()


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c), "noclip"))
def test_float32_bitwise_identical_at_1_and_2_threads(clip, parallel):
    segments, n = layout([3001, 7, 20000, 1, 513, 9999])
    results = []
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        out = []
        for kind, hp in CONFIGS:
            rng = np.random.default_rng(1)
            params = rng.standard_normal(n).astype(np.float32)
            opt = CLASSES[kind](**hp, **clip)
            for step in range(3):
                opt.apply(params, random_grads(rng, segments, n, np.float32, step), segments)
            out.append(params.tobytes())
            out.extend(v.tobytes() for v in opt.get_state().values())
        results.append(out)
    assert results[0] == results[1]


def test_segment_norms_deterministic_and_exact(parallel):
    rng = np.random.default_rng(2)
    segments, n = layout([5, 4000, 1, 0, 2500])
    for dtype in (np.float32, np.float64):
        g = (rng.standard_normal(n) * 3).astype(dtype)
        got = []
        for nthreads in (1, 2):
            fastnet.set_num_threads(nthreads)
            got.append(optim_ops.segment_norms(g, segments))
        assert got[0].tobytes() == got[1].tobytes()
        want = [np.linalg.norm(g[o:o + s].astype(np.float64)) for o, s in segments]
        np.testing.assert_allclose(got[0], want, rtol=1e-13)
        assert got[0][3] == 0.0
    # unsorted segments come back in the caller's order
    np.testing.assert_array_equal(optim_ops.segment_norms(np.array([3.0, 4.0, 12.0]),
                                                          [(2, 1), (0, 2)]), [12.0, 5.0])


def test_gradient_clip_scale_keras_formulas():
    g = np.array([3.0, 4.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(optim_ops.gradient_clip_scale(g, [(0, 2), (4, 1)], clipnorm=2.0),
                               [0.4, 1.0])
    assert optim_ops.gradient_clip_scale(g, clipnorm=10.0) == 1.0
    assert optim_ops.gradient_clip_scale(g, [(0, 2), (4, 1)], global_clipnorm=1.0) == \
        pytest.approx(1 / math.sqrt(26))
    assert optim_ops.gradient_clip_scale(np.zeros(3), global_clipnorm=1.0) == 1.0
    assert math.isnan(optim_ops.gradient_clip_scale(np.array([np.inf, 1.0]),
                                                    global_clipnorm=1.0))
    with pytest.raises(ValueError, match="exactly one"):
        optim_ops.gradient_clip_scale(g, clipnorm=1.0, global_clipnorm=1.0)


def test_ops_options_fold_into_one_pass():
    """The ops' grad_scale / clipvalue / weight_decay equal the transformed gradient given to
    the plain op (bitwise: the same IEEE operations)."""
    rng = np.random.default_rng(3)
    segments, n = layout([10, 40, 3])
    p0, g = rng.standard_normal(n), rng.standard_normal(n) * 3
    scales = np.array([0.5, 1.0, 0.25])
    g_scaled = g.copy()
    for (off, size), s in zip(segments, scales):
        g_scaled[off:off + size] *= s
    g_ref = np.clip(g_scaled, -1.0, 1.0)
    p, m, v = p0.copy(), np.zeros(n), np.zeros(n)
    optim_ops.adam_update(p, g, m, v, lr=0.1, step=1, grad_scale=scales, segments=segments,
                          clipvalue=1.0, weight_decay=0.2)
    p_ref, m_ref, v_ref = p0 - (p0 * 0.2) * 0.1, np.zeros(n), np.zeros(n)
    optim_ops.adam_update(p_ref, g_ref, m_ref, v_ref, lr=0.1, step=1)
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(m, m_ref)


# ---- PyTorch's trajectory --------------------------------------------------------------------

TORCH_CASES = [
    ("sgd", dict(learning_rate=0.1, momentum=0.9), "SGD", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(learning_rate=0.1, momentum=0.8, nesterov=True), "SGD",
     dict(lr=0.1, momentum=0.8, nesterov=True)),
    ("adam", dict(learning_rate=0.01, epsilon=1e-16), "Adam", dict(lr=0.01, eps=1e-16)),
    ("adam", dict(learning_rate=0.01, epsilon=1e-16, amsgrad=True), "Adam",
     dict(lr=0.01, eps=1e-16, amsgrad=True)),
    ("adamw", dict(learning_rate=0.01, weight_decay=0.1, epsilon=1e-16), "AdamW",
     dict(lr=0.01, weight_decay=0.1, eps=1e-16)),
    ("rmsprop", dict(learning_rate=0.003, rho=0.9, epsilon=1e-16), "RMSprop",
     dict(lr=0.003, alpha=0.9, eps=1e-16)),
    ("rmsprop", dict(learning_rate=0.003, rho=0.9, momentum=0.5, centered=True, epsilon=1e-16),
     "RMSprop", dict(lr=0.003, alpha=0.9, momentum=0.5, centered=True, eps=1e-16)),
    ("adagrad", dict(learning_rate=0.1, epsilon=1e-16), "Adagrad",
     dict(lr=0.1, initial_accumulator_value=0.1, eps=1e-16)),
]


@pytest.mark.parametrize("kind,hp,torch_name,torch_hp", TORCH_CASES,
                         ids=[config_id((c[0], c[1])) for c in TORCH_CASES])
def test_follows_pytorch_on_a_two_layer_mlp(kind, hp, torch_name, torch_hp):
    torch = pytest.importorskip("torch")
    from fastnet import layers, models
    from fastnet.utils import set_random_seed

    set_random_seed(0)
    model = models.Sequential([
        layers.Dense(16, activation="tanh", input_shape=(8,), dtype="float64"),
        layers.Dense(3, dtype="float64"),
    ])
    model.compile(optimizer=CLASSES[kind](**hp), loss="mse")
    kernel1, bias1, kernel2, bias2 = model.get_weights()
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 3)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(kernel1.T))
        net[0].bias.copy_(torch.from_numpy(bias1))
        net[2].weight.copy_(torch.from_numpy(kernel2.T))
        net[2].bias.copy_(torch.from_numpy(bias2))
    opt = getattr(torch.optim, torch_name)(net.parameters(), **torch_hp)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.standard_normal((32, 8)), rng.standard_normal((32, 3))
        model.train_on_batch(x, y)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    got = model.get_weights()
    want = [net[0].weight.detach().numpy().T, net[0].bias.detach().numpy(),
            net[2].weight.detach().numpy().T, net[2].bias.detach().numpy()]
    moved = max(np.max(np.abs(w - w0)) for w, w0 in zip(want, [kernel1, bias1, kernel2, bias2]))
    assert moved > 1e-3                   # the comparison means something
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


# ---- learning-rate schedules ----------------------------------------------------------------

def test_exponential_decay_closed_form():
    s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    for step in (0, 1, 5, 10, 25, 1000):
        assert s(step) == pytest.approx(0.1 * 0.5 ** (step / 10), rel=1e-15)
    s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert [s(k) for k in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_piecewise_constant_boundaries_belong_to_the_left():
    s = PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [s(k) for k in (0, 10, 11, 20, 21, 10 ** 6)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    assert PiecewiseConstantDecay([], [0.3])(5) == 0.3


def test_cosine_decay_closed_form_with_and_without_warmup():
    s = CosineDecay(0.1, decay_steps=100, alpha=0.2)
    for step in (0, 1, 50, 99, 100, 150):
        k = min(step, 100)
        want = 0.1 * (0.8 * 0.5 * (1 + math.cos(math.pi * k / 100)) + 0.2)
        assert s(step) == pytest.approx(want, rel=1e-14)
    assert s(50) == pytest.approx(0.06) and s(1000) == pytest.approx(0.02)
    w = CosineDecay(0.0, decay_steps=100, warmup_target=0.1, warmup_steps=10)
    assert [w(k) for k in (0, 5, 9)] == pytest.approx([0.0, 0.05, 0.09])
    assert w(10) == pytest.approx(0.1)
    assert w(60) == pytest.approx(0.05)
    assert w(110) == pytest.approx(0.0, abs=1e-18) and w(500) == pytest.approx(0.0, abs=1e-18)


def test_optimizer_evaluates_the_schedule_at_iterations_before_the_step():
    lr = PiecewiseConstantDecay([1, 2], [1.0, 0.1, 0.01])
    opt = optimizers.SGD(learning_rate=lr)
    p, g = np.zeros(4), np.ones(4)
    seen = []
    for _ in range(4):
        seen.append(opt.learning_rate)
        before = p.copy()
        opt.apply(p, g)
        np.testing.assert_allclose(before - p, seen[-1])
    assert seen == [1.0, 1.0, 0.1, 0.01]      # steps 0, 1, 2, 3
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.5
    plain = optimizers.Adam(0.01)
    plain.learning_rate = 0.002               # what ReduceLROnPlateau does
    assert plain.learning_rate == 0.002 and plain.get_config()["learning_rate"] == 0.002
    plain.learning_rate = CosineDecay(0.01, 10)
    assert plain.learning_rate == 0.01


def test_schedule_config_round_trip_and_bad_arguments():
    for s in (ExponentialDecay(0.1, 7, 0.9, staircase=True, name="e"),
              PiecewiseConstantDecay([3, 8], [0.3, 0.2, 0.1]),
              CosineDecay(0.0, 100, alpha=0.1, warmup_target=0.2, warmup_steps=5)):
        cfg = json.loads(json.dumps(schedules.serialize(s)))
        s2 = schedules.deserialize(cfg)
        assert type(s2) is type(s) and s2.get_config() == s.get_config()
        assert [s2(k) for k in range(0, 120, 7)] == [s(k) for k in range(0, 120, 7)]
        assert type(s).from_config(s.get_config()).get_config() == s.get_config()
    assert fastnet.optimizers.schedules is schedules
    bad = [
        (lambda: ExponentialDecay(0.1, 0, 0.9), ValueError, "decay_steps must be > 0"),
        (lambda: ExponentialDecay(-0.1, 10, 0.9), ValueError, "initial_learning_rate must be >="),
        (lambda: ExponentialDecay(0.1, 10, -0.5), ValueError, "decay_rate must be >= 0"),
        (lambda: ExponentialDecay(0.1, 10, 0.5, staircase="yes"), TypeError, "staircase"),
        (lambda: PiecewiseConstantDecay([1, 2], [0.1, 0.2]), ValueError, "one more element"),
        (lambda: PiecewiseConstantDecay([2, 1], [0.1, 0.2, 0.3]), ValueError,
         "strictly increasing"),
        (lambda: PiecewiseConstantDecay([1], [0.1, float("nan")]), ValueError, r"values\[1\]"),
        (lambda: PiecewiseConstantDecay(5, [0.1]), TypeError, "boundaries must be a list"),
        (lambda: CosineDecay(0.1, -5), ValueError, "decay_steps must be > 0"),
        (lambda: CosineDecay(0.1, 5, alpha=1.5), ValueError, "alpha must be <= 1"),
        (lambda: CosineDecay(0.1, 5, warmup_target=-1.0), ValueError, "warmup_target"),
        (lambda: CosineDecay(0.1, 5, warmup_steps=-1), ValueError, "warmup_steps"),
        (lambda: CosineDecay(0.1, "5"), TypeError, "decay_steps must be a number"),
        (lambda: CosineDecay(0.1, 5)(-1), ValueError, "step must be >= 0"),
        (lambda: schedules.deserialize({"class_name": "Nope", "config": {}}), ValueError,
         "unknown learning-rate schedule"),
    ]
    for make, exc, match in bad:
        with pytest.raises(exc, match=match):
            make()


def test_custom_schedule_and_bad_schedule_values():
    class Halving(schedules.LearningRateSchedule):
        def __init__(self, lr):
            self.lr = lr

        def __call__(self, step):
            return self.lr / 2 ** step

        def get_config(self):
            return {"lr": self.lr}

    opt = optimizers.SGD(learning_rate=Halving(1.0))
    cfg = optimizers.serialize(opt)
    opt2 = optimizers.deserialize(cfg, custom_objects={"Halving": Halving})
    assert opt2.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        optimizers.deserialize(cfg)

    class Negative(schedules.LearningRateSchedule):
        def __call__(self, step):
            return -1.0
    with pytest.raises(ValueError, match="returned -1.0 at step 0"):
        optimizers.SGD(learning_rate=Negative()).apply(np.zeros(3), np.zeros(3))


# ---- configs and state ---------------------------------------------------------------------

ALL_OPTIONS = [
    optimizers.SGD(0.02, momentum=0.5, nesterov=True, weight_decay=0.01, clipnorm=2.0,
                   name="s"),
    optimizers.Adam(ExponentialDecay(0.01, 5, 0.5), beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                    amsgrad=True, global_clipnorm=1.5),
    optimizers.AdamW(0.003, weight_decay=0.02, clipvalue=0.1),
    optimizers.RMSprop(PiecewiseConstantDecay([5], [0.01, 0.001]), rho=0.8, momentum=0.3,
                       epsilon=1e-5, centered=True, weight_decay=0.001),
    optimizers.Adagrad(0.05, initial_accumulator_value=0.2, epsilon=1e-6, clipnorm=0.3),
]


@pytest.mark.parametrize("opt", ALL_OPTIONS, ids=lambda o: type(o).__name__)
def test_config_round_trip(opt):
    cfg = opt.get_config()
    text = json.dumps(optimizers.serialize(opt))            # JSON-compatible
    again = optimizers.get(json.loads(text))
    assert type(again) is type(opt) and again.get_config() == cfg
    assert type(opt).from_config(cfg).get_config() == cfg
    name = type(opt).__name__.lower()
    assert type(optimizers.get(name)) is type(opt) and optimizers.get(opt) is opt


def test_keras_config_loads():
    """A config as Keras 3 writes it (with its EMA / loss-scale keys at their defaults)."""
    keras_cfg = {"name": "adam", "learning_rate": 0.001, "weight_decay": None, "clipnorm": None,
                 "global_clipnorm": None, "clipvalue": None, "use_ema": False,
                 "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                 "loss_scale_factor": None, "gradient_accumulation_steps": None,
                 "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07, "amsgrad": False}
    opt = optimizers.get({"class_name": "Adam", "config": keras_cfg,
                          "module": "keras.optimizers", "registered_name": None})
    assert isinstance(opt, optimizers.Adam) and opt.epsilon == 1e-7
    with pytest.raises(NotImplementedError, match="use_ema"):
        optimizers.Adam(use_ema=True)
    with pytest.raises(ValueError, match="not recognized"):
        optimizers.Adam(decay_rate=0.1)


@pytest.mark.parametrize("opt", ALL_OPTIONS, ids=lambda o: type(o).__name__)
def test_state_round_trip_continues_identically(opt):
    rng = np.random.default_rng(4)
    segments, n = layout([30, 7, 100])
    params = rng.standard_normal(n).astype(np.float32)
    grads = [random_grads(rng, segments, n, np.float32, k) for k in range(20)]
    a = type(opt).from_config(opt.get_config())
    for g in grads[:10]:
        a.apply(params, g, segments)
    state = a.get_state()
    assert state["iterations"].tolist() == [10]
    b = type(opt).from_config(opt.get_config())
    b.set_state({k: v.copy() for k, v in state.items()})   # before b is built
    params_b = params.copy()
    for g in grads[10:]:
        a.apply(params, g, segments)
        b.apply(params_b, g, segments)
    assert params.tobytes() == params_b.tobytes()
    sa, sb = a.get_state(), b.get_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].tobytes() == sb[k].tobytes()


def test_set_state_validation():
    opt = optimizers.Adam()
    opt.apply(np.zeros(8, np.float32), np.ones(8, np.float32))
    state = opt.get_state()
    assert sorted(state) == ["iterations", "learning_rate", "momentum", "velocity"]
    assert state["learning_rate"].tolist() == [0.001]

    def broken(**change):
        s = {k: v.copy() for k, v in state.items()}
        for k, v in change.items():
            if v is None:
                del s[k]
            else:
                s[k] = v
        return s
    cases = [
        (broken(velocity=np.zeros(9, np.float32)), ValueError, "share one length"),
        (broken(velocity=None), ValueError, r"lacks the slot\(s\) \['velocity'\]"),
        (broken(velocity_hat=np.zeros(8, np.float32)), ValueError, "unknown entries"),
        (broken(iterations=None), ValueError, "lacks 'iterations'"),
        (broken(iterations=np.array([-1])), ValueError, "iterations"),
        (broken(iterations=np.array([1.5])), ValueError, "iterations"),
        (broken(momentum=np.zeros(8, np.float64), velocity=np.zeros(8, np.float64)), ValueError,
         "built for 8 float32"),
        (broken(momentum=np.zeros((2, 4), np.float32)), ValueError, "1-D"),
        (broken(momentum=[0.0] * 8), TypeError, "numpy.ndarray"),
        (broken(learning_rate=np.array([-1.0])), ValueError, "learning_rate"),
        ([1, 2], TypeError, "dict"),
    ]
    for bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            opt.set_state(bad)
    opt.set_state(state)


# ---- bad hyper-parameters ------------------------------------------------------------------

BAD = [
    (lambda: optimizers.SGD(learning_rate=-0.1), ValueError, "learning_rate must be >= 0"),
    (lambda: optimizers.SGD(learning_rate=float("inf")), ValueError,
     "learning_rate must be finite"),
    (lambda: optimizers.SGD(learning_rate="fast"), TypeError, "learning_rate must be a number"),
    (lambda: optimizers.SGD(momentum=-0.1), ValueError, "momentum must be >= 0"),
    (lambda: optimizers.SGD(momentum=1.5), ValueError, "momentum must be <= 1"),
    (lambda: optimizers.SGD(nesterov=1), TypeError, "nesterov must be a bool"),
    (lambda: optimizers.SGD(weight_decay=-1e-4), ValueError, "weight_decay must be >= 0"),
    (lambda: optimizers.Adam(beta_1=1.0), ValueError, "beta_1 must be < 1"),
    (lambda: optimizers.Adam(beta_1=-0.1), ValueError, "beta_1 must be >= 0"),
    (lambda: optimizers.Adam(beta_2=1.0), ValueError, "beta_2 must be < 1"),
    (lambda: optimizers.Adam(epsilon=-1e-8), ValueError, "epsilon must be >= 0"),
    (lambda: optimizers.Adam(amsgrad="no"), TypeError, "amsgrad must be a bool"),
    (lambda: optimizers.AdamW(weight_decay=None), ValueError, "weight_decay must be a number"),
    (lambda: optimizers.AdamW(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
    (lambda: optimizers.RMSprop(rho=1.0), ValueError, "rho must be < 1"),
    (lambda: optimizers.RMSprop(rho=-0.5), ValueError, "rho must be >= 0"),
    (lambda: optimizers.RMSprop(momentum=2.0), ValueError, "momentum must be <= 1"),
    (lambda: optimizers.RMSprop(epsilon=float("nan")), ValueError, "epsilon must be finite"),
    (lambda: optimizers.RMSprop(centered=None), TypeError, "centered must be a bool"),
    (lambda: optimizers.Adagrad(initial_accumulator_value=-0.1), ValueError,
     "initial_accumulator_value must be >= 0"),
    (lambda: optimizers.Adagrad(epsilon=-1.0), ValueError, "epsilon must be >= 0"),
    (lambda: optimizers.Adam(clipnorm=0.0), ValueError, "clipnorm must be > 0"),
    (lambda: optimizers.Adam(clipnorm=-1.0), ValueError, "clipnorm must be > 0"),
    (lambda: optimizers.Adam(global_clipnorm=0), ValueError, "global_clipnorm must be > 0"),
    (lambda: optimizers.Adam(clipvalue=-0.5), ValueError, "clipvalue must be > 0"),
    (lambda: optimizers.Adam(clipvalue="1"), TypeError, "clipvalue must be a number"),
    (lambda: optimizers.Adam(clipnorm=1.0, global_clipnorm=1.0), ValueError, "only one of"),
    (lambda: optimizers.SGD(clipnorm=1.0, clipvalue=1.0), ValueError, "only one of"),
    (lambda: optimizers.Adam(name=3), TypeError, "name must be a string"),
    (lambda: optimizers.get("nadam"), ValueError, "unknown optimizer 'nadam'"),
    (lambda: optimizers.get(3), TypeError, "optimizer must be a name"),
    (lambda: optimizers.get({"class_name": "Nope", "config": {}}), ValueError,
     "unknown optimizer"),
    (lambda: optimizers.Adam().apply([0.0], [0.0]), TypeError, "params must be a numpy.ndarray"),
    (lambda: optimizers.Adam().apply(np.zeros(4), np.zeros(5)), ValueError,
     "grad must have the shape of param"),
    (lambda: optimizers.Adam().apply(np.zeros(4), np.zeros(4, np.float32)), TypeError,
     "grad must have dtype float64"),
    (lambda: optimizers.Adam(clipnorm=1.0).apply(np.zeros(4), np.zeros(4), [(0, 5)]),
     ValueError, "does not fit"),
    (lambda: optimizers.Adam(clipnorm=1.0).apply(np.zeros(4), np.zeros(4), [(0, 3), (2, 2)]),
     ValueError, "must not overlap"),
    (lambda: optimizers.Adam().apply(np.zeros(4), np.zeros(4), [(0, 1.5)]), TypeError,
     "integer pairs"),
]


@pytest.mark.parametrize("make,exc,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_hyper_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_failed_step_does_not_count():
    opt = optimizers.Adam()
    with pytest.raises(ValueError):
        opt.apply(np.zeros(4), np.zeros(5))
    assert opt.iterations == 0

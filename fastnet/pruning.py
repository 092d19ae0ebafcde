"""Magnitude pruning: zero the smallest weights of Conv2D / Dense kernels, to a target sparsity.

Unstructured (weights one by one), as TensorFlow Model Optimization's ``prune_low_magnitude``:

* ``prune_low_magnitude(model, sparsity, scope='layer' | 'global')`` prunes once: per layer,
  each kernel loses exactly ``round(sparsity * size)`` weights; globally, the smallest
  magnitudes of all kernels together go, so layers end up with different sparsities;
* ``Pruning(schedule)`` is a ``fit`` callback for gradual pruning while fine-tuning: at the steps
  the schedule names (``PolynomialDecay`` / ``ConstantSparsity``, tfmot's formulas) it recomputes
  the masks from the current magnitudes, and after EVERY optimizer step it multiplies the
  kernels by their masks, so pruned weights stay exactly 0 through training (the optimizer
  moves them, the mask puts them back);
* ``get_sparsity(model)`` reports the fraction of zeros per kernel.

What speed it buys: none by itself.  fastnet's GEMM and convolution kernels are dense (as are
PyTorch's, ONNX Runtime's and TensorFlow's CPU kernels for these shapes): a zero costs the same
multiply-add as any other weight.  Unstructured sparsity helps model size once the file is
compressed, and speed only through sparse kernels, which beat dense ones on CPUs at roughly 90%+
sparsity.  Structured pruning does shrink the work: ``prune_filters(model, fraction)`` removes
the lowest-L1-norm filters of every Conv2D (units of every Dense but the last) and the matching
input channels of the next layer, returning a smaller dense model to fine-tune.
``benchmarks/bench_int8.py`` measures both.

>>> cb = pruning.Pruning(pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=600))
>>> model.fit(x, y, epochs=3, callbacks=[cb])
>>> pruning.get_sparsity(model)["total"]   # 0.8
"""
import math
import numbers

import numpy as np

from fastnet.callbacks import Callback

__all__ = ["PolynomialDecay", "ConstantSparsity", "Pruning", "prune_low_magnitude",
           "prunable_kernels", "get_sparsity", "prune_filters"]


def _check_sparsity(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
    return float(v)


def _check_step(v, name, minimum=0):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


class _Schedule:
    """``schedule(step) -> (prune now?, sparsity)``: prune within [begin_step, end_step]
    (end_step -1: forever) every ``frequency`` steps, as tfmot's schedules."""

    def _in_turn(self, step):
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class ConstantSparsity(_Schedule):
    """The same ``target_sparsity`` at every pruning step."""

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity(target_sparsity, "target_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        self.end_step = int(end_step) if end_step == -1 else _check_step(end_step, "end_step",
                                                                         self.begin_step)
        self.frequency = _check_step(frequency, "frequency", 1)

    def __call__(self, step):
        return self._in_turn(step), self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


class PolynomialDecay(_Schedule):
    """Sparsity rising quickly, then levelling off (Zhu & Gupta 2017; tfmot's formula):
    ``s(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)``."""

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        self.initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        self.end_step = _check_step(end_step, "end_step", self.begin_step + 1)
        self.frequency = _check_step(frequency, "frequency", 1)
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
            raise ValueError(f"power must be a positive number, got {power!r}")
        self.power = float(power)

    def __call__(self, step):
        p = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        sparsity = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * \
            (1.0 - p) ** self.power
        return self._in_turn(step), sparsity

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}


# ---- masks ----------------------------------------------------------------------------------
def prunable_kernels(model, layers=None):
    """[(layer, kernel array)] of the Conv2D / Dense layers to prune: all of them, or those
    named (or given) in ``layers``."""
    from fastnet.layers.conv import Conv2D
    from fastnet.layers.core import Dense
    if not getattr(model, "built", False):
        raise ValueError("pruning: the model is not built yet; fit it or call build first")
    kernels = [(l, l.params["kernel"]) for l in model.layers if isinstance(l, (Conv2D, Dense))]
    if layers is not None:
        wanted = {l if isinstance(l, str) else getattr(l, "name", None) for l in layers}
        unknown = wanted - {l.name for l, _ in kernels}
        if unknown:
            raise ValueError(f"pruning: no Conv2D/Dense layer named {sorted(unknown)} in the "
                             f"model")
        kernels = [(l, k) for l, k in kernels if l.name in wanted]
    if not kernels:
        raise ValueError("pruning: the model has no Conv2D or Dense kernel to prune")
    return kernels


def _smallest(magnitudes, count):
    """Boolean mask (True = keep) that drops exactly ``count`` of the smallest ``magnitudes``
    (ties broken by position, so the count is exact)."""
    keep = np.ones(magnitudes.size, bool)
    if count > 0:
        keep[np.argpartition(magnitudes.reshape(-1), count - 1)[:count]] = False
    return keep


def _masks(kernels, sparsity, scope):
    """One keep-mask per kernel for ``sparsity`` (per layer, or global)."""
    if scope == "layer":
        return [_smallest(np.abs(k), int(round(sparsity * k.size))).reshape(k.shape)
                for _, k in kernels]
    flat = np.concatenate([np.abs(k).reshape(-1).astype(np.float64) for _, k in kernels])
    keep = _smallest(flat, int(round(sparsity * flat.size)))
    masks, at = [], 0
    for _, k in kernels:
        masks.append(keep[at:at + k.size].reshape(k.shape))
        at += k.size
    return masks


def _check_scope(scope):
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    return scope


def prune_low_magnitude(model, sparsity, scope="layer", layers=None):
    """Zero the smallest weights of the model's Conv2D/Dense kernels, in place, once.

    ``scope='layer'``: each kernel keeps exactly ``size - round(sparsity * size)`` weights;
    ``'global'``: the ``round(sparsity * total)`` smallest magnitudes over all kernels go.
    Returns {layer name: keep mask (bool, kernel shape)}."""
    sparsity = _check_sparsity(sparsity, "sparsity")
    kernels = prunable_kernels(model, layers)
    masks = _masks(kernels, sparsity, _check_scope(scope))
    for (_, k), m in zip(kernels, masks):
        np.multiply(k, m, out=k)
    return {l.name: m for (l, _), m in zip(kernels, masks)}


def get_sparsity(model, layers=None):
    """{layer name: fraction of zero kernel weights, ..., 'total': over all of them}."""
    kernels = prunable_kernels(model, layers)
    report = {l.name: float(np.count_nonzero(k == 0)) / k.size for l, k in kernels}
    report["total"] = float(sum(np.count_nonzero(k == 0) for _, k in kernels)) / \
        sum(k.size for _, k in kernels)
    return report


class Pruning(Callback):
    """Gradual magnitude pruning during ``fit``.

    ``schedule``: a ``PolynomialDecay`` or ``ConstantSparsity`` (or any callable step ->
    (prune?, sparsity)); ``scope`` 'layer' or 'global'; ``layers`` restricts the pruned
    kernels.  The step counts optimizer steps over every ``fit`` this callback joins (tfmot's
    pruning step), so a second ``fit`` continues the schedule.  After each step the kernels are
    multiplied by their masks: pruned weights are exactly 0 whenever a batch ends.
    ``masks`` holds {layer name: keep mask} once pruning started.
    """

    def __init__(self, schedule, scope="layer", layers=None):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a pruning schedule, got {type(schedule).__name__}")
        self.schedule, self.scope, self.layers = schedule, _check_scope(scope), layers
        self.step = 0
        self.masks = None
        self._kernels = self._scales = None

    def on_train_begin(self, logs=None):
        self._kernels = prunable_kernels(self.model, self.layers)
        if self.masks is not None:   # a later fit: keep the masks found so far
            self._scales = [self.masks[l.name].astype(k.dtype) for l, k in self._kernels]

    def on_train_batch_end(self, batch, logs=None):
        prune, sparsity = self.schedule(self.step)
        if prune:
            masks = _masks(self._kernels, _check_sparsity(float(sparsity), "sparsity"),
                           self.scope)
            self.masks = {l.name: m for (l, _), m in zip(self._kernels, masks)}
            self._scales = [m.astype(k.dtype) for (_, k), m in zip(self._kernels, masks)]
        if self._scales is not None:
            for (_, k), s in zip(self._kernels, self._scales):
                np.multiply(k, s, out=k)
        self.step += 1


# ---- structured pruning ---------------------------------------------------------------------
def prune_filters(model, fraction, layers=None):
    """A smaller copy of a Sequential model without the ``fraction`` of filters (Conv2D) and
    units (Dense) of lowest L1 norm in each pruned layer, and without the matching input
    channels of the layers that read them.  The last Conv2D/Dense (whose width is the model's
    output) is never pruned.  Returns a new, uncompiled Sequential; fine-tune it.

    Supports chains of Conv2D, Dense, BatchNormalization, pooling, Flatten, Dropout,
    Activation/ReLU and ZeroPadding2D layers."""
    from fastnet.layers.activation_layers import ReLU
    from fastnet.layers.conv import Conv2D
    from fastnet.layers.core import Activation, Dense, Flatten
    from fastnet.layers.normalization import BatchNormalization
    from fastnet.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D,
                                        GlobalMaxPooling2D, MaxPooling2D)
    from fastnet.layers.regularization import Dropout
    from fastnet.layers.reshaping import ZeroPadding2D
    from fastnet.models.sequential import Sequential

    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
            or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be a number in [0, 1), got {fraction!r}")
    if not isinstance(model, Sequential) or not model.built:
        raise ValueError("prune_filters needs a built Sequential model")
    chain = (Conv2D, Dense, BatchNormalization, MaxPooling2D, AveragePooling2D,
             GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Dropout, Activation, ReLU,
             ZeroPadding2D)
    for layer in model.layers:
        if type(layer) not in chain:
            raise ValueError(f"prune_filters cannot handle {type(layer).__name__} "
                             f"({layer.name})")
    linear = [l for l in model.layers if type(l) in (Conv2D, Dense)]
    targets = {l.name for l, _ in prunable_kernels(model, layers)} - {linear[-1].name}

    new_layers, weights = [], []
    channels = np.arange(model.input_shape[-1])   # kept channels of the current tensor
    spatial = tuple(model.input_shape[1:-1])      # its (H, W) when it is an image
    for layer in model.layers:
        cfg = layer.get_config()
        cfg.pop("input_shape", None)
        w = [a.copy() for a in layer.get_weights()]
        kind = type(layer)
        if kind in (Conv2D, Dense):
            kernel = w[0][..., channels, :] if kind is Conv2D else w[0][channels, :]
            out = np.arange(kernel.shape[-1])
            if layer.name in targets:
                norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
                keep = max(1, int(math.ceil((1.0 - fraction) * out.size)))
                out = np.sort(np.argsort(-norms, kind="stable")[:keep])
            w = [kernel[..., out]] + ([w[1][out]] if len(w) > 1 else [])
            cfg["filters" if kind is Conv2D else "units"] = int(out.size)
            channels = out
            spatial = tuple(layer.output_shape[:-1])
        elif kind is BatchNormalization:
            w = [a[channels] for a in w]
        elif kind is Flatten:
            # NHWC flatten: element (h, w, c) lands at (h * W + w) * C + c
            full = layer.input_shape[-1]
            pos = np.arange(int(np.prod(spatial))).reshape(-1, 1) * full + channels
            channels = pos.reshape(-1)
            spatial = ()
        elif kind in (GlobalAveragePooling2D, GlobalMaxPooling2D):
            spatial = () if len(layer.output_shape) == 1 else tuple(layer.output_shape[:-1])
        else:
            spatial = tuple(layer.output_shape[:-1])
        new = kind.from_config(cfg)
        new_layers.append(new)
        weights.append(w)
    pruned = Sequential(new_layers, name=f"{model.name}_pruned")
    pruned.build(model.input_shape)
    for layer, w in zip(pruned.layers, weights):
        layer.set_weights(w)
    return pruned

"""Model and weight files: a zip of JSON (architecture, compile settings) and .npy arrays.

Loading never runs code from the file: no pickle (``allow_pickle=False``), layer and optimizer
classes are looked up by name among fastnet's own, and every array's size is checked against
what the architecture implies before it is read.  Writes are atomic.
"""
import json
import os
import zipfile

import numpy as np

from fastnet import metrics as metrics_mod
from fastnet.utils import serialization as _serial
from fastnet.utils.files import atomic_path

FORMAT = "fastnet"
VERSION = 1
_META = "fastnet.json"
_MAX_META_BYTES = 16 << 20


def _npy_bytes(arr):
    import io
    buf = io.BytesIO()
    arr = np.asarray(arr)
    if not arr.flags.c_contiguous:  # (ascontiguousarray would turn a 0-d array into 1-d)
        arr = arr.copy(order="C")
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _write(path, meta, arrays):
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_META, json.dumps(meta, indent=1))
            for name, arr in arrays.items():
                zf.writestr(f"{name}.npy", _npy_bytes(arr))


class _Reader:
    """Reads a fastnet file, refusing anything that does not look exactly as expected."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self.zf = zipfile.ZipFile(self.path)
            info = self.zf.getinfo(_META)
            if info.file_size > _MAX_META_BYTES:
                raise ValueError("metadata too large")
            self.meta = json.loads(self.zf.read(_META))
        except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError, EOFError) as e:
            raise ValueError(f"{self.path} is not a valid fastnet file (truncated, corrupted or "
                             f"another format): {e}") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a fastnet file")
        version = self.meta.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise ValueError(f"{self.path} was written by a newer fastnet (format version "
                             f"{version}; this fastnet reads up to {VERSION}): upgrade fastnet")

    def array(self, name, shape, dtype):
        """The array ``name``; its stored shape and dtype must be ``shape`` and ``dtype``."""
        member = f"{name}.npy"
        try:
            info = self.zf.getinfo(member)
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if info.file_size > expected + 4096:
                raise ValueError(f"{member} is larger than its declared shape {tuple(shape)}")
            with self.zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                hdr_shape, fortran, hdr_dtype = read_header(f)
                if tuple(hdr_shape) != tuple(shape) or hdr_dtype != np.dtype(dtype) or fortran:
                    raise ValueError(f"{member} holds {hdr_dtype} {tuple(hdr_shape)}, expected "
                                     f"{np.dtype(dtype)} {tuple(shape)}")
                data = f.read(expected + 1)
        except (KeyError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            if isinstance(e, ValueError) and str(e).startswith(member):
                raise ValueError(f"{self.path}: {e}") from None
            raise ValueError(f"{self.path}: cannot read {member} (truncated or corrupted): "
                             f"{e}") from None
        if len(data) != expected:
            raise ValueError(f"{self.path}: {member} is truncated or has trailing data")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()

    def close(self):
        self.zf.close()


def _weights_meta(model):
    entries = []
    for layer in model.layers:
        for name, w in layer.params.items():
            entries.append({"name": f"{layer.name}/{name}", "shape": list(w.shape),
                            "dtype": w.dtype.name})
    return entries


def save_weights(model, path):
    """Write every weight of ``model`` to ``path`` (atomic)."""
    model._require_built("save_weights")
    meta = {"format": FORMAT, "version": VERSION, "kind": "weights",
            "weights": _weights_meta(model)}
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    _write(path, meta, arrays)


def _read_weights(reader, model):
    expected = _weights_meta(model)
    stored = reader.meta.get("weights")
    if not isinstance(stored, list) or len(stored) != len(expected):
        raise ValueError(f"{reader.path} holds {len(stored) if isinstance(stored, list) else 'no'} "
                         f"weight arrays but the model has {len(expected)}")
    for s, e in zip(stored, expected):
        if not isinstance(s, dict) or list(s.get("shape", [])) != e["shape"]:
            raise ValueError(f"{reader.path}: weight {s.get('name') if isinstance(s, dict) else s} "
                             f"has shape {s.get('shape') if isinstance(s, dict) else '?'}, the "
                             f"model's {e['name']} needs {e['shape']}")
    return [reader.array(f"w{i}", e["shape"], e["dtype"]) for i, e in enumerate(expected)]


def load_weights(model, path):
    """Set ``model``'s weights from a file written by ``save_weights`` or ``save``."""
    model._require_built("load_weights")
    reader = _Reader(path)
    try:
        weights = _read_weights(reader, model)
    finally:
        reader.close()
    model.set_weights(weights)


def _class_config(obj):
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def save_model(model, path):
    """Write architecture, weights, compile settings and optimizer state to ``path`` (atomic)."""
    model._require_built("save")
    meta = {"format": FORMAT, "version": VERSION, "kind": "model",
            "model": _class_config(model), "weights": _weights_meta(model)}
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    if model.compiled:
        meta["compile"] = {
            "optimizer": _class_config(model.optimizer),
            "loss": _class_config(model.loss),
            "metrics": [m if isinstance(m, str) else metrics_mod.serialize(m)
                        for m in model._metric_ids],
        }
        state = model.optimizer.get_state() if hasattr(model.optimizer, "get_state") else {}
        meta["optimizer_state"] = {k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.name}
                                   for k, v in state.items()}
        arrays.update({f"opt_{k}": np.asarray(v) for k, v in state.items()})
    _write(path, meta, arrays)


def _from_class_config(module, base, entry):
    """An instance of a class of ``module`` (fastnet's own, nothing else) from its dict."""
    return _serial.deserialize(entry, lambda name: getattr(module, name, None), base,
                               base.__name__)


def load_model(path, compile=True):
    """Rebuild a model written by ``model.save(path)``: architecture, weights, and (with
    ``compile=True``) the optimizer, loss, metrics and optimizer state."""
    from fastnet import losses, optimizers
    from fastnet.models.sequential import Sequential

    reader = _Reader(path)
    try:
        if reader.meta.get("kind") != "model":
            raise ValueError(f"{path} holds only weights; build the model and call load_weights")
        config = reader.meta.get("model")
        if not isinstance(config, dict) or config.get("class_name") != "Sequential":
            raise ValueError(f"{path}: unsupported model class "
                             f"{config.get('class_name') if isinstance(config, dict) else config!r}")
        try:
            model = Sequential.from_config(config["config"])
        except (TypeError, KeyError) as e:
            raise ValueError(f"{path}: malformed model configuration: {e}") from None
        weights = _read_weights(reader, model)
        model.set_weights(weights)
        comp = reader.meta.get("compile")
        if compile and comp is not None:
            try:
                opt = _from_class_config(optimizers, optimizers.Optimizer, comp["optimizer"])
                loss = _from_class_config(losses, losses.Loss, comp["loss"])
            except (TypeError, KeyError) as e:
                raise ValueError(f"{path}: malformed compile configuration: {e}") from None
            model.compile(optimizer=opt, loss=loss, metrics=list(comp.get("metrics", [])))
            state_meta = reader.meta.get("optimizer_state") or {}
            if state_meta and hasattr(opt, "set_state"):
                state = {k: reader.array(f"opt_{k}", v["shape"], v["dtype"])
                         for k, v in state_meta.items()}
                opt.set_state(state)
        return model
    finally:
        reader.close()

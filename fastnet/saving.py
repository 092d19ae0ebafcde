"""Model and weight files: a zip of one JSON manifest and .npy arrays, safe to load from anywhere.

Layout (format version 2; version 1 files, without checksums, are still read)::

    fastnet.json        manifest: format, version, kind ('model' or 'weights'), the architecture
                        ({"class_name", "config"}), the weights' names/shapes/dtypes, the compile
                        settings (optimizer, loss, metrics), the optimizer state's entries, the
                        layers' own state (Dropout's seed and step), the random generator's state
                        and, for every array member, its byte count and sha256
    w0.npy, w1.npy ...  the weights in ``model.get_weights()`` order
    opt_<slot>.npy      the optimizer state (``iterations``, ``learning_rate``, slot buffers)

Loading never runs code from the file and never allocates what the file merely claims:

* no pickle anywhere (arrays are read from their .npy header and raw bytes; only float and
  integer dtypes are accepted, object and structured dtypes are refused before any read);
* classes (layers, optimizers, losses, metrics) are looked up by name among fastnet's own;
* the zip must be plain: stored (uncompressed) members only, no encryption, no duplicate names,
  at most ``_MAX_MEMBERS`` of them, each no larger than the file itself and all together no
  larger than the file (which rules out compression and overlap bombs);
* the architecture is first "dry-built" (weight shapes computed without allocating them), its
  weights must match the manifest, and the manifest's arrays must fit in the file, all before
  any weight is allocated;
* each array's header must state exactly the manifest's shape and dtype, its member exactly
  that many bytes, and its bytes must hash to the manifest's sha256 (plus the zip's CRC-32).

A truncated, bit-flipped or foreign file raises ``ValueError`` naming the file and the problem.
Writes are atomic (a temporary file ``.{name}.{pid}@{host}.{random}.fastnet-tmp`` in the same
folder, fsync'ed, then renamed over the target; see ``fastnet.utils.files``): a save killed at
any point, even by SIGKILL, leaves the previous file intact; an error or Ctrl-C removes the
temporary file, and the next save to the path removes those of writers that were killed.
"""
import hashlib
import json
import numbers
import os
import re
import struct
import zipfile
import zlib

import numpy as np

from fastnet import metrics as metrics_mod
from fastnet.utils import serialization as _serial
from fastnet.utils.files import atomic_path

FORMAT = "fastnet"
VERSION = 2
_META = "fastnet.json"
_MAX_META_BYTES = 16 << 20
_MAX_MEMBERS = 1 << 16
_MAX_NDIM = 8
_MAX_HEADER = 4096            # bytes of an .npy header (ours are < 200)
# dtypes an array member may hold: weights (float), optimizer counters (int64)
_DTYPES = frozenset(np.dtype(t) for t in ("float32", "float64", "int64", "int32", "uint8"))
_SLOT_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Non-weight attributes of layers that training changes and a resumed run needs (Dropout's
# seed drawn at build time and its count of training calls, which picks the next mask).
_LAYER_STATE = ("_seed", "step")
# Errors the zip and npy readers raise on damaged input; all become a ValueError.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, TypeError,
                UnicodeDecodeError, EOFError, OSError, struct.error, zlib.error, OverflowError,
                NotImplementedError, RuntimeError, SyntaxError, IndexError, AttributeError)


class _HashingWriter:
    """A write-only stream that forwards to ``f`` and counts the bytes written."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def write(self, data):
        n = self.f.write(data)
        self.count += len(memoryview(data).cast("B"))
        return n


def _c_array(arr):
    arr = np.asarray(arr)
    if arr.dtype not in _DTYPES:
        raise TypeError(f"cannot save an array of dtype {arr.dtype}: only "
                        f"{sorted(d.name for d in _DTYPES)}")
    if not arr.flags.c_contiguous:  # (ascontiguousarray would turn a 0-d array into 1-d)
        arr = arr.copy(order="C")
    return arr


def _sha256(arr):
    return hashlib.sha256(arr.reshape(-1).view(np.uint8)).hexdigest()


def _write(path, meta, arrays):
    """Write the manifest ``meta`` and ``arrays`` {name: array} atomically to ``path``.

    Arrays are streamed into the zip (no second copy in memory); the manifest, written last,
    records each member's byte count and the sha256 of its data."""
    entries = {}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                arr = _c_array(arr)
                member = f"{name}.npy"
                with zf.open(member, "w", force_zip64=arr.nbytes + _MAX_HEADER >= 1 << 31) as f:
                    out = _HashingWriter(f)
                    np.lib.format.write_array(out, arr, allow_pickle=False)
                entries[member] = {"nbytes": out.count, "data_nbytes": arr.nbytes,
                                   "sha256": _sha256(arr)}
            meta = dict(meta, arrays=entries)
            zf.writestr(_META, json.dumps(meta, indent=1))


def _bad(path, why):
    return ValueError(f"{path} is not a valid fastnet file (truncated, corrupted or another "
                      f"format): {why}")


def _check_shape(shape, what):
    """A list of at most _MAX_NDIM non-negative Python ints, as a tuple."""
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 62 for s in shape):
        raise ValueError(f"{what}: malformed shape {shape!r}")
    return tuple(shape)


def _nbytes(shape, dtype):
    n = np.dtype(dtype).itemsize
    for s in shape:
        n *= s        # Python ints: no overflow
    return n


class _Reader:
    """Reads a fastnet file, refusing anything that does not look exactly as expected."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.file = open(self.path, "rb")
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self):
        self.size = os.fstat(self.file.fileno()).st_size
        try:
            self.zf = zipfile.ZipFile(self.file)
            infos = self.zf.infolist()
        except _READ_ERRORS as e:
            raise _bad(self.path, e) from None
        if len(infos) > _MAX_MEMBERS:
            raise _bad(self.path, f"{len(infos)} members (at most {_MAX_MEMBERS})")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _bad(self.path, "duplicate member names")
        total = 0
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise _bad(self.path, f"member {info.filename!r} is compressed or encrypted "
                                      f"(fastnet writes plain stored members only)")
            if info.file_size != info.compress_size or info.file_size > self.size:
                raise _bad(self.path, f"member {info.filename!r} claims {info.file_size} bytes "
                                      f"in a file of {self.size}")
            total += info.file_size
        if total > self.size:
            raise _bad(self.path, f"its members claim {total} bytes in a file of {self.size}")
        self.infos = dict(zip(names, infos))
        if _META not in self.infos:
            raise _bad(self.path, f"no {_META} manifest")
        if self.infos[_META].file_size > _MAX_META_BYTES:
            raise _bad(self.path, f"manifest larger than {_MAX_META_BYTES} bytes")
        try:
            self.meta = json.loads(self.zf.read(_META).decode("utf-8"))
        except (_READ_ERRORS + (RecursionError,)) as e:
            raise _bad(self.path, e) from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise _bad(self.path, "not a fastnet manifest")
        version = self.meta.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _bad(self.path, f"malformed format version {version!r}")
        if version > VERSION:
            raise ValueError(f"{self.path} was written by a newer fastnet (format version "
                             f"{version}; this fastnet reads up to {VERSION}): upgrade fastnet")
        self.version = version
        self.entries = self.meta.get("arrays", {}) if version >= 2 else None
        if self.entries is not None and not isinstance(self.entries, dict):
            raise _bad(self.path, "malformed array table")

    def check_fits(self, shapes_dtypes):
        """Refuse before allocating: the arrays ``[(shape, dtype)]`` must fit in the file."""
        need = sum(_nbytes(s, d) for s, d in shapes_dtypes)
        if need > self.size:
            raise _bad(self.path, f"its arrays need {need} bytes but the file has {self.size}")

    def array(self, name, shape, dtype):
        """The array ``name``; its stored shape and dtype must be ``shape`` and ``dtype``."""
        member = f"{name}.npy"
        shape = _check_shape(shape, f"{self.path}: {member}")
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"{self.path}: {member} has dtype {dtype}, which fastnet files "
                             f"never hold")
        expected = _nbytes(shape, dtype)
        info = self.infos.get(member)
        if info is None:
            raise _bad(self.path, f"member {member} is missing")
        entry = None
        if self.entries is not None:
            entry = self.entries.get(member)
            if not isinstance(entry, dict) or entry.get("data_nbytes") != expected \
                    or entry.get("nbytes") != info.file_size \
                    or not isinstance(entry.get("sha256"), str):
                raise _bad(self.path, f"{member} does not match its manifest entry")
        if info.file_size > expected + _MAX_HEADER or info.file_size < expected:
            raise _bad(self.path, f"{member} has {info.file_size} bytes, its declared shape "
                                  f"{shape} {dtype} needs {expected} plus a header")
        try:
            with self.zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unknown .npy version {version}")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                hdr_shape, fortran, hdr_dtype = read_header(f, max_header_size=_MAX_HEADER)
                if hdr_dtype != dtype or hdr_dtype.hasobject or fortran \
                        or tuple(hdr_shape) != shape:
                    raise _bad(self.path, f"{member} holds {hdr_dtype} {tuple(hdr_shape)}"
                                          f"{' (Fortran order)' if fortran else ''}, expected "
                                          f"{dtype} {shape}")
                if info.file_size - f.tell() != expected:
                    raise _bad(self.path, f"{member} is truncated or has trailing data")
                arr = np.empty(shape, dtype)
                view = memoryview(arr.reshape(-1).view(np.uint8))
                got = 0
                while got < expected:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got != expected or f.read(1):  # reading to the end checks the zip CRC-32
                    raise _bad(self.path, f"{member} is truncated or has trailing data")
        except ValueError as e:
            if str(e).startswith(self.path):
                raise
            raise _bad(self.path, f"cannot read {member}: {e}") from None
        except _READ_ERRORS as e:
            raise _bad(self.path, f"cannot read {member}: {e}") from None
        if entry is not None and _sha256(arr) != entry["sha256"]:
            raise _bad(self.path, f"{member} fails its sha256 checksum (the data are corrupted)")
        return arr

    def close(self):
        zf = getattr(self, "zf", None)
        if zf is not None:
            zf.close()
        self.file.close()


# ------------------------------------------------------------------------------ weights
def _weights_meta(model):
    entries = []
    for layer in model.layers:
        for name, w in layer.params.items():
            entries.append({"name": f"{layer.name}/{name}", "shape": list(w.shape),
                            "dtype": w.dtype.name})
    return entries


def _stored_weights(reader):
    """The manifest's weight entries, validated: [(name, shape, dtype)]."""
    stored = reader.meta.get("weights")
    if not isinstance(stored, list) or len(stored) > _MAX_MEMBERS:
        raise _bad(reader.path, "malformed weight table")
    out = []
    for s in stored:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise _bad(reader.path, f"malformed weight entry {s!r}"[:200])
        out.append((s["name"],) + _array_spec(reader, s, f"weight {s['name']}", "f"))
    return out


def _array_spec(reader, entry, what, kinds="fiu"):
    """(shape, dtype) of a manifest entry {"shape", "dtype"}, validated."""
    shape = _check_shape(entry.get("shape"), f"{reader.path}: {what}")
    try:
        dtype = np.dtype(entry.get("dtype"))
    except TypeError:
        raise _bad(reader.path, f"{what} has dtype {entry.get('dtype')!r}") from None
    if dtype.kind not in kinds or dtype not in _DTYPES:
        raise _bad(reader.path, f"{what} has dtype {dtype}")
    return shape, dtype


def _read_weights(reader, model):
    stored = _stored_weights(reader)
    expected = _weights_meta(model)
    if len(stored) != len(expected):
        raise ValueError(f"{reader.path} holds {len(stored)} weight arrays but the model has "
                         f"{len(expected)}")
    for (name, shape, dtype), e in zip(stored, expected):
        if list(shape) != e["shape"]:
            raise ValueError(f"{reader.path}: weight {name} has shape {list(shape)}, the "
                             f"model's {e['name']} needs {e['shape']}")
    reader.check_fits([(shape, dtype) for _, shape, dtype in stored])
    # stored in the file's dtype; set_weights casts into the model's
    return [reader.array(f"w{i}", shape, dtype) for i, (_, shape, dtype) in enumerate(stored)]


def save_weights(model, path):
    """Write every weight of ``model`` to ``path`` (atomic)."""
    model._require_built("save_weights")
    meta = {"format": FORMAT, "version": VERSION, "kind": "weights",
            "weights": _weights_meta(model)}
    _write(path, meta, {f"w{i}": w for i, w in enumerate(model.get_weights())})


def load_weights(model, path):
    """Set ``model``'s weights from a file written by ``save_weights`` or ``save``."""
    model._require_built("load_weights")
    reader = _Reader(path)
    try:
        weights = _read_weights(reader, model)
    finally:
        reader.close()
    model.set_weights(weights)


# ---------------------------------------------------------------------------- whole models
def _class_config(obj):
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def _from_class_config(module, base, entry):
    """An instance of a class of ``module`` (fastnet's own, nothing else) from its dict."""
    return _serial.deserialize(entry, lambda name: getattr(module, name, None), base,
                               base.__name__)


def _layer_state(model):
    """{layer name: {attr: int}} for the training state layers keep outside their weights."""
    state = {}
    for layer in model.layers:
        values = {a: getattr(layer, a) for a in _LAYER_STATE
                  if isinstance(getattr(layer, a, None), numbers.Integral)}
        if values:
            state[layer.name] = {a: int(v) for a, v in values.items()}
    return state


def _set_layer_state(model, state, path):
    if not isinstance(state, dict):
        raise _bad(path, "malformed layer state")
    by_name = {layer.name: layer for layer in model.layers}
    for name, values in state.items():
        layer = by_name.get(name)
        if layer is None or not isinstance(values, dict):
            raise _bad(path, f"layer state for unknown layer {name!r}")
        for attr, v in values.items():
            if attr not in _LAYER_STATE or not isinstance(v, int) or isinstance(v, bool) \
                    or not 0 <= v < 1 << 64 or not hasattr(layer, attr):
                raise _bad(path, f"malformed layer state {name}.{attr}")
            setattr(layer, attr, v)


def save_model(model, path):
    """Write architecture, weights, compile settings, optimizer state (step count included),
    the layers' own training state and the random generator's state to ``path`` (atomic)."""
    from fastnet.utils.random import get_rng

    model._require_built("save")
    meta = {"format": FORMAT, "version": VERSION, "kind": "model",
            "model": _class_config(model), "weights": _weights_meta(model),
            "layer_state": _layer_state(model),
            "random_state": get_rng().bit_generator.state}
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    if model.compiled:
        def metric_list(ids):
            return [m if isinstance(m, str) else metrics_mod.serialize(m) for m in ids]
        several = isinstance(model.loss, list)      # a model with several outputs
        meta["compile"] = {
            "optimizer": _class_config(model.optimizer),
            "loss": [None if l is None else _class_config(l) for l in model.loss] if several
            else _class_config(model.loss),
            "metrics": [metric_list(ids) for ids in model._metric_ids] if several
            else metric_list(model._metric_ids),
            "loss_weights": getattr(model, "_loss_weights_arg", None),
        }
        state = model.optimizer.get_state() if hasattr(model.optimizer, "get_state") else {}
        for k in state:
            if not _SLOT_NAME.match(k):
                raise ValueError(f"optimizer state entry {k!r} cannot be saved (name)")
        meta["optimizer_state"] = {k: {"shape": list(np.shape(v)),
                                       "dtype": np.asarray(v).dtype.name}
                                   for k, v in state.items()}
        arrays.update({f"opt_{k}": np.asarray(v) for k, v in state.items()})
    _write(path, meta, arrays)


def _model_class(name):
    from fastnet import models
    cls = getattr(models, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, models.Model) \
        and hasattr(cls, "from_config") else None


def _dry_build_layer(layer, input_shape):
    """Output shape(s) and [(weight name, shape)] of ``layer`` on ``input_shape`` (a list of
    shapes for a multi-input layer), without allocating its weights: ``add_weight`` is replaced
    on the instance by a recorder returning a zero-strided placeholder."""
    shapes = []

    def record(name, shape, *args, **kwargs):
        shape = tuple(int(s) for s in shape)
        if _nbytes(shape, layer.dtype) >= 1 << 62:
            raise ValueError(f"{layer.name}: weight {name} of shape {shape} is too large")
        shapes.append((name, shape))
        return np.broadcast_to(np.zeros((), layer.dtype), shape)

    layer.add_weight = record
    try:
        out = layer.compute_output_shape(input_shape)
        layer.input_shape, layer.output_shape = input_shape, out    # as Layer.build sets them
        layer.build_weights(input_shape)
    finally:
        del layer.add_weight
    return out, shapes


def _layer_from(entry):
    from fastnet import layers as layers_mod
    from fastnet.layers.base import Layer
    return _from_class_config(layers_mod, Layer, entry)


def _planned_sequential(config):
    from fastnet.layers.core import InputLayer

    entries = config.get("layers")
    if not isinstance(entries, list):
        raise ValueError("the configuration needs a list of layers")
    layer_objs = [l for l in map(_layer_from, entries) if not isinstance(l, InputLayer)]
    shape = config.get("input_shape")
    if shape is None and layer_objs:
        shape = layer_objs[0].batch_input_shape
    if shape is None:
        return None
    shape = _check_shape(list(shape), "input_shape")
    planned = []
    for layer in layer_objs:
        shape, weights = _dry_build_layer(layer, shape)
        shape = _check_shape(list(shape), f"output of {layer.name}")
        planned.extend(weights)
    return planned


def _planned_functional(config):
    """Weight shapes of a functional configuration: the recorded calls replayed on shapes."""
    from fastnet.layers.core import InputLayer

    entries = config.get("layers")
    if not isinstance(entries, list):
        raise ValueError("the configuration needs a list of layers")
    layers, order = {}, []
    for entry in entries:
        layer = _layer_from(entry)
        name = entry.get("name", layer.name)
        if name in layers or not isinstance(entry.get("inbound_nodes", []), list):
            raise ValueError(f"layer entry {name!r}")
        layers[name] = (layer, entry.get("inbound_nodes", []))
        order.append(name)
    outputs = {(n, 0): [_check_shape(list(l.batch_input_shape), n)]
               for n, (l, _) in layers.items() if isinstance(l, InputLayer)}
    weights, made, progress = {}, dict.fromkeys(layers, 0), True
    while progress:
        progress = False
        for name, (layer, inbound) in layers.items():
            while made[name] < len(inbound):
                refs = inbound[made[name]]
                if not isinstance(refs, list):
                    raise ValueError(f"inbound node of {name}")
                shapes = []
                for r in refs:
                    got = outputs.get((r[0], r[1])) if isinstance(r, list) and len(r) >= 3 \
                        and isinstance(r[0], str) and isinstance(r[1], int) else None
                    if got is None or not isinstance(r[2], int) or not 0 <= r[2] < len(got):
                        break
                    shapes.append(got[r[2]])
                if len(shapes) != len(refs) or not shapes:
                    break
                arg = shapes if layer.multi_input else shapes[0]
                if name in weights:          # a shared layer: built once
                    out = layer.compute_output_shape(arg)
                else:
                    out, weights[name] = _dry_build_layer(layer, arg)
                many = isinstance(out, list) or (isinstance(out, tuple) and out and all(
                    isinstance(o, (tuple, list)) for o in out))
                outputs[(name, made[name])] = [_check_shape(list(o), name)
                                               for o in (out if many else [out])]
                made[name] += 1
                progress = True
    return [w for name in order for w in weights.get(name, [])]


def _not_plannable(config):
    """True when a model configuration holds another model among its layers, or None sizes
    in an input shape (Input(shape=(None, 16)))."""
    entries = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(entries, list):
        return False
    shapes = [config.get("input_shape")] + [
        (e.get("config") or {}).get("input_shape") for e in entries if isinstance(e, dict)]
    return any(isinstance(e, dict) and _model_class(e.get("class_name")) is not None
               for e in entries) or any(isinstance(s, (list, tuple)) and None in s
                                        for s in shapes)


def _check_planned(reader, config):
    """Refuse, before any weight is allocated, an architecture whose weights differ from the
    manifest's or do not fit in the file."""
    stored = _stored_weights(reader)
    reader.check_fits([(shape, dtype) for _, shape, dtype in stored])
    plan = {"Sequential": _planned_sequential,
            "Functional": _planned_functional}.get(config.get("class_name"))
    if plan is None or _not_plannable(config.get("config") or {}):
        return      # other models' weights are checked against the file after building
    try:
        planned = plan(config.get("config") or {})
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise ValueError(f"{reader.path}: malformed model configuration: {e}") from None
    if planned is None:
        return
    if [s for _, s in planned] != [s for _, s, _ in stored]:
        raise ValueError(f"{reader.path}: the architecture's weights "
                         f"{[list(s) for _, s in planned]} differ from the file's "
                         f"{[list(s) for _, s, _ in stored]}"[:2000])


def _restore_optimizer(reader, model, opt):
    state_meta = reader.meta.get("optimizer_state") or {}
    if not isinstance(state_meta, dict):
        raise _bad(reader.path, "malformed optimizer state")
    if not state_meta or not hasattr(opt, "set_state"):
        return
    specs = {}
    for k, v in state_meta.items():
        if not isinstance(k, str) or not _SLOT_NAME.match(k) or not isinstance(v, dict):
            raise _bad(reader.path, f"malformed optimizer state entry {k!r}"[:200])
        specs[k] = _array_spec(reader, v, f"optimizer state {k}")
    reader.check_fits(list(specs.values()))
    state = {k: reader.array(f"opt_{k}", s, d) for k, (s, d) in specs.items()}
    try:
        opt.set_state(state)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{reader.path}: optimizer state does not fit the optimizer: "
                         f"{e}") from None


def _random_state(reader):
    """The saved state of fastnet's random generator, validated on a scratch generator (None
    when the file has none)."""
    from fastnet.utils.random import get_rng

    state = reader.meta.get("random_state")
    if state is None:
        return None
    kind = type(get_rng().bit_generator)
    if not isinstance(state, dict) or state.get("bit_generator") != kind.__name__:
        raise _bad(reader.path, "malformed random state")
    try:
        kind().state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise _bad(reader.path, f"malformed random state: {e}") from None
    return state


def load_model(path, compile=True, restore_random_state=False):
    """Rebuild a model written by ``model.save(path)``: architecture, weights, the layers'
    training state and (with ``compile=True``) the optimizer, loss, metrics and optimizer state
    (step count included), so ``fit`` continues exactly where the saved model stopped.

    ``restore_random_state=True`` also puts fastnet's global random generator (shuffling,
    new seeds) back to where it was at the save, so that a resumed ``fit(shuffle=True)`` draws
    the same batches as the uninterrupted run would have (it changes process-wide state, hence
    off by default)."""
    reader = _Reader(path)
    try:
        if reader.meta.get("kind") != "model":
            raise ValueError(f"{path} holds only weights; build the model and call load_weights")
        config = reader.meta.get("model")
        if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
            raise _bad(reader.path, "malformed model entry")
        cls = _model_class(config.get("class_name"))
        if cls is None:
            raise ValueError(f"{path}: unsupported model class {config.get('class_name')!r}")
        random_state = _random_state(reader)
        _check_planned(reader, config)
        try:
            model = cls.from_config(config["config"])
        except (TypeError, KeyError, ValueError, OverflowError) as e:
            raise ValueError(f"{path}: malformed model configuration: {e}") from None
        if not model.built:
            raise ValueError(f"{path}: the model configuration has no input shape")
        weights = _read_weights(reader, model)
        model.set_weights(weights)
        _set_layer_state(model, reader.meta.get("layer_state", {}), reader.path)
        comp = reader.meta.get("compile")
        if compile and comp is not None:
            from fastnet import losses, optimizers
            if not isinstance(comp, dict):
                raise _bad(reader.path, "malformed compile settings")
            try:
                opt = _from_class_config(optimizers, optimizers.Optimizer, comp["optimizer"])
                loss = comp["loss"]
                loss = [None if l is None else _from_class_config(losses, losses.Loss, l)
                        for l in loss] if isinstance(loss, list) else \
                    _from_class_config(losses, losses.Loss, loss)
                metrics = comp.get("metrics", [])
                if not isinstance(metrics, list):
                    raise TypeError("metrics must be a list")
                kwargs = {}
                if comp.get("loss_weights") is not None:
                    kwargs["loss_weights"] = comp["loss_weights"]
                model.compile(optimizer=opt, loss=loss, metrics=metrics, **kwargs)
            except (TypeError, KeyError, ValueError) as e:
                raise ValueError(f"{path}: malformed compile configuration: {e}") from None
            _restore_optimizer(reader, model, opt)
        if restore_random_state and random_state is not None:
            from fastnet.utils.random import get_rng
            get_rng().bit_generator.state = random_state
        return model
    finally:
        reader.close()

"""Damaged and hostile model files are refused with a clear error, before anything in them runs
or is allocated; a save killed with SIGKILL leaves the previous file loadable."""
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastnet import layers, models, saving
from fastnet.utils import set_random_seed
from fastnet.utils.files import TMP_SUFFIX, _host_tag

# Child interpreters run from the folder holding the fastnet this test imported (the
# installed one in CI): started from a source checkout they would import its unbuilt copy.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(saving.__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_model():
    set_random_seed(0)
    model = models.Sequential([layers.Input(shape=(6, 6, 1)),
                               layers.Conv2D(2, 3, activation="relu"),
                               layers.Flatten(), layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    x = np.random.default_rng(0).random((8, 6, 6, 1)).astype(np.float32)
    model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "m.fnet"
    model = small_model()
    model.save(path)
    return path, path.read_bytes(), model


def rewrite(src, dst, edit_meta=None, replace=None, extra=(), compress=zipfile.ZIP_STORED):
    """Copy the zip ``src`` to ``dst``, editing the manifest and/or replacing members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compress) as zout:
        for item in zin.infolist():
            payload = zin.read(item)
            if item.filename == "fastnet.json" and edit_meta is not None:
                meta = json.loads(payload)
                edit_meta(meta)
                payload = json.dumps(meta).encode()
            if replace and item.filename in replace:
                payload = replace[item.filename]
            zout.writestr(item.filename, payload, compress_type=compress)
        for name, payload in extra:
            zout.writestr(name, payload)


class Evil:
    """Unpickling this creates the file ``marker``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_truncated_files_are_refused(saved, tmp_path):
    path, data, _ = saved
    bad = tmp_path / "t.fnet"
    for cut in sorted(set(list(range(0, len(data), max(1, len(data) // 60))) + [len(data) - 1,
                                                                               len(data) - 22])):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid fastnet file"):
            models.load_model(bad)


def test_every_bit_flip_is_refused_or_harmless(saved, tmp_path):
    """Flip one bit at every byte: either a ValueError, or (zip timestamps, padding) a model
    identical to the saved one."""
    path, data, model = saved
    ref_w, ref_state = model.get_weights(), model.optimizer.get_state()
    bad = tmp_path / "f.fnet"
    refused = harmless = 0
    for pos in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        bad.write_bytes(bytes(flipped))
        try:
            loaded = models.load_model(bad)
        except ValueError:
            refused += 1
            continue
        for a, b in zip(loaded.get_weights(), ref_w):
            np.testing.assert_array_equal(a, b)
        state = loaded.optimizer.get_state()
        for k, v in ref_state.items():
            np.testing.assert_array_equal(state[k], v)
        harmless += 1
    assert refused > 10 * harmless


def test_flipped_weight_data_fails_the_checksum(saved, tmp_path):
    path, data, _ = saved
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("w0.npy")
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 4
    flipped = bytearray(data)
    flipped[offset] ^= 0x10
    (tmp_path / "f.fnet").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="CRC|sha256|corrupted"):
        models.load_model(tmp_path / "f.fnet")
    # a forger who fixes the zip CRC still fails the manifest's sha256
    with zipfile.ZipFile(path) as zf:
        w0 = bytearray(zf.read("w0.npy"))
    w0[-1] ^= 0x01
    rewrite(path, tmp_path / "g.fnet", replace={"w0.npy": bytes(w0)})
    with pytest.raises(ValueError, match="sha256"):
        models.load_model(tmp_path / "g.fnet")


def test_pickle_files_are_refused_and_nothing_runs(saved, tmp_path):
    path, _, _ = saved
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(str(marker)))
    candidates = {}
    candidates["raw.fnet"] = payload                                  # a plain pickle
    buf = io.BytesIO()
    np.save(buf, np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    candidates["npy.fnet"] = buf.getvalue()                          # a pickled .npy
    for name, content in candidates.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not a valid fastnet file"):
            models.load_model(tmp_path / name)
    # a real fastnet file whose weight member is an object array holding a pickle
    rewrite(path, tmp_path / "obj.fnet", replace={"w0.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="does not match its manifest entry"):
        models.load_model(tmp_path / "obj.fnet")
    # ... even with the manifest forged to match
    rewrite(path, tmp_path / "obj.fnet", replace={"w0.npy": buf.getvalue()},
            edit_meta=lambda m: m["arrays"]["w0.npy"].update(nbytes=len(buf.getvalue())))
    with pytest.raises(ValueError, match="holds object .* expected float32"):
        models.load_model(tmp_path / "obj.fnet")
    m = small_model()
    with pytest.raises(ValueError):
        m.load_weights(tmp_path / "obj.fnet")
    # ... and an optimizer slot
    rewrite(path, tmp_path / "opt.fnet", replace={"opt_iterations.npy": buf.getvalue()})
    with pytest.raises(ValueError):
        models.load_model(tmp_path / "opt.fnet")
    assert not marker.exists()


def test_zip_bombs_and_odd_archives_are_refused(saved, tmp_path):
    path, _, _ = saved
    rewrite(path, tmp_path / "deflated.fnet", compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="compressed"):
        models.load_model(tmp_path / "deflated.fnet")
    with zipfile.ZipFile(tmp_path / "bomb.fnet", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fastnet.json", b" " * (64 << 20))     # 64 MiB of blanks, ~64 KiB stored
    with pytest.raises(ValueError, match="compressed"):
        models.load_model(tmp_path / "bomb.fnet")
    with zipfile.ZipFile(tmp_path / "big.fnet", "w") as zf:
        zf.writestr("fastnet.json", b" " * (17 << 20))
    with pytest.raises(ValueError, match="manifest larger"):
        models.load_model(tmp_path / "big.fnet")
    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite(path, tmp_path / "dup.fnet", extra=[("w0.npy", b"x")])
    with pytest.raises(ValueError, match="duplicate"):
        models.load_model(tmp_path / "dup.fnet")
    rewrite(path, tmp_path / "nometa.fnet", replace={"fastnet.json": b"[1, 2]"})
    with pytest.raises(ValueError, match="not a fastnet manifest"):
        models.load_model(tmp_path / "nometa.fnet")
    rewrite(path, tmp_path / "deep.fnet", replace={"fastnet.json": b"[" * 100000})
    with pytest.raises(ValueError, match="not a valid fastnet file"):
        models.load_model(tmp_path / "deep.fnet")


def test_newer_version_and_malformed_manifests(saved, tmp_path):
    path, _, _ = saved

    def refused(edit, match):
        rewrite(path, tmp_path / "x.fnet", edit_meta=edit)
        with pytest.raises(ValueError, match=match):
            models.load_model(tmp_path / "x.fnet")

    refused(lambda m: m.update(version=99), "newer fastnet .*version 99.*upgrade")
    refused(lambda m: m.update(version="2"), "malformed format version")
    refused(lambda m: m.update(format="keras"), "not a fastnet manifest")
    refused(lambda m: m["model"]["config"]["layers"][0].update(class_name="os.system"),
            "unknown Layer class 'os.system'")
    refused(lambda m: m["model"].update(class_name="Popen"), "unsupported model class")
    refused(lambda m: m["compile"]["optimizer"].update(class_name="eval"), "unknown Optimizer")
    refused(lambda m: m["weights"][0].update(dtype="object"), "dtype")
    refused(lambda m: m["weights"][0].update(dtype="<U10"), "dtype")
    refused(lambda m: m["weights"][0].update(shape=[3, 3, 1, -2]), "malformed shape")
    refused(lambda m: m["weights"][0].update(shape=[3, 3, 1, 3]), "differ")
    refused(lambda m: m["arrays"]["w1.npy"].update(sha256="0" * 64), "sha256")
    refused(lambda m: m["arrays"]["w1.npy"].update(nbytes=1), "manifest entry")
    refused(lambda m: m["optimizer_state"]["momentum"].update(dtype="object"), "dtype")
    refused(lambda m: m["optimizer_state"].update({"../../x": {"shape": [1], "dtype": "int64"}}),
            "malformed optimizer state")
    refused(lambda m: m["layer_state"].update(nope={"step": 1}), "unknown layer")
    refused(lambda m: m.update(random_state={"bit_generator": "MT19937"}), "random state")
    refused(lambda m: m["model"]["config"]["layers"][0]["config"].update(filters="2"),
            "malformed model configuration")


def test_huge_claims_are_refused_before_allocation(saved, tmp_path):
    """An architecture or a manifest claiming terabytes is refused without allocating it."""
    path, _, _ = saved
    huge = 1 << 20

    def huge_dense(meta):
        meta["model"]["config"]["layers"][-1]["config"]["units"] = huge
        meta["weights"][-2]["shape"] = [32, huge]

    def huge_arch_only(meta):
        meta["model"]["config"]["layers"][-1]["config"]["units"] = huge * 64

    def huge_input(meta):
        meta["model"]["config"]["input_shape"] = [huge, huge, 1]

    for edit, match in ((huge_dense, "need .* bytes but the file has"),
                        (huge_arch_only, "differ from the file"),
                        (huge_input, "differ from the file")):
        rewrite(path, tmp_path / "h.fnet", edit_meta=edit)
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=match):
                models.load_model(tmp_path / "h.fnet")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, peak
    # a header claiming more than the member holds
    with zipfile.ZipFile(path) as zf:
        w0 = zf.read("w0.npy")
    forged = w0.replace(b"(3, 3, 1, 2)", b"(3, 3, 1, 9)")
    rewrite(path, tmp_path / "hdr.fnet", replace={"w0.npy": forged})
    with pytest.raises(ValueError, match="expected float32"):
        models.load_model(tmp_path / "hdr.fnet")
    fortran = w0.replace(b"'fortran_order': False", b"'fortran_order': True ")
    rewrite(path, tmp_path / "fo.fnet", replace={"w0.npy": fortran})
    with pytest.raises(ValueError, match="Fortran"):
        models.load_model(tmp_path / "fo.fnet")


def test_version_1_files_still_load(tmp_path):
    """Files of the first format (no checksums, no layer state) are read."""
    model = small_model()
    model.save(tmp_path / "m.fnet")

    def downgrade(meta):
        meta["version"] = 1
        for k in ("arrays", "layer_state", "random_state"):
            meta.pop(k)
    rewrite(tmp_path / "m.fnet", tmp_path / "v1.fnet", edit_meta=downgrade)
    loaded = models.load_model(tmp_path / "v1.fnet")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


_SAVER = textwrap.dedent("""
    import itertools, sys
    import numpy as np
    from fastnet import layers, models
    model = models.Sequential([layers.Dense(1024, input_shape=(4096,)), layers.Dense(2)])
    model.compile("adam", "mse")
    model.optimizer.build(model._n_trainable, model.dtype)   # slots: 3x the weights on disk
    for k in itertools.count():
        for w in model.weights:
            w[...] = k
        model.save(sys.argv[1])
        print(k, flush=True)
""")


def test_sigkill_during_save_leaves_a_loadable_file(tmp_path):
    """A process saving a 50 MB model over and over is killed with SIGKILL at varied moments:
    the file always loads, and holds one complete save (every weight equal to one k).  The
    killed save's temporary file is removed by the next save to that path."""
    path = tmp_path / "big.fnet"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    interrupted = 0
    for delay in (0.0, 0.013, 0.037, 0.071):
        with subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], env=env, cwd=_PKG_PARENT,
                              stdout=subprocess.PIPE, text=True) as proc:
            try:
                first = int(proc.stdout.readline())        # one complete save exists
                time.sleep(delay)
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        loaded = models.load_model(path, compile=True)
        values = {float(v) for w in loaded.get_weights() for v in np.unique(w)}
        assert len(values) == 1 and values.pop() >= first
        assert loaded.optimizer.get_state()["momentum"].size == loaded._n_trainable
        # at most the killed save's partial file: the next child's first save removed the
        # previous one (its writer is dead)
        leftovers = list(tmp_path.glob(".big.fnet.*" + TMP_SUFFIX))
        assert len(leftovers) <= 1, leftovers
        assert all(f".{proc.pid}@" in p.name for p in leftovers)
        interrupted += len(leftovers)
    assert interrupted >= 2         # most kills landed in the middle of a save
    loaded.save(path)               # a later save cleans the litter
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.fnet"]
    models.load_model(path)


def test_stale_temporaries_of_live_writers_and_other_targets_are_kept(tmp_path):
    """Only temporary files of the same target whose writer pid is gone are removed."""
    path = tmp_path / "m.fnet"
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        gone.wait()
    host = _host_tag()
    dead = tmp_path / f".m.fnet.{gone.pid}@{host}.{'0' * 16}{TMP_SUFFIX}"
    live = tmp_path / f".m.fnet.{os.getpid()}@{host}.{'1' * 16}{TMP_SUFFIX}"
    other_host = tmp_path / f".m.fnet.{gone.pid}@{'f' * 8 if host != 'f' * 8 else 'e' * 8}." \
        f"{'2' * 16}{TMP_SUFFIX}"
    other_target = tmp_path / f".n.fnet.{gone.pid}@{host}.{'3' * 16}{TMP_SUFFIX}"
    unrelated = tmp_path / ".m.fnet.notes"
    for p in (dead, live, other_host, other_target, unrelated):
        p.write_bytes(b"partial")
    small_model().save(path)
    assert not dead.exists()
    for p in (live, other_host, other_target, unrelated):
        assert p.exists(), p
    models.load_model(path)


def test_functional_huge_claims_are_refused_before_allocation(tmp_path):
    set_random_seed(0)
    inp = layers.Input(shape=(5,), name="x")
    h = layers.Dense(4, name="h")(inp)
    model = models.Model(inp, layers.Add()([h, layers.Dense(4, name="g")(h)]))
    model.save(tmp_path / "f.fnet")
    loaded = models.load_model(tmp_path / "f.fnet")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)

    def huge(meta):
        for entry in meta["model"]["config"]["layers"]:
            if entry["name"] in ("g", "h"):     # consistent: Add still gets equal shapes
                entry["config"]["units"] = 1 << 20      # a 4 TB kernel
    rewrite(tmp_path / "f.fnet", tmp_path / "h.fnet", edit_meta=huge)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="differ from the file"):
            models.load_model(tmp_path / "h.fnet")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak

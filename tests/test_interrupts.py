"""Ctrl-C (a real SIGINT sent to a child process) during fit, predict and save leaves the model
and the files consistent: the child catches KeyboardInterrupt (or, for fit's first Ctrl-C, sees
training stop after the current batch), then its weights are those after some whole step (never
a half-updated mix, never NaN), predict gives the same finite answers, a later fit works, and the
saved file is the previous one or the new one, loadable, with no temporary file left behind.

The parent and the child synchronise through the child's stdout (a pipe): the parent signals
only after the child said it reached the point of interest; the delays after that only vary
where the signal lands, nothing asserts on time."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastnet

# Child interpreters run from the folder holding the fastnet this test imported (the
# installed one in CI): started from a source checkout they would import its unbuilt copy.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = textwrap.dedent(r'''
    import json, os, signal, sys, time, traceback
    import numpy as np
    from fastnet import callbacks, layers as L, models
    from fastnet.utils import set_random_seed

    mode, arg = sys.argv[1], int(sys.argv[2])
    # A process started in the background by a non-interactive shell (a CI job) inherits
    # SIGINT ignored, and Python then keeps ignoring it: restore the Ctrl-C a terminal gives.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def say(msg):
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()

    def cnn(seed):
        set_random_seed(seed)
        model = models.Sequential([
            L.Conv2D(16, 3, padding="same", activation="relu", input_shape=(16, 16, 3)),
            L.BatchNormalization(),
            L.MaxPooling2D(2),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(32, activation="relu"),
            L.Dense(4, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model

    rng = np.random.default_rng(7)
    x = rng.random((256, 16, 16, 3), dtype=np.float32)
    y = (x[:, :8].mean(axis=(1, 2, 3)) * 8).astype(np.int64) % 4
    BATCH = 32
    where = []

    def landed(exc):
        """The innermost module of the traceback: where the KeyboardInterrupt was raised."""
        tb = traceback.extract_tb(exc.__traceback__)
        return os.path.basename(tb[-1].filename) if tb else "?"

    def finite(model):
        return all(np.isfinite(w).all() for w in model.get_weights())

    def later_fit_works(model):
        model.fit(x[:64], y[:64], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        p = model.predict(x[:16], verbose=0)
        return finite(model) and bool(np.isfinite(p).all())

    result = {"mode": mode}

    def until_interrupted(step):
        """Say "ready", then step(1), step(2) ... until Ctrl-C; returns the count started."""
        i = 0
        try:
            try:
                say("ready")
                t_end = time.monotonic() + 120   # a lost signal fails the test, never hangs
                for i in range(1, 100000):
                    step(i)
                    if time.monotonic() > t_end:
                        break
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # no signal matters after this
            result["outcome"] = "never interrupted"
        except KeyboardInterrupt as e:
            result["outcome"] = "interrupted"
            where.append(landed(e))
        return i
    if mode == "fit":
        # reference: the weights after every whole step, by train_on_batch on a twin model
        twin = cnn(1)
        snapshots = [twin.get_weights()]
        for b in range(x.shape[0] // BATCH):
            twin.train_on_batch(x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH])
            snapshots.append(twin.get_weights())
        model = cnn(1)
        at = arg if arg >= 0 else -1 - arg   # negative: one Ctrl-C only

        class Sync(callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                say(f"batch {batch}")
                if batch == at:
                    # wait until fit's handler took the first Ctrl-C (sent when we said
                    # "batch {at}"), so that it lands in this batch, and a second one (sent
                    # when we say "armed") interrupts at once
                    handler = signal.getsignal(signal.SIGINT)
                    while not getattr(getattr(handler, "__self__", None), "requested", True):
                        time.sleep(0.001)
                    say("armed")

        outcome = None
        try:
            try:
                model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                          callbacks=[Sync()])
                outcome = "stopped"
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # no signal matters after this
        except KeyboardInterrupt as e:
            outcome = outcome or "interrupted"
            where.append(landed(e))
        got = model.get_weights()
        steps = [k for k, snap in enumerate(snapshots)
                 if all(np.allclose(g, s, rtol=1e-5, atol=1e-6) for g, s in zip(got, snap))]
        per_array = [[k for k, snap in enumerate(snapshots)
                      if np.allclose(g, snap[i], rtol=1e-5, atol=1e-6)]
                     for i, g in enumerate(got)]
        trainable = [name in layer.trainable_weight_names
                     for layer in model.layers for name in layer.params]
        train_steps = [k for k, snap in enumerate(snapshots)
                       if all(np.allclose(g, s, rtol=1e-5, atol=1e-6)
                              for g, s, t in zip(got, snap, trainable) if t)]
        result.update(outcome=outcome, steps=steps, train_steps=train_steps,
                      per_array=per_array, finite=finite(model))
        p = model.predict(x[:16], verbose=0)
        result["predict_finite"] = bool(np.isfinite(p).all())
        result["later_fit"] = later_fit_works(model)
    elif mode == "predict":
        model = cnn(2)
        model.fit(x[:64], y[:64], batch_size=BATCH, epochs=1, verbose=0)
        want = model.predict(x, batch_size=BATCH, verbose=0)
        calls = until_interrupted(lambda i: model.predict(x, batch_size=BATCH, verbose=0))
        got = model.predict(x, batch_size=BATCH, verbose=0)
        result.update(calls=calls, same=bool(np.array_equal(got, want)),
                      finite=bool(np.isfinite(got).all()),
                      eager_same=bool(np.allclose(model(x[:8]), want[:8], rtol=1e-4,
                                                  atol=1e-5)),
                      later_fit=later_fit_works(model))
    elif mode == "save":
        folder = sys.argv[3]
        path = os.path.join(folder, "model.fastnet")
        a, b = cnn(3), cnn(4)
        # wide enough that a save takes a while: the signal lands inside it most of the time
        wa, wb = a.get_weights(), b.get_weights()
        a.save(path)
        saves = until_interrupted(lambda i: (b if i % 2 else a).save(path))
        loaded = models.load_model(path).get_weights()
        which = [name for name, ws in (("a", wa), ("b", wb))
                 if all(np.array_equal(l, w) for l, w in zip(loaded, ws))]
        result.update(saves=saves, file_is=which, files=sorted(os.listdir(folder)))
        a.save(path)   # saving still works, and loads back
        result["resave"] = all(np.array_equal(l, w) for l, w in
                               zip(models.load_model(path).get_weights(), wa))
        result["later_fit"] = later_fit_works(a)
    result["landed"] = where
    say("RESULT " + json.dumps(result))
''')


def run_child(args, send):
    """Run the child with ``args``; ``send(proc, line)`` is called on every line it prints
    before its result and sends the signals.  Returns the child's result dict."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=_PKG_PARENT)
    result, lines = None, []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
            else:
                send(proc, line.strip())
        err = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and result is not None, \
        f"child exit code {proc.returncode}:\n{''.join(lines)[-3000:]}\n{err[-3000:]}"
    print("child", json.dumps({k: v for k, v in result.items() if k != "per_array"}))
    return result


def interrupt(proc, delay):
    if delay:
        time.sleep(delay)   # varies where the signal lands; nothing depends on the time
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


@pytest.mark.parametrize("at_batch", [0, 3])
def test_first_ctrl_c_stops_fit_after_the_current_batch(at_batch):
    def send(proc, line):
        if line == f"batch {at_batch}":
            interrupt(proc, 0)

    r = run_child(["fit", -1 - at_batch], send)
    assert r["outcome"] == "stopped", r
    # the handler only asks to stop: the batch that was running completes
    assert r["steps"] == [at_batch + 1] and r["finite"], r
    assert r["predict_finite"] and r["later_fit"], r


@pytest.mark.parametrize("at_batch,delay", [(0, 0), (1, 0), (1, 0.0005), (1, 0.002), (2, 0.003),
                                            (2, 0.01), (4, 0.03)])
def test_second_ctrl_c_interrupts_fit_between_whole_steps(at_batch, delay):
    armed = []

    def send(proc, line):
        if line == f"batch {at_batch}":
            interrupt(proc, 0)
        elif line == "armed":
            armed.append(True)
            interrupt(proc, delay)

    r = run_child(["fit", at_batch], send)
    assert armed, r
    assert r["outcome"] in ("interrupted", "stopped"), r
    assert r["finite"] and r["predict_finite"] and r["later_fit"], r
    # every weight holds its pre-step or its post-step values, and the trainable weights
    # (one fused optimizer update) all come from the same step.  The non-trainable
    # BatchNormalization moving statistics are updated by the forward pass, so an interrupt
    # during the backward pass leaves them post-step beside pre-step trainable weights.
    assert all(ks and set(ks) <= {at_batch, at_batch + 1} for ks in r["per_array"]), r
    assert len(r["train_steps"]) == 1 and r["train_steps"][0] in (at_batch, at_batch + 1), r
    if r["outcome"] == "stopped":   # the second signal came after the step ended
        assert r["steps"] == [at_batch + 1], r


@pytest.mark.parametrize("delay", [0, 0.005, 0.05, 0.2])
def test_ctrl_c_during_predict(delay):
    def send(proc, line):
        if line == "ready":
            interrupt(proc, delay)

    r = run_child(["predict", 0], send)
    assert r["outcome"] == "interrupted", r
    assert r["same"] and r["finite"] and r["eager_same"] and r["later_fit"], r


@pytest.mark.parametrize("delay", [0, 0.01, 0.05, 0.2])
def test_ctrl_c_during_save(tmp_path, delay):
    def send(proc, line):
        if line == "ready":
            interrupt(proc, delay)

    r = run_child(["save", 0, str(tmp_path)], send)
    assert r["outcome"] == "interrupted", r
    assert r["files"] == ["model.fastnet"], r   # no temporary file left behind
    assert len(r["file_is"]) == 1, r            # the previous file or the new one, whole
    assert r["resave"] and r["later_fit"], r

"""Threads and the command line."""
import os
import subprocess
import sys

import numpy as np

import fastnet
from fastnet import layers, models
from fastnet.utils import set_random_seed


def test_set_num_threads_round_trip_and_same_results():
    old = fastnet.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            fastnet.set_num_threads(n)
            assert fastnet.get_num_threads() == (n if fastnet.config.openmp_enabled() else 1)
            set_random_seed(0)
            model = models.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(9, 9, 2)),
                                       layers.MaxPooling2D(), layers.Flatten(), layers.Dense(3)])
            model.compile("adam", "mse")
            x = np.random.default_rng(0).random((16, 9, 9, 2))
            model.fit(x, np.ones((16, 3)), epochs=1, batch_size=8, verbose=0, shuffle=False)
            results.append(model.predict(x, verbose=0))
        np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    finally:
        fastnet.set_num_threads(old)


def _run(args, tmp_path, **env):
    """Run Python on the fastnet under test (not whatever the working directory holds)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastnet.__file__)), **env)
    return subprocess.run([sys.executable] + args, env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=True)


def test_omp_num_threads_is_the_default(tmp_path):
    out = _run(["-c", "import fastnet; print(fastnet.get_num_threads())"], tmp_path,
               OMP_NUM_THREADS="1")
    assert out.stdout.strip() == "1"


def test_fastnet_info_runs(tmp_path):
    out = _run(["-m", "fastnet.cli", "info"], tmp_path)
    assert "GEMM kernel path:" in out.stdout and "threads:" in out.stdout
    out = _run(["-m", "fastnet.cli", "info"], tmp_path, FASTNET_ISA="avx512",
               FASTNET_GEMM_BROADCAST="register")
    from fastnet._kernels import gemm
    if "avx512" in gemm.available_isas():
        assert "GEMM AVX-512 broadcasts: register" in out.stdout
    else:
        assert "broadcasts" not in out.stdout


def test_fastnet_demo_prints_accuracy_and_throughput(tmp_path):
    plot = []
    try:
        import matplotlib  # noqa: F401
        plot = ["--plot", str(tmp_path / "curves.png")]
    except ImportError:
        pass
    out = _run(["-m", "fastnet.cli", "demo", "--epochs", "1", "--quiet", "--threads", "1"] + plot,
               tmp_path)
    if plot:
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    lines = out.stdout.splitlines()
    acc = [l for l in lines if l.startswith("test accuracy:")]
    assert acc and float(acc[0].split(":")[1]) > 0.5
    assert any("images/s" in l and "1 thread(s)" in l for l in lines)

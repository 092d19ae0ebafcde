"""fastnet.bench: statistics on synthetic timings, peers reported as skipped, the JSON schema and
its validator, the benchmark cases computing the same thing in every library, and a real
--quick run of one small suite in a subprocess."""
import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnet.bench import env, report, runner, schema, stats
from fastnet.bench.cases import FASTNET, PEERS, checksum, installed, peer_configs
from fastnet.bench.suites import SUITES, select_cases
from fastnet.bench.worker import WorkerContext, all_configs, time_calls

import fastnet

# Child interpreters run from the folder holding the fastnet this test imported (the
# installed one in CI): started from a source checkout they would import its unbuilt copy.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))

# the directory holding the fastnet these tests import (a source checkout or site-packages)
FASTNET_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))


# ------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 101])
def test_median_and_quartiles_match_numpy(n):
    rng = np.random.default_rng(n)
    xs = list(rng.lognormal(-7, 0.5, n))
    assert stats.median(xs) == pytest.approx(float(np.median(xs)), rel=1e-12)
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert stats.quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)), rel=1e-12)
    q1, q2, q3 = stats.quartiles(xs)
    assert q1 <= q2 <= q3
    assert stats.iqr(xs) == pytest.approx(float(np.subtract(*np.quantile(xs, [0.75, 0.25]))))


def test_median_known_values_and_outlier_robustness():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0
    # a descheduled call (100x slower) moves neither the median nor the IQR much
    base = [1.0e-3 + 1e-6 * i for i in range(20)]
    assert stats.median(base + [0.1]) == pytest.approx(stats.median(base), rel=1e-3)
    assert stats.iqr(base + [0.1]) < 2 * stats.iqr(base)


@pytest.mark.parametrize("bad", [[], [float("nan")], [1.0, float("inf")]])
def test_statistics_reject_empty_and_non_finite(bad):
    with pytest.raises(ValueError):
        stats.median(bad)


def test_quantile_rejects_q_out_of_range():
    with pytest.raises(ValueError, match="q must be in"):
        stats.quantile([1.0], 1.5)


def test_ratio_is_peer_time_over_fastnet_time():
    assert stats.ratio(2e-3, 1e-3) == pytest.approx(2.0)    # fastnet twice as fast
    assert stats.ratio(1e-3, 4e-3) == pytest.approx(0.25)   # fastnet 4x slower
    for a, b in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(ValueError):
            stats.ratio(a, b)


def test_summarize_takes_the_median_of_process_medians():
    # three processes; the third ran on a busy machine and is 3x slower throughout
    rounds = [[1.0, 1.1, 0.9, 1.0], [1.2, 1.0, 1.1], [3.0, 3.3, 2.9]]
    s = stats.summarize(rounds)
    assert s["round_medians_s"] == [pytest.approx(1.0), pytest.approx(1.1), pytest.approx(3.0)]
    assert s["median_s"] == pytest.approx(1.1)
    pooled = [t for r in rounds for t in r]
    assert s["q1_s"] == pytest.approx(float(np.quantile(pooled, 0.25)))
    assert s["q3_s"] == pytest.approx(float(np.quantile(pooled, 0.75)))
    assert s["iqr_s"] == pytest.approx(s["q3_s"] - s["q1_s"])
    assert s["samples"] == len(pooled)
    with pytest.raises(ValueError):
        stats.summarize([[1.0], []])


def test_interleaved_order_rotates_every_round():
    names = ["fastnet", "numpy", "torch", "torch-cl-alloc"]
    order = stats.interleaved_order(names, 4, groups=(1, 2))
    assert len(order) == 4 * 2 * len(names)
    for r in range(4):
        for g in (1, 2):
            block = [n for rr, gg, n in order if (rr, gg) == (r, g)]
            assert sorted(block) == sorted(names)            # each once per round and group
            assert block == names[r:] + names[:r]             # rotated by the round
    # over len(names) rounds, every configuration runs in every position once
    positions = {n: {[n2 for rr, gg, n2 in order if (rr, gg) == (r, 1)].index(n)
                     for r in range(4)} for n in names}
    assert all(p == {0, 1, 2, 3} for p in positions.values())
    # rounds are outermost: a configuration's processes spread over the whole run
    assert [r for r, _, _ in order] == sorted(r for r, _, _ in order)
    assert stats.interleaved_order(["a", "b"], 3) == [
        (0, None, "a"), (0, None, "b"), (1, None, "b"), (1, None, "a"),
        (2, None, "a"), (2, None, "b")]
    with pytest.raises(ValueError):
        stats.interleaved_order(names, 0)


def test_interleaving_cancels_drift_in_the_ratio():
    """A machine that slows down steadily: interleaved rounds still give the true ratio."""
    true = {"fastnet": 1.0, "peer": 1.5}
    drift = iter(1.0 + 0.01 * i for i in range(1000))
    rounds = {n: [] for n in true}
    for _, _, name in stats.interleaved_order(list(true), 6):
        rounds[name].append([true[name] * next(drift)])
    med = {n: stats.summarize(r)["median_s"] for n, r in rounds.items()}
    assert stats.ratio(med["peer"], med["fastnet"]) == pytest.approx(1.5, rel=0.01)


def test_agree_compares_checksums():
    a = checksum(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert a == [66.0, 506.0, 11.0]
    assert stats.agree(a, [66.0 + 1e-3, 506.0, 11.0])
    assert not stats.agree(a, [60.0, 506.0, 11.0])
    assert not stats.agree(a, [66.0, 506.0])
    assert not stats.agree(a, [66.0, float("nan"), 11.0])
    # a sum near zero is compared at the scale of the values, not relatively
    assert stats.agree([1e-9, 1e6, 10.0], [-1e-6, 1e6, 10.0])


def test_time_calls_groups_short_calls_and_respects_bounds():
    calls = [0]

    def fn():
        calls[0] += 1
    times = time_calls(fn, budget=0.01, warmup=0.0, min_calls=5, max_calls=20)
    assert 5 <= len(times) <= 20
    assert calls[0] > len(times)          # grouped: a sample is the mean of many calls
    assert all(t > 0 for t in times)


# ----------------------------------------------------------------------- peers and configs
def test_missing_peer_is_reported_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # `import torch` now fails
    assert not installed("torch")
    plan = {p["name"]: p for p in runner.plan_peers(["gemm", "conv", "infer"])}
    assert plan["torch"]["status"] == "skipped"
    assert plan["torch"]["reason"] == "not installed"
    assert plan["torch"]["configs"] == []
    assert plan["numpy"]["status"] == "measured" and "numpy" in plan["numpy"]["configs"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    plan = {p["name"]: p for p in runner.plan_peers(["infer"])}
    assert plan["onnxruntime"] == {"name": "onnxruntime", "label": "ONNX Runtime",
                                   "status": "skipped", "reason": "not installed",
                                   "configs": []}
    assert "numpy" not in plan                                 # infer has no NumPy peer


def test_peers_not_requested_are_skipped_with_the_reason():
    plan = {p["name"]: p for p in runner.plan_peers(["gemm"], requested=["numpy"])}
    assert plan["torch"]["reason"] == "not requested with --peers"
    assert "onnxruntime" not in plan


def test_each_peer_has_a_default_and_a_tuned_configuration():
    for peer in PEERS:
        configs = peer_configs(peer, quick=True, environ={"OPENBLAS_CORETYPE": "Haswell"})
        assert sum(c.default for c in configs) == 1
        assert len(configs) >= 2
    numpy_peer = next(p for p in PEERS if p.name == "numpy")
    # without an OpenBLAS override, "native" would run exactly like the default
    assert [c.name for c in peer_configs(numpy_peer, False, environ={})] == ["numpy"]


def test_child_environment_pins_threads_and_allocator():
    base = {"MALLOC_MMAP_THRESHOLD_": "1", "OPENBLAS_CORETYPE": "Haswell", "PATH": "/bin"}
    cfg = all_configs()
    e = cfg["fastnet"].child_env(base, 2)
    assert (e["OMP_NUM_THREADS"], e["OPENBLAS_NUM_THREADS"]) == ("2", "1")
    assert "MALLOC_MMAP_THRESHOLD_" not in e and e["PATH"] == "/bin"
    assert cfg["numpy"].child_env(base, 2)["OPENBLAS_NUM_THREADS"] == "2"
    assert "OPENBLAS_CORETYPE" not in cfg["numpy-native"].child_env(base, 2)
    e = cfg["torch-cl-alloc"].child_env(base, 1)
    assert e["MALLOC_MMAP_THRESHOLD_"] == "1000000000"
    assert e["MALLOC_TRIM_THRESHOLD_"] == "10000000000"


def test_pin_threads_reads_back_and_restores():
    import fastnet
    old = fastnet.get_num_threads()
    restore = env.pin_threads("fastnet", 1)
    try:
        got = env.read_back_threads("fastnet", 1)
        assert got["ok"] and got["fastnet"] == 1 and got["requested"] == 1
        assert not env.read_back_threads("fastnet", 3)["ok"]
    finally:
        restore()
    assert fastnet.get_num_threads() == old


def test_denormal_probes():
    assert env.denormal_state() == {"ftz": False, "daz": False}   # Python's default FPU state
    assert env.gemm_denormals("numpy") is False
    assert env.gemm_denormals("onnxruntime") is None
    assert isinstance(env.gemm_denormals("fastnet"), bool)


# ------------------------------------------------------ the cases compute the same thing
def _probe(case, config_name, threads=1, workdir=None):
    config = all_configs()[config_name]
    restore = env.pin_threads(config.library, threads)
    try:
        bench = SUITES[case.suite].make(case, config, WorkerContext(threads, workdir))
        return None if bench is None else bench.probe()
    finally:
        restore()


@pytest.mark.parametrize("suite", ["gemm", "conv", "pool", "train", "infer"])
def test_cases_agree_across_libraries(suite, tmp_path):
    torch = pytest.importorskip("torch")
    workdir = None
    if suite == "infer" and installed("onnxruntime"):
        from fastnet.bench.suites import cnn
        workdir = str(tmp_path)
        cnn.export_onnx(cnn.onnx_path(workdir))
    cases = [c for c in SUITES[suite].cases() if c.quick or suite == "pool"]
    for case in cases:
        ref = _probe(case, "fastnet")
        assert ref is not None and all(math.isfinite(v) for v in ref)
        peers = ["torch", "torch-cl"] + (["numpy"] if suite == "gemm" else []) + \
            (["ort", "ort-best"] if workdir else [])
        for name in peers:
            got = _probe(case, name, workdir=workdir)
            assert stats.agree(ref, got, rtol=2e-3), (case.key, name, ref, got)
    assert torch is not None


def test_adam_cases_agree():
    case = next(c for c in SUITES["adam"].cases() if c.name == "adam")
    small = type(case)(**{**case.__dict__, "params": ("adam", 10_000)})
    ref = _probe(small, "fastnet")
    assert stats.agree(ref, _probe(small, "numpy"))
    if installed("torch"):
        assert stats.agree(ref, _probe(small, "torch"))
        assert stats.agree(ref, _probe(small, "torch-cl"))   # fused=True


def test_select_cases():
    quick = select_cases(["gemm", "infer"], quick=True)
    assert quick and all(c.quick for c in quick)
    assert {c.batch for c in select_cases(["infer"], batches=[8])} == {8}
    assert len(select_cases(["conv"])) > len(select_cases(["conv"], quick=True))
    keys = [c.key for s in SUITES for c in select_cases([s])]
    assert len(keys) == len(set(keys))
    with pytest.raises(ValueError, match="unknown suite"):
        select_cases(["nope"])


# ---------------------------------------------------------------------- schema and report
def _valid_report():
    m = {"config": "fastnet", "library": "fastnet", "default": True, "median_s": 1e-3,
         "q1_s": 9e-4, "q3_s": 1.1e-3, "iqr_s": 2e-4, "round_medians_s": [1e-3],
         "samples": 10, "rounds": [0], "rate": 5.0, "check": [1.0, 2.0, 3.0], "agrees": None,
         "foreign_cpu_max": 0.0, "threads_ok": True}
    peer = dict(m, config="torch", library="torch", median_s=2e-3, agrees=True)
    return {
        "schema": "fastnet-bench/1",
        "environment": {**env.capture(["--quick"])},
        "settings": {"suites": ["gemm"], "threads": [1], "batches": None, "quick": True,
                     "rounds": 1, "budget": 0.1, "warmup": 0.0, "first_warmup": 0.0,
                     "max_wait": 0.0, "max_foreign": 0.25, "retries": 0, "peers": None,
                     "onnx_graph": None},
        "peers": [{"name": "torch", "label": "PyTorch", "status": "measured", "reason": None,
                   "configs": ["torch"]},
                  {"name": "numpy", "label": "NumPy", "status": "skipped",
                   "reason": "not installed", "configs": []}],
        "configs": [{"name": "fastnet", "library": "fastnet", "description": "x",
                     "default": True, "env": {}, "unset": []}],
        "workers": [{"config": "fastnet", "threads": 1, "round": 0, "attempts": 1,
                     "foreign_cpu": 0.0, "error": None}],
        "results": [{"suite": "gemm", "case": "sq", "key": "gemm/sq", "shape": "2x2x2 NN",
                     "threads": 1, "batch": None, "work": 16.0, "unit": "GFLOP/s",
                     "measurements": [m, peer],
                     "ratios": [{"peer": "torch", "against": "best", "config": "torch",
                                 "ratio": 2.0, "round_ratios": [2.0]}]}],
        "warnings": []}


def test_schema_validator_accepts_a_valid_report_and_names_each_error():
    good = _valid_report()
    assert schema.validate(good) == []
    cases = [
        (lambda r: r.pop("results"), "missing 'results'"),
        (lambda r: r["results"][0].update(threads="1"), "$.results[0].threads: expected integer"),
        (lambda r: r["results"][0].update(threads=True), "expected integer"),
        (lambda r: r["results"][0].update(unit="flops"), "is not one of"),
        (lambda r: r["results"][0]["measurements"][0].update(median_s=0.0), "<= 0"),
        (lambda r: r["results"][0]["measurements"][0].update(median_s=float("nan")),
         "not a finite number"),
        (lambda r: r["results"][0].update(extra=1), "unexpected property 'extra'"),
        (lambda r: r.update(schema="fastnet-bench/0"), "expected 'fastnet-bench/1'"),
        (lambda r: r["peers"][1].update(status="faked"), "is not one of"),
        (lambda r: r["environment"]["denormals_main_thread"].update(ftz=1), "expected boolean"),
        (lambda r: r["results"][0]["ratios"][0].update(against=True), "is not one of"),
        (lambda r: r["settings"].update(threads=[]), "at least 1 item"),
    ]
    for breaks, message in cases:
        bad = copy.deepcopy(good)
        breaks(bad)
        errors = schema.validate(bad)
        assert any(message in e for e in errors), (message, errors)


def test_schema_validator_refuses_unknown_keywords():
    with pytest.raises(ValueError, match="not supported"):
        schema.validate(1, {"type": "integer", "multipleOf": 2})


def test_schema_is_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")   # optional: a cross-check of the file
    s = schema.load_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    jsonschema.validate(_valid_report(), s)


def test_write_json_refuses_an_invalid_report(tmp_path):
    bad = _valid_report()
    bad["results"][0]["threads"] = 0
    with pytest.raises(ValueError, match="threads"):
        report.write_json(bad, str(tmp_path / "r.json"))
    assert not (tmp_path / "r.json").exists()
    report.write_json(_valid_report(), str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == "fastnet-bench/1"


def test_table_lists_every_peer_and_the_ratio():
    text = report.format_table(_valid_report())
    assert "NumPy: skipped (not installed)" in text
    assert "PyTorch" in text and "2.00" in text        # the ratio column
    assert "gemm:" in text and "fastnet" in text
    assert report.format_time(1.234e-3) == "1.23 ms"
    assert report.format_time(512e-9) == "512 ns"
    assert report.format_time(250e-6) == "250 µs"


def test_table_shows_the_fraction_of_the_fma_peak():
    rep = _valid_report()
    assert "% peak" not in report.format_table(rep)       # no peak measured: no column
    rep["results"][0]["fma_peak_gflops"] = 10.0
    rep["results"][0]["measurements"][0]["of_peak"] = 0.5
    rep["results"][0]["measurements"][1]["of_peak"] = 0.25
    assert schema.validate(rep) == []
    text = report.format_table(rep)
    assert "% peak" in text and "50.0%" in text
    assert "FMA loop" in text and "10.0 GFLOP/s at 1 thread" in text
    rep["results"][0]["measurements"][0]["of_peak"] = -1.0
    assert schema.validate(rep)


def test_cell_divides_each_rate_by_fastnets_fma_peak():
    case = next(c for c in select_cases(["gemm"]) if c.name == "dense1 fwd")
    times = [2.0 * case.work / 100e9] * 5                   # 50 GFLOP/s
    raw = {(FASTNET.name, 1): {0: {"cases": {case.key: {"times": times, "check": [1.0]}}}}}
    workers = [{"config": FASTNET.name, "threads": 1, "round": 0, "attempts": 1,
                "foreign_cpu": 0.0, "error": None, "threads_verified": {"ok": True},
                "fma_peak_gflops": 100.0}]
    row = runner._cell(case, 1, [FASTNET], raw, workers, None, [])
    assert row["fma_peak_gflops"] == 100.0
    assert row["measurements"][0]["of_peak"] == pytest.approx(0.5)
    workers[0]["fma_peak_gflops"] = None                    # not measured: no fraction
    row = runner._cell(case, 1, [FASTNET], raw, workers, None, [])
    assert row["fma_peak_gflops"] is None and row["measurements"][0]["of_peak"] is None


def test_fastnet_worker_measures_the_fma_peak_for_gemm_cases():
    from dataclasses import asdict
    from fastnet.bench.worker import measure
    gemm_case = next(c for c in select_cases(["gemm"]) if c.name == "dense2 fwd")
    spec = {"config": FASTNET.name, "threads": 1, "cases": [asdict(gemm_case)],
            "budget": 0.005, "warmup": 0.0, "first_warmup": 0.0, "min_calls": 2}
    out = measure(spec)
    assert out["fma_peak_gflops"] > 0 and gemm_case.key in out["cases"]
    pool_case = select_cases(["pool"], quick=True)[0]
    out = measure({**spec, "cases": [asdict(pool_case)]})
    assert out["fma_peak_gflops"] is None                   # no GFLOP/s case: not measured


def test_markdown_replaces_only_the_marked_part_of_a_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- fastnet-bench:begin -->\nold table\n"
                      "<!-- fastnet-bench:end -->\nafter\n")
    rep = _valid_report()
    rep["results"][0]["measurements"][1]["foreign_cpu_max"] = 1.0   # a "~" mark
    report.write_markdown(rep, str(readme))
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n<!-- fastnet-bench:begin -->\n")
    assert text.endswith("\n<!-- fastnet-bench:end -->\nafter\n")
    assert "old table" not in text and "| benchmark | shape | thr |" in text
    assert "\\~" in text and " ~" not in text.replace("\\~", "")   # no stray strike-through
    report.write_markdown(rep, str(readme))
    assert readme.read_text() == text                                 # re-run: same layout
    plain = tmp_path / "bench.md"
    report.write_markdown(rep, str(plain))
    assert plain.read_text().startswith("fastnet ") and "**gemm**" in plain.read_text()


# ------------------------------------------------------------------- a real run, end to end
def test_quick_run_of_one_suite_produces_valid_json(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    cmd = [sys.executable, "-m", "fastnet.bench", "pool", "--quick", "--threads", "1",
           "--rounds", "1", "--budget", "0.01", "--json", str(out), "--no-progress"]
    plot = installed("matplotlib")
    if plot:
        cmd += ["--plot", str(png)]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [FASTNET_ROOT, os.environ.get("PYTHONPATH")])), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=300,
                         cwd=_PKG_PARENT)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert schema.validate(data) == []
    assert "pool:" in res.stdout and "max fwd" in res.stdout
    rows = {r["case"]: r for r in data["results"]}
    assert set(rows) == {"max fwd", "max bwd"}
    for r in rows.values():
        libs = {m["library"] for m in r["measurements"]}
        assert "fastnet" in libs
        assert all(m["agrees"] is not False for m in r["measurements"])
    torch_peer = next(p for p in data["peers"] if p["name"] == "torch")
    if installed("torch"):
        assert torch_peer["status"] == "measured"
        assert "PyTorch best" in res.stdout
        assert all(x["ratio"] > 0 for r in rows.values() for x in r["ratios"])
    else:
        assert torch_peer["reason"] == "not installed"
    assert all(w["threads_verified"]["ok"] for w in data["workers"])
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_subcommand(capsys):
    from fastnet.cli import main
    assert main(["bench", "--list", "--quick"]) == 0
    listed = capsys.readouterr().out
    assert "gemm (fastnet, numpy, torch):" in listed and "fastnet as installed" in listed
    with pytest.raises(SystemExit):
        main(["bench", "nosuchsuite"])
    with pytest.raises(SystemExit):
        main(["bench", "--threads", "0"])
    with pytest.raises(SystemExit):
        main(["bench", "--peers", "tensorflow"])


def test_fastnet_is_always_the_reference():
    assert FASTNET.default and FASTNET.library == "fastnet"
    assert {p.name for p in PEERS} == {"numpy", "torch", "onnxruntime"}

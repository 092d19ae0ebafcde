"""Runs a benchmark: one fresh worker process per (library configuration, thread count), all of
them once per round in a rotated order, each started when the machine is quiet and run again
when other processes took CPU during it; then the statistics and the report.

Nothing here times anything: the workers (``fastnet.bench.worker``) do, in their own processes,
so that no library's thread pool, allocator state or import cost touches another's numbers.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import fastnet
from fastnet.bench import env, stats
from fastnet.bench.cases import FASTNET, PEERS, installed, peer_configs
from fastnet.bench.suites import SUITES, select_cases

__all__ = ["Settings", "plan_peers", "run", "SCHEMA_ID"]

SCHEMA_ID = "fastnet-bench/1"
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__))))


@dataclass
class Settings:
    """How to run.  ``quick`` picks the smaller case list and the shorter defaults."""
    suites: list = field(default_factory=lambda: list(SUITES))
    threads: list = None          # default: 1 and the cores fastnet uses
    batches: list = None          # train / infer batch sizes (default: 64 / 1 and 64)
    quick: bool = False
    rounds: int = None            # fresh processes per configuration and thread count
    budget: float = None          # seconds of timed calls per case in each process
    warmup: float = None          # seconds of untimed calls before each case
    first_warmup: float = None    # ... before a process's first case (CPU leaves idle clocks)
    max_wait: float = None        # seconds to wait for a quiet machine before each process
    max_foreign: float = 0.25     # CPUs other processes may use during a process, on average
    retries: int = None           # re-runs of a process that ran on a busy machine
    min_calls: int = None         # timed samples per case and process, at least
    timeout: float = 900.0        # seconds a process may take before it counts as failed
    peers: list = None            # peers to measure (default: every installed one)

    def resolved(self):
        """A copy with every default filled in."""
        quick = self.quick
        n = fastnet.get_num_threads()
        defaults = dict(threads=[1] + ([n] if n > 1 else []),
                        rounds=2 if quick else 3, budget=0.08 if quick else 0.4,
                        warmup=0.04 if quick else 0.2, first_warmup=0.2 if quick else 1.0,
                        max_wait=0.0 if quick else 30.0, retries=0 if quick else 2,
                        min_calls=3 if quick else 5)
        out = Settings(**asdict(self))
        for k, v in defaults.items():
            if getattr(out, k) is None:
                setattr(out, k, v)
        if any(t < 1 for t in out.threads) or out.rounds < 1 or out.budget <= 0:
            raise ValueError("threads and rounds must be >= 1 and budget > 0")
        return out


def plan_peers(suites, requested=None, quick=False, environ=None):
    """Every peer the chosen suites compare with: measured (with its configurations) or skipped
    with the reason; a peer that is not installed is reported, never imitated."""
    needed = {lib for s in suites for lib in SUITES[s].LIBRARIES}
    out = []
    for peer in PEERS:
        if peer.name not in needed:
            continue
        entry = {"name": peer.name, "label": peer.label, "status": "measured", "reason": None,
                 "configs": []}
        if requested is not None and peer.name not in requested:
            entry.update(status="skipped", reason="not requested with --peers")
        elif not installed(peer.module):
            entry.update(status="skipped", reason="not installed")
        else:
            entry["configs"] = [c.name for c in peer_configs(peer, quick, environ)]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- machine load
def _cpu_busy_seconds():
    """CPU seconds spent on all CPUs so far (from /proc/stat; None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_quiet(max_wait, quiet=1.0, step=0.25):
    """Wait (at most ``max_wait`` seconds) until the CPUs have been idle for ``quiet`` s."""
    t_end, calm = time.perf_counter() + max_wait, 0.0
    while time.perf_counter() < t_end and calm < quiet:
        busy0, t0 = _cpu_busy_seconds(), time.perf_counter()
        if busy0 is None:
            return
        time.sleep(step)
        share = (_cpu_busy_seconds() - busy0) / (time.perf_counter() - t0)
        calm = calm + step if share < 0.1 else 0.0


def _run_worker(cmd, child_env, settings):
    """Run one worker when the machine is quiet; again (up to ``retries`` times) when other
    processes used more than ``max_foreign`` CPUs on average while it ran.  Returns (result
    dict or None, error text, foreign CPU share, attempts)."""
    for attempt in range(1, settings.retries + 2):
        _wait_quiet(settings.max_wait)
        busy0, t0, own0 = _cpu_busy_seconds(), time.perf_counter(), os.times()
        try:
            res = subprocess.run(cmd, env=child_env, capture_output=True, text=True,
                                 timeout=settings.timeout)
        except subprocess.TimeoutExpired:
            return None, f"worker timed out after {settings.timeout:.0f} s", 0.0, attempt
        wall, own1 = time.perf_counter() - t0, os.times()
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
            return None, f"worker failed (exit {res.returncode}): {tail}", 0.0, attempt
        foreign = 0.0
        if busy0 is not None:
            own = (own1.children_user - own0.children_user) + \
                (own1.children_system - own0.children_system)
            foreign = max(0.0, (_cpu_busy_seconds() - busy0 - own) / wall)
        if foreign <= settings.max_foreign or attempt > settings.retries:
            try:
                return json.loads(res.stdout.strip().splitlines()[-1]), None, foreign, attempt
            except (ValueError, IndexError):
                return None, "worker printed no result", foreign, attempt


def _child_env(config, threads):
    base = dict(os.environ)
    # the workers import the very fastnet this process runs (a source checkout included)
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, base.get("PYTHONPATH")]))
    return config.child_env(base, threads)


class _Progress:
    """A one-line progress bar on stderr (one line per step when it is not a terminal)."""

    def __init__(self, total, stream=None, width=24):
        self.total, self.width, self.done = total, width, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def show(self, label, final=False):
        """Redraw the bar (a terminal), or print a line when a step is done (a log)."""
        if not (self.tty or final):
            return
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = self.width * self.done // max(self.total, 1)
        bar = "=" * filled + (">" if self.done < self.total else "") + \
            " " * (self.width - filled - (self.done < self.total))
        line = (f"[{bar}] {self.done}/{self.total} {elapsed:4.0f}s"
                + (f" ~{left:.0f}s left" if self.done else "") + f"  {label}")
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def step(self, label):
        self.done += 1
        self.show(label, final=True)

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------- running
def _export_onnx(workdir, timeout):
    """Write the classic CNN's ONNX graph (in a fresh process: the exporter imports PyTorch);
    returns (source, None) or (None, reason)."""
    from fastnet.bench.suites import cnn
    path = cnn.onnx_path(workdir)
    cmd = [sys.executable, "-m", "fastnet.bench.worker", "--export-onnx", path]
    try:
        res = subprocess.run(cmd, env=_child_env(FASTNET, 1), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"ONNX export timed out after {timeout:.0f} s"
    if res.returncode != 0 or not os.path.exists(path):
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        reason = ("no ONNX exporter (needs PyTorch or fastnet.onnx)"
                  if "No module named 'torch'" in res.stderr else f"ONNX export failed: {tail}")
        return None, reason
    return json.loads(res.stdout.strip().splitlines()[-1])["source"], None


def run(settings, argv=(), progress=True):
    """Measure everything ``settings`` asks for; returns the report (a JSON-ready dict)."""
    s = settings.resolved()
    environment = env.capture(list(argv))    # before measuring: the date, the load at start
    cases = select_cases(s.suites, s.quick, s.batches)
    peers = plan_peers(s.suites, s.peers, s.quick)
    with tempfile.TemporaryDirectory(prefix="fastnet-bench-") as workdir:
        onnx_source = None
        for p in peers:
            if p["name"] == "onnxruntime" and p["status"] == "measured" and \
                    any(getattr(SUITES[c.suite], "NEEDS_ONNX", False) for c in cases):
                onnx_source, reason = _export_onnx(workdir, s.timeout)
                if onnx_source is None:
                    p.update(status="skipped", reason=reason, configs=[])
        by_name = {c.name: c for p in PEERS for c in p.configs}
        configs = [FASTNET] + [by_name[n] for p in peers for n in p["configs"]]
        case_fields = {c.name: [asdict(k) for k in cases
                                if c.library in SUITES[k.suite].LIBRARIES] for c in configs}
        configs = [c for c in configs if case_fields[c.name]]
        raw, workers, warnings = _measure(configs, case_fields, workdir, s, progress)
    try:
        environment["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    results = [_cell(case, t, configs, raw, workers, s, warnings)
               for case in cases for t in s.threads]
    return {"schema": SCHEMA_ID,
            "environment": environment,
            "settings": {**asdict(s), "onnx_graph": onnx_source},
            "peers": peers,
            "configs": [{"name": c.name, "library": c.library, "description": c.description,
                         "default": c.default, "env": dict(c.env), "unset": list(c.unset)}
                        for c in configs],
            "workers": workers, "results": results, "warnings": warnings}


def _measure(configs, case_fields, workdir, s, progress):
    """Run every worker, interleaved; returns ({(config, threads): {round: result}}, the
    worker records, the warnings)."""
    plan = stats.interleaved_order([c.name for c in configs], s.rounds, s.threads)
    bar = _Progress(len(plan)) if progress else None
    raw, workers, warnings = {}, [], []
    for r, t, name in plan:
        config = next(c for c in configs if c.name == name)
        label = f"{name}, {t} thread(s), round {r + 1}/{s.rounds}"
        if bar:
            bar.show(label)
        spec = {"config": name, "threads": t, "cases": case_fields[name], "budget": s.budget,
                "warmup": s.warmup, "first_warmup": s.first_warmup, "min_calls": s.min_calls,
                "workdir": workdir}
        cmd = [sys.executable, "-m", "fastnet.bench.worker", json.dumps(spec)]
        result, error, foreign, attempts = _run_worker(cmd, _child_env(config, t), s)
        record = {"config": name, "threads": t, "round": r, "attempts": attempts,
                  "foreign_cpu": round(foreign, 3), "error": error}
        if result is not None:
            raw.setdefault((name, t), {})[r] = result
            record.update({k: result[k] for k in ("seconds", "threads_verified",
                                                  "fma_peak_gflops", "denormals_main_thread",
                                                  "gemm_denormals_as_zero", "facts", "errors")})
            if not result["threads_verified"]["ok"]:
                warnings.append(f"{label}: the thread count read back differs: "
                                f"{result['threads_verified']}")
            warnings += [f"{label}: {key} failed: {msg}" for key, msg in result["errors"].items()]
        else:
            warnings.append(f"{label}: {error}")
        if foreign > s.max_foreign:
            warnings.append(f"{label}: other processes used {foreign:.2f} CPUs meanwhile "
                            f"(kept after {attempts} attempt(s))")
        workers.append(record)
        if bar:
            bar.step(f"{label}: {result['seconds']:.1f}s" if result else f"{label}: failed")
    if bar:
        bar.close()
    return raw, workers, warnings


def _cell(case, threads, configs, raw, workers, s, warnings):
    """One result row: every configuration's summary and fastnet's ratio to each peer."""
    measurements = []
    for c in configs:
        rounds = raw.get((c.name, threads), {})
        per_round = {r: w["cases"][case.key] for r, w in rounds.items() if case.key in w["cases"]}
        if not per_round:
            continue
        summary = stats.summarize([v["times"] for v in per_round.values()])
        mine = [w for w in workers if w["config"] == c.name and w["threads"] == threads]
        measurements.append({
            "config": c.name, "library": c.library, "default": c.default, **summary,
            "rounds": sorted(per_round), "rate": case.rate(summary["median_s"]),
            "check": per_round[min(per_round)]["check"], "agrees": None,
            "foreign_cpu_max": max(w["foreign_cpu"] for w in mine),
            "threads_ok": all(w.get("threads_verified", {}).get("ok", False)
                              for w in mine if w["error"] is None)})
    ref = next((m for m in measurements if m["library"] == "fastnet"), None)
    ratios = []
    if ref is not None:
        for m in measurements:
            if m is not ref:
                m["agrees"] = stats.agree(ref["check"], m["check"])
                if not m["agrees"]:
                    warnings.append(f"{case.key} at {threads} thread(s): {m['config']}'s result "
                                    f"differs from fastnet's (checksums {m['check']} vs "
                                    f"{ref['check']})")
        for lib in dict.fromkeys(m["library"] for m in measurements if m is not ref):
            mine = [m for m in measurements if m["library"] == lib]
            for against, m in (("default", next((x for x in mine if x["default"]), None)),
                               ("best", min(mine, key=lambda x: x["median_s"]))):
                if m is None:
                    continue
                rounds = dict(zip(m["rounds"], m["round_medians_s"]))
                fast = dict(zip(ref["rounds"], ref["round_medians_s"]))
                ratios.append({"peer": lib, "against": against, "config": m["config"],
                               "ratio": stats.ratio(m["median_s"], ref["median_s"]),
                               "round_ratios": [stats.ratio(rounds[r], fast[r])
                                                for r in sorted(set(rounds) & set(fast))]})
    peak = None
    if case.unit == "GFLOP/s":   # the FMA loop's rate in fastnet's processes at these threads
        peaks = [w["fma_peak_gflops"] for w in workers if w["threads"] == threads
                 and w.get("fma_peak_gflops") and w["config"] == ref["config"]] if ref else []
        peak = float(np.median(peaks)) if peaks else None
        for m in measurements:
            m["of_peak"] = m["rate"] / peak if peak else None
    return {"suite": case.suite, "case": case.name, "key": case.key, "shape": case.shape,
            "threads": threads, "batch": case.batch, "work": case.work, "unit": case.unit,
            "fma_peak_gflops": peak, "measurements": measurements, "ratios": ratios}

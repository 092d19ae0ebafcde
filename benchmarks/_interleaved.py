"""Fresh-process, interleaved timing of a training step, for the benchmark scripts that
compare fastnet with a peer (DESIGN.md's method): every (configuration, thread count) runs in
its own child process (``script --child kind:threads``), round by round, and each child prints
the median wall and process-CPU milliseconds per step as one JSON line."""
import json
import os
import statistics
import subprocess
import sys
import time


def time_steps(step, steps, repeats, warmup=5):
    """(median wall ms, median process CPU ms) per call of ``step`` over ``repeats`` timings
    of ``steps`` calls each, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall.append((time.perf_counter() - t0) / steps * 1e3)
        cpu.append((time.process_time() - c0) / steps * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def report_child(kind, threads, step, steps, repeats, warmup=5):
    """In the child: time ``step`` and print the JSON line the parent reads."""
    ms, cpu_ms = time_steps(step, steps, repeats, warmup)
    print(json.dumps({"kind": kind, "threads": threads, "ms": ms, "cpu_ms": cpu_ms}))


def run_rounds(script, kinds, threads_list, rounds, steps, repeats):
    """Run ``script --child kind:threads`` for every kind, round by round, at each thread
    count (OMP_NUM_THREADS set, OPENBLAS_NUM_THREADS=1); print each result as it comes and
    return {(kind, threads): [(wall ms, CPU ms), ...]}."""
    results = {}
    width = max(len(k) for k in kinds)
    for threads in threads_list:
        for rnd in range(rounds):
            for kind in kinds:
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
                out = subprocess.run([sys.executable, script, "--child", f"{kind}:{threads}",
                                      "--steps", str(steps), "--repeats", str(repeats)],
                                     env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((kind, threads), []).append((r["ms"], r["cpu_ms"]))
                print(f"  round {rnd + 1} {kind:{width}s} {threads} thread(s): {r['ms']:8.2f} "
                      f"ms/step (process CPU time {r['cpu_ms']:8.2f} ms)", flush=True)
    return results


def medians(results, kind, threads):
    """(median wall ms, median CPU ms) of one configuration's rounds."""
    runs = results[(kind, threads)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))

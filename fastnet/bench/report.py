"""The outputs of a benchmark run: the terminal table, the JSON file and the bar chart."""
import json

from fastnet.bench import schema
from fastnet.utils.files import atomic_write

__all__ = ["format_time", "format_table", "format_markdown", "write_markdown",
           "write_json", "plot"]

MARKS = {"load": "~", "threads": "!", "differs": "≠"}


def format_time(seconds):
    """A duration with 3-4 significant digits and a unit: '812 ns', '12.3 µs', '1.23 ms'."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            v = seconds / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{seconds / 1e-9:.0f} ns"


def _spread(m):
    return f"±{50.0 * m['iqr_s'] / m['median_s']:.0f}%"


def _marks(m, max_foreign):
    out = ""
    if m["foreign_cpu_max"] > max_foreign:
        out += MARKS["load"]
    if not m["threads_ok"]:
        out += MARKS["threads"]
    if m.get("agrees") is False:
        out += MARKS["differs"]
    return out


def _time_cell(m, max_foreign):
    if m is None:
        return "-"
    return f"{format_time(m['median_s'])} {_spread(m)}{_marks(m, max_foreign)}"


def _columns(report, suite):
    """The peers (entries of report["peers"]) this suite compares with."""
    from fastnet.bench.suites import SUITES
    libs = SUITES[suite].LIBRARIES
    return [p for p in report["peers"] if p["name"] in libs]


def _tables(report):
    """[(suite, header, rows)] with cells as text, and the set of marks used."""
    max_foreign = report["settings"]["max_foreign"]
    by_suite, marks, out = {}, set(), []
    for r in report["results"]:
        by_suite.setdefault(r["suite"], []).append(r)
    for suite, rows in by_suite.items():
        peers = _columns(report, suite)
        head = ["benchmark", "shape", "thr", "fastnet", "rate"]
        with_peak = any(r.get("fma_peak_gflops") for r in rows)
        if with_peak:
            head.append("% peak")
        for p in peers:
            if p["status"] != "measured":
                head.append(p["label"])
            elif len(p["configs"]) > 1:
                head += [p["label"], f"{p['label']} best", f"x {p['label']}"]
            else:
                head += [p["label"], f"x {p['label']}"]
        table = []
        for r in rows:
            fast = next((x for x in r["measurements"] if x["library"] == "fastnet"), None)
            # the rate of fastnet; of the first peer on a row fastnet has no case for (a roof)
            shown = fast or (r["measurements"][0] if r["measurements"] else None)
            rate = f"{shown['rate']:,.1f} {r['unit']}" if shown else "-"
            row = [r["case"], r["shape"], str(r["threads"]), _time_cell(fast, max_foreign),
                   rate if shown is fast else f"{rate} ({shown['config']})"]
            if with_peak:
                row.append(f"{100.0 * fast['of_peak']:.1f}%" if fast and fast.get("of_peak")
                           else "-")
            for p in peers:
                if p["status"] != "measured":
                    row.append("skipped")
                    continue
                mine = [x for x in r["measurements"] if x["library"] == p["name"]]
                default = next((x for x in mine if x["default"]), None)
                best = min(mine, key=lambda x: x["median_s"]) if mine else None
                row.append(_time_cell(default, max_foreign))
                if len(p["configs"]) > 1:
                    row.append(_time_cell(best, max_foreign) +
                               (f" ({best['config']})" if best and not best["default"] else ""))
                ratio = next((x["ratio"] for x in r["ratios"]
                              if x["peer"] == p["name"] and x["against"] == "best"), None)
                row.append("-" if ratio is None else f"{ratio:.2f}")
            for x in r["measurements"]:
                marks.update(_marks(x, max_foreign))
            table.append(row)
        out.append((suite, head, table))
    return out, marks


def _header(report):
    s, env = report["settings"], report["environment"]
    m, build = env["machine"], env["fastnet_build"]
    lines = [f"fastnet {env['versions']['fastnet']} bench, {env['date']}: `{env['command']}`",
             f"{m['cpu']} ({m['arch']}), {m['usable_cores']} usable cores; fastnet kernels "
             f"{build['isa']}, OpenMP {'on' if build['openmp'] else 'off'}",
             f"medians of {s['rounds']} fresh process(es) per library configuration and thread "
             f"count, interleaved; ± half the interquartile range of all calls"]
    peaks = {}
    for r in report["results"]:
        if r.get("fma_peak_gflops"):
            peaks.setdefault(r["threads"], r["fma_peak_gflops"])
    if peaks:
        lines.append("% peak: fastnet's rate / the float32 FMA peak measured by an FMA loop in "
                     "the same processes (" + ", ".join(
                         f"{v:,.1f} GFLOP/s at {t} thread{'s' if t > 1 else ''}"
                         for t, v in sorted(peaks.items())) + ")")
    for p in report["peers"]:
        label = f"{p['label']} {env['versions'].get(p['name']) or ''}".strip()
        lines.append(f"{label}: measured as {', '.join(p['configs'])}"
                     if p["status"] == "measured" else f"{p['label']}: skipped ({p['reason']})")
        if p["name"] == "onnxruntime" and s.get("onnx_graph"):
            lines[-1] += f", on the graph written by {s['onnx_graph']}"
    return lines


def _footer(report, marks):
    s = report["settings"]
    notes = {MARKS["load"]: f"other processes used more than {s['max_foreign']} CPU during a "
                            f"process of this cell (a shared machine)",
             MARKS["threads"]: "the thread count read back differed from the one requested",
             MARKS["differs"]: "the result's checksum differs from fastnet's"}
    lines = ["x P: P's best time / fastnet's time (above 1: fastnet is faster); best = the "
             "fastest configuration of P measured for that row"]
    lines += [f"{k} {v}" for k, v in notes.items() if k in marks]
    if report["warnings"]:
        lines.append(f"{len(report['warnings'])} warning(s): see the JSON (--json) for each")
    return lines


def format_table(report):
    """The results as text: one table per suite; rows benchmark, shape, threads; columns
    fastnet, each peer as a user gets it by default and in its best configuration, and how
    many times faster fastnet is than that best configuration."""
    tables, marks = _tables(report)
    lines = _header(report)
    for suite, head, rows in tables:
        table = [head] + rows
        widths = [max(len(t[i]) for t in table) for i in range(len(head))]
        lines += ["", f"{suite}:"]
        for i, t in enumerate(table):
            lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w)
                                   for j, (c, w) in enumerate(zip(t, widths))).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + _footer(report, marks))


def _md(text):
    # a single ~ strikes text through on GitHub, a | splits a cell
    return text.replace("|", "\\|").replace("~", "\\~")


def format_markdown(report):
    """The same tables as Markdown (for a README), with the command and the date."""
    tables, marks = _tables(report)
    lines = [_md(line) + "  " for line in _header(report)]
    for suite, head, rows in tables:
        lines += ["", f"**{suite}**", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join("---" if j < 3 else "---:" for j in range(len(head))) + "|"]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines + [""] + [_md(line) + "  " for line in _footer(report, marks)])


MD_BEGIN, MD_END = "<!-- fastnet-bench:begin -->", "<!-- fastnet-bench:end -->"


def write_markdown(report, path):
    """Write the Markdown tables to ``path``; when the file already holds the markers
    ``<!-- fastnet-bench:begin -->`` and ``<!-- fastnet-bench:end -->`` (a README), replace
    only what is between them."""
    text = format_markdown(report)
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if MD_BEGIN in old and MD_END in old.split(MD_BEGIN, 1)[1]:
        head, rest = old.split(MD_BEGIN, 1)
        text = f"{head}{MD_BEGIN}\n{text}\n{MD_END}{rest.split(MD_END, 1)[1]}"
    else:
        text += "\n"
    atomic_write(path, text.encode("utf-8"))


def write_json(report, path):
    """Validate ``report`` against the checked-in schema, then write it atomically."""
    errors = schema.validate(report)
    if errors:
        raise ValueError("the report does not match fastnet/bench/schema.json:\n  "
                         + "\n  ".join(errors[:20]))
    atomic_write(path, (json.dumps(report, indent=1, ensure_ascii=False) + "\n").encode())


def plot(report, path):
    """A horizontal bar chart of fastnet's speed ratio to each peer per row: a bar for the
    peer's best configuration, a tick for its default one; log scale, 1 marked.  PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib "
                          "(or pip install 'fastnet[bench]')") from e
    rows = [r for r in report["results"] if r["ratios"]]
    if not rows:   # no peer installed for these suites: say so in the picture
        fig, ax = plt.subplots(figsize=(8, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no peer measured for these suites (PyTorch / ONNX Runtime not "
                "installed): nothing to compare", ha="center", va="center", fontsize=9)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return
    labels = {p["name"]: p["label"] for p in report["peers"]}
    peers = list(dict.fromkeys(x["peer"] for r in rows for x in r["ratios"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {p: colors[i % len(colors)] for i, p in enumerate(peers)}
    bar_h, gap = 0.8, 0.7
    y, ticks, names, values, seen = 0.0, [], [], [], set()
    fig_rows = sum(len({x["peer"] for x in r["ratios"]}) for r in rows)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.24 * fig_rows + 0.12 * len(rows)))
    for r in rows:
        here = [p for p in peers if any(x["peer"] == p for x in r["ratios"])]
        ticks.append(y + (len(here) - 1) * bar_h / 2)
        names.append(f"{r['suite']}: {r['case']} ({r['shape']}), {r['threads']}t")
        for p in here:
            got = {x["against"]: x["ratio"] for x in r["ratios"] if x["peer"] == p}
            # from 1 to the ratio: right of 1 fastnet is faster, left of it slower
            ax.barh(y, got["best"] - 1.0, left=1.0, height=bar_h * 0.9, color=color[p],
                    label=None if p in seen else f"{labels.get(p, p)} (bar: best config, "
                                                 f"tick: default)")
            seen.add(p)
            if "default" in got:
                ax.plot([got["default"]] * 2, [y - bar_h * 0.45, y + bar_h * 0.45],
                        color="black", linewidth=2)
            values += list(got.values())
            y += bar_h
        y += gap
    ax.set_xscale("log")
    ax.set_xlim(min(values + [1.0]) / 1.4, max(values + [1.0]) * 1.4)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(ticks)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_ylim(y - gap + bar_h / 2, -bar_h)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("peer time / fastnet time (right of 1: fastnet is faster)")
    env, s = report["environment"], report["settings"]
    ax.set_title(f"fastnet {env['versions']['fastnet']} vs its peers: {env['machine']['cpu']}, "
                 f"{env['date'][:10]}, medians of {s['rounds']} fresh processes"
                 f"{' (--quick)' if s['quick'] else ''}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    # below the figure (savefig's tight box grows to hold it), clear of the axis label
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=len(peers))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)

"""``fastnet bench``: the command line over ``fastnet.bench.runner``."""
import argparse
import sys

__all__ = ["add_arguments", "run_command", "main"]

EPILOG = """\
Every library configuration runs in fresh processes at each thread count, interleaved with
the others round by round; the table gives medians, the spread and fastnet's speed ratio to
each peer's best configuration.  Peers: NumPy (always), PyTorch and ONNX Runtime when
installed.  --quick: fewer cases, 2 rounds, short timings."""


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def add_arguments(parser):
    from fastnet.bench.suites import SUITES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help=f"any of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--threads", type=_int_list, default=None,
                        help="comma-separated thread counts (default: 1 and the cores fastnet "
                             "uses)")
    parser.add_argument("--batch", type=_int_list, default=None,
                        help="batch sizes of the train and infer suites (default: 64 for train, "
                             "1,64 for infer)")
    parser.add_argument("--json", metavar="OUT.json", help="write every figure and the "
                        "environment as JSON (checked against fastnet/bench/schema.json)")
    parser.add_argument("--plot", metavar="OUT.png", help="bar chart of the ratios (matplotlib)")
    parser.add_argument("--markdown", metavar="OUT.md",
                        help="the tables as Markdown, with the command and the date; in a file "
                             "holding <!-- fastnet-bench:begin --> ... <!-- fastnet-bench:end "
                             "--> (the README) only that part is replaced")
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter timings")
    parser.add_argument("--rounds", type=int, default=None,
                        help="fresh processes per configuration and thread count (default 3; "
                             "2 with --quick)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed calls per case and process (default 0.4; 0.08 "
                             "with --quick)")
    parser.add_argument("--peers", default=None,
                        help="comma-separated peers to measure (default: every installed one "
                             "of numpy, torch, onnxruntime); 'none' for fastnet alone")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait for an idle machine before each process "
                             "(default 30; 0 with --quick)")
    parser.add_argument("--max-load", type=float, default=0.25,
                        help="CPUs other processes may use during a process before it is run "
                             "again (default 0.25)")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-runs of a process disturbed by other load (default 2; 0 with "
                             "--quick)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on stderr")
    parser.add_argument("--list", action="store_true",
                        help="list the suites, cases and library configurations, then exit")
    return parser


def _list(suites, quick, batches):
    from fastnet.bench.cases import FASTNET, PEERS, installed, peer_configs
    from fastnet.bench.suites import SUITES, select_cases
    for name in suites:
        mod = SUITES[name]
        print(f"{name} ({', '.join(mod.LIBRARIES)}):")
        for c in select_cases([name], quick, batches):
            print(f"  {c.name:24s} {c.shape:32s} {c.unit}{'  [quick]' if c.quick else ''}")
    print("configurations:")
    print(f"  {FASTNET.name:18s} {FASTNET.description}")
    for p in PEERS:
        if not installed(p.module):
            print(f"  {p.name:18s} skipped (not installed)")
            continue
        for c in peer_configs(p, quick):
            print(f"  {c.name:18s} {'[default] ' if c.default else ''}{c.description}")


def run_command(args, parser):
    """Run ``fastnet bench`` from parsed arguments; returns the exit status."""
    from fastnet.bench import report, runner
    from fastnet.bench.suites import SUITES
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if args.list:
        _list(args.suites or list(SUITES), args.quick, args.batch)
        return 0
    peers = None
    if args.peers is not None:
        peers = [p for p in args.peers.split(",") if p.strip() and p != "none"]
        bad = [p for p in peers if p not in ("numpy", "torch", "onnxruntime")]
        if bad:
            parser.error(f"--peers: unknown peer(s) {bad}; choose from numpy, torch, onnxruntime")
    if (args.rounds is not None and args.rounds < 1) or (args.budget is not None and
                                                         args.budget <= 0):
        parser.error("--rounds must be >= 1 and --budget > 0")
    if args.plot:   # fail before measuring, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    settings = runner.Settings(suites=list(dict.fromkeys(args.suites)) or list(SUITES),
                               threads=args.threads, batches=args.batch, quick=args.quick,
                               rounds=args.rounds, budget=args.budget, max_wait=args.max_wait,
                               max_foreign=args.max_load, retries=args.retries, peers=peers)
    argv = getattr(args, "argv", None)
    result = runner.run(settings, argv=sys.argv[2:] if argv is None else argv,
                        progress=args.progress)
    print(report.format_table(result))
    if args.json:
        report.write_json(result, args.json)
        print(f"JSON written to {args.json}")
    if args.markdown:
        report.write_markdown(result, args.markdown)
        print(f"Markdown tables written to {args.markdown}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"bar chart written to {args.plot}")
    fastnet_failed = any(w["error"] or w.get("errors") for w in result["workers"]
                         if w["config"] == "fastnet")
    return 1 if fastnet_failed else 0


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(prog="fastnet bench",
                                                   description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(args, parser)

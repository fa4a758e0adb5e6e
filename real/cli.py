"""nexus-real: run the shared policies on a real GPU (or a tiny model on CPU) and measure them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from nexus.errors import UserError
from nexus.policy import POLICIES
from nexus.specs import GPUS, MODELS, resolve_gpu, resolve_model

DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "traces" / "sharegpt.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nexus-real", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="replay a trace under one or more policies and measure TTFT/TBT",
                       description="Replay a trace in real time on one GPU; write the same files as nexus-sim.")
    b.add_argument("--trace", default=str(DEFAULT_TRACE))
    b.add_argument("--policy", default="nexus", help=f"one of {', '.join(POLICIES)}")
    b.add_argument("--compare", help="comma-separated policies, run one after another on the same engine")
    b.add_argument("--model", default="llama-3.1-8b", help=f"{', '.join(MODELS)}, or a .json/.toml ModelSpec")
    b.add_argument("--gpu", default="h100-sxm", help=f"GPU spec for the cost model: {', '.join(GPUS)}")
    b.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu runs the same engine without partitions (use a tiny model)")
    b.add_argument("--weights", help="local Hugging Face safetensors checkpoint dir (default: random weights)")
    b.add_argument("--calibration", help="calibration JSON for the Nexus controller ('analytical' to force the roofline)")
    b.add_argument("--split", help="PREFILL_SMS:DECODE_SMS for static (and nexus's fallback split)")
    b.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter")
    b.add_argument("--rate-scale", type=float, default=1.0)
    b.add_argument("--limit", type=int, help="only the first N requests of the trace")
    b.add_argument("--max-num-seqs", type=int, default=256)
    b.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    b.add_argument("--num-blocks", type=int, help="KV blocks (default: as many as fit)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--slo-ttft", type=float)
    b.add_argument("--slo-tbt", type=float)
    b.add_argument("--out", required=True, help="directory for summary.json, requests.parquet, timeline.parquet, plots")

    pr = sub.add_parser("profile", help="measure step times over SM counts and shapes; write a calibration file",
                        description="Profile prefill, decode and co-run step times on every partition; "
                                    "resumable: rerun with the same --out to continue.")
    pr.add_argument("--model", default="llama-3.1-8b")
    pr.add_argument("--gpu", default="h100-sxm")
    pr.add_argument("--out", required=True, help="calibration JSON (created, or merged into)")
    pr.add_argument("--part", default="prefill,decode,corun", help="which parts to measure now")
    pr.add_argument("--repeats", type=int, default=5)
    pr.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    pr.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    return p


def main(argv: list[str] | None = None) -> int:
    from nexus.cli_args import run_reporting_user_errors
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "nexus-real " + " ".join(argv)
    console = Console(stderr=True)
    command = bench if args.command == "bench" else profile_command
    return run_reporting_user_errors("nexus-real", lambda: command(args, console))


def bench(args: argparse.Namespace, console: Console) -> int:
    from nexus.report import print_table
    from real.bench import (bench_policy, build_partitions, capture_all_graphs, check_fits, facts,
                            make_policies, warm_up, write_outputs)
    from real.model_runner import ModelRunner
    from nexus.cli_args import parse_params, parse_split
    from traces.retime import load_entries

    model, gpu = resolve_model(args.model), resolve_gpu(args.gpu)
    entries = load_entries(args.trace, args.rate_scale)
    if args.limit:
        entries = entries[:args.limit]
    names = [n.strip() for n in (args.compare or args.policy).split(",") if n.strip()]
    if "disagg" in names:   # a prefill and a decode engine, one process each
        from real.disagg import bench_disagg
        return bench_disagg(args, names, model, gpu, entries, console)
    split = parse_split(args.split) if args.split else None
    policies = make_policies(names, parse_params(args.param), split, gpu)

    runner = ModelRunner(model, device=args.device, weights=args.weights, seed=args.seed,
                         num_blocks=args.num_blocks, memory_utilization=args.gpu_memory_utilization,
                         max_decode_batch=args.max_num_seqs)
    check_fits(entries, runner)
    parts = build_partitions(policies, gpu, args.device)
    console.print(f"partitions: {parts.describe()}")
    capture_all_graphs(runner, parts)
    warm_up(runner, parts)
    runs = {}
    for policy in policies:
        console.print(f"running {policy.name} on {len(entries)} requests ...")
        runs[policy.name] = bench_policy(runner, parts, policy, model, gpu, entries, args.calibration,
                                         args.max_num_seqs, args.seed, args.slo_ttft, args.slo_tbt)
    print_table([r[0] for r in runs.values()])
    extra = {"machine": facts(args.device), "partitions": parts.describe(), "trace": str(args.trace),
             "command": args.command_line}
    write_outputs(Path(args.out), runs, extra, gpu.num_sms)   # partitions are released at exit
    console.print(f"wrote results to {args.out}/")
    return 0


def profile_command(args: argparse.Namespace, console: Console) -> int:
    from real.model_runner import ModelRunner
    from real.partitions import Partitions
    from real.profile import PARTS, profile

    model, gpu = resolve_model(args.model), resolve_gpu(args.gpu)
    which = [w.strip() for w in args.part.split(",") if w.strip()]
    unknown = set(which) - set(PARTS)
    if unknown:
        raise UserError(f"unknown --part {', '.join(sorted(unknown))}; parts are {', '.join(PARTS)}")
    runner = ModelRunner(model, device=args.device, max_decode_batch=256,
                         memory_utilization=args.gpu_memory_utilization)
    parts = Partitions(gpu.partition_sizes(), device=args.device, cpu_gpu=gpu)
    if "decode" in which or "corun" in which:
        # The engine's buckets (they include every profiled batch size), so that the
        # calibration records the padding the engine will apply.
        runner.capture_graphs([parts.decode(0), *(parts.decode(p) for p in parts.made())])
    if "prefill" in which or "corun" in which:
        runner.capture_prefill_graphs([parts.prefill(0), *(parts.prefill(p) for p in parts.made())])
    data = profile(runner, parts, model, gpu, Path(args.out), which,
                   args.command_line, args.repeats,
                   log=lambda m: console.print(m))
    err = data.get("fit_error")
    if err:
        for kind in ("prefill", "decode", "corun_slowdown", "mixed"):
            s = err[kind]
            if s.get("n"):
                console.print(f"{kind:15s} held-out median {s['median_abs_pct']:.2f}%  P90 {s['p90_abs_pct']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

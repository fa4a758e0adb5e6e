"""nexus-real: run the shared policies on a real GPU (or a tiny model on CPU) and measure them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from nexus import __version__
from nexus.cli_args import ArgumentParser, non_negative_int, positive_int, positive_seconds
from nexus.errors import UserError
from nexus.policy import POLICIES
from nexus.specs import GPUS, MODELS, resolve_model
from real.gpu_detect import detect_gpu

PROFILE_PARTS = ("prefill", "decode", "corun", "mixed", "engine")   # real.profile.PARTS, without torch
DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "traces" / "sharegpt.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="nexus-real", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="replay a trace under one or more policies and measure TTFT/TBT",
                       description="Replay a trace in real time on one GPU; write the same files as nexus-sim.")
    b.add_argument("--trace", default=str(DEFAULT_TRACE))
    b.add_argument("--policy", default="nexus", help=f"one of {', '.join(POLICIES)}")
    b.add_argument("--compare", help="comma-separated policies, run one after another on the same engine")
    b.add_argument("--model", default="llama-3.1-8b", help=f"{', '.join(MODELS)}, or a .json/.toml ModelSpec")
    b.add_argument("--gpu", help=f"GPU spec: {', '.join(GPUS)} or a spec file (default: detected from the "
                                 "device; one that contradicts the device is an error)")
    b.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu runs the same engine without partitions (use a tiny model)")
    b.add_argument("--weights", help="local Hugging Face safetensors checkpoint dir (default: random weights)")
    b.add_argument("--calibration", help="calibration JSON for the Nexus controller ('analytical' to force the roofline)")
    b.add_argument("--split", help="PREFILL_SMS:DECODE_SMS for static (and nexus's fallback split)")
    b.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter")
    b.add_argument("--rate-scale", type=float, default=1.0)
    b.add_argument("--limit", type=positive_int, help="only the first N requests of the trace")
    b.add_argument("--max-num-seqs", type=positive_int, default=256)
    b.add_argument("--gpu-memory-utilization", type=memory_fraction, default=0.9)
    b.add_argument("--num-blocks", type=positive_int, help="KV blocks (default: as many as fit)")
    b.add_argument("--seed", type=non_negative_int, default=0)
    b.add_argument("--slo-ttft", type=positive_seconds)
    b.add_argument("--slo-tbt", type=positive_seconds)
    b.add_argument("--out", required=True, help="directory for summary.json, requests.parquet, timeline.parquet, plots")

    v = sub.add_parser("validate", help="run the engine and the simulator on the same requests; report the error",
                       description="Serve a trace on this GPU under each policy at several loads, simulate the "
                                   "identical requests on the same calibration, and report the simulator's error "
                                   "per metric and load band, with a step-level view.",
                       epilog="Example: nexus-real validate --trace traces/sharegpt.jsonl --limit 400 "
                              "--policy chunked --policy nexus --policy nexus:beta=2 --loads auto --out val/")
    v.add_argument("--trace", action="append", metavar="[NAME=]PATH",
                   help="trace to serve, repeatable (default: the shipped ShareGPT trace)")
    v.add_argument("--policy", action="append", metavar="NAME[:KEY=VALUE,...]",
                   help="a policy to validate, with parameters after a colon, e.g. nexus:beta=2; "
                        "repeat for several (default: chunked, static and nexus)")
    v.add_argument("--loads", default="auto",
                   help="'auto' (0.5,0.8,1.0,1.2 x the simulator's predicted saturation), 'auto=0.5,1,1.2' "
                        "for other fractions, or rate scales of the trace, e.g. 0.5,1,2")
    v.add_argument("--limit", type=int, help="only the first N requests of each trace")
    v.add_argument("--model", default="llama-3.1-8b")
    v.add_argument("--gpu", help="GPU spec (default: detected from the device)")
    v.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    v.add_argument("--weights", help="local Hugging Face safetensors checkpoint dir (default: random weights)")
    v.add_argument("--calibration", help="calibration JSON for both the simulator and the controller "
                                         "(default: the shipped one for the GPU and model)")
    v.add_argument("--max-num-seqs", type=int, default=256)
    v.add_argument("--num-blocks", type=int, help="KV blocks (default: as many as fit)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", required=True, help="directory for validate.json, validate.md, steps.csv (every measured step beside its prediction) and validate_cdf.png")
    v.add_argument("--rescore", metavar="DIR",
                   help="no GPU: score an earlier run's engine measurements (DIR/validate.json, DIR/steps.csv[.gz]) "
                        "against --calibration; give the same --trace and --limit")
    v.add_argument("--planning-calibration", metavar="PATH",
                   help="with --rescore: the calibration the engine's controllers planned with, so the "
                        "simulated policies plan alike (default: --calibration)")

    m = sub.add_parser("max-rate", help="the highest load each policy sustains within an SLO, measured",
                       description="Predict each policy's max rate under the SLO in the simulator, then confirm "
                                   "it on this GPU with few probes (the prediction and 1.1x it), bisecting only "
                                   "where the engine disagrees. Writes max_rate.json as nexus-sim --max-rate does.")
    m.add_argument("--trace", default=str(DEFAULT_TRACE))
    m.add_argument("--policy", action="append", metavar="NAME[:KEY=VALUE,...]",
                   help="repeatable (default: chunked, static, nexus and nexus-slo)")
    m.add_argument("--slo-ttft", type=positive_seconds)
    m.add_argument("--slo-tbt", type=positive_seconds)
    m.add_argument("--slo-percentile", default="p95", choices=["p50", "p90", "p95", "p99"])
    m.add_argument("--limit", type=positive_int, help="only the first N requests of the trace")
    m.add_argument("--model", default="llama-3.1-8b")
    m.add_argument("--gpu", help="GPU spec (default: detected from the device)")
    m.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    m.add_argument("--calibration", help="calibration JSON for the simulator and the controllers")
    m.add_argument("--num-blocks", type=positive_int, help="KV blocks (default: as many as fit)")
    m.add_argument("--out", required=True, help="directory for max_rate.json and steps.csv.gz")

    pr = sub.add_parser("profile", help="measure step times over SM counts and shapes; write a calibration file",
                        description="Profile prefill, decode and co-run step times on every partition; "
                                    "resumable: rerun with the same --out to continue.")
    pr.add_argument("--model", default="llama-3.1-8b")
    pr.add_argument("--gpu", help="GPU spec (default: detected from the device)")
    pr.add_argument("--out", required=True, help="calibration JSON (created, or merged into)")
    pr.add_argument("--part", default=",".join(PROFILE_PARTS),
                    help=f"which parts to measure now (default: all of {', '.join(PROFILE_PARTS)}; 'engine' "
                         "is the host gap between steps, from a short engine replay of a synthetic trace)")
    pr.add_argument("--repeats", type=positive_int, default=5)
    pr.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    pr.add_argument("--gpu-memory-utilization", type=memory_fraction, default=0.9)

    from real import client, serve
    serve.add_parser(sub)
    client.add_parser(sub)
    return p


def memory_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of memory in (0, 1], got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    from nexus.cli_args import run_reporting_user_errors
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "nexus-real " + " ".join(argv)
    console = Console(stderr=True)
    command = getattr(args, "run", None) or {"bench": bench, "validate": validate_command,
                                              "max-rate": max_rate_command,
                                              "profile": profile_command}[args.command]
    return run_reporting_user_errors("nexus-real", lambda: command(args, console))


def bench(args: argparse.Namespace, console: Console) -> int:
    from nexus.cli_args import parse_params, parse_split, policy_names
    from nexus.config import EngineConfig
    from nexus.policy import build_policies
    from nexus.report import check_out, print_table
    from traces.retime import load_entries

    check_out(Path(args.out))   # before the work, not after it
    model, gpu = resolve_model(args.model), detect_gpu(args.gpu, args.device, console.print)
    config = EngineConfig(max_num_seqs=args.max_num_seqs, gpu_memory_utilization=args.gpu_memory_utilization,
                          seed=args.seed)
    entries = load_entries(args.trace, args.rate_scale)
    if args.limit:
        entries = entries[:args.limit]
    names = policy_names(args.policy, args.compare)
    if "disagg" in names:   # a prefill and a decode engine, one process each
        from real.disagg import bench_disagg
        return bench_disagg(args, names, model, gpu, entries, console)
    split = parse_split(args.split) if args.split else None
    from real.bench import Bench, write_outputs
    policies = build_policies(names, parse_params(args.param), split)
    bench = Bench(model, gpu, policies, config, args.device, args.weights, args.num_blocks,
                  calibration=args.calibration)
    console.print(f"partitions: {bench.partitions.describe()}")
    results = []
    for policy in policies:
        console.print(f"running {policy.name} on {len(entries)} requests ...")
        results.append(bench.run(entries, policy, args.calibration, args.slo_ttft, args.slo_tbt))
    print_table([r.summary for r in results])
    extra = {"machine": bench.machine(), "trace": str(args.trace), "command": args.command_line}
    write_outputs(Path(args.out), results, extra, gpu.num_sms)   # partitions are released at exit
    console.print(f"wrote results to {args.out}/")
    return 0


def validate_command(args: argparse.Namespace, console: Console) -> int:
    from nexus.config import EngineConfig
    from real.bench import Bench
    from real.validate import AUTO_LOADS, PolicyCase, validate
    from sim.sweep import parse_loads
    from traces.retime import load_entries

    traces = {}
    for item in args.trace or [str(DEFAULT_TRACE)]:
        name, sep, path = item.partition("=")
        path = path if sep else name
        name = name if sep else Path(path).stem
        traces[name] = load_entries(path)[:args.limit] if args.limit else load_entries(path)
    if args.rescore:
        return _rescore(args, traces, console)
    model, gpu = resolve_model(args.model), detect_gpu(args.gpu, args.device, console.print)
    config = EngineConfig(max_num_seqs=args.max_num_seqs, seed=args.seed)
    cases = [PolicyCase.parse(t.strip()) for t in args.policy or ["chunked", "static", "nexus"]]
    policies = [c.make() for c in cases]
    fractions, loads = AUTO_LOADS, None
    if args.loads.startswith("auto"):
        if args.loads != "auto":
            fractions = tuple(parse_loads(args.loads.removeprefix("auto").lstrip("=:"), "--loads"))
    else:
        loads = parse_loads(args.loads, "--loads")
    bench = Bench(model, gpu, policies, config, args.device, args.weights, args.num_blocks,
                  calibration=args.calibration)
    record = validate(bench, traces, cases, loads, args.calibration, args.command_line, Path(args.out),
                      fractions, log=lambda m: console.print(m))
    _print_bands(record, console)
    console.print(f"wrote {args.out}/validate.json, validate.md, steps.csv, validate_cdf.png")
    return 0


def _print_bands(record: dict, console: Console) -> None:
    """The median |error| per load band of a validation record."""
    for band, s in record["summary"].items():
        if s["cases"]:
            console.print(f"{band:17s} median |error| " + "  ".join(
                f"{k} {v:.1f}%" for k, v in s["median_abs_pct"].items() if v is not None))


def _rescore(args: argparse.Namespace, traces: dict, console: Console) -> int:
    import json

    import pandas as pd

    from nexus.report import check_out
    from real.validate import rescore

    source = Path(args.rescore)
    try:
        previous = json.loads((source / "validate.json").read_text())
        steps = pd.read_csv(next((p for p in (source / "steps.csv", source / "steps.csv.gz") if p.exists()),
                                 source / "steps.csv"))
    except (OSError, ValueError) as e:
        raise UserError(f"--rescore {source}: cannot read validate.json and steps.csv ({e})") from None
    check_out(Path(args.out))
    record = rescore(previous, steps, traces, args.calibration, args.planning_calibration or args.calibration,
                     args.command_line, Path(args.out))
    _print_bands(record, console)
    console.print(f"wrote {args.out}/validate.json, validate.md, steps.csv")
    return 0


def max_rate_command(args: argparse.Namespace, console: Console) -> int:
    from nexus.config import EngineConfig
    from real.bench import Bench
    from real.max_rate import engine_max_rates, write_steps
    from sim.max_rate import steady_state_warnings, write_record
    from real.validate import PolicyCase
    from sim.executors import InlineExecutor
    from sim.probe import SLO, Load
    from traces.retime import load_entries
    from traces.stats import summarize as trace_stats

    slo = SLO(args.slo_ttft, args.slo_tbt, args.slo_percentile)
    model, gpu = resolve_model(args.model), detect_gpu(args.gpu, args.device, console.print)
    entries = load_entries(args.trace)[:args.limit] if args.limit else load_entries(args.trace)
    cases = [PolicyCase.parse(t.strip()) for t in args.policy or ["chunked", "static", "nexus", "nexus-slo"]]
    slo_params = {"ttft_slo_s": args.slo_ttft, "tbt_slo_s": args.slo_tbt}
    makers = {c.label: (lambda c=c: c.make(slo_params)) for c in cases}
    bench = Bench(model, gpu, [make() for make in makers.values()], EngineConfig(), args.device,
                  num_blocks=args.num_blocks, calibration=args.calibration)
    record = {"what": "highest load within the SLO, per policy: the simulator's prediction, confirmed on the engine",
              "command": args.command_line, "unit": "scale", "slo": slo.describe(), "machine": bench.machine(),
              "model": model.name, "gpu": gpu.name, "calibration": args.calibration,
              "trace": trace_stats(entries), "policies": {}}
    out = Path(args.out)

    def write(results: dict, steps: list) -> None:   # after every probe: a run cut short keeps it
        record["policies"] = results
        record["complete"] = len(results) == len(makers) and all(r["status"] != "unfinished"
                                                                 for r in results.values())
        record["warnings"] = steady_state_warnings(results)
        write_steps(steps, out / "steps.csv.gz")
        write_record(record, out / "max_rate.json")

    results = engine_max_rates(bench, entries, makers, args.calibration, slo, Load("scale"),
                               InlineExecutor(), log=lambda m: console.print(m, highlight=False), on_policy=write)
    for label, r in results.items():
        console.print(f"{label}: engine {r['max_rate']} .. {r['min_failing']} x the trace's rate; simulator "
                      f"{r['simulated']['max_rate']}", highlight=False)
    for warning in record["warnings"]:
        console.print(f"warning: {warning}", highlight=False)
    console.print(f"wrote {out / 'max_rate.json'}")
    return 0


def profile_command(args: argparse.Namespace, console: Console) -> int:
    from real.model_runner import ModelRunner
    from real.partitions import Partitions
    from real.profile import PARTS, profile

    model, gpu = resolve_model(args.model), detect_gpu(args.gpu, args.device, console.print)
    which = [w.strip() for w in args.part.split(",") if w.strip()]
    unknown = set(which) - set(PARTS)
    if unknown:
        raise UserError(f"unknown --part {', '.join(sorted(unknown))}; parts are {', '.join(PARTS)}")
    runner = ModelRunner(model, device=args.device, max_decode_batch=256,
                         memory_utilization=args.gpu_memory_utilization)
    parts = Partitions(gpu.partition_sizes(), device=args.device, cpu_gpu=gpu)
    if "engine" in which:   # the replay runs as the engine does: every graph it captures
        from real.bench import capture_all_graphs
        capture_all_graphs(runner, parts)
    else:
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
        from nexus.cost.fit import fit_report
        for line in fit_report(err):
            console.print(line)
    return 0


if __name__ == "__main__":
    from nexus.launch import exit_with
    exit_with(main())

"""nexus-sim's load studies: --max-rate and --sweep, from parsed arguments to files and a table."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console

from nexus.cli_args import parse_params
from nexus.errors import UserError
from nexus.policy import Policy
from sim import max_rate, sweep
from sim.executors import make_executor
from sim.probe import SLO, Load, Setup
from traces.retime import load_entries


def run_load_study(args: argparse.Namespace, policies: list[Policy], console) -> int:
    if not (args.max_rate or args.sweep):
        raise UserError("--grid needs --max-rate or --sweep")
    unit = "rate" if args.rate is not None else "scale"
    start = args.rate if unit == "rate" else args.rate_scale
    if not (start > 0):
        raise UserError(f"--{'rate' if unit == 'rate' else 'rate-scale'} must be positive, got {start}")
    entries = load_entries(args.trace)
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit must be at least 1, got {args.limit}")
        entries = entries[:args.limit]
    if len(entries) < 2:
        raise UserError("a load study needs a trace of at least 2 requests")
    variants = [max_rate.Variant(p.name, p) for p in policies]
    for g in args.grid:
        variants += max_rate.grid_variants(g, parse_params(args.param),
                                           {"ttft_slo_s": args.slo_ttft, "tbt_slo_s": args.slo_tbt})
    setup = Setup(args.model, args.gpu, args.calibration, args.policy_calibration, args.max_num_seqs)
    load = Load(unit, args.seed)
    slo = None
    if args.max_rate or args.slo_ttft is not None or args.slo_tbt is not None:
        slo = SLO(args.slo_ttft, args.slo_tbt, args.slo_percentile)
    if not 0 < args.rate_tol < 1:
        raise UserError(f"--rate-tol must be in (0, 1), got {args.rate_tol}")
    _check_setup(setup, variants)
    command = "nexus-sim " + shlex.join(sys.argv[1:])
    out = Path(args.out or ".")
    executor = make_executor(args.ray, args.jobs)
    try:
        if args.sweep:
            loads = sweep.parse_loads(args.sweep)
            points = sweep.sweep(entries, variants, setup, load, loads, executor, slo)
            rec = sweep.record(points, variants, entries, setup, load, slo, command)
            max_rate.write_record(rec, out / "sweep.json")
            sweep.plot(rec, out / "sweep.png")
            console.print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
        if args.max_rate:
            def say(label: str, p: dict) -> None:
                if not args.quiet:
                    console.print(f"  {label}: {p['rate']:.4g} {'ok' if p['ok'] else 'fails'}", highlight=False)

            search = max_rate.search_for(start, args.rate_tol)
            results = max_rate.find_max_rates(entries, variants, setup, load, slo, executor,
                                              lambda: max_rate.search_for(start, args.rate_tol), say)
            rec = max_rate.record(results, entries, setup, load, slo, command, search)
            max_rate.write_record(rec, out / "max_rate.json")
            max_rate.print_max_rates(rec, Console())
            for w in rec["warnings"]:
                console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
            console.print(f"wrote {out / 'max_rate.json'}")
    finally:
        executor.shutdown()
    return 0


def _check_setup(setup: Setup, variants: list) -> None:
    """Fail on a bad model, GPU, calibration or split here, once, rather than in every worker."""
    from nexus.cost import load_cost_model
    from nexus.specs import resolve_gpu, resolve_model

    model, gpu = resolve_model(setup.model), resolve_gpu(setup.gpu)
    load_cost_model(model, gpu, setup.calibration)
    if setup.policy_calibration:
        load_cost_model(model, gpu, setup.policy_calibration)
    for v in variants:
        v.policy.check(gpu)

"""The highest load each policy sustains within an SLO, in the simulator.

Every policy (and every setting of a `--grid`) gets its own `RateSearch` over the load: a
multiple of the trace's own rate (`scale`), or a Poisson rate in req/s (`rate`). Probes of
all searches run side by side on an executor (sim.executors). The record written to
max_rate.json holds every probe, the SLO, the trace's statistics and the command; per
variant, under `policies.<label>`, `max_rate` (highest passing load) and `min_failing`.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nexus.cli_args import parse_params
from nexus.errors import UserError
from nexus.policy import Policy, build_policies, make_policy
from nexus.rate_search import RateSearch, search_all
from sim.probe import SLO, Load, Setup, probe
from traces import TraceEntry
from traces.stats import summarize as trace_summary

# A found max rate is trusted only if the trace's arrivals at that rate span this many mean
# request lifetimes: fewer, and the queue never reaches the state it would hold in a longer
# run (200 ShareGPT requests gave chunked ">= 419 req/s" where 1000 give 40.8).
STEADY_TURNOVERS = 10.0


@dataclass(frozen=True)
class Variant:
    """A policy under a label: a --compare entry, or one setting of a --grid."""
    label: str
    policy: Policy
    grid: str | None = None      # "policy:param" of the grid it belongs to


def parse_grid(text: str) -> tuple[str, str, list]:
    """'chunked:max_num_batched_tokens=256,512' -> ('chunked', 'max_num_batched_tokens', [256, 512])."""
    name, sep, rest = text.partition(":")
    key, eq, values = rest.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not (sep and eq and name.strip() and key.strip() and items):
        raise UserError(f"--grid takes POLICY:PARAM=V1,V2,..., e.g. chunked:max_num_batched_tokens=512,1024; "
                        f"got {text!r}")
    parsed = [parse_params([f"{key.strip()}={v}"]) for v in items]
    key = next(iter(parsed[0]))
    return name.strip(), key, [p[key] for p in parsed]


def grid_variants(text: str, shared: dict | None = None, slo: dict | None = None) -> list[Variant]:
    """One variant per value of the grid's parameter; shared --param values and the SLO go to
    the policy as build_policies gives them."""
    name, key, values = parse_grid(text)
    base = build_policies([name], {k: v for k, v in (shared or {}).items() if k != key}, slo=slo)[0]
    make_policy(name, **{key: values[0]})    # an unknown parameter is the user's error
    fixed = {k: v for k, v in (shared or {}).items() if k in vars(base) and k != key}
    fixed.update({k: getattr(base, k) for k in (slo or {}) if k in vars(base)})
    return [Variant(f"{name} {key}={v}", make_policy(name, **{**fixed, key: v}), f"{name}:{key}")
            for v in values]


def search_for(start: float, rel_tol: float = 0.02) -> RateSearch:
    """A search from `start` that doubles or halves (up to 2^10 either way) until it brackets."""
    return RateSearch(start, 2 * start, factor=2.0, rel_tol=rel_tol, max_expansions=10)


def find_max_rates(entries: Sequence[TraceEntry], variants: list[Variant], setup: Setup, load: Load,
                   slo: SLO, executor: Executor, make_search: Callable[[], RateSearch],
                   on_probe: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Per variant label: the search's result, with offered req/s at its bracket's ends."""
    if len({v.label for v in variants}) != len(variants):
        raise UserError("policies to compare must be distinct")
    entries = list(entries)
    searches = {v.label: make_search() for v in variants}
    by_label = {v.label: v for v in variants}
    search_all(searches, probe,
               lambda label, x: (entries, by_label[label].policy, setup, load, x, slo),
               executor, on_probe)
    out = {}
    for v in variants:
        res = searches[v.label].result()
        probes = res["probes"]
        at = {p["rate"]: p for p in probes}
        best = at.get(res["max_rate"])
        out[v.label] = {
            "policy": v.policy.describe(), "grid": v.grid,
            "max_rate": res["max_rate"], "min_failing": res["min_failing"], "status": res["status"],
            "max_rate_rps": best["offered_rps"] if best else None,
            "min_failing_rps": at[res["min_failing"]]["offered_rps"] if res["min_failing"] else None,
            "at_max": best, "probes": probes,
            "steady_state": steady_state(best) if best else None,
        }
    return out


def steady_state(point: dict) -> dict:
    """How many mean request lifetimes the arrivals span at this point, and a warning if few."""
    e2e = point["e2e_s"]["mean"]
    turnovers = point["arrival_span_s"] / e2e if e2e > 0 else math.inf
    out = {"arrival_span_s": point["arrival_span_s"], "mean_e2e_s": e2e, "turnovers": turnovers}
    if turnovers < STEADY_TURNOVERS:
        out["warning"] = (f"the trace's arrivals span {point['arrival_span_s']:.3g} s at this rate, only "
                          f"{turnovers:.1f}x the mean request latency ({e2e:.3g} s; want >= "
                          f"{STEADY_TURNOVERS:g}x): too short for a steady state, so this max rate is "
                          "optimistic; use a longer trace")
    return out


def steady_state_warnings(results: dict[str, dict]) -> list[str]:
    """Each policy's steady-state warning at its max rate, labelled."""
    return [f"{label}: {r['steady_state']['warning']}" for label, r in results.items()
            if r["steady_state"] and "warning" in r["steady_state"]]


def best_of_grids(results: dict[str, dict]) -> dict[str, dict]:
    """For each grid, its settings' max rates and the best setting."""
    grids: dict[str, dict] = {}
    for label, r in results.items():
        if r["grid"]:
            grids.setdefault(r["grid"], {"settings": {}})["settings"][label] = r["max_rate"]
    for g in grids.values():
        scored = {k: v for k, v in g["settings"].items() if v is not None}
        g["best"] = max(scored, key=scored.get) if scored else None
        g["best_max_rate"] = scored[g["best"]] if scored else None
    return grids


def record(results: dict[str, dict], entries: Sequence[TraceEntry], setup: Setup, load: Load,
           slo: SLO, command: str, search: RateSearch) -> dict:
    first = next(iter(results.values()))["max_rate"]
    for r in results.values():
        r["ratio_to_first"] = (r["max_rate"] / first if first and r["max_rate"] is not None else None)
    return {
        "what": "highest load within the SLO, per policy (geometric bracket search)",
        "command": command,
        "unit": load.unit,
        "load": ("multiples of the trace's own request rate (its arrival times divided)"
                 if load.unit == "scale" else
                 f"Poisson arrivals at this many req/s, seed {load.seed} (the same draws at every rate)"),
        "slo": slo.describe(),
        "setup": {"model": setup.model, "gpu": setup.gpu, "calibration": setup.calibration,
                  "policy_calibration": setup.policy_calibration, "max_num_seqs": setup.max_num_seqs},
        "trace": trace_summary(list(entries)),
        "search": {"start": search.start, "factor": search.factor, "rel_tol": search.rel_tol,
                   "max_expansions": search.max_expansions,
                   "reported": "max_rate = highest passing load; min_failing = lowest failing load "
                               "above it (latency is not strictly monotone in load: only the bracket "
                               "is promised)"},
        "policies": results,
        "grids": best_of_grids(results),
        "warnings": steady_state_warnings(results),
    }


def write_record(rec: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    tmp.replace(path)


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}x" if unit == "scale" else f"{x:.3g}"


def print_max_rates(rec: dict, console) -> None:
    from rich.table import Table

    unit = rec["unit"]
    slo = rec["slo"]
    bounds = ", ".join(f"{slo['percentile']} {k[:-2].upper()} <= {v * 1e3:.4g} ms" for k, v in
                       (("ttft_s", slo["ttft_s"]), ("tbt_s", slo["tbt_s"])) if v is not None)
    table = Table(title=f"max load within SLO ({bounds})")
    for col in ("policy", "max rate", "min failing", "req/s at max", "vs first", "probes"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    best = {g["best"] for g in rec["grids"].values()}
    for label, r in rec["policies"].items():
        lo = _fmt(r["max_rate"], unit) if r["status"] != "fails-at-lowest" else f"< {_fmt(r['min_failing'], unit)}"
        hi = _fmt(r["min_failing"], unit) if r["status"] != "holds-at-highest" else f"> {_fmt(r['max_rate'], unit)}"
        table.add_row(label + (" *" if label in best else ""), lo, hi,
                      "-" if r["max_rate_rps"] is None else f"{r['max_rate_rps']:.3g}",
                      "-" if r["ratio_to_first"] is None else f"{r['ratio_to_first']:.2f}",
                      str(len(r["probes"])))
    console.print(table)
    if best - {None}:
        console.print("* best setting of its --grid")


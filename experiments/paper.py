"""The Nexus paper's experiments in the simulator, on an H100 (measured) and an L20 (analytical),
or any other GPU preset (--gpus; its shipped calibration if one exists, else the roofline).

    python experiments/paper.py sweep      # 1. TTFT/TBT (mean, P95) against request rate
    python experiments/paper.py max-rate   # 2. highest rate within the SLOs, by bisection
    python experiments/paper.py ablation   # 3. static+FCFS, SPF only, dynamic split only, Nexus
    python experiments/paper.py all        # all three
    python experiments/paper.py table      # print the tables from the saved JSON

Model llama-3.1-8b. Workloads: the shipped ShareGPT trace (1000 requests), and long-doc
(600) and mixed (1000) from `nexus-trace synthetic --preset ...`, all re-timed with Poisson
arrivals (seed 0) at each probed rate. Rates are fractions of what chunked prefill drains
when every request waits from t = 0 (its saturation throughput) on that GPU and workload.
Results go to experiments/results/paper_*.json, figures to experiments/figures/paper_*.png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nexus.rate_search import search_all  # noqa: E402
from paper_plots import plot_max_rates, plot_sweep  # noqa: E402
from paper_search import (DOUBLINGS, REL_TOL, cost_model_of, drain_rate, found, probe_point,  # noqa: E402
                          search_from, simulate)
from paper_tables import print_headline, print_max_rates, print_sweep  # noqa: E402
from paper_setup import (ABLATION, BETA_SENSITIVITY, DEFAULT_GPUS, GPU_SETUPS, MODEL,  # noqa: E402
                         POLICIES, ROOT, TBT_SCALE, TTFT_SCALE, WORKLOADS, ablation_variant,
                         build_trace, slos, trace_stats, variant)
from sim.executors import make_executor  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
FIGURES = ROOT / "experiments" / "figures"
FRACTIONS = [0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0]
# Bisection starts between these fractions of the chunked drain rate (and doubles hi if needed).
BISECT_LO, BISECT_HI = 0.05, 1.0


def _round2(x: float) -> float:
    return float(f"{x:.2g}")


class Study:
    """Traces, SLOs and rate grids for a set of GPUs x workloads, shared by the experiments."""

    def __init__(self, gpus: list[str], workloads: list[str], requests: int | None,
                 fractions: list[float], jobs: int, ttft_scale: float, tbt_scale: float):
        self.gpus, self.workloads, self.fractions, self.jobs = gpus, workloads, fractions, jobs
        self.traces = {w: build_trace(WORKLOADS[w], requests) for w in workloads}
        self.slos = {g: {w: slos(self.traces[w], GPU_SETUPS[g], ttft_scale, tbt_scale)
                         for w in workloads} for g in gpus}
        drains = self.map(_drain, [(g, w) for g in gpus for w in workloads])
        self.drain = {g: {} for g in gpus}
        for (g, w), rate in zip([(g, w) for g in gpus for w in workloads], drains):
            self.drain[g][w] = rate

    def map(self, fn, items: list) -> list:
        if self.jobs <= 1 or len(items) <= 1:
            return [fn(self, item) for item in items]
        with ProcessPoolExecutor(self.jobs) as pool:
            return list(pool.map(_call, [(fn, self, item) for item in items]))

    def rates(self, gpu: str, workload: str) -> list[float]:
        return sorted({_round2(f * self.drain[gpu][workload]) for f in self.fractions})

    def header(self, experiment: str, argv: list[str]) -> dict:
        return {
            "experiment": experiment,
            "command": "python experiments/paper.py " + " ".join(argv),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version(), "jobs": self.jobs},
            "model": MODEL,
            "setups": {g: {"calibration": GPU_SETUPS[g].calibration or "shipped default",
                           "static_split": list(GPU_SETUPS[g].split), "note": GPU_SETUPS[g].note,
                           "cost_model": cost_model_of(GPU_SETUPS[g])} for g in self.gpus},
            "workloads": {w: {"command": WORKLOADS[w].command(),
                              "arrivals": "Poisson at each probed rate, seed 0 "
                                          "(the same unit-rate draws at every rate)",
                              **trace_stats(self.traces[w])} for w in self.workloads},
            "rate_reference": {"what": "chunked prefill's throughput with every request waiting at t=0",
                               "rps": self.drain},
            "slos": self.slos,
            "within_slo_definition": "a run is within the latency bounds when its P95 TTFT and its "
                                     "token-weighted P95 TBT are both at or under the workload's SLO",
        }


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nexus", "sim", "traces",
                                "experiments/paper*.py"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (with uncommitted changes to the code)" if dirty else "")


def _call(args):
    fn, study, item = args
    return fn(study, item)


def _drain(study: Study, item: tuple) -> float:
    gpu, wl = item
    return drain_rate(study.traces[wl], GPU_SETUPS[gpu], variant("chunked", GPU_SETUPS[gpu]))


def _point(study: Study, item: tuple) -> dict:
    gpu, wl, v, rate = item
    slo = study.slos[gpu][wl]
    return {"gpu": gpu, "workload": wl, "policy": v.label, "params": v.params,
            **simulate(study.traces[wl], GPU_SETUPS[gpu], v, rate, slo=slo)}


def sweep(study: Study, names: list[str], make=variant) -> list[dict]:
    items = [(g, w, make(n, GPU_SETUPS[g]), r) for g in study.gpus for w in study.workloads
             for n in names for r in study.rates(g, w)]
    return study.map(_point, items)


def max_rates(study: Study, names: list[str], make=variant) -> list[dict]:
    """Every (GPU, workload, policy) searched at once: each search's probes run in order, and
    the probes of different searches side by side on the worker pool."""
    items = [(g, w, make(n, GPU_SETUPS[g])) for g in study.gpus for w in study.workloads for n in names]
    searches = {i: search_from(BISECT_LO * study.drain[g][w], BISECT_HI * study.drain[g][w])
                for i, (g, w, _) in enumerate(items)}

    def args_of(i: int, rate: float) -> tuple:
        g, w, v = items[i]
        return study.traces[w], GPU_SETUPS[g], v, rate, study.slos[g][w]

    with make_executor(jobs=study.jobs) as executor:
        search_all(searches, probe_point, args_of, executor)
    out = []
    for i, (g, w, v) in enumerate(items):
        res = found(searches[i])
        out.append({"gpu": g, "workload": w, "policy": v.label, "params": v.params, "gpus": v.gpus,
                    **{k: x for k, x in res.items() if k not in ("probes", "at_max")},
                    "max_rate_rps_per_gpu": res["max_rate_rps"] / v.gpus if res["max_rate_rps"] else None,
                    "at_max": res["at_max"], "probes": res["probes"]})
    return out


def _write(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {path}")


# ---- experiments ----

def run_sweep(study: Study, argv: list[str], policies: list[str], results: Path = RESULTS,
              figures: Path = FIGURES) -> dict:
    t = time.perf_counter()
    record = study.header("rate sweep", argv)
    record["rate_grid_fractions"] = study.fractions
    record["policies"] = {n: {"params": variant(n, GPU_SETUPS[g]).params for g in study.gpus}
                          for n in policies}
    record["runs"] = sweep(study, policies)
    record["wall_s"] = time.perf_counter() - t
    _write(record, results / "paper_rate_sweep.json")
    figures.mkdir(parents=True, exist_ok=True)
    for g in study.gpus:
        plot_sweep(record, g, figures / f"paper_rate_sweep_{g}.png",
                   f"{MODEL} on {g} ({GPU_SETUPS[g].note}); disagg uses 2 GPUs")
    print_sweep(record)
    return record


def run_max_rate(study: Study, argv: list[str], policies: list[str], results: Path = RESULTS,
                 figures: Path = FIGURES) -> dict:
    t = time.perf_counter()
    record = study.header("max rate within SLO", argv)
    record["bisection"] = {"lo": f"{BISECT_LO} x rate reference", "hi": f"{BISECT_HI} x rate reference, "
                           f"doubled (at most {DOUBLINGS} times) while it still holds", "stop": f"hi/lo <= {1 + REL_TOL}",
                           "reported": "max_rate_rps = highest probed rate within SLO; "
                                       "first_failing_rate_rps = lowest probed rate above it that failed"}
    record["results"] = max_rates(study, policies)
    record["wall_s"] = time.perf_counter() - t
    _write(record, results / "paper_max_rate.json")
    figures.mkdir(parents=True, exist_ok=True)
    plot_max_rates(record, figures / "paper_max_rate.png",
                   f"{MODEL}: highest Poisson rate with P95 TTFT and P95 TBT within SLO "
                   "(per GPU; disagg uses 2)")
    print_max_rates(record)
    return record


def run_ablation(study: Study, argv: list[str], results: Path = RESULTS,
                 figures: Path = FIGURES) -> dict:
    t = time.perf_counter()
    names = list(ABLATION)
    record = study.header("ablation", argv)
    record["variants"] = {n: {"policy": "nexus", **p} for n, p in {**ABLATION, **BETA_SENSITIVITY}.items()}
    record["note"] = ("the rate sweep covers the four ablation variants; the max-rate results add "
                      "full Nexus with a looser decode bound beta (the paper uses 1.1)")
    record["rate_grid_fractions"] = study.fractions
    record["runs"] = sweep(study, names, ablation_variant)
    record["results"] = max_rates(study, names + list(BETA_SENSITIVITY), ablation_variant)
    record["wall_s"] = time.perf_counter() - t
    _write(record, results / "paper_ablation.json")
    figures.mkdir(parents=True, exist_ok=True)
    plot_max_rates(record, figures / "paper_ablation.png",
                   f"{MODEL}: ablation (and Nexus's beta), highest rate within SLO")
    for g in study.gpus:
        plot_sweep(record, g, figures / f"paper_ablation_sweep_{g}.png",
                   f"{MODEL} on {g}: ablation (static+FCFS, SPF only, dynamic split only, Nexus)")
    print_max_rates(record)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["sweep", "max-rate", "ablation", "all", "table"])
    p.add_argument("--gpus", default=",".join(DEFAULT_GPUS),
                   help=f"comma-separated, any of {', '.join(GPU_SETUPS)} (default: {','.join(DEFAULT_GPUS)})")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated: sharegpt,long-doc,mixed")
    p.add_argument("--policies", default=",".join(POLICIES), help="for sweep and max-rate")
    p.add_argument("--requests", type=int, help="requests per trace (default: 1000 / 600 / 1000)")
    p.add_argument("--fractions", help="rate grid as fractions of the chunked drain rate, comma-separated")
    p.add_argument("--ttft-scale", type=float, default=TTFT_SCALE,
                   help="TTFT SLO / solo prefill of the P95 prompt")
    p.add_argument("--tbt-scale", type=float, default=TBT_SCALE, help="TBT SLO / solo decode step")
    p.add_argument("--results-dir", default=str(RESULTS), help="where the JSON goes")
    p.add_argument("--figures-dir", default=str(FIGURES), help="where the PNGs go")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.what == "table":
        saved = {name: json.loads(path.read_text()) for name in
                 ("paper_rate_sweep", "paper_max_rate", "paper_ablation")
                 if (path := Path(args.results_dir) / f"{name}.json").exists()}
        for name, show in (("paper_rate_sweep", print_sweep), ("paper_max_rate", print_max_rates),
                           ("paper_ablation", print_max_rates)):
            if name in saved:
                show(saved[name])
        if "paper_rate_sweep" in saved and "paper_max_rate" in saved:
            print_headline(saved["paper_rate_sweep"], saved["paper_max_rate"])
        return 0
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    for g in split(args.gpus):
        if g not in GPU_SETUPS:
            raise SystemExit(f"unknown GPU {g!r}; known: {', '.join(GPU_SETUPS)}")
    for w in split(args.workloads):
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    fractions = [float(x) for x in split(args.fractions)] if args.fractions else FRACTIONS
    t = time.perf_counter()
    study = Study(split(args.gpus), split(args.workloads), args.requests, fractions, args.jobs,
                  args.ttft_scale, args.tbt_scale)
    policies = split(args.policies)
    out = Path(args.results_dir), Path(args.figures_dir)
    if args.what in ("sweep", "all"):
        sweep_record = run_sweep(study, argv, policies, *out)
    if args.what in ("max-rate", "all"):
        best_record = run_max_rate(study, argv, policies, *out)
    if args.what in ("ablation", "all"):
        run_ablation(study, argv, *out)
    if args.what == "all":
        print_headline(sweep_record, best_record)
    print(f"\ntotal {time.perf_counter() - t:.0f} s on {args.jobs} worker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

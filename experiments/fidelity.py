"""Simulator fidelity: the same traces on the real H100 and in nexus-sim, compared.

    # on the GPU machine (each call under ten minutes on an H100):
    python experiments/fidelity.py real --policies chunked --out experiments/results/fidelity_real_chunked.json
    python experiments/fidelity.py real --policies static --out experiments/results/fidelity_real_static.json
    python experiments/fidelity.py real --traces sharegpt --policies static \
        --out experiments/results/fidelity_real_static_sharegpt.json    # on another board
    python experiments/fidelity.py real --policies nexus --out experiments/results/fidelity_real_nexus.json
    # anywhere, afterwards (a later file's case replaces an earlier one's; the Nexus runs must
    # have planned with the calibration compared against, or name theirs with
    # --controller-calibration):
    python experiments/fidelity.py compare experiments/results/fidelity_real_chunked.json \
        experiments/results/fidelity_real_static.json experiments/results/fidelity_real_static_sharegpt.json \
        experiments/results/fidelity_real_nexus.json

    # The shipped calibration and these runs came from different leased H100s. To compare like
    # with like, profile and run on one machine (FULL=1 scripts/gpu_check.sh) and pass that
    # machine's calibration to every subcommand with --calibration.

    # once, to measure the engine's host gap between steps on the held-in cases (same files):
    python experiments/fidelity.py fit-gap experiments/results/fidelity_real_chunked.json ...

`compare` simulates every measured case on the identical requests (same prefix, same
re-timing) with the H100 calibration (--calibration, default the shipped one) and writes
experiments/results/fidelity_h100.json, experiments/results/fidelity_h100.md and
experiments/figures/fidelity_cdf_*.png. Kernel
times come from `nexus-real profile` microbenchmarks; the only number taken from these
cases is the engine's host gap between steps, measured on the HELD_IN cases, which the
summary then leaves out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from traces.retime import load_entries  # noqa: E402

POLICIES = ("chunked", "static", "nexus")
# (trace name, file, rate scales: low / middle / near saturation, requests used)
CASES = {
    "sharegpt": ("traces/sharegpt.jsonl", (0.5, 1.0, 2.0), 400),
    "mixed": ("traces/mixed.jsonl", (1.0, 2.0, 3.0), 120),
}
HELD_IN = {("sharegpt", 0.5)}   # cases the step gap is measured on; excluded from the summary
CALIBRATION = ROOT / "nexus" / "cost" / "calibrations" / "h100-sxm__llama-3.1-8b.json"
METRICS = [("ttft_s", k) for k in ("mean", "p50", "p95", "p99")] + \
          [("tbt_s", k) for k in ("mean", "p50", "p95", "p99")]


def case_entries(trace: str, scale: float, limit: int):
    return load_entries(ROOT / CASES[trace][0], rate_scale=scale)[:limit]


def run_real(args: argparse.Namespace) -> int:
    from nexus.policy import build_policies
    from nexus.specs import MODELS, GPUS
    from real.bench import Bench
    from real.gpu_info import gpu_facts

    model, gpu = MODELS["llama-3.1-8b"], GPUS["h100-sxm"]
    names = args.policies.split(",")
    bench = Bench(model, gpu, build_policies(names, {}))
    record = {"command": "python experiments/fidelity.py " + " ".join(sys.argv[1:]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": gpu_facts(), "cases": []}
    for trace in args.traces.split(","):
        path, scales, limit = CASES[trace]
        for scale in scales:
            entries = case_entries(trace, scale, limit)
            for policy in build_policies(names, {}):
                print(f"{trace} x{scale} {policy.name} ...", flush=True)
                result = bench.run(entries, policy, str(args.calibration))
                summary, frame, timeline = result.summary, result.requests, result.timeline
                record["cases"].append({
                    "trace": trace, "rate_scale": scale, "requests": limit, "policy": policy.name,
                    "summary": summary,
                    "ttft_s": frame["ttft_s"].round(6).tolist(),
                    "tbt_mean_s": frame["tbt_mean_s"].round(6).tolist(),
                    "timeline": {col: timeline[col].round(6).tolist() if timeline[col].dtype.kind == "f"
                                 else timeline[col].tolist()
                                 for col in ("start_s", "end_s", "stream", "sms", "prefill_tokens",
                                             "decode_seqs", "prefill_prior_tokens",
                                             "decode_kv_tokens")}})
                Path(args.out).write_text(json.dumps(record) + "\n")   # keep what finished
    return 0   # green contexts are released with the process


def fit_gap(args: argparse.Namespace) -> int:
    """The engine's host gap between consecutive busy steps of a stream, on the held-in cases.

    The gap grows with the decode rows the host loops over (recording tokens, planning the
    next batch), so it is fitted as a line in the step's decode sequences: through the median
    gap of each band of batch sizes, weighted by how many steps fell in the band. Steps
    without decode rows are left out of the line: their gap is the policy's own planning
    (Nexus's split controller spends about 0.6 ms there), not the engine's.
    """
    import pandas as pd

    from nexus.cost.calibration import read_calibration, write_calibration
    from real.host_gap import fit_step_gap

    timelines = [pd.DataFrame({k: case["timeline"][k] for k in ("start_s", "end_s", "stream", "decode_seqs")})
                 for f in args.real for case in json.loads(Path(f).read_text())["cases"]
                 if (case["trace"], case["rate_scale"]) in HELD_IN]
    fit = fit_step_gap(timelines)
    gap, per_seq, rows = fit["step_gap_s"], fit["step_gap_per_seq_s"], fit["bands"]
    data = read_calibration(args.calibration)
    data.setdefault("engine", {}).update({
        "step_gap_s": gap, "step_gap_per_seq_s": per_seq,
        "source": "host gap between consecutive steps of a busy stream in nexus-real bench runs of "
                  f"the held-in fidelity cases {sorted(HELD_IN)}: a line in the step's decode "
                  "sequences through the median gap of each band of batch sizes (steps with decode "
                  "rows only)",
        "command": "python experiments/fidelity.py fit-gap " + " ".join(args.real)})
    write_calibration(data, args.calibration)
    for n, g, c in rows:
        print(f"  {c:5d} steps, median {n:5.0f} decode rows: gap {g * 1e3:.3f} ms")
    print(f"engine step gap: {gap * 1e3:.3f} ms + {per_seq * 1e6:.2f} us per decode row "
          f"-> {args.calibration}")
    return 0


def signed_pct(sim: float, real: float) -> float:
    return 100.0 * (sim - real) / real


def controller_calibration(path: str | None, cases: list[dict], calibration: Path) -> str | None:
    """The calibration the engine's policies planned with, checked against what the runs recorded.

    The simulated GPU follows `calibration` (--calibration); the policies plan with this one,
    so that a Nexus controller in the simulator decides as the measured one did.
    """
    from nexus.cost.calibration import content_digest, read_calibration

    data = read_calibration(path or calibration)
    # Runs record the calibration's digest (its contents) since it was added; older ones its stamp.
    used = {c["summary"]["cost_model"].get("digest") or c["summary"]["cost_model"].get("created")
            for c in cases if c["policy"] == "nexus"}
    if used - {content_digest(data), data["created"]}:
        raise SystemExit(f"the measured Nexus runs planned with calibration {sorted(used)}, but "
                         f"{path or calibration} is {content_digest(data)} (created {data['created']}); "
                         "pass the one they used with --controller-calibration")
    return path


def compare(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import sim
    from nexus.report import policy_colours

    by_key, machines, sources = {}, [], []
    for f in args.real:
        data = json.loads(Path(f).read_text())
        machines.append(data["machine"])
        sources.append((f, data["command"], data["date"]))
        for case in data["cases"]:
            by_key[(case["trace"], case["rate_scale"], case["policy"])] = case
    cases = list(by_key.values())
    controller = controller_calibration(args.controller_calibration, cases, args.calibration)
    out_cases = []
    for case in cases:
        entries = case_entries(case["trace"], case["rate_scale"], case["requests"])
        result = sim.run(entries, policy=case["policy"], calibration=str(args.calibration),
                         policy_calibration=controller)
        real, simulated = case["summary"], result.summary
        errors = {f"{m}.{k}": signed_pct(simulated[m][k], real[m][k]) for m, k in METRICS}
        errors["throughput_rps"] = signed_pct(simulated["throughput_rps"], real["throughput_rps"])
        out_cases.append({
            "trace": case["trace"], "rate_scale": case["rate_scale"], "requests": case["requests"],
            "policy": case["policy"], "errors_pct": errors,
            "held_in": (case["trace"], case["rate_scale"]) in HELD_IN,
            "real": {m: real[m] for m in ("ttft_s", "tbt_s", "throughput_rps", "preemptions")},
            "sim": {m: simulated[m] for m in ("ttft_s", "tbt_s", "throughput_rps", "preemptions")},
            "cost_model": simulated["cost_model"]["name"],
        })
        case["_sim_ttft"] = result.requests["ttft_s"].tolist()
        case["_sim_tbt"] = result.requests["tbt_mean_s"].tolist()

    held_out = [c for c in out_cases if not c["held_in"]]

    def med_abs(key: str) -> float:
        return statistics.median(abs(c["errors_pct"][key]) for c in held_out)

    summary = {"median_abs_pct": {k: med_abs(k) for k in ("ttft_s.mean", "tbt_s.mean", "ttft_s.p95",
                                                          "tbt_s.p95", "throughput_rps")},
               "targets_pct": {"ttft_s.mean": 5, "tbt_s.mean": 5, "ttft_s.p95": 10, "tbt_s.p95": 10},
               "cases": len(held_out),
               "over": f"held-out cases only: the {len(out_cases) - len(held_out)} cases of "
                       f"{sorted(HELD_IN)} set the engine's step gap"}
    summary["within_target"] = {k: summary["median_abs_pct"][k] <= v for k, v in summary["targets_pct"].items()}
    results = ROOT / "experiments" / "results"
    command = "python experiments/fidelity.py compare " + " ".join(args.real)
    if args.controller_calibration:
        command += f" --controller-calibration {args.controller_calibration}"
    if Path(args.calibration).resolve() != CALIBRATION:
        command += f" --calibration {args.calibration}"
    record = {"command": command,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "real_machine": machines[0], "summary": summary, "cases": out_cases}
    (results / "fidelity_h100.json").write_text(json.dumps(record, indent=1) + "\n")

    lines = ["# Simulator fidelity on an H100 (Llama-3.1-8B shapes, random bf16 weights)", "",
             "Signed error of the simulator against the measured engine, % of the measured value.", "",
             "| trace | rate x | policy | TTFT mean | TTFT p50 | TTFT p95 | TBT mean | TBT p50 | TBT p95 | thr. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in out_cases:
        e = c["errors_pct"]
        lines.append(f"| {c['trace']}{' (held in)' if c['held_in'] else ''} | {c['rate_scale']} | {c['policy']} | " + " | ".join(
            f"{e[k]:+.1f}" for k in ("ttft_s.mean", "ttft_s.p50", "ttft_s.p95", "tbt_s.mean", "tbt_s.p50",
                                     "tbt_s.p95", "throughput_rps")) + " |")
    lines += ["", f"Median absolute error across the {len(held_out)} held-out cases: " + ", ".join(
        f"{k} {v:.1f}%" for k, v in summary["median_abs_pct"].items()), "",
        f"Measured on {machines[0].get('name', '?')} (driver {machines[0].get('driver', '?')}, "
        f"torch {machines[0].get('torch', '?')}). How each file was made:", ""]
    lines += [f"- `{f}`: `{command}` ({date})" for f, command, date in sources]
    lines += [f"- this report: `{record['command']}`", "",
              "CDFs of TTFT and of each request's mean TBT, real (solid) against simulated (dashed):", ""]
    lines += [f"![{t}](../figures/fidelity_cdf_{t}.png)" for t in sorted({c["trace"] for c in cases})]
    (results / "fidelity_h100.md").write_text("\n".join(lines) + "\n")

    figures = ROOT / "experiments" / "figures"
    figures.mkdir(exist_ok=True)
    for trace in sorted({c["trace"] for c in cases}):
        sub = [c for c in cases if c["trace"] == trace]
        scales = sorted({c["rate_scale"] for c in sub})
        fig, axes = plt.subplots(2, len(scales), figsize=(4 * len(scales), 6.5), squeeze=False)
        colours = policy_colours(c["policy"] for c in sub)
        for col, scale in enumerate(scales):
            for c in (c for c in sub if c["rate_scale"] == scale):
                for row, (real_key, sim_key, scale_y) in enumerate((("ttft_s", "_sim_ttft", 1.0),
                                                                    ("tbt_mean_s", "_sim_tbt", 1e3))):
                    ax = axes[row][col]
                    for values, style, label in ((c[real_key], "-", "real"), (c[sim_key], "--", "sim")):
                        v = np.sort(np.asarray([x for x in values if x == x]) * scale_y)
                        ax.plot(v, np.arange(1, v.size + 1) / max(v.size, 1), style,
                                color=colours[c["policy"]], label=f"{c['policy']} {label}")
            axes[0][col].set(title=f"{trace}, rate x{scale}", xlabel="TTFT (s)", xscale="log")
            axes[1][col].set(xlabel="mean TBT per request (ms)")
            for row in (0, 1):
                axes[row][col].grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figures / f"fidelity_cdf_{trace}.png", dpi=110)
        plt.close(fig)
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("real", help="measure the cases on this machine's GPU")
    r.add_argument("--traces", default="sharegpt,mixed")
    r.add_argument("--policies", default=",".join(POLICIES))
    r.add_argument("--out", required=True)
    g = sub.add_parser("fit-gap", help="measure the engine's step gap on the held-in cases")
    g.add_argument("real", nargs="+")
    c = sub.add_parser("compare", help="simulate the measured cases and report the errors")
    c.add_argument("real", nargs="+", help="measured files; a later file's case replaces an earlier one's")
    c.add_argument("--controller-calibration",
                   help="calibration the measured Nexus runs planned with, if not the shipped one")
    for sp in (r, g, c):
        sp.add_argument("--calibration", type=Path, default=CALIBRATION,
                        help="the H100 calibration: what the engine's Nexus controller plans with (real), "
                             "where the host gap is written (fit-gap), what the simulated GPU does "
                             "(compare); default: the shipped one. Profile and runs on one machine "
                             "compare like with like: boards differ by a few %% in step time")
    args = ap.parse_args()
    return {"real": run_real, "fit-gap": fit_gap, "compare": compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

"""`nexus-real validate`: the engine and the simulator on the same requests, up to and past saturation.

For each policy and load, the engine serves the trace and the simulator serves the identical
requests on the same calibration. The report gives the simulator's signed error per metric,
banded by load (`up_to_saturation`, `past_saturation`), and a step-level view: each measured
step beside the calibration's prediction for its exact shape (and its co-runner), which
separates cost-model error from divergence in scheduling.

Saturation is predicted by the simulator: the policy's throughput when every request of the
trace is already waiting. `--loads auto` probes fractions of it.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import sim
from nexus.config import EngineConfig
from nexus.cost import load_cost_model
from nexus.errors import UserError
from nexus.policy import Policy, build_policies
from nexus.result import Result
from nexus.specs import GPUS, MODELS, GPUSpec, ModelSpec
from nexus.step_view import STEPS_FLOAT_FORMAT, step_table, step_view
from traces import TraceEntry
from traces.retime import load_entries
from traces.stats import summarize as trace_summary

AUTO_LOADS = (0.5, 0.8, 1.0, 1.2)
METRICS = (("ttft_s", "mean"), ("ttft_s", "p95"), ("tbt_s", "mean"), ("tbt_s", "p95"))
BANDS = ("up_to_saturation", "past_saturation")


@dataclass(frozen=True)
class PolicyCase:
    """A policy as written on the command line: `nexus` or `nexus:beta=2,alpha=1.3`."""
    label: str
    name: str
    params: dict

    @classmethod
    def parse(cls, text: str) -> "PolicyCase":
        name, _, rest = text.partition(":")
        params = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"policy parameters take KEY=VALUE, got {item!r} in {text!r}")
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
        return cls(text, name, params)

    def make(self, slo: dict | None = None) -> Policy:
        """The policy; `slo` (parameter -> value) reaches policies that plan against one."""
        return build_policies([self.name], self.params, slo=slo)[0]


def trace_rate(entries: list[TraceEntry]) -> float:
    rate = trace_summary(entries)["rate_rps"]
    if rate is None:
        raise UserError("validate needs a trace whose arrivals span some time (all arrive at once)")
    return rate


def predicted_saturation_scale(entries: list[TraceEntry], case: PolicyCase, model: ModelSpec,
                               gpu: GPUSpec, calibration: str | None, config: EngineConfig) -> float:
    """Rate scale at which the simulated server saturates: its throughput with a full backlog."""
    backlog = [TraceEntry(e.request_id, 0.0, e.prompt_tokens, e.output_tokens) for e in entries]
    result = sim.run(backlog, policy=case.make(), model=model.name, gpu=gpu.name,
                     calibration=calibration, config=config)
    return result.summary["throughput_rps"] / trace_rate(entries)


def signed_errors(measured: dict, simulated: dict) -> dict[str, float]:
    out = {}
    for metric, stat in (*METRICS, ("throughput_rps", None)):
        real_v = measured[metric] if stat is None else measured[metric][stat]
        sim_v = simulated[metric] if stat is None else simulated[metric][stat]
        key = metric if stat is None else f"{metric}.{stat}"
        out[key] = 100.0 * (sim_v - real_v) / real_v if real_v else float("nan")
    return out


def summarize_cases(cases: list[dict]) -> dict:
    """Median absolute and signed % error per load band and metric, over held-out cases."""
    summary = {}
    for band in BANDS:
        mine = [c for c in cases if c["band"] == band and not c.get("held_in")]
        keys = [f"{m}.{s}" for m, s in METRICS] + ["throughput_rps"]
        summary[band] = {
            "cases": len(mine),
            "median_abs_pct": {k: _median([abs(c["error_pct"][k]) for c in mine]) for k in keys},
            "median_signed_pct": {k: _median([c["error_pct"][k] for c in mine]) for k in keys}}
    return summary


def _median(values: list[float]) -> float | None:
    values = [v for v in values if np.isfinite(v)]
    return float(np.median(values)) if values else None


def markdown(record: dict) -> str:
    traces = ", ".join(f"`{n}` ({t['requests']} requests, {t['rate_rps']:.2f} req/s)"
                       for n, t in record["traces"].items())
    lines = [f"# Simulator against engine: {record['model']} on {record['gpu']}", "",
             f"Traces: {traces}. Signed error of the simulator, % of the measured value. "
             f"Command: `{record['command']}`", "",
             "| trace | policy | load x sat. | rate x | band | TTFT mean | TTFT p95 | TBT mean | TBT p95 | thr. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in record["cases"]:
        e = c["error_pct"]
        lines.append(f"| {c['trace']} | {c['policy']} | {c['load']:.2f} | {c['rate_scale']:.2f} | {c['band']} | "
                     + " | ".join(f"{e[k]:+.1f}" for k in ("ttft_s.mean", "ttft_s.p95", "tbt_s.mean",
                                                            "tbt_s.p95", "throughput_rps")) + " |")
    lines += ["", "| band | cases | | TTFT mean | TTFT p95 | TBT mean | TBT p95 | thr. |", "|---|---|---|---|---|---|---|---|"]
    for band, s in record["summary"].items():
        for kind in ("median_abs_pct", "median_signed_pct"):
            vals = [s[kind][k] for k in ("ttft_s.mean", "ttft_s.p95", "tbt_s.mean", "tbt_s.p95", "throughput_rps")]
            lines.append(f"| {band} | {s['cases']} | {kind} | "
                         + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    lines += ["", "Step-level view (model against each measured step, % of the measured time):", "",
              "| trace | policy | load | step kind | n | median signed | median abs | SM clock (MHz) "
              "| signed at top clock / below |", "|---|---|---|---|---|---|---|---|---|"]
    for c in record["cases"]:
        for kind, s in c["steps"].items():
            by_clock = " / ".join("-" if part not in s else f"{s[part]['median_signed_pct']:+.1f} ({s[part]['n']})"
                                  for part in ("at_top_clock", "below_top_clock"))
            clock = f"{s['sm_clock_mhz']:.0f} | {by_clock}" if "sm_clock_mhz" in s else "- | -"
            lines.append(f"| {c['trace']} | {c['policy']} | {c['load']:.2f} | {kind} | {s['n']} | "
                         f"{s['median_signed_pct']:+.1f} | {s['median_abs_pct']:.1f} | {clock} |")
    return "\n".join(lines) + "\n"


def plot_cdfs(pairs: list[tuple[dict, Result, Result]], path: Path) -> None:
    """TTFT and per-request mean TBT CDFs: one column per load, a row pair per trace;
    each policy has one colour, the engine drawn solid and the simulator dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(c["trace"] for c, _, _ in pairs))
    policies = list(dict.fromkeys(c["policy"] for c, _, _ in pairs))
    loads = sorted({round(c["load"], 2) for c, _, _ in pairs})
    colour = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(policies)}
    fig, axes = plt.subplots(2 * len(traces), len(loads), figsize=(4 * len(loads), 3.2 * 2 * len(traces)),
                             squeeze=False)
    for case, measured, simulated in pairs:
        col, row0 = loads.index(round(case["load"], 2)), 2 * traces.index(case["trace"])
        for row, column, scale in ((row0, "ttft_s", 1.0), (row0 + 1, "tbt_mean_s", 1e3)):
            ax = axes[row][col]
            for result, style, who in ((measured, "-", "engine"), (simulated, "--", "simulator")):
                v = np.sort(result.requests[column].dropna().to_numpy() * scale)
                if v.size:
                    ax.plot(v, np.arange(1, v.size + 1) / v.size, style, color=colour[case["policy"]],
                            label=f"{case['policy']} ({who})")
    for t, trace in enumerate(traces):
        for col, load in enumerate(loads):
            axes[2 * t][col].set(title=f"{trace}: {load:.2f} x saturation", xlabel="TTFT (s)", xscale="log")
            axes[2 * t + 1][col].set(xlabel="per-request mean TBT (ms)")
        axes[2 * t][0].set_ylabel("fraction of requests")
        axes[2 * t + 1][0].set_ylabel("fraction of requests")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def validate(bench, traces: dict[str, list[TraceEntry]], cases: list[PolicyCase], loads: list[float] | None,
             calibration: str | None, command: str, out: Path, fractions: tuple[float, ...] = AUTO_LOADS,
             log=print) -> dict:
    """Run every (trace, policy, load) on the engine `bench` and in the simulator; write the report.

    `loads` are rate scales of each trace; None means `fractions` of each policy's predicted
    saturation on that trace.
    """
    model, gpu, config = bench.model, bench.gpu, bench.config
    cost = load_cost_model(model, gpu, calibration)
    record = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": bench.machine(), "model": model.name, "gpu": gpu.name, "cost_model": cost.describe(),
              "config": asdict(config),
              "traces": {name: {"requests": len(e), "rate_rps": trace_rate(e)} for name, e in traces.items()},
              "cases": [], "saturation_rate_scale": {}}
    pairs, step_frames = [], []
    for trace_name, entries in traces.items():
        for case in cases:
            saturation = predicted_saturation_scale(entries, case, model, gpu, calibration, config)
            record["saturation_rate_scale"][f"{trace_name}/{case.label}"] = saturation
            for load in (loads or fractions):
                scale = load * saturation if loads is None else load
                load_frac = scale / saturation
                timed = load_entries(entries, rate_scale=scale)
                log(f"{trace_name} {case.label} at {scale:.2f}x the trace's rate "
                    f"({load_frac:.2f}x predicted saturation) ...")
                measured = bench.run(timed, case.make(), calibration)
                steps = step_table(measured.timeline, cost)
                step_frames.append(steps.assign(trace=trace_name, policy=case.label, load=load_frac))
                simulated = sim.run(timed, policy=case.make(), model=model.name, gpu=gpu.name,
                                    calibration=calibration, config=config)
                entry = {"trace": trace_name, "policy": case.label, "load": load_frac, "rate_scale": scale,
                         "band": BANDS[0] if load_frac <= 1.0 + 1e-9 else BANDS[1],
                         "error_pct": signed_errors(measured.summary, simulated.summary),
                         "measured": measured.summary, "simulated": simulated.summary,
                         "steps": step_view(steps)}
                record["cases"].append(entry)
                pairs.append((entry, measured, simulated))
                _write(record, step_frames, out)   # keep what finished: a run cut short still reports it
    plot_cdfs(pairs, out / "validate_cdf.png")
    return record


def rescore(previous: dict, steps: pd.DataFrame, traces: dict[str, list[TraceEntry]], calibration: str | None,
            run_calibration: str | None, command: str, out: Path) -> dict:
    """An earlier validation's engine measurements against another calibration, with no GPU.

    The simulator times each case's identical requests with `calibration`, while the policies
    plan with `run_calibration`, the cost model the engine's controllers planned with, so
    that only the predicted step times change; each measured step is predicted again too.
    """
    model, gpu = MODELS[previous["model"]], GPUS[previous["gpu"]]
    config = EngineConfig(**previous.get("config", {}))
    cost = load_cost_model(model, gpu, calibration)
    missing = sorted({c["trace"] for c in previous["cases"]} - set(traces))
    if missing:
        raise UserError(f"rescoring needs the traces the run served: pass --trace NAME=PATH for {', '.join(missing)}")
    record = {**previous, "command": command, "cost_model": cost.describe(), "cases": [],
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "rescored": {"from_command": previous["command"], "from_date": previous["date"],
                           "planning_calibration": run_calibration}}
    frames = []
    for case in previous["cases"]:
        timed = load_entries(traces[case["trace"]], rate_scale=case["rate_scale"])
        if len(timed) != case["measured"]["requests"]:
            raise UserError(f"trace {case['trace']!r} has {len(timed)} requests here, but the run served "
                            f"{case['measured']['requests']} (pass the same --limit)")
        simulated = sim.run(timed, policy=PolicyCase.parse(case["policy"]).make(), model=model.name,
                            gpu=gpu.name, calibration=calibration, config=config,
                            policy_calibration=run_calibration)
        mine = steps[(steps["trace"] == case["trace"]) & (steps["policy"] == case["policy"])
                     & np.isclose(steps["load"], case["load"], rtol=1e-5)]
        table = step_table(mine, cost)
        frames.append(table.assign(trace=case["trace"], policy=case["policy"], load=case["load"]))
        record["cases"].append({**case, "simulated": simulated.summary, "steps": step_view(table),
                                "error_pct": signed_errors(case["measured"], simulated.summary)})
    _write(record, frames, out)
    return record


def _write(record: dict, step_frames: list[pd.DataFrame], out: Path) -> None:
    record["summary"] = summarize_cases(record["cases"])
    out.mkdir(parents=True, exist_ok=True)
    # Every measured step with the model's time for it: the data behind the step-level view.
    pd.concat(step_frames, ignore_index=True).to_csv(out / "steps.csv", index=False, float_format=STEPS_FLOAT_FORMAT)
    (out / "validate.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (out / "validate.md").write_text(markdown(record))

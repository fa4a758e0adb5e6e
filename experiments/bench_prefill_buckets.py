"""Prefill step time at every token bucket of the engine's prefill graphs (Llama-3.1-8B shapes,
random bf16), on the whole GPU and on one green-context partition.

    python3 experiments/bench_prefill_buckets.py --out experiments/results/prefill_buckets_h200.json

A bucket is worth keeping only if its graph is faster than every larger one's: a step padded
up to the larger bucket would otherwise be both cheaper and one graph fewer. `dominated` lists
the buckets measured slower than some larger bucket (by more than --margin), per partition;
`nexus-real profile` drops the whole GPU's from the engine by the same rule
(nexus.graph_buckets.dominated).
Steps are timed as the profile times them (`real.profile.Profiler.time_alone`: host clock
around the runner's step, median of --repeats), one prompt of the bucket's size, no prior.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from nexus.graph_buckets import DOMINANCE_MARGIN, GREEN_MAX_TOKENS, PREFILL_GRAPH_BUCKETS, dominated
from nexus.specs import MODELS
from real.gpu_info import gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions
from real.profile import Profiler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--partition-sms", type=int, default=64)
    ap.add_argument("--margin", type=float, default=DOMINANCE_MARGIN)
    args = ap.parse_args(argv)

    runner = ModelRunner(MODELS["llama-3.1-8b"], device="cuda", max_decode_batch=256)
    parts = Partitions([args.partition_sms], device="cuda")
    sides = {"full": parts.prefill(0), f"sms{args.partition_sms}": parts.prefill(args.partition_sms)}
    runner.capture_prefill_graphs(list(sides.values()))
    prof = Profiler(runner, parts, args.repeats)
    result = {"command": "python3 " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "machine": gpu_facts(), "repeats": args.repeats, "margin": args.margin, "partitions": {}}
    for name, part in sides.items():
        sizes = [b for b in PREFILL_GRAPH_BUCKETS if name == "full" or b <= GREEN_MAX_TOKENS]
        times = {b: prof.time_alone(prof.prefill_batch(b, 0), part) for b in sizes}
        result["partitions"][name] = {
            "sms": part.sm_count, "ms": {str(b): round(t * 1e3, 4) for b, t in times.items()},
            "us_per_token": {str(b): round(t * 1e6 / b, 3) for b, t in times.items()},
            "dominated": dominated(times, args.margin)}
        print(name, "dominated:", result["partitions"][name]["dominated"])
        print("  ", " ".join(f"{b}:{t * 1e3:.2f}" for b, t in times.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a decode step's time depend on how its KV tokens are spread over its sequences?

    python3 experiments/bench_decode_contexts.py --out experiments/results/decode_contexts_h200.json

The measured cost model predicts a decode step from its row count and its total KV tokens.
The profile measures batches whose contexts are spread evenly over +-75% of their mean; a
served batch is skewed: most sequences short, a few long. This times the same (rows, total
KV tokens) under three spreads, as the profiler times a step (wall time of
`ModelRunner.step`, median of repeats), on the plain stream and on a 68-SM green context:
- spread: evenly over +-75% of the mean (what the profile measured until this comparison);
- exponential: at the quantiles of an exponential distribution of that mean (the profile now);
- equal: every sequence at the mean.
(`real.profile.decode_contexts` makes all three.)
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from nexus.specs import MODELS
from real.bench import capture_all_graphs
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions
from real.profile import Profiler, decode_contexts

SHAPES = [(16, 1024), (32, 2048), (64, 512), (64, 1024), (64, 2048), (64, 3072), (128, 1024), (192, 1024),
          (256, 512)]
SPLIT = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    runner = ModelRunner(MODELS["llama-3.1-8b"], device="cuda")
    parts = Partitions([SPLIT], device="cuda")
    capture_all_graphs(runner, parts)
    prof = Profiler(runner, parts, repeats=args.repeats)
    rows = []
    with ClockPowerSampler() as clocks:
        for part in (parts.decode(0), parts.decode(SPLIT)):
            for batch, mean in SHAPES:
                row = {"partition": part.name, "sms": part.sm_count, "batch": batch, "mean_context": mean}
                for kind in ("spread", "exponential", "equal"):
                    ctx = decode_contexts(kind, batch, mean)
                    row[kind] = {"ms": 1e3 * prof.time_alone(prof.decode_batch_of(ctx), part),
                                 "kv_tokens": sum(ctx), "max_context": max(ctx)}
                row["exponential_over_spread"] = row["exponential"]["ms"] / row["spread"]["ms"]
                row["equal_over_spread"] = row["equal"]["ms"] / row["spread"]["ms"]
                print(f"{part.name} {batch}x{mean}: " + "  ".join(
                    f"{k} {row[k]['ms']:.2f} ms" for k in ("spread", "exponential", "equal")), flush=True)
                rows.append(row)
    record = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": gpu_facts(), "clocks": clocks.summary(), "rows": rows,
              "median_exponential_over_spread": float(np.median([r["exponential_over_spread"] for r in rows])),
              "median_equal_over_spread": float(np.median([r["equal_over_spread"] for r in rows]))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"median ratio exponential/spread {record['median_exponential_over_spread']:.3f}, "
          f"equal/spread {record['median_equal_over_spread']:.3f}")


if __name__ == "__main__":
    main()

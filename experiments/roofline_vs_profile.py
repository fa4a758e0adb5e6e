"""The roofline benchmark's steps against the calibration's price for each: does the engine,
on the whole GPU and on green-context partitions, run as fast as the profile says it does?

    python experiments/roofline_vs_profile.py experiments/results/real_roofline_h200.json \
        [--calibration nexus/cost/calibrations/h200__llama-3.1-8b.json] [--out OUT.json]

No GPU: it reads a `bench_real_roofline.py` result and prices every shape with the
simulator's cost model (`solo_time`, served scales included). The profile times a step as a
host clock around back-to-back `ModelRunner.step` calls, so its price compares with the
bench's `wall_ms` (the same, 25 steps); `time_ms` is GPU time after a pause and reads lower.
Fractions are of the shape's ceiling at a time: `wall_fraction` at the measured wall time,
`predicted_fraction` at the price (both below the bench's GPU-time `fraction`, which leaves
the host out). Boards differ by a few % (README, the fidelity section): a result and a
calibration from different boards carry that too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexus.cost import FULL_GPU, BatchShape, load_cost_model  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402

MIXED_CONTEXT = 1024   # as bench_real_roofline.py spreads a mixed step's decode contexts


def shape_of(row: dict) -> BatchShape:
    """The step a roofline row timed, as the cost model sees it."""
    if row["kind"] == "decode":
        return BatchShape((), row["batch"], row["kv_tokens"])
    if row["kind"] == "prefill":
        return BatchShape(((row["tokens"], row["prior"]),))
    rows = row["decode_rows"]
    if "kv_tokens" in row:
        return BatchShape(((row["chunk"], 0),), rows, row["kv_tokens"])
    # Files from before the bench recorded it: its contexts spread +-75% around the mean.
    mean = row.get("decode_context_mean", MIXED_CONTEXT)
    kv = int(np.linspace(0.25 * mean, 1.75 * mean, rows).astype(int).sum())
    return BatchShape(((row["chunk"], 0),), rows, kv)


def compare(result: dict, calibration: str | None) -> dict:
    cost = load_cost_model(MODELS[result["model"]], GPUS["h200"] if "H200" in result["machine"]["name"]
                           else GPUS["h100-sxm"], calibration)
    full_sms = result["machine"]["num_sms"]
    shapes = []
    for row in result["shapes"]:
        sms = FULL_GPU if row["sms"] == full_sms else row["sms"]
        predicted_ms = float(cost.solo_time(shape_of(row), sms)) * 1e3
        shapes.append({
            "kind": row["kind"], "sms": row["sms"],
            **{k: row[k] for k in ("batch", "context", "tokens", "prior", "chunk", "decode_rows") if k in row},
            "predicted_ms": round(predicted_ms, 3), "wall_ms": round(row["wall_ms"], 3),
            "gpu_ms": round(row["time_ms"], 3), "wall_over_predicted": round(row["wall_ms"] / predicted_ms, 4),
            "fraction": round(row["fraction"], 4),
            "wall_fraction": round(row["fraction"] * row["time_ms"] / row["wall_ms"], 4),
            "predicted_fraction": round(row["fraction"] * row["time_ms"] / predicted_ms, 4)})
    ratios = [s["wall_over_predicted"] for s in shapes]
    green = [s["wall_over_predicted"] for s in shapes if s["sms"] != full_sms]
    return {"roofline": {k: result[k] for k in ("command", "date")} | {"gpu": result["machine"].get("uuid")},
            "calibration": calibration or "shipped for the GPU", "shapes": shapes,
            "median_wall_over_predicted": statistics.median(ratios),
            "median_wall_over_predicted_on_partitions": statistics.median(green) if green else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roofline", type=Path, help="a bench_real_roofline.py result")
    ap.add_argument("--calibration", help="calibration JSON (default: the one shipped for the GPU)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        result = json.loads(args.roofline.read_text())
        report = compare(result, args.calibration)
    except (OSError, ValueError, KeyError) as e:
        print(f"roofline_vs_profile: {args.roofline}: {e}", file=sys.stderr)
        return 2
    for s in report["shapes"]:
        what = {k: s[k] for k in ("batch", "context", "tokens", "prior", "chunk", "decode_rows") if k in s}
        print(f"{s['kind']:8s} {s['sms']:4d} SMs {json.dumps(what):42s} wall {s['wall_ms']:8.2f} ms  "
              f"profile {s['predicted_ms']:8.2f} ms  x{s['wall_over_predicted']:.3f}  "
              f"fraction at wall {s['wall_fraction']:.3f} (profile {s['predicted_fraction']:.3f})")
    print(f"median wall / profile {report['median_wall_over_predicted']:.3f}, "
          f"on partitions {report['median_wall_over_predicted_on_partitions']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The model's error on an engine run's prompt steps, by the prefill graph bucket each ran.

    python experiments/steps_by_bucket.py experiments/results/max_rate_h200_mixed_20261202_steps.csv.gz \
        [--policy nexus-slo] [--calibration nexus/cost/calibrations/h200__llama-3.1-8b.json]

Reads a `steps.csv[.gz]` that `nexus-real validate` or `max-rate` wrote (each measured step
beside the time the run's calibration predicted for it) and prints, per bucket, the median
measured / predicted time and how many steps, for the plain stream's prompt and
chunked-prefill steps, with the sizes the calibration's prefill grid measured marked. A
graphed step runs at its bucket, so a model right at the measured sizes and off between
them says the curve between them is not what the fit drew.

With `--what-if OUT.json` it also writes a diagnostic calibration, never one to ship: the
given one with plain-stream prefill points added at each bucket the grid did not measure
(with at least MIN_STEPS steps), at the model's time there times the bucket's median ratio,
refitted (with the replay beside it, copied). `nexus-sim --calibration OUT.json` then shows
how far such a curve would move a prediction; the served ratios are the engine's own
measurements, so nothing scored against that engine may use the file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nexus.cost.calibration import read_calibration  # noqa: E402
from nexus.graph_buckets import prefill_bucket  # noqa: E402
from nexus.step import chunks_from_text  # noqa: E402

SHIPPED = ROOT / "nexus/cost/calibrations/h200__llama-3.1-8b.json"
MIN_STEPS = 9


def by_bucket(steps: pd.DataFrame, graphs: dict) -> pd.DataFrame:
    """Median measured / predicted time and step count per bucket, over the plain stream's
    graphed steps that hold prompt tokens (alone or beside decode rows: the graph pads both)."""
    mine = steps[(steps["sms"] == 0) & (steps["prefill_tokens"] > 0)]
    padded = [prefill_bucket(graphs["buckets"], graphs["max_seqs"], chunks_from_text(shape), int(rows))
              for shape, rows in zip(mine["prefill_shape"], mine["decode_seqs"])]
    return (pd.DataFrame({"bucket": padded, "ratio": mine["measured_s"] / mine["predicted_s"]})
            .dropna().astype({"bucket": int}).groupby("bucket")["ratio"].agg(median="median", steps="count"))


def write_what_if(calibration: Path, table: pd.DataFrame, measured: set[int], out: Path) -> list[int]:
    """The diagnostic calibration of the module's docstring; returns the buckets it raised."""
    import json
    import shutil

    from nexus.cost.base import BatchShape
    from nexus.cost.calibration import spec_from_dict
    from nexus.cost.fit import refit_file
    from nexus.cost.measured import MeasuredCost
    from nexus.cost.served import replay_path
    from nexus.specs import GPUSpec, ModelSpec
    data = read_calibration(calibration)
    cost = MeasuredCost.load(calibration, spec_from_dict(ModelSpec, data["model"], "model"),
                             spec_from_dict(GPUSpec, data["gpu"], "gpu"))
    raised = [int(b) for b, row in table.iterrows() if b not in measured and row["steps"] >= MIN_STEPS]
    for bucket in raised:
        time_s = float(cost.solo_time(BatchShape(((bucket, 0),)), 0)) * float(table.loc[bucket, "median"])
        data["measurements"]["prefill"] += [{"sms": 0, "chunk_tokens": bucket, "prior_tokens": 0, "time_s": time_s}] * 5
    data["command"] = f"what-if from {calibration} (experiments/steps_by_bucket.py): not a measurement"
    out.write_text(json.dumps(data))
    if replay_path(calibration).exists():
        shutil.copy(replay_path(calibration), replay_path(out))
    refit_file(out, log=lambda line: None)
    return raised


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", type=Path, help="steps.csv or steps.csv.gz of a validate or max-rate run")
    ap.add_argument("--policy", help="only this policy's steps")
    ap.add_argument("--calibration", type=Path, default=SHIPPED,
                    help="the calibration whose graph buckets and measured sizes to use")
    ap.add_argument("--what-if", type=Path, metavar="OUT.json",
                    help="also write the diagnostic calibration described above")
    args = ap.parse_args()
    steps = pd.read_csv(args.steps)
    if args.policy:
        steps = steps[steps["policy"] == args.policy]
    data = read_calibration(args.calibration)
    measured = {r["chunk_tokens"] for r in data["measurements"]["prefill"]
                if r["sms"] == 0 and r.get("prompts", 1) == 1}
    table = by_bucket(steps, data["engine"]["prefill_graphs"])
    print("bucket  measured/predicted  steps  (* = a size the prefill grid measured)")
    for bucket, row in table.iterrows():
        print(f"{bucket:6d}{'*' if bucket in measured else ' '}  {row['median']:18.3f}  {int(row['steps']):5d}")
    if args.what_if:
        raised = write_what_if(args.calibration, table, measured, args.what_if)
        print(f"wrote {args.what_if}: prefill raised at {raised} tokens (a diagnostic, not a calibration)")


if __name__ == "__main__":
    main()

"""One fidelity study from several `nexus-real validate` runs (a GPU call holds about ten minutes
of engine time, so a study of four workloads takes two or three), with optional rescorings of
the same runs beside it.

    python experiments/fidelity_merge.py --run experiments/results/fidelity_h200_run/short \
        --run experiments/results/fidelity_h200_run/long --run experiments/results/fidelity_h200_run/long_nexus \
        --ablation "no corun_scale=DIR,DIR,DIR" --out experiments/results/fidelity_h200

Writes OUT.json (every case, the banded summary, each run's command and board) and OUT.md (the
validate report of the merged cases, then one summary line per ablation). An ablation is the
same runs rescored (`nexus-real validate --rescore`) with another calibration.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nexus.errors import UserError  # noqa: E402
from real.validate import markdown, summarize_cases  # noqa: E402

KEYS = ("ttft_s.mean", "ttft_s.p95", "tbt_s.mean", "tbt_s.p95")


def read_runs(dirs: list[str]) -> list[dict]:
    try:
        return [json.loads((Path(d) / "validate.json").read_text()) for d in dirs]
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a validate run: {e}") from None


def merged(runs: list[dict]) -> dict:
    first = runs[0]
    boards = {r["machine"].get("uuid") for r in runs}
    cases = [c for r in runs for c in r["cases"]]
    return {"command": " && ".join(r["command"] for r in runs),
            "runs": [{"command": r["command"], "date": r["date"], "board": r["machine"].get("uuid"),
                      "rescored": r.get("rescored")} for r in runs],
            "boards": sorted(b for b in boards if b), "model": first["model"], "gpu": first["gpu"],
            "cost_model": first["cost_model"], "traces": {k: v for r in runs for k, v in r["traces"].items()},
            "cases": cases, "summary": summarize_cases(cases)}


def summary_line(name: str, summary: dict) -> list[str]:
    return [f"| {name} | {band} | {s['cases']} | "
            + " | ".join(f"{s['median_abs_pct'][k]:.1f} / {s['median_signed_pct'][k]:+.1f}" for k in KEYS) + " |"
            for band, s in summary.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a validate output directory")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=DIR,DIR",
                    help="the same runs rescored with another calibration, in --run order")
    ap.add_argument("--note", default="", help="what the reader must know about these runs")
    ap.add_argument("--out", required=True, help="path without suffix: OUT.json and OUT.md are written")
    args = ap.parse_args(argv)
    try:
        record = merged(read_runs(args.run))
        record["note"] = args.note
        record["ablations"] = {}
        for spec in args.ablation:
            name, _, dirs = spec.partition("=")
            if not dirs:
                raise UserError(f"--ablation {spec!r}: want NAME=DIR,DIR,...")
            record["ablations"][name] = merged(read_runs(dirs.split(",")))["summary"]
    except UserError as e:
        print(f"fidelity_merge: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(record)
    if args.note:
        text = text.replace("\n\n", f"\n\n{args.note}\n\n", 1)
    lines = ["", "Summaries, median % error abs / signed (the study, then each ablation: the same engine "
             "runs rescored):", "", "| scored with | band | cases | TTFT mean | TTFT p95 | TBT mean | TBT p95 |",
             "|---|---|---|---|---|---|---|", *summary_line("the study", record["summary"])]
    for name, summary in record["ablations"].items():
        lines += summary_line(name, summary)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(text + "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""experiments/fidelity_merge.py: several validate runs become one study, ablations beside it."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import fidelity_merge  # noqa: E402

KEYS = [f"{m}.{s}" for m in ("ttft_s", "tbt_s") for s in ("mean", "p50", "p95", "p99")] + ["throughput_rps"]


def write_run(path: Path, trace: str, errors: list[tuple[str, float]], board: str) -> str:
    cases = [{"trace": trace, "policy": "static", "load": 0.7 if band.startswith("up") else 1.2, "rate_scale": 1.0,
              "band": band, "error_pct": {k: err for k in KEYS}, "steps": {}} for band, err in errors]
    record = {"command": f"nexus-real validate --trace {trace}", "date": "2026-12-01", "machine": {"uuid": board},
              "model": "llama-3.1-8b", "gpu": "h200", "cost_model": {"name": "measured"},
              "traces": {trace: {"requests": 100, "rate_rps": 2.0}}, "cases": cases}
    path.mkdir(parents=True)
    (path / "validate.json").write_text(json.dumps(record))
    return str(path)


def test_runs_merge_into_one_banded_summary_with_ablations(tmp_path):
    a = write_run(tmp_path / "a", "sharegpt", [("up_to_saturation", 10.0), ("past_saturation", -4.0)], "GPU-1")
    b = write_run(tmp_path / "b", "longprompt", [("up_to_saturation", -2.0), ("up_to_saturation", 6.0)], "GPU-1")
    c = write_run(tmp_path / "c", "sharegpt", [("up_to_saturation", 1.0), ("past_saturation", 1.0)], "GPU-2")
    out = tmp_path / "study"
    assert fidelity_merge.main(["--run", a, "--run", b, "--ablation", f"other={c}", "--note", "one board",
                                "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    up = record["summary"]["up_to_saturation"]
    assert up["cases"] == 3
    assert up["median_abs_pct"]["ttft_s.mean"] == pytest.approx(6.0)      # |10|, |-2|, |6|
    assert up["median_signed_pct"]["ttft_s.mean"] == pytest.approx(6.0)
    assert record["summary"]["past_saturation"]["median_signed_pct"]["tbt_s.p95"] == pytest.approx(-4.0)
    assert set(record["traces"]) == {"sharegpt", "longprompt"} and record["boards"] == ["GPU-1"]
    assert record["ablations"]["other"]["up_to_saturation"]["cases"] == 1
    text = out.with_suffix(".md").read_text()
    assert "one board" in text and "| other | up_to_saturation | 1 |" in text


def test_an_unreadable_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert fidelity_merge.main(["--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fidelity_merge: cannot read a validate run") and "\n" not in err
    assert not (tmp_path / "x.json").exists()

"""nexus-sim end to end: defaults, outputs, and clear errors with exit status 2."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sim.cli import main
from synthetic import make_trace
from traces import write_trace


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(make_trace(120, 15.0, (16, 800), (2, 120)), path)
    return path


def test_compare_writes_every_output(trace_file, tmp_path):
    out = tmp_path / "out"
    assert main(["--trace", str(trace_file), "--compare", "chunked,static,nexus", "--out", str(out),
                 "--quiet"]) == 0
    for policy in ("chunked", "static", "nexus"):
        summary = json.loads((out / policy / "summary.json").read_text())
        assert summary["policy"] == policy
        assert summary["requests"] == 120
        for key in ("ttft_s", "tbt_s", "e2e_s", "normalized_latency_s"):
            assert set(summary[key]) == {"mean", "p50", "p90", "p95", "p99"}
            assert summary[key]["p50"] <= summary[key]["p99"]
        assert summary["throughput_rps"] > 0 and summary["output_tokens_per_s"] > 0
        requests = pd.read_parquet(out / policy / "requests.parquet")
        assert len(requests) == 120
        timeline = pd.read_parquet(out / policy / "timeline.parquet")
        assert {"start_s", "sms", "decode_seqs", "kv_usage"} <= set(timeline.columns)
    assert (out / "latency_cdf.png").stat().st_size > 1000
    assert (out / "split_and_kv.png").stat().st_size > 1000


def test_slo_flags_report_goodput(trace_file, capsys):
    assert main(["--trace", str(trace_file), "--policy", "chunked", "--json", "--quiet",
                 "--slo-ttft", "0.05", "--slo-tbt", "0.02"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 <= summary["slo"]["attainment"] <= 1
    assert summary["slo"]["goodput_rps"] <= summary["throughput_rps"] + 1e-9


def test_policy_calibration_changes_only_what_the_policy_plans_with(trace_file, capsys):
    def simulate(policy: str, *extra: str) -> dict:
        assert main(["--trace", str(trace_file), "--policy", policy, "--json", "--quiet", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    planned = simulate("nexus", "--policy-calibration", "analytical")
    default = simulate("nexus")
    # The GPU is the same measured model; the controller planned on the roofline instead.
    assert planned["cost_model"] == default["cost_model"] and planned["cost_model"]["name"] == "measured"
    assert planned["policy_cost_model"]["name"] == "analytical" and "policy_cost_model" not in default
    assert planned["ttft_s"] != default["ttft_s"]
    # Chunked prefill plans without a cost model: its run does not change at all.
    assert simulate("chunked", "--policy-calibration", "analytical")["ttft_s"] == simulate("chunked")["ttft_s"]


@pytest.mark.parametrize("args, message", [
    (["--policy", "fifo"], "unknown policy 'fifo'"),
    (["--model", "gpt-5"], "unknown model 'gpt-5'"),
    (["--gpu", "b200"], "unknown GPU 'b200'"),
    (["--policy", "static", "--split", "60:72"], "cannot give a prefill partition of 60 SMs"),
    (["--policy", "static", "--split", "64:80"], "asks for 144 SMs"),
    (["--model", "llama-3.1-70b"], "does not fit on h100-sxm"),
    (["--param", "alpha"], "--param takes KEY=VALUE"),
    (["--param", "colour=1"], "unknown policy parameter"),
    (["--rate-scale", "0"], "--rate-scale must be a positive number"),
])
def test_bad_input_exits_2_with_a_clear_message(trace_file, capsys, args, message):
    assert main(["--trace", str(trace_file), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_malformed_trace_is_rejected_without_simulating(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": 1, "arrival_time_s": 0.0, "prompt_tokens": 5, "output_tokens": 3}\n'
                   '{"request_id": 2, "arrival_time_s": 1.0, "prompt_tokens": 0, "output_tokens": 3}\n')
    assert main(["--trace", str(bad), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "prompt_tokens" in err
    assert not (tmp_path / "o").exists()


def test_console_script_runs_the_shipped_default():
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "--quiet", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] == 1000 and summary["policy"] == "nexus"


def test_console_script_user_error_has_no_traceback(trace_file):
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "--trace", str(trace_file),
                           "--gpu", "b200"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_cv_retimes_the_trace_in_bursts_at_its_own_rate(trace_file, capsys):
    from traces.retime import load_entries

    own = load_entries(str(trace_file))
    bursty = load_entries(str(trace_file), cv=4.0, seed=1)
    assert [(e.prompt_tokens, e.output_tokens) for e in bursty] == [(e.prompt_tokens, e.output_tokens) for e in own]
    gaps_own, gaps_bursty = np.diff([e.arrival_time_s for e in own]), np.diff([e.arrival_time_s for e in bursty])
    assert gaps_bursty.std() / gaps_bursty.mean() > 2 * gaps_own.std() / gaps_own.mean()
    assert gaps_bursty.mean() == pytest.approx(gaps_own.mean(), rel=0.6)   # same mean rate, drawn
    runs = []
    for extra in ([], ["--cv", "4"], ["--cv", "4", "--rate", "30"]):
        assert main(["--trace", str(trace_file), "--policy", "chunked", "--json", "--quiet", *extra]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[1]["ttft_s"]["p99"] > runs[0]["ttft_s"]["p99"]       # bursts queue up
    assert runs[2]["duration_s"] < runs[1]["duration_s"]             # twice the rate
    assert main(["--trace", str(trace_file), "--cv", "-1", "--quiet"]) == 2
    assert "--cv must be a finite number >= 0" in capsys.readouterr().err

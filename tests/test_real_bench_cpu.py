"""The real engine end to end on CPU with the tiny model: every token, valid outputs, same files as the sim."""
import json

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from real.cli import main  # noqa: E402
from synthetic import make_trace  # noqa: E402
from traces import write_trace  # noqa: E402


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(make_trace(16, 40.0, (4, 120), (2, 24), seed=5), path)
    return path


def test_cpu_bench_gives_every_request_all_its_tokens(trace_file, tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "--device", "cpu", "--model", "tiny-llama", "--trace", str(trace_file),
                 "--compare", "chunked,static,nexus", "--num-blocks", "512", "--out", str(out)]) == 0
    for policy in ("chunked", "static", "nexus"):
        summary = json.loads((out / policy / "summary.json").read_text())
        assert summary["policy"] == policy and summary["requests"] == 16 and summary["measured"]
        for key in ("ttft_s", "tbt_s", "e2e_s", "normalized_latency_s"):
            assert set(summary[key]) == {"mean", "p50", "p90", "p95", "p99"}
            assert 0 < summary[key]["p50"] <= summary[key]["p99"]
        df = pd.read_parquet(out / policy / "requests.parquet")
        assert (df["generated_tokens"] == df["output_tokens"]).all()
        assert (df["ttft_s"] > 0).all() and (df["ttft_s"] <= df["e2e_s"]).all()
        timeline = pd.read_parquet(out / policy / "timeline.parquet")
        assert len(timeline) > 0 and (timeline["end_s"] >= timeline["start_s"]).all()
        decoding = timeline["decode_seqs"] > 0
        assert (timeline.loc[decoding, "decode_kv_tokens"] >= timeline.loc[decoding, "decode_seqs"]).all()
        assert (timeline.loc[~decoding, "decode_kv_tokens"] == 0).all()
        assert (timeline["prefill_prior_tokens"] >= 0).all()
        streams = set(timeline["stream"])
        assert streams == ({"mixed"} if policy == "chunked" else {"prefill", "decode"})


def test_cpu_bench_survives_preemption(tmp_path):
    trace_file = tmp_path / "busy.jsonl"
    write_trace(make_trace(16, 1000.0, (60, 120), (30, 60), seed=6), trace_file)
    out = tmp_path / "out"
    assert main(["bench", "--device", "cpu", "--model", "tiny-llama", "--trace", str(trace_file),
                 "--policy", "chunked", "--num-blocks", "24", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "requests.parquet")
    assert df["preemptions"].sum() > 0
    assert (df["generated_tokens"] == df["output_tokens"]).all()


@pytest.mark.parametrize("args, message", [
    (["--policy", "fifo"], "unknown policy 'fifo'"),
    (["--policy", "static", "--split", "60:72"], "cannot give a prefill partition of 60 SMs"),
    (["--num-blocks", "2"], "needs"),
])
def test_cpu_bench_bad_input(trace_file, tmp_path, capsys, args, message):
    code = main(["bench", "--device", "cpu", "--model", "tiny-llama", "--trace", str(trace_file),
                 "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


"""Engine-level disaggregation on CPU: a prefill and a decode process joined by gloo, tiny-llama.

Every request finishes once with all its tokens, and greedy tokens equal a single engine's
on the same random weights: the KV that crossed the link is the KV the decode steps read.
"""
import json
from dataclasses import replace

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from nexus.cost import load_cost_model  # noqa: E402
from nexus.errors import UserError  # noqa: E402
from nexus.kv import BlockPool  # noqa: E402
from nexus.policy import Chunked, Disagg  # noqa: E402
from nexus.request import Request  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from nexus.state import ServingState  # noqa: E402
from nexus.step import Stepper  # noqa: E402
from real.cli import main  # noqa: E402
from real.disagg import DisaggConfig, run_disagg  # noqa: E402
from real.engine import RealEngine  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.partitions import Partitions  # noqa: E402
from synthetic import make_trace  # noqa: E402
from traces import write_trace  # noqa: E402

MODEL, GPU = MODELS["tiny-llama"], GPUS["h100-sxm"]
TIMEOUT_S = 600


def single_engine_tokens(entries, num_blocks: int, seed: int = 0) -> tuple[list[list[int]], list[Request]]:
    """Prompt + generated tokens of each request (arrival order) on one engine, chunked prefill."""
    runner = ModelRunner(MODEL, device="cpu", seed=seed, num_blocks=num_blocks)
    policy = Chunked()
    state = ServingState(MODEL, GPU, load_cost_model(MODEL, GPU, None),
                         BlockPool(runner.num_blocks, runner.block_size, track_ids=True), policy.priority)
    requests = [Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens) for e in entries]
    engine = RealEngine(runner, Partitions([], device="cpu", cpu_gpu=GPU), Stepper(state, policy), requests, seed)
    engine.run()
    return [engine.tokens[r] for r in engine.requests], engine.requests


@pytest.mark.slow
def test_disagg_gives_every_request_the_single_engine_tokens():
    # Two requests of one output token (they end on the prefill engine); prompts past the
    # 32-token chunk budget are prefilled in several chunks.
    entries = make_trace(12, 50.0, (3, 80), (2, 24), seed=11)
    entries[3], entries[8] = (replace(entries[i], output_tokens=1) for i in (3, 8))
    assert any(e.prompt_tokens > 32 for e in entries)
    run = run_disagg(DisaggConfig(entries, MODEL, GPU, Disagg(prefill_tokens=32), num_blocks=256),
                     timeout_s=TIMEOUT_S)
    expected, requests = single_engine_tokens(entries, num_blocks=256)

    df = run.result.requests
    assert list(df["request_id"]) == [r.request_id for r in requests]
    assert (df["generated_tokens"] == df["output_tokens"]).all()
    assert (df["preemptions"] == 0).all()
    for tokens, req in zip(run.tokens, requests):
        assert len(tokens) == req.prompt_tokens + req.output_tokens
    assert run.tokens == expected
    assert (df["ttft_s"] > 0).all() and (df["first_token_s"] <= df["finish_s"]).all()
    transfers = run.result.summary["kv_transfer"]
    decoded = [e for e in entries if e.output_tokens > 1]
    assert transfers["transfers"] == len(decoded)
    assert transfers["finished_on_prefill_engine"] == 2
    per_token = 2 * MODEL.num_layers * MODEL.num_kv_heads * MODEL.head_dim * 4   # float32 on CPU
    assert transfers["bytes"] == sum(-(-e.prompt_tokens // 16) * 16 * per_token for e in decoded)
    streams = run.result.timeline.groupby("stream")
    assert set(streams.groups) == {"prefill", "decode"}
    assert streams["prefill_tokens"].sum()["prefill"] == sum(e.prompt_tokens for e in entries)
    assert streams["decode_seqs"].sum()["decode"] == sum(e.output_tokens - 1 for e in entries)


@pytest.mark.slow
def test_decode_preemption_sends_requests_back_for_recompute():
    # 24 blocks hold one 12-block request beside few others: decode growth must preempt.
    entries = make_trace(10, 1000.0, (60, 120), (30, 60), seed=6)
    run = run_disagg(DisaggConfig(entries, MODEL, GPU, Disagg(), num_blocks=24), timeout_s=TIMEOUT_S)
    df = run.result.requests
    assert df["preemptions"].sum() > 0
    assert (df["generated_tokens"] == df["output_tokens"]).all()
    assert run.result.summary["preemptions"] == df["preemptions"].sum()
    # Recomputed prefixes continue with the tokens an unpreempted single engine gives.
    assert run.tokens == single_engine_tokens(entries, num_blocks=256)[0]
    # Every preemption means one more prefill: it ends in a transfer, or in the last token.
    transfers = run.result.summary["kv_transfer"]
    assert transfers["transfers"] + transfers["finished_on_prefill_engine"] == len(entries) + df["preemptions"].sum()


@pytest.mark.slow
def test_cli_bench_disagg_on_cpu_writes_the_bench_files(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(8, 40.0, (4, 60), (2, 12), seed=5), trace)
    out = tmp_path / "out"
    assert main(["bench", "--device", "cpu", "--model", "tiny-llama", "--trace", str(trace), "--policy", "disagg",
                 "--num-blocks", "128", "--slo-ttft", "10", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "disagg" and summary["requests"] == 8 and summary["measured"]
    assert summary["kv_blocks"] == {"prefill": 128, "decode": 128}
    assert summary["kv_transfer"]["transfers"] == 8 and summary["kv_transfer"]["backend"] == "gloo"
    assert summary["slo"]["ttft_s"] == 10
    assert set(summary["machine"]) == {"prefill", "decode"}
    for key in ("ttft_s", "tbt_s", "e2e_s"):
        assert 0 < summary[key]["p50"] <= summary[key]["p99"]
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["generated_tokens"] == df["output_tokens"]).all()
    timeline = pd.read_parquet(out / "timeline.parquet")
    assert set(timeline["stream"]) == {"prefill", "decode"} and (timeline["end_s"] >= timeline["start_s"]).all()
    assert (out / "latency_cdf.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--compare", "disagg,chunked"], "give it alone"),
    (["--policy", "disagg", "--split", "64:68"], "--split does not apply to disagg"),
    (["--policy", "disagg", "--num-blocks", "2"], "needs"),
])
def test_cli_bench_disagg_bad_input(tmp_path, capsys, args, message):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(4, 40.0, (40, 60), (2, 12), seed=5), trace)
    code = main(["bench", "--device", "cpu", "--model", "tiny-llama", "--trace", str(trace),
                 "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has two GPUs")
def test_disagg_on_cuda_needs_two_gpus():
    entries = make_trace(2, 40.0, (4, 8), (2, 4), seed=1)
    with pytest.raises(UserError, match="disagg needs two GPUs"):
        run_disagg(DisaggConfig(entries, MODEL, GPU, Disagg(), device="cuda"))

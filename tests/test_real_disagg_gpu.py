"""Engine-level disaggregation on two GPUs: prefill on cuda:0, decode on cuda:1, KV over NCCL."""
import pytest

torch = pytest.importorskip("torch")

from nexus.policy import Disagg  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from real.disagg import DisaggConfig, run_disagg  # noqa: E402
from synthetic import make_trace  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]


def test_two_gpu_disagg_gives_every_request_all_its_tokens():
    entries = make_trace(24, 50.0, (16, 600), (2, 64), seed=3)
    run = run_disagg(DisaggConfig(entries, MODELS["llama-3.1-8b"], GPUS["h100-sxm"], Disagg(), device="cuda",
                                  max_num_seqs=64), timeout_s=600)
    df = run.result.requests
    assert (df["generated_tokens"] == df["output_tokens"]).all()
    assert (df["ttft_s"] > 0).all() and (df["first_token_s"] <= df["finish_s"]).all()
    for tokens, e in zip(run.tokens, sorted(entries, key=lambda e: e.arrival_time_s)):
        assert len(tokens) == e.prompt_tokens + e.output_tokens
    transfers = run.result.summary["kv_transfer"]
    assert transfers["backend"] == "nccl" and transfers["transfers"] == len(entries)
    assert transfers["bytes"] == sum(-(-e.prompt_tokens // 16) * 16 for e in entries) \
        * MODELS["llama-3.1-8b"].kv_bytes_per_token

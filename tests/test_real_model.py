"""The model against Hugging Face transformers, and the paged path against one full forward."""
from __future__ import annotations

import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nexus.errors import UserError  # noqa: E402
from nexus.specs import ModelSpec  # noqa: E402
from real.batch import Chunk, pack  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.rope import inv_frequencies  # noqa: E402
from real.weights import spec_from_hf_config  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def _hf_model(kind: str, tmp_path, **overrides):
    """A tiny random HF model saved to tmp_path, with weights scaled up so that logits differ."""
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rms_norm_eps=1e-6, initializer_range=0.15)
    common.update(overrides)
    if kind == "llama":
        config = transformers.LlamaConfig(head_dim=16, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, **common)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen2Config(rope_theta=1000000.0, tie_word_embeddings=True, **common)
        cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    model = cls(config).eval()
    model.save_pretrained(tmp_path)
    return model


def _all_logits(runner: ModelRunner, ids: list[int]) -> torch.Tensor:
    """Logits of every position from one forward of the whole sequence through the paged cache."""
    table = list(range(runner.num_blocks - 1, runner.num_blocks - 1 - (len(ids) + 15) // 16, -1))
    packed = pack([Chunk(ids, 0, table)], runner.device, runner.block_size, runner.spec.num_kv_heads, 1,
                  runner.num_blocks)
    with torch.inference_mode():
        hidden = runner.model(packed.input_ids, packed.positions, runner.kv, packed.meta)
        return runner.model.compute_logits(hidden)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_match_transformers(kind: str, tmp_path) -> None:
    hf = _hf_model(kind, tmp_path)
    spec = spec_from_hf_config(tmp_path)
    assert spec.attention_bias == (kind == "qwen2") and spec.tie_word_embeddings == (kind == "qwen2")
    runner = ModelRunner(spec, device="cpu", weights=tmp_path, num_blocks=32)
    ids = torch.randint(0, 256, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    ours = _all_logits(runner, ids)
    assert ref.std() > 0.1  # the comparison is not between near-zero numbers
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - ref).norm() / ref.norm() < 1e-5


def test_llama3_rope_scaling_matches_transformers(tmp_path) -> None:
    hf = _hf_model("llama", tmp_path)
    spec = spec_from_hf_config(tmp_path)
    ours = inv_frequencies(spec)
    assert torch.allclose(ours, hf.model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    plain = inv_frequencies(ModelSpec(**{**spec.to_dict(), "rope_scaling": None}))
    assert not torch.allclose(ours, plain)  # the scaling did change the low frequencies
    assert ours[0] == plain[0]  # and left the highest alone


def test_unknown_rope_type_is_a_user_error() -> None:
    spec = ModelSpec("x", 1, 64, 4, 2, 16, 128, 256, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(UserError, match="yarn"):
        inv_frequencies(spec)


def test_chunked_prefill_and_decode_match_full_forward(tmp_path) -> None:
    """Two sequences go through chunks, mixed batches and decodes; every logit row must equal
    the row of a single whole-sequence forward."""
    _hf_model("llama", tmp_path)
    spec = spec_from_hf_config(tmp_path)
    runner = ModelRunner(spec, device="cpu", weights=tmp_path, num_blocks=64)
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(0, 256, (120,), generator=gen).tolist()
    b = torch.randint(0, 256, (70,), generator=gen).tolist()
    ref_a, ref_b = _all_logits(runner, a), _all_logits(runner, b)

    ids = list(range(40))
    random.Random(3).shuffle(ids)  # blocks in no particular order, as an allocator hands them out
    table_a, table_b = ids[:8], ids[8:13]
    got, want = [], []

    def run(chunks: list[tuple[str, int, int]]) -> None:
        batch = [Chunk((a if s == "a" else b)[lo:hi], lo, table_a if s == "a" else table_b)
                 for s, lo, hi in chunks]
        out = runner.logits(batch)
        for row, (s, _, hi) in enumerate(chunks):
            got.append(out[row])
            want.append((ref_a if s == "a" else ref_b)[hi - 1])

    run([("a", 0, 37)])                                  # prefill chunk from scratch
    run([("a", 37, 90), ("b", 0, 30)])                   # continuing chunk beside a new prompt
    run([("b", 30, 67), ("a", 90, 91)])                  # mixed: b's last chunk, a decodes
    run([("a", 91, 92), ("b", 67, 68)])                  # decode both
    run([("b", 68, 69), ("a", 92, 93)])
    for pos in range(93, 120):                           # a decodes alone across block edges
        run([("a", pos, pos + 1)])
    got_t, want_t = torch.stack(got), torch.stack(want)
    assert (got_t - want_t).abs().max() < 1e-4


def test_step_returns_greedy_tokens_in_batch_order(tmp_path) -> None:
    _hf_model("llama", tmp_path)
    runner = ModelRunner(spec_from_hf_config(tmp_path), device="cpu", weights=tmp_path, num_blocks=16)
    batch = [Chunk([5], 3, [0]), Chunk([1, 2, 3, 4], 0, [1]), Chunk([9], 0, [2])]
    runner.step([Chunk([7, 8, 9], 0, [0])])  # fill positions 0..2 of the first sequence
    tokens = runner.step(batch)
    assert tokens == runner.logits(batch).argmax(-1).tolist()


def test_bad_batches_are_rejected() -> None:
    spec = ModelSpec("tiny", 1, 64, 4, 2, 16, 128, 256, max_position_embeddings=64)
    runner = ModelRunner(spec, device="cpu", num_blocks=4)
    with pytest.raises(ValueError, match="table has 1"):
        runner.step([Chunk(list(range(20)), 0, [0])])
    with pytest.raises(ValueError, match=r"block ids must be in \[0, 4\)"):
        runner.step([Chunk([1], 0, [4])])
    with pytest.raises(ValueError, match=r"sequence 2: block ids must be in \[0, 4\), got \[3, 7\]"):
        runner.step([Chunk([1], 0, [0]), Chunk([1, 2], 0, [1]), Chunk([3], 16, [3, 7])])
    with pytest.raises(ValueError, match="beyond max_model_len"):
        runner.step([Chunk([1, 2], 63, [0, 1, 2, 3])])


def test_timing_steps_leaves_eager_steps_untimed_and_their_tokens_unchanged() -> None:
    spec = ModelSpec("tiny", 1, 64, 4, 2, 16, 128, 256, max_position_embeddings=64)
    runner = ModelRunner(spec, device="cpu", num_blocks=4)
    batch = [Chunk([1, 2, 3], 0, [0])]
    plain = runner.step(batch)
    with runner.timing_steps() as busy:
        timed = runner.step(batch)
    assert timed == plain
    assert busy == []   # CUDA graph steps only: an eager step has no events around its own work

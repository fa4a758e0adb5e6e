"""The serving engine below HTTP: end-of-sequence, min_tokens, the sampler, and a checkpoint's tokenizer."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from real.sampler import Row, SamplingParams, _top_p, sample  # noqa: E402
from real.tokenizer import Detokenizer, FoldedCl100k, HFTokenizer, load_tokenizer  # noqa: E402
from serve_helpers import make_server  # noqa: E402


def _generate(engine, prompt, params):
    """(token ids, finish reason) of one request, run alone."""
    async def go():
        served = engine.submit(prompt, params)
        tokens, reason = [], None
        while reason is None:
            event = await served.events.get()
            tokens.append(event.token_id)
            reason = event.finish_reason
        return tokens, reason
    return asyncio.run_coroutine_threadsafe(go(), engine.loop).result(60)


@pytest.fixture
def engine_with_eos():
    """A chunked engine whose tokenizer's EOS is set by the test; the event loop runs on a thread."""
    import threading

    server = make_server("--policy", "chunked")
    engine = server.engine
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine.start(loop)
    yield engine
    engine.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_eos_ends_a_request_unless_ignored_or_too_early(engine_with_eos):
    engine = engine_with_eos
    prompt = [11, 22, 33, 44]
    free, reason = _generate(engine, prompt, SamplingParams(max_tokens=12, temperature=0))
    assert reason == "length" and len(free) == 12
    k = next(i for i in range(1, 12) if free[i] not in free[:i])
    engine.tokenizer = FoldedCl100k(256, eos_ids=frozenset({free[k]}))

    stopped, reason = _generate(engine, prompt, SamplingParams(max_tokens=12, temperature=0))
    assert (stopped, reason) == (free[:k + 1], "stop")
    done = engine.state.finished[-1]
    assert done.generated == done.output_tokens == k + 1   # the engine's record ends there too

    ignored, reason = _generate(engine, prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert (ignored, reason) == (free, "length")

    late, reason = _generate(engine, prompt, SamplingParams(max_tokens=12, temperature=0, min_tokens=k + 2))
    assert late[:k] == free[:k] and free[k] not in late[:k + 2]   # EOS was banned until min_tokens
    assert engine.healthy and len(engine.state.running) == 0 and engine.state.kv.used == 0


def test_top_p_keeps_the_smallest_head_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.1, 0.5, 0.15, 0.25]])
    kept = _top_p(probs, torch.tensor([0.7, 0.3]))    # 0.5 + 0.25 reaches 0.7; 0.5 alone reaches 0.3
    assert torch.allclose(kept[0], torch.tensor([0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75]))
    assert torch.equal(kept[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_sample_bans_and_seeds():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 1.0, 0.0]])
    assert sample(logits.clone(), [Row(), Row(banned=(0,))], torch.Generator()) == [1, 1]
    flat = torch.zeros(3, 1000)

    def seeded(seed, neighbours):
        rows = [Row(1.0), Row(1.0, 1.0, torch.Generator().manual_seed(seed)), Row(1.0, 0.5)]
        return sample(flat.clone(), rows, torch.Generator().manual_seed(neighbours))
    a, b, c = seeded(3, 0), seeded(3, 1), seeded(4, 0)
    assert a[1] == b[1] != c[1]          # a seeded row ignores what its neighbours draw
    assert a[0] != b[0] and a[0] == c[0]


def test_detokenizer_pieces_add_up_to_the_whole_text():
    tok = FoldedCl100k(100256)
    text = "naïve café — 東京 ok"
    ids = tok.encode(text)
    detok = Detokenizer(tok, [1, 2])
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)   # split characters wait for their last byte


def test_checkpoint_tokenizer_reads_prompts(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from real.weights import spec_from_hf_config

    words = ["<eos>", "<unk>", "hello", "world", "the", "cat", "sat"]
    vocab = {w: i for i, w in enumerate(words)}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(tmp_path)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      eos_token_id=0)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path, 32)
    assert isinstance(tok, HFTokenizer) and tok.eos_ids == {0}
    assert tok.encode("the cat sat") == [4, 5, 6]

    spec = spec_from_hf_config(tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    server = make_server("--policy", "chunked", "--model", str(spec_file), "--weights", str(tmp_path))
    assert server.engine.tokenizer.name.startswith(str(tmp_path))
    from real.openai_protocol import parse_completion
    parsed = parse_completion({"prompt": "hello world the cat"}, server.engine.tokenizer)
    assert parsed.prompt_ids == [2, 3, 4, 5]


def test_fallback_tokenizer_folds_ids_and_takes_eos_from_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [7, 300]}))
    tok = load_tokenizer(tmp_path, 256)
    assert isinstance(tok, FoldedCl100k) and tok.eos_ids == {7}
    assert all(0 <= i < 256 for i in tok.encode("a longer sentence with some words in it"))
    assert len(tok.encode("hello world")) == len(FoldedCl100k(100256).encode("hello world"))

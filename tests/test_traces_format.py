"""The canonical trace format: reading, writing, and every way a file can be wrong."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nexus.errors import UserError
from traces import TraceEntry, read_trace, write_trace
from traces.cli import main

GOOD = '{"request_id": "a", "arrival_time_s": 0.5, "prompt_tokens": 10, "output_tokens": 20}'


def line(request_id='"r"', arrival="1.0", prompt="10", output="20") -> str:
    return (f'{{"request_id": {request_id}, "arrival_time_s": {arrival}, '
            f'"prompt_tokens": {prompt}, "output_tokens": {output}}}')


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def nexus_trace() -> list[str]:
    script = Path(sys.executable).with_name("nexus-trace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "traces.cli"]


# (lines of the file, line the error must name, field it must name or None, words the message must hold)
BAD_FILES = {
    "missing field": ([GOOD, '{"request_id": "b", "arrival_time_s": 1, "prompt_tokens": 3}'],
                      2, "output_tokens", "missing"),
    "string tokens": ([line(prompt='"12"')], 1, "prompt_tokens", 'got "12"'),
    "bool tokens": ([line(output="true")], 1, "output_tokens", "got true"),
    "float tokens": ([line(prompt="12.0")], 1, "prompt_tokens", "got 12.0"),
    "zero tokens": ([line(output="0")], 1, "output_tokens", "positive integer, got 0"),
    "negative tokens": ([line(), line('"s"'), line('"t"', prompt="-3")],
                        3, "prompt_tokens", "must be a positive integer, got -3"),
    "float id": ([line(request_id="1.5")], 1, "request_id", "got 1.5"),
    "bool id": ([line(request_id="false")], 1, "request_id", "got false"),
    "list id": ([line(request_id="[1]")], 1, "request_id", "got [1]"),
    "empty id": ([line(request_id='""')], 1, "request_id", 'got ""'),
    "NaN arrival": ([line(arrival="NaN")], 1, "arrival_time_s", "got NaN"),
    "Infinity arrival": ([line(arrival="Infinity")], 1, "arrival_time_s", "got Infinity"),
    "overflowing arrival": ([line(arrival="1e999")], 1, "arrival_time_s", "finite"),
    "NaN tokens": ([line(output="NaN")], 1, "output_tokens", "got NaN"),
    "NaN in an extra field": ([line()[:-1] + ', "note": [1, -Infinity]}'], 1, "note", "NaN and Infinity"),
    "string arrival": ([line(arrival='"0.5"')], 1, "arrival_time_s", 'got "0.5"'),
    "negative arrival": ([line(arrival="-0.25")], 1, "arrival_time_s", "must not be negative, got -0.25"),
    "decreasing arrival": ([line('"a"', arrival="2.0"), line('"b"', arrival="1.5")],
                           2, "arrival_time_s", "1.5 comes after 2.0 on line 1"),
    "duplicate id": ([line('"x"', "0"), line('"y"', "1"), "", line('"x"', "2")],
                     4, "request_id", "first used on line 1"),
    "duplicate id as int and str": ([line("7", "0"), line('"7"', "1")], 2, "request_id", "first used on line 1"),
    "not JSON": ([GOOD, "{request_id: 1}"], 2, None, "not valid JSON"),
    "truncated JSON": ([GOOD[:30]], 1, None, "not valid JSON"),
    "array line": (["[1, 2]"], 1, None, "expected a JSON object, got an array"),
    "number line": (["3"], 1, None, "expected a JSON object, got a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_trace_names_file_line_and_field(case, tmp_path, capsys):
    lines, bad_line, field, words = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")

    code, out, err = run(capsys, "validate", str(path))

    assert code == 2
    assert out == ""
    assert err.startswith(f"nexus-trace: error: {path}:{bad_line}: ")
    if field is not None:
        assert f"field '{field}'" in err
    assert words in err
    assert "Traceback" not in err
    with pytest.raises(UserError):
        read_trace(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_trace_is_an_error(content, tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    code, _, err = run(capsys, "stats", str(path))
    assert code == 2
    assert err == f"nexus-trace: error: {path}: the trace is empty\n"


def test_missing_file_is_a_user_error(tmp_path, capsys):
    code, _, err = run(capsys, "validate", str(tmp_path / "nope.jsonl"))
    assert code == 2
    assert "nope.jsonl: cannot read" in err


def test_bad_trace_through_the_installed_command(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([line('"a"'), line('"b"'), line('"c"', prompt="-3")]) + "\n")
    done = subprocess.run([*nexus_trace(), "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"nexus-trace: error: {path}:3: field 'prompt_tokens': must be a positive integer, got -3\n"


def test_read_accepts_int_ids_extra_fields_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_bytes(
        b'{"request_id": 3, "arrival_time_s": 0, "prompt_tokens": 5, "output_tokens": 6, "src": "x"}\r\n'
        b"\r\n"
        b'{"arrival_time_s": 0.0, "output_tokens": 1, "prompt_tokens": 2, "request_id": "b"}'
    )
    assert read_trace(path) == [TraceEntry("3", 0.0, 5, 6), TraceEntry("b", 0.0, 2, 1)]


def test_write_is_canonical_and_reads_back(tmp_path):
    entries = [TraceEntry("a", 0.1 + 0.2, 1, 2), TraceEntry("b", 1.23456789, 3000, 4), TraceEntry("c", 7.0, 5, 6)]
    path = tmp_path / "t.jsonl"
    write_trace(entries, path)
    assert path.read_bytes() == (
        b'{"request_id": "a", "arrival_time_s": 0.3, "prompt_tokens": 1, "output_tokens": 2}\n'
        b'{"request_id": "b", "arrival_time_s": 1.234568, "prompt_tokens": 3000, "output_tokens": 4}\n'
        b'{"request_id": "c", "arrival_time_s": 7.0, "prompt_tokens": 5, "output_tokens": 6}\n'
    )
    back = read_trace(path)
    assert [e.request_id for e in back] == ["a", "b", "c"]
    assert [e.arrival_time_s for e in back] == [0.3, 1.234568, 7.0]
    again = tmp_path / "again.jsonl"
    write_trace(back, again)
    assert again.read_bytes() == path.read_bytes()


def test_write_refuses_what_read_would_reject(tmp_path):
    with pytest.raises(UserError, match="prompt_tokens"):
        write_trace([TraceEntry("a", 0.0, 0, 1)], tmp_path / "t.jsonl")
    with pytest.raises(UserError, match="arrivals must not decrease"):
        write_trace([TraceEntry("a", 1.0, 1, 1), TraceEntry("b", 0.5, 1, 1)], tmp_path / "t.jsonl")
    with pytest.raises(UserError, match="duplicate id"):
        write_trace([TraceEntry("a", 0.0, 1, 1), TraceEntry("a", 0.5, 1, 1)], tmp_path / "t.jsonl")
    assert not (tmp_path / "t.jsonl").exists()

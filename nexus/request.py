"""A request's identity and its life: arrival, prefill progress, tokens, finish."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol


class TraceEntryLike(Protocol):
    request_id: str | int
    prompt_tokens: int
    output_tokens: int


@dataclass(eq=False)
class Request:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    kv_tokens: int = 0        # tokens whose KV is in the cache
    prefill_target: int = 0   # tokens to prefill before the next token: the prompt, or after
    generated: int = 0        # a preemption the prompt plus every token generated so far
    kv_blocks: int = 0
    preemptions: int = 0

    # seconds from the run's origin
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_s: float | None = None

    def __post_init__(self) -> None:
        if not self.prefill_target:
            self.prefill_target = self.prompt_tokens

    @property
    def prefill_remaining(self) -> int:
        return self.prefill_target - self.kv_tokens

    @property
    def decode_remaining(self) -> int:
        return self.output_tokens - self.generated

    @property
    def finished(self) -> bool:
        return self.finish_s is not None

    def preempt(self) -> None:
        """Drop the KV cache; the request will recompute its prompt and generated tokens."""
        self.kv_tokens = 0
        self.kv_blocks = 0
        self.prefill_target = self.prompt_tokens + self.generated
        self.preemptions += 1


def check_fits(entries: Iterable[TraceEntryLike], num_blocks: int, max_model_len: int,
               where: str) -> None:
    """Every request must fit the KV cache and the model's positions on its own.

    Both engines apply this one rule before a run, so the simulator never serves a request
    that the engine would refuse (a 200k-token prompt on a 128k-position model, say).
    """
    from nexus.errors import UserError
    from nexus.kv import blocks_for

    for e in entries:
        tokens = e.prompt_tokens + e.output_tokens
        if tokens > max_model_len:
            raise UserError(f"request {e.request_id} needs {tokens} positions "
                            f"({e.prompt_tokens}+{e.output_tokens} tokens) but the model allows {max_model_len}")
        need = blocks_for(tokens)
        if need > num_blocks:
            raise UserError(f"request {e.request_id} needs {need} KV blocks "
                            f"({e.prompt_tokens}+{e.output_tokens} tokens) but only "
                            f"{num_blocks} fit on {where}")

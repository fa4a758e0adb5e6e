"""A request's identity and its life: arrival, prefill progress, tokens, finish."""
from __future__ import annotations

from dataclasses import dataclass


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

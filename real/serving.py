"""The engine under a server: requests arrive when clients send them, tokens stream back.

`ServingEngine` is the bench engine with three differences. Arrivals come from `submit`
(any thread) instead of a trace; each step's tokens are sampled per request (temperature,
top-p, seed) and handed, once per step, to the asyncio loop that serves the HTTP side; and a
request can end before its max_tokens, at an end-of-sequence token, a stop string, or when
its client went away. The policy, the state's bookkeeping and the timestamps are the bench's,
so served requests are measured as a trace replay is.

A client that disconnects is released at its next token: a request still waiting for its
prefill is prefilled first, because the waiting queue cannot take a request out.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field

import torch

from nexus.errors import UserError
from nexus.kv import blocks_for
from nexus.request import Request
from nexus.result import Result, make_result
from real.batch import Chunk
from real.engine import RealEngine
from real.partitions import Partition
from real.sampler import Row, SamplingParams, sample
from real.tokenizer import Detokenizer, Tokenizer


class EngineUnavailable(RuntimeError):
    """The engine stopped (shut down, or a step failed) and takes no more requests."""


@dataclass(frozen=True)
class TokenEvent:
    text: str | None                   # None: the handler decodes token_id itself (see Served.text_of)
    token_id: int | None
    finish_reason: str | None = None   # "stop", "length" or "abort" on a request's last event


@dataclass(eq=False)
class Served:
    """One request as its HTTP handler sees it: the handler reads `events`.

    Text is decoded where it is needed first. A request with stop strings is decoded on the
    engine's thread, which must see the text to end the request at the right token; any other
    is decoded by its handler on the event loop, off the engine's step loop.
    """
    request: Request
    params: SamplingParams
    prompt_ids: list[int]
    detokenizer: Detokenizer
    generator: torch.Generator | None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""          # decoded output so far, stop string cut off
    sent: int = 0           # characters of `text` already handed out
    aborted: bool = False
    finish_reason: str | None = None

    @property
    def decoded_by_engine(self) -> bool:
        return bool(self.params.stop)

    def accept(self, token: int, eos_ids: frozenset[int]) -> str | None:
        """Take a new token (engine thread); the finish reason if it ends the request by itself."""
        self.token_ids.append(token)
        if token in eos_ids and not self.params.ignore_eos:
            if self.decoded_by_engine:
                self.text += self.detokenizer.flush()
            return "stop"
        if self.decoded_by_engine:
            self.text += self.detokenizer.add(token)
            return self._cut_at_stop()
        return None

    def event(self, token: int | None, reason: str | None) -> TokenEvent:
        """What the engine hands the handler for this token."""
        if not self.decoded_by_engine:
            return TokenEvent(None, token, reason)
        if reason in ("length", "abort"):
            self.text += self.detokenizer.flush()
        return TokenEvent(self.take_text(final=reason is not None), token, reason)

    def text_of(self, event: TokenEvent) -> str:
        """The text an event adds (event loop)."""
        if event.text is not None:
            return event.text
        if event.token_id is not None and event.finish_reason != "stop":   # an EOS token has no text
            self.text += self.detokenizer.add(event.token_id)
        if event.finish_reason is not None:
            self.text += self.detokenizer.flush()
        return self.take_text(final=event.finish_reason is not None)

    def _cut_at_stop(self) -> str | None:
        if len(self.token_ids) < self.params.min_tokens:
            return None
        stops = self.params.stop
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s) + 1)) for s in stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return "stop"
        return None

    def take_text(self, final: bool) -> str:
        """New text to send; while running, hold back what could be the start of a stop string."""
        hold = 0 if final else max((len(s) - 1 for s in self.params.stop), default=0)
        upto = max(self.sent, len(self.text) - hold)
        piece, self.sent = self.text[self.sent:upto], upto
        return piece


class ServingEngine(RealEngine):
    def __init__(self, runner, partitions, stepper, tokenizer: Tokenizer, seed: int = 0):
        super().__init__(runner, partitions, stepper, [], seed)
        self.tokenizer = tokenizer
        self.served: dict[Request, Served] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.prompt_tokens_total = 0
        self._stopping = False
        self._ids = itertools.count()
        self._local = threading.local()
        self._generator = torch.Generator(runner.device).manual_seed(seed)

    # ---- lifecycle ----

    def warm_up_sampler(self) -> None:
        """Run the sampling kernels once, so that the first sampled request does not load them."""
        logits = torch.zeros(2, self.runner.spec.vocab_size, device=self.runner.device)
        sample(logits, [Row(1.0, 0.9), Row(0.5, 1.0, torch.Generator(self.runner.device), (0,))],
               torch.Generator(self.runner.device))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the engine on its own thread; token events go to `loop`."""
        self.loop = loop
        self.thread = threading.Thread(target=self._run_quietly, name="engine", daemon=True)
        self.thread.start()
        while self.clock is None and self.thread.is_alive():   # arrivals need the clock's origin
            time.sleep(0.001)

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:   # kept in self._error; /health reports it and requests get 503
            pass
        self._abort_everyone()

    def stop(self) -> None:
        super().stop()
        if self.thread is not None:
            self.thread.join()

    def longest_prompt(self) -> int:
        """Requests come later: any prompt the context holds."""
        return self.runner.max_model_len

    @property
    def healthy(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self._error is None and not self._stopping

    @property
    def error(self) -> BaseException | None:
        return self._error

    # ---- requests ----

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise UserError if a request of this size can never run here."""
        if prompt_tokens < 1:
            raise UserError("the prompt is empty")
        total = prompt_tokens + max_tokens
        if total > self.runner.max_model_len:
            raise UserError(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is {total} "
                            f"tokens, more than this model's context of {self.runner.max_model_len}")
        need = blocks_for(total, self.runner.block_size)
        if need > self.runner.num_blocks:
            raise UserError(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) needs {need} "
                            f"KV blocks but the cache has {self.runner.num_blocks}")

    def submit(self, prompt_ids: list[int], params: SamplingParams, prefix: str = "req") -> Served:
        """Queue a request now (call from the event loop); its tokens arrive on `events`."""
        self.check(len(prompt_ids), params.max_tokens)
        vocab = self.runner.spec.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise UserError(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        generator = None
        if params.seed is not None and params.temperature > 0:
            generator = torch.Generator(self.runner.device).manual_seed(params.seed)
        with self.lock:
            if not self.healthy:
                raise EngineUnavailable("the engine is not running")
            req = Request(f"{prefix}-{next(self._ids)}", self.clock.host_now(), len(prompt_ids), params.max_tokens)
            served = Served(req, params, list(prompt_ids), Detokenizer(self.tokenizer, prompt_ids), generator)
            self.served[req] = served
            self.tokens[req] = list(prompt_ids)
            self.requests.append(req)
            self.prompt_tokens_total += len(prompt_ids)
            self.state.arrive(req)
            self.lock.notify_all()
        return served

    def abort(self, served: Served) -> None:
        """The client is gone: end the request at its next token."""
        with self.lock:
            served.aborted = True

    # ---- hooks into the engine loop ----

    def _admit_arrivals(self) -> float | None:
        return None   # submit() puts requests into the state itself

    def _done(self) -> bool:
        return self._stopping or self._error is not None

    def _chunks(self, batch) -> list[Chunk]:
        chunks = super()._chunks(batch)
        rows = [self._row(req, req.kv_tokens + n == req.prefill_target) for req, n in batch.prefill]
        if batch.decode:
            rows += [self._row(req, True) for req in self.state.running.members]
        self._local.rows = rows   # this stream's thread runs the step next
        return chunks

    def _row(self, req: Request, keeps_token: bool) -> Row | None:
        """How to pick this sequence's token; None where argmax will do."""
        served = self.served[req]
        params = served.params
        banned = ()
        if len(served.token_ids) < params.min_tokens and not params.ignore_eos:
            banned = tuple(self.tokenizer.eos_ids)
        if not keeps_token or (params.greedy and not banned):
            return None   # a chunk that does not end its prompt: its token is dropped
        return Row(params.temperature, params.top_p, served.generator, banned)

    def _next_tokens(self, chunks: list[Chunk], partition: Partition) -> list[int]:
        rows = self._local.rows
        if all(r is None for r in rows):
            return self.runner.step(chunks, partition)
        logits = self.runner.logits(chunks, partition)
        return sample(logits, [r or Row() for r in rows], self._generator)

    def _on_tokens(self, emitted: list[tuple[Request, int]], end_s: float) -> None:
        deliveries = []
        for req, token in emitted:
            served = self.served.get(req)
            if served is None:
                continue
            reason = served.accept(token, self.tokenizer.eos_ids)
            if reason is None and served.aborted:
                reason = "abort"
            if req.finished:
                reason = reason or "length"
            elif reason is not None:
                self._finish_early(req, end_s)
            if reason is not None:
                served.finish_reason = reason
                del self.served[req]
            deliveries.append((served, served.event(token, reason)))
        if deliveries:
            self._hand_over(deliveries)

    def _hand_over(self, deliveries: list[tuple[Served, TokenEvent]]) -> None:
        try:
            self.loop.call_soon_threadsafe(_deliver, deliveries)
        except RuntimeError:
            pass   # the event loop has closed: nobody is listening any more

    def _finish_early(self, req: Request, t: float) -> None:
        """End a request that has its token for this step, as if max_tokens were its count."""
        running = self.state.running
        if req in running.members:
            running.remove(req)
        else:
            running.pending.remove(req)   # prefilled this step, not yet decoding
        req.output_tokens = req.generated
        self.state._finish(req, t)

    def _abort_everyone(self) -> None:
        with self.lock:
            left = [(s, s.event(None, "abort")) for s in self.served.values()]
            self.served.clear()
        if left and self.loop is not None:
            self._hand_over(left)

    # ---- what was served ----

    def summary(self) -> Result | None:
        """The finished requests' summary, requests frame and timeline; None before any finished."""
        with self.lock:
            finished = list(self.state.finished)
            if not finished:
                return None
            return make_result(self.stepper.policy, finished, self.state.gaps, list(self.timeline),
                               None, None, {}, {})

    def counters(self) -> dict[str, float]:
        """Gauges and totals for /metrics."""
        with self.lock:
            state = self.state
            return {
                "requests_waiting": len(state.waiting),
                "requests_running": len(state.running),
                "requests_received_total": len(self.requests),
                "requests_finished_total": len(state.finished),
                "prompt_tokens_total": self.prompt_tokens_total,
                "generation_tokens_total": sum(len(s.token_ids) for s in self.served.values())
                + sum(r.generated for r in state.finished),
                "kv_cache_usage": state.kv.usage,
                "preemptions_total": sum(r.preemptions for r in self.requests),
                "engine_steps_total": len(self.timeline),
            }


def _deliver(deliveries: list[tuple[Served, TokenEvent]]) -> None:
    for served, event in deliveries:
        served.events.put_nowait(event)

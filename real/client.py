"""`nexus-real client`: replay a trace against any OpenAI-compatible server, timed by the client.

    nexus-real client --url http://127.0.0.1:8000 --trace traces/sharegpt.jsonl --limit 200 --out out/client

Each request is sent at its arrival time (after `--rate-scale`, or re-timed by `--rate`/`--cv`)
as a streamed completion of `output_tokens` tokens with `ignore_eos` (vLLM's extension, as in
vLLM's own benchmark). TTFT runs from sending the request to the first streamed token, TBT
(ITL) is the gap between streamed tokens, E2E ends with the stream. The output is the same
summary.json and requests.parquet as nexus-sim and nexus-real bench write (timeline.parquet
is empty: a client sees no engine steps), plus vllm_results.json.

Prompts: `--prompt ids` (default for completions) sends token ids drawn from 0..vocab-size-1,
so the server sees exactly the trace's prompt length; `--prompt text` (always for chat)
decodes random token ids of `--tokenizer` (a local Hugging Face tokenizer dir; default
cl100k_base) into text, and the server's own count, from `usage`, is recorded.

A request that fails (an HTTP error, a dropped connection, a stream without tokens) is left
out of the statistics and counted in summary.json's `failed`, with its error under `errors`;
any failure makes the exit status 1. If every request fails, nothing is written.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nexus.errors import UserError

ID_VOCAB = 256   # every tokenizer the client may meet has ids below 256


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("client", help="replay a trace against an OpenAI-compatible server, timed client-side",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (the /v1 routes hang below it)")
    c.add_argument("--trace", required=True, help="JSONL trace")
    c.add_argument("--model", help="model id to ask for (default: the first of the server's /v1/models)")
    c.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    c.add_argument("--prompt", choices=("ids", "text"), help="prompt as token ids or text (default: ids for "
                                                             "completions; chat needs text)")
    c.add_argument("--vocab-size", type=int, default=ID_VOCAB, help="ids of --prompt ids are drawn below this")
    c.add_argument("--tokenizer", help="local Hugging Face tokenizer dir for --prompt text (default: cl100k_base)")
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--no-ignore-eos", action="store_true", help="let the server stop at EOS")
    c.add_argument("--rate-scale", type=float, default=1.0)
    c.add_argument("--rate", type=float, help="redraw arrivals at this rate (req/s), using --seed")
    c.add_argument("--cv", type=float, help="coefficient of variation of the redrawn gaps (gamma; 1 is Poisson)")
    c.add_argument("--limit", type=int, help="only the first N requests of the trace")
    c.add_argument("--max-concurrency", type=int, help="at most this many requests in flight (default: no limit)")
    c.add_argument("--timeout", type=float, default=600.0, help="seconds a request may go without a byte")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--label", default="client", help="the 'policy' name in summary.json")
    c.add_argument("--percentiles", default="50,90,99", help="percentiles of vllm_results.json")
    c.add_argument("--out", required=True, help="directory for summary.json, requests.parquet, vllm_results.json")
    c.set_defaults(run=command)


@dataclass
class Outcome:
    request_id: str
    scheduled_s: float
    prompt_tokens: int
    requested_tokens: int
    sent_s: float = float("nan")
    token_times: list[float] = field(default_factory=list)
    finish_s: float = float("nan")
    usage: dict | None = None
    server_id: str | None = None
    error: str | None = None

    @property
    def output_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return len(self.token_times)


@dataclass(frozen=True)
class Plan:
    url: str
    model: str
    endpoint: str
    prompt: str
    vocab_size: int
    temperature: float
    ignore_eos: bool
    timeout: float
    max_concurrency: int | None
    seed: int


def command(args: argparse.Namespace, console) -> int:
    from nexus.vllm_results import parse_percentiles
    from traces.retime import load_entries

    percentiles = parse_percentiles(args.percentiles)
    entries = load_entries(args.trace, args.rate_scale, args.rate, args.seed, cv=args.cv)
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit must be at least 1, got {args.limit}")
        entries = entries[:args.limit]
    prompt = args.prompt or ("text" if args.endpoint == "chat" else "ids")
    if args.endpoint == "chat" and prompt == "ids":
        raise UserError("--endpoint chat sends text; leave out --prompt ids")
    if args.vocab_size < 1:
        raise UserError(f"--vocab-size must be positive, got {args.vocab_size}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise UserError(f"--max-concurrency must be at least 1, got {args.max_concurrency}")
    texts = _text_prompts(entries, args.tokenizer, args.seed) if prompt == "text" else None
    url = args.url.rstrip("/")
    model = args.model or asyncio.run(_first_model(url))
    plan = Plan(url, model, args.endpoint, prompt, args.vocab_size, args.temperature, not args.no_ignore_eos,
                args.timeout, args.max_concurrency, args.seed)
    console.print(f"replaying {len(entries)} requests against {url} ({model}, {args.endpoint}, {prompt} prompts)")
    outcomes = asyncio.run(replay(entries, plan, texts))
    summary, frame, gaps = measure(outcomes, args.label)
    extra = {"client": True, "url": url, "model": model, "endpoint": args.endpoint, "prompt": prompt,
             "trace": str(args.trace), "command": getattr(args, "command_line", "nexus-real client")}
    write(Path(args.out), summary, frame, gaps, percentiles, extra)
    failed = summary["failed"]
    console.print(f"{summary['requests']} requests completed, {failed} failed; "
                  f"TTFT mean {summary['ttft_s']['mean']:.3f} s, P99 {summary['ttft_s']['p99']:.3f} s; "
                  f"TBT mean {summary['tbt_s']['mean'] * 1e3:.1f} ms; wrote {args.out}/", highlight=False)
    return 0 if not failed else 1


def _text_prompts(entries, tokenizer_dir: str | None, seed: int) -> list[str]:
    from real.tokenizer import CL100K_ORDINARY, FoldedCl100k, HFTokenizer

    if tokenizer_dir:
        tok = HFTokenizer(Path(tokenizer_dir), 2**31, frozenset())
        vocab = len(tok.tok)
    else:
        tok, vocab = FoldedCl100k(CL100K_ORDINARY), CL100K_ORDINARY
    rng = np.random.default_rng(seed)
    return [tok.decode(rng.integers(0, vocab, e.prompt_tokens).tolist()) for e in entries]


async def _first_model(url: str) -> str:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/models") as resp:
                resp.raise_for_status()
                data = (await resp.json())["data"]
    except (aiohttp.ClientError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"cannot list the models of {url} ({e}); pass --model") from None
    if not data:
        raise UserError(f"{url} serves no model")
    return data[0]["id"]


def _body(entry, plan: Plan, rng: np.random.Generator, text: str | None) -> dict:
    body = {"model": plan.model, "stream": True, "stream_options": {"include_usage": True},
            "temperature": plan.temperature, "ignore_eos": plan.ignore_eos}
    if plan.endpoint == "chat":
        body.update(messages=[{"role": "user", "content": text}], max_completion_tokens=entry.output_tokens)
    else:
        prompt = text if text is not None else rng.integers(0, plan.vocab_size, entry.prompt_tokens).tolist()
        body.update(prompt=prompt, max_tokens=entry.output_tokens)
    return body


async def replay(entries, plan: Plan, texts: list[str] | None = None) -> list[Outcome]:
    """Send every entry at its arrival time; one Outcome per entry, in trace order."""
    import aiohttp

    rng = np.random.default_rng(plan.seed)
    bodies = [_body(e, plan, rng, texts[i] if texts else None) for i, e in enumerate(entries)]
    outcomes = [Outcome(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens) for e in entries]
    path = "/v1/chat/completions" if plan.endpoint == "chat" else "/v1/completions"
    limit = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
    connector = aiohttp.TCPConnector(limit=plan.max_concurrency or 0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=plan.timeout, sock_read=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        origin = time.perf_counter()

        async def one(outcome: Outcome, body: dict) -> None:
            await asyncio.sleep(max(0.0, origin + outcome.scheduled_s - time.perf_counter()))
            if limit is None:
                await _send(session, plan.url + path, body, outcome, origin, plan.endpoint == "chat")
                return
            async with limit:
                await _send(session, plan.url + path, body, outcome, origin, plan.endpoint == "chat")

        await asyncio.gather(*(one(o, b) for o, b in zip(outcomes, bodies)))
    return outcomes


async def _send(session, url: str, body: dict, out: Outcome, origin: float, chat: bool) -> None:
    import aiohttp

    out.sent_s = time.perf_counter() - origin
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                out.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return
            async for line in resp.content:
                now = time.perf_counter() - origin
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error = f"stream error: {chunk['error']}"
                    return
                out.server_id = out.server_id or chunk.get("id")
                if chunk.get("usage"):
                    out.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if piece is not None:
                        out.token_times.append(now)
            out.finish_s = time.perf_counter() - origin
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, ConnectionError) as e:
        out.error = f"{type(e).__name__}: {e}"
        return
    if not out.token_times:
        out.error = "the stream carried no token"


def measure(outcomes: list[Outcome], label: str):
    """(summary, requests frame, token gaps) of the requests that completed."""
    from nexus.metrics import TokenGaps, requests_frame, summarize
    from nexus.request import Request

    gaps = TokenGaps()
    done, requests = [o for o in outcomes if o.error is None], []
    for o in done:
        prompt = (o.usage or {}).get("prompt_tokens") or o.prompt_tokens
        req = Request(o.request_id, o.sent_s, prompt, o.output_tokens)
        req.generated = o.output_tokens
        req.first_token_s, req.last_token_s, req.finish_s = o.token_times[0], o.token_times[-1], o.finish_s
        for a, b in zip(o.token_times, o.token_times[1:]):
            gaps.add(b - a, 1)
        requests.append(req)
    failed = [o for o in outcomes if o.error is not None]
    if not requests:
        raise UserError(f"all {len(outcomes)} requests failed; the first: {failed[0].error}")
    frame = requests_frame(requests)
    frame["server_request_id"] = [o.server_id for o in done]
    frame["scheduled_s"] = [o.scheduled_s for o in done]
    frame["requested_tokens"] = [o.requested_tokens for o in done]
    summary = summarize(frame, gaps, label)
    summary["failed"] = len(failed)
    summary["errors"] = sorted({o.error for o in failed})[:10]
    return summary, frame, gaps


def write(out: Path, summary: dict, frame, gaps, percentiles: list[float], extra: dict) -> None:
    import pandas as pd

    from nexus.report import write_run
    from nexus.vllm_results import write_vllm_results

    write_run(out, summary, frame, pd.DataFrame(), extra)
    write_vllm_results(out / "vllm_results.json", frame, gaps, percentiles,
                       {"model_id": extra.get("model"), "backend": "openai", "base_url": extra.get("url")})

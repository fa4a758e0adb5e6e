"""`nexus-real serve`: an OpenAI-compatible HTTP server (aiohttp) on the real engine.

    nexus-real serve --device cpu --model tiny-llama --policy chunked --port 8000 --out out/served

Endpoints: /v1/models, /v1/completions and /v1/chat/completions (streamed as server-sent
events or not), /health, /metrics (Prometheus text), and /v1/summary: GET returns the
summary.json of the requests served so far, POST also writes the run's files to --out.
The files are written to --out at shutdown (Ctrl-C or SIGTERM) as well.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nexus.errors import UserError
from real.openai_protocol import (
    BadRequest, Parsed, check_model, error_body, parse_chat, parse_completion, usage,
)

DEFAULT_PORT = 8000
LISTEN_BACKLOG = 4096   # a burst of a thousand clients connecting at once must not overflow it


def add_parser(sub: argparse._SubParsersAction) -> None:
    from nexus.policy import POLICIES
    from nexus.specs import GPUS, MODELS

    s = sub.add_parser("serve", help="serve the engine over an OpenAI-compatible HTTP API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (printed at start)")
    s.add_argument("--policy", default="nexus", help=f"one of {', '.join(p for p in POLICIES if p != 'disagg')}")
    s.add_argument("--model", default="llama-3.1-8b", help=f"{', '.join(MODELS)}, or a .json/.toml ModelSpec")
    s.add_argument("--served-model-name", help="the model id clients ask for (default: the model's name)")
    s.add_argument("--gpu", help=f"GPU spec: {', '.join(GPUS)} or a spec file (default: detected from the "
                                 "device; h100-sxm on CPU)")
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    s.add_argument("--weights", help="local Hugging Face checkpoint dir; its tokenizer, if it has one, "
                                     "reads prompts (default: random weights, cl100k_base folded into the vocab)")
    s.add_argument("--calibration", help="calibration JSON for the Nexus controller ('analytical' for the roofline)")
    s.add_argument("--split", help="PREFILL_SMS:DECODE_SMS for static (and nexus's fallback split)")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter")
    s.add_argument("--max-num-seqs", type=int, default=256)
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    s.add_argument("--num-blocks", type=int, help="KV blocks (default: as many as fit)")
    s.add_argument("--seed", type=int, default=0, help="weights and the sampler of requests without a seed")
    s.add_argument("--percentiles", default="50,90,99", help="percentiles of vllm_results.json")
    s.add_argument("--out", help="directory for summary.json, requests.parquet, timeline.parquet and "
                                 "vllm_results.json at shutdown (and on POST /v1/summary)")
    s.set_defaults(run=command)


def command(args: argparse.Namespace, console) -> int:
    server = build_server(args, warn=lambda m: console.print(m, highlight=False))
    console.print(f"partitions: {server.extra['partitions']}", highlight=False)
    console.print(f"tokenizer: {server.extra['tokenizer']}", highlight=False)
    asyncio.run(server.serve(args.host, args.port, say=lambda m: print(m, file=sys.stderr, flush=True)))
    return 0


def build_server(args: argparse.Namespace, warn=print) -> "Server":
    """The engine (model, partitions, graphs, policy) behind a Server, from `serve`'s arguments."""
    from nexus.cli_args import parse_params, parse_split
    from nexus.config import EngineConfig
    from nexus.cost import load_cost_model
    from nexus.kv import BlockPool
    from nexus.policy import build_policies
    from nexus.specs import resolve_model
    from nexus.state import ServingState
    from nexus.step import Stepper
    from nexus.vllm_results import parse_percentiles
    from real.bench import Bench
    from real.gpu_detect import detect_gpu
    from real.serving import ServingEngine
    from real.tokenizer import load_tokenizer

    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    percentiles = parse_percentiles(args.percentiles)
    model, gpu = resolve_model(args.model), detect_gpu(args.gpu, args.device, warn)
    config = EngineConfig(max_num_seqs=args.max_num_seqs, gpu_memory_utilization=args.gpu_memory_utilization,
                          seed=args.seed)
    split = parse_split(args.split) if args.split else None
    (policy,) = build_policies([args.policy.strip()], parse_params(args.param), split)
    bench = Bench(model, gpu, [policy], config, args.device, args.weights, args.num_blocks,
                  calibration=args.calibration)
    runner = bench.runner
    tokenizer = load_tokenizer(args.weights, model.vocab_size)
    cost = load_cost_model(model, gpu, args.calibration)
    pool = BlockPool(runner.num_blocks, runner.block_size, track_ids=True)
    state = ServingState(model, gpu, cost, pool, policy.priority, config.max_num_seqs)
    engine = ServingEngine(runner, bench.partitions, Stepper(state, policy), tokenizer, config.seed)
    engine.warm_up_sampler()
    extra = {"cost_model": cost.describe(), "model": model.name, "gpu": gpu.name, "kv_blocks": pool.num_blocks,
             "measured": True, "served": True, "tokenizer": tokenizer.name, "machine": bench.machine(),
             "partitions": bench.partitions.describe(), "config": {"policy": policy.describe(), **config.to_dict()},
             "command": getattr(args, "command_line", "nexus-real serve")}
    return Server(engine, args.served_model_name or model.name, extra, Path(args.out) if args.out else None,
                  percentiles)


def _finite(value: Any) -> Any:
    """JSON without NaN (not JSON) for HTTP answers: NaN becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Server:
    def __init__(self, engine, model_name: str, extra: dict, out: Path | None, percentiles: list[float]):
        self.engine, self.model_name, self.extra, self.out = engine, model_name, extra, out
        self.percentiles = percentiles
        self.created = int(time.time())
        runner = engine.runner
        self.room = min(runner.max_model_len, runner.num_blocks * runner.block_size)
        self.port: int | None = None          # the bound port, once listening
        self.ready = threading.Event()        # set once listening (or failed to)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def shutdown(self) -> None:
        """Ask a serving Server to stop, from any thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def app(self):
        from aiohttp import web

        @web.middleware
        async def errors(request, handler):
            try:
                return await handler(request)
            except (web.HTTPException, ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as e:   # a bug in one handler must not take the server down
                return self._json(error_body(f"internal error: {e!r}", "server_error", None, 500), status=500)

        app = web.Application(middlewares=[errors])
        app.add_routes([
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
            web.get("/v1/models", self.models),
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat),
            web.get("/v1/summary", self.summary),
            web.post("/v1/summary", self.summary),
        ])
        return app

    async def serve(self, host: str, port: int, say=print, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or SIGINT/SIGTERM); then stop the engine and write --out."""
        from aiohttp import web

        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        self._loop, self._stop = loop, stop
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass   # not the main thread (tests), or a platform without signals
        self.engine.start(loop)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        try:
            try:
                await site.start()
            except OSError as e:
                raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
            self.port = runner.addresses[0][1] if runner.addresses else port
            say(f"serving {self.model_name} on http://{host}:{self.port}/v1 (policy {self.engine.stepper.policy.name})")
            self.ready.set()
            await stop.wait()
        finally:
            self.ready.set()
            self.engine.stop()
            await runner.cleanup()
            written = self.write()
            say(f"wrote results to {self.out}/" if written else "no request finished; nothing written")

    def write(self) -> bool:
        """Write the served requests' files to --out; False if there is nothing (or nowhere) to write."""
        from nexus.report import write_run
        from nexus.vllm_results import write_vllm_results

        result = self.engine.summary()
        if result is None or self.out is None:
            return False
        write_run(self.out, result.summary, result.requests, result.timeline, self.extra)
        write_vllm_results(self.out / "vllm_results.json", result.requests, self.engine.state.gaps,
                           self.percentiles, {"model_id": self.model_name, "backend": "nexus-real serve"})
        return True

    # ---- endpoints ----

    @staticmethod
    def _json(obj: Any, status: int = 200):
        from aiohttp import web
        return web.json_response(_finite(obj), status=status)

    async def health(self, request):
        if self.engine.healthy:
            return self._json({"status": "ok"})
        why = f"engine failed: {self.engine.error!r}" if self.engine.error else "engine stopped"
        return self._json({"status": why}, status=503)

    async def models(self, request):
        return self._json({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "nexus",
            "max_model_len": self.engine.runner.max_model_len}]})

    async def metrics(self, request):
        from aiohttp import web

        lines = []
        for name, value in self.engine.counters().items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE nexus_{name} {kind}", f"nexus_{name} {value}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def summary(self, request):
        result = self.engine.summary()
        if result is None:
            return self._json({"requests": 0})
        if request.method == "POST":
            await asyncio.get_running_loop().run_in_executor(None, self.write)
        return self._json({**result.summary, **self.extra})

    async def completions(self, request):
        return await self._generate(request, chat=False)

    async def chat(self, request):
        return await self._generate(request, chat=True)

    async def _generate(self, request, chat: bool):
        from real.serving import EngineUnavailable

        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BadRequest("the request body is not valid JSON") from None
            if isinstance(body, dict):
                check_model(body, self.model_name)
            parsed = (parse_chat(body, self.engine.tokenizer, self.room) if chat
                      else parse_completion(body, self.engine.tokenizer))
            served = self.engine.submit(parsed.prompt_ids, parsed.params, "chatcmpl" if chat else "cmpl")
        except BadRequest as e:
            return self._json(e.body(), status=e.status)
        except UserError as e:
            return self._json(error_body(str(e), "invalid_request_error", None, 400), status=400)
        except EngineUnavailable as e:
            return self._json(error_body(str(e), "server_error", None, 503), status=503)
        if parsed.stream:
            return await self._stream(request, served, parsed, chat)
        return await self._whole(served, parsed, chat)

    def _head(self, served, chat: bool, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
        return {"id": served.request.request_id, "object": kind, "created": int(time.time()),
                "model": self.model_name}

    async def _whole(self, served, parsed: Parsed, chat: bool):
        text, reason = [], None
        while reason is None:
            event = await served.events.get()
            text.append(served.text_of(event))
            reason = event.finish_reason
        content = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": content}} if chat
                  else {"index": 0, "text": content})
        choice.update(logprobs=None, finish_reason=reason)
        return self._json({**self._head(served, chat, chunk=False), "choices": [choice],
                           "usage": usage(len(parsed.prompt_ids), len(served.token_ids))})

    async def _stream(self, request, served, parsed: Parsed, chat: bool):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        head = self._head(served, chat, chunk=True)
        extra = {"usage": None} if parsed.include_usage else {}
        first, reason = True, None
        try:
            await response.prepare(request)
            while reason is None:
                events = [await served.events.get()]
                while not served.events.empty():   # one write for whatever has piled up
                    events.append(served.events.get_nowait())
                out = []
                for event in events:
                    piece = served.text_of(event)
                    if chat:
                        delta = {"role": "assistant", "content": piece} if first else {"content": piece}
                        choice = {"index": 0, "delta": delta}
                    else:
                        choice = {"index": 0, "text": piece}
                    choice.update(logprobs=None, finish_reason=event.finish_reason)
                    out.append(_sse({**head, "choices": [choice], **extra}))
                    first, reason = False, event.finish_reason
                await response.write(b"".join(out))
            if parsed.include_usage:
                tail = {**head, "choices": [], "usage": usage(len(parsed.prompt_ids), len(served.token_ids))}
                await response.write(_sse(tail))
            await response.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            self.engine.abort(served)   # the client left; the engine lets the request go
        except asyncio.CancelledError:
            self.engine.abort(served)
            raise
        return response


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


if __name__ == "__main__":
    from real.cli import main
    sys.exit(main(["serve", *sys.argv[1:]]))

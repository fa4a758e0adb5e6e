"""Engine-level PD disaggregation for real: a prefill engine and a decode engine, one process each.

Rank 0 (the prefill engine) takes arrivals and runs the Disagg policy's prefill plan. When a
request's prefill ends, its KV blocks, its tokens and its timestamps cross a `KVLink` to
rank 1 (the decode engine), which allocates blocks of its own cache, receives into them and
lets the request join its decode steps. The prefill engine frees its copy once sent. A
request the decode engine preempts goes back to the prefill engine, which recomputes its
KV and sends it again (recompute preemption, as in the simulator's disagg). Requests that
end on the prefill engine (one output token) are announced so the decode engine can count
every request done; it then closes the link back, which ends the prefill engine.

On GPUs each rank has its own device (rank r on cuda:r) and payloads travel over NCCL;
on CPU both ranks run the tiny model and use gloo. Both engines read one host clock
(CLOCK_MONOTONIC, which `time.perf_counter` reads on Linux), so timestamps cross the link as
absolute values and the parent process merges both engines' records into one summary,
written in the same files as `nexus-real bench`.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nexus.cost import engine_prefill_buckets, load_cost_model
from nexus.cost.base import FULL_GPU
from nexus.errors import UserError
from nexus.kv import BlockPool, blocks_for
from nexus.metrics import TokenGaps, weighted_stats
from nexus.policy import Disagg, Policy
from nexus.request import Request, check_fits
from nexus.result import Result, make_result
from nexus.specs import GPUSpec, ModelSpec
from nexus.state import Batch, ServingState
from nexus.step import Stepper, StepRecord
from nexus.topology import OneGPU
from real.bench import warm_up
from real.engine import RealEngine
from real.kv_transfer import KVLink, Message, connect, free_port, link_groups
from real.model_runner import ModelRunner
from real.partitions import Partitions
from traces import TraceEntry

PREFILL, DECODE = 0, 1                 # ranks
ROLE = {PREFILL: "prefill", DECODE: "decode"}
HANDOFF, FINISHED, PREEMPTED = 0, 1, 2  # message kinds (first metadata value)
_FIELDS = 7                             # kind, index, kv_tokens, generated, preemptions, first, last


@dataclass(frozen=True)
class DisaggConfig:
    """What both engine processes are told (it is pickled to them)."""
    entries: list[TraceEntry]
    model: ModelSpec
    gpu: GPUSpec
    policy: Disagg
    device: str = "cpu"
    weights: str | None = None
    calibration: str | None = None
    num_blocks: int | None = None
    memory_utilization: float = 0.9
    max_num_seqs: int = 256
    seed: int = 0
    slo_ttft_s: float | None = None
    slo_tbt_s: float | None = None


@dataclass
class DisaggRun:
    result: Result
    tokens: list[list[int]]   # prompt + generated tokens of each request, in arrival order


class _OneStream(Policy):
    """The Disagg policy as one engine sees it: only its own stream."""

    def __init__(self, policy: Policy, stream: str):
        self.policy, self.streams, self.name = policy, (stream,), policy.name
        self.priority = policy.priority

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        return self.policy.plan(state, stream)


class _Side(RealEngine):
    """One of the two engines: the RealEngine loop on one stream, plus its two link threads."""

    def __init__(self, runner: ModelRunner, stream: str, config: DisaggConfig, link_out: KVLink,
                 link_in: KVLink):
        cost = load_cost_model(config.model, config.gpu, config.calibration)
        local = BlockPool(runner.num_blocks, runner.block_size, track_ids=True)
        if stream == "prefill":
            # The policy's two-GPU topology collects prefilled requests (`outbound`) for the
            # link; of its two pools, only the prefill GPU's lives in this process.
            self.topology = config.policy.topology(local)
            pool = self.topology.prefill_kv
        else:
            self.topology, pool = OneGPU(local), local
        state = ServingState(config.model, config.gpu, cost, pool, config.policy.priority,
                             config.max_num_seqs, prefill_kv=pool)
        requests = [Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens)
                    for e in config.entries]
        parts = Partitions([], device=runner.device, cpu_gpu=config.gpu)
        stepper = Stepper(state, _OneStream(config.policy, stream), self.topology)
        super().__init__(runner, parts, stepper, requests, config.seed)
        self.link_out, self.link_in = link_out, link_in
        self.index = {req: i for i, req in enumerate(self.requests)}
        self.link_seconds: list[float] = []
        self.link_bytes = 0

    def serve(self) -> dict:
        threads = [threading.Thread(target=self._guard, args=(f,), name=f.__name__, daemon=True)
                   for f in (self._send_loop, self._recv_loop)]
        for t in threads:
            t.start()
        self.run()
        for t in threads:
            t.join()
        if self._error is not None:
            raise self._error
        return self._records()

    def _guard(self, loop) -> None:
        try:
            loop()
        except BaseException as e:  # end the engine loop too; the parent stops the other rank
            with self.lock:
                self._error = self._error or e
                self.lock.notify_all()

    # ---- what crosses the link ----

    def _origin(self) -> float:
        while self.clock is None:   # a link thread may act before run() has made the clock
            self.lock.wait(0.001)
        return self.clock.host_origin

    def _meta(self, kind: int, req: Request) -> list[int]:
        origin = self._origin()
        ns = [round((t + origin) * 1e9) if t is not None else -1 for t in (req.first_token_s, req.last_token_s)]
        generated = self.tokens[req][req.prompt_tokens:]
        return [kind, self.index[req], req.kv_tokens, req.generated, req.preemptions, *ns, *generated]

    def _take(self, meta: list[int]) -> Request:
        """Copy a request's progress and tokens from the peer's metadata onto our Request."""
        _, index, kv_tokens, generated, preemptions, first_ns, last_ns = meta[:_FIELDS]
        req = self.requests[index]
        origin = self._origin()
        req.first_token_s, req.last_token_s = (ns / 1e9 - origin if ns >= 0 else None for ns in (first_ns, last_ns))
        req.kv_tokens, req.generated, req.preemptions = kv_tokens, generated, preemptions
        req.prefill_target = kv_tokens
        self.tokens[req] = self.tokens[req][:req.prompt_tokens] + meta[_FIELDS:]
        return req

    def _records(self) -> dict:
        origin = self.clock.host_origin
        values, counts = self.state.gaps.arrays()
        return {
            "origin": origin,
            "requests": [(r.first_token_s, r.last_token_s, r.finish_s, r.generated, r.preemptions)
                         for r in self.requests],
            "tokens": [self.tokens[r] for r in self.requests],
            "gaps": (values.tolist(), counts.tolist()),
            "timeline": [s._asdict() for s in self.timeline],
            "num_blocks": self.runner.num_blocks,
            "link_seconds": self.link_seconds,
            "link_bytes": self.link_bytes,
        }


class _PrefillSide(_Side):
    """Arrivals, the prefill plan, and handoffs out; preempted requests come back in."""

    def __init__(self, *args):
        super().__init__(*args)
        self.outbox: list[Request] = self.topology.outbound   # filled by the stepper, under the lock
        self.sending: set[Request] = set()        # handed off, blocks not yet released
        self.stopped = False

    def _done(self) -> bool:
        return self.stopped or self._error is not None

    def _send_loop(self) -> None:
        state, announced = self.state, 0
        while True:
            with self.lock:
                while not (self.outbox or len(state.finished) > announced or self._done()):
                    self.lock.wait(0.05)
                if not self.outbox and len(state.finished) == announced:
                    break   # done, and everything said
                handoffs = self.outbox[:]
                self.outbox.clear()
                self.sending.update(handoffs)
                done_here, announced = state.finished[announced:], len(state.finished)
                messages = [(self._meta(FINISHED, r), None) for r in done_here]
                messages += [(self._meta(HANDOFF, r), r) for r in handoffs]
                tables = {r: list(state.prefill_kv.tables[r][:blocks_for(r.kv_tokens, state.kv.block_size)])
                          for r in handoffs}
            for meta, req in messages:
                self.link_bytes += self.link_out.send(meta, tables[req] if req is not None else ())
                if req is not None:
                    with self.lock:
                        state.prefill_kv.release(req)
                        self.sending.discard(req)
                        self.lock.notify_all()
        self.link_out.close()

    def _recv_loop(self) -> None:
        while (msg := self.link_in.recv()) is not None:
            with self.lock:
                while self.requests[msg.meta[1]] in self.sending:   # back before its blocks were freed here
                    self.lock.wait(0.05)
                req = self._take(msg.meta)
                preemptions = req.preemptions
                req.preempt()   # recompute the prompt and every generated token
                req.preemptions = preemptions
                self.state.waiting.push(req)
                self.lock.notify_all()
        with self.lock:   # the decode engine has finished every request
            self.stopped = True
            self.lock.notify_all()


class _DecodeSide(_Side):
    """Prefilled requests come in with their KV; preempted ones go back for recompute."""

    def __init__(self, *args):
        super().__init__(*args)
        self.finished_elsewhere = 0
        self.kv_wait_seconds: list[float] = []

    def _admit_arrivals(self) -> float | None:
        return None   # requests arrive prefilled, over the link

    def _done(self) -> bool:
        return len(self.state.finished) + self.finished_elsewhere == len(self.requests) \
            or self._error is not None

    def _allocate(self, meta: list[int], num_blocks: int) -> list[int]:
        """Blocks for an arriving request, once the decode cache has room for them."""
        req, kv_tokens = self.requests[meta[1]], meta[2]
        if blocks_for(kv_tokens, self.state.kv.block_size) != num_blocks:
            raise RuntimeError(f"{kv_tokens} KV tokens arrived in {num_blocks} blocks")
        start = time.perf_counter()
        with self.lock:
            while not self.state.kv.grow(req, kv_tokens):
                if self._error is not None:
                    raise RuntimeError("decode engine failed while a transfer waited for KV blocks")
                self.lock.wait(0.05)
            self.kv_wait_seconds.append(time.perf_counter() - start)
            return list(self.state.kv.tables[req])

    def _recv_loop(self) -> None:
        while True:
            msg: Message | None = self.link_in.recv(self._allocate)
            if msg is None:
                return
            with self.lock:
                if msg.meta[0] == FINISHED:
                    self.finished_elsewhere += 1
                else:
                    self.state.running.add(self._take(msg.meta))
                    self.link_bytes += msg.payload_bytes
                    self.link_seconds.append(msg.seconds)
                self.lock.notify_all()

    def _send_loop(self) -> None:
        state = self.state
        while True:
            with self.lock:
                while not (state.waiting or self._done()):
                    self.lock.wait(0.05)
                if not state.waiting:
                    break
                back = [self._meta(PREEMPTED, state.waiting.pop()) for _ in range(len(state.waiting))]
            for meta in back:
                self.link_out.send(meta)
        self.link_out.close()   # every request is done: the prefill engine may stop

    def _records(self) -> dict:
        return {**super()._records(), "kv_wait_seconds": self.kv_wait_seconds,
                "finished_on_prefill": self.finished_elsewhere}


def _worker(rank: int, port: int, config: DisaggConfig, conn) -> None:
    """One engine's process: connect, build, serve, and send the records (or the error) home."""
    try:
        if config.device == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
        runner = ModelRunner(config.model, device=device, weights=config.weights, seed=config.seed,
                             num_blocks=config.num_blocks, memory_utilization=config.memory_utilization,
                             max_decode_batch=config.max_num_seqs)
        check_fits(config.entries, runner.num_blocks, runner.max_model_len, f"the {ROLE[rank]} engine's KV cache")
        connect(rank, port)
        peer = 1 - rank
        to_decode = KVLink(runner.kv, peer, *link_groups(device))
        to_prefill = KVLink(None, peer, *link_groups(torch.device("cpu")))   # metadata only
        # One block across before the clock starts, so that no request pays for setting up
        # the transport (NCCL makes its communicator on first use). Block 0 is free on both.
        if rank == PREFILL:
            to_decode.send([], [0])
        else:
            to_decode.recv(lambda meta, n: [0])
        if rank == PREFILL:
            side = _PrefillSide(runner, "prefill", config, to_decode, to_prefill)
            runner.capture_prefill_graphs([side.partitions.prefill(FULL_GPU)],
                                          engine_prefill_buckets(config.model, config.gpu, config.calibration))
        else:
            side = _DecodeSide(runner, "decode", config, to_prefill, to_decode)
            runner.capture_graphs([side.partitions.decode(FULL_GPU)])
        warm_up(runner, side.partitions)
        dist.barrier()   # both engines start their clocks together
        records = side.serve()
        dist.barrier()
        dist.destroy_process_group()
        conn.send(("ok", rank, records))
    except UserError as e:
        conn.send(("user_error", rank, str(e)))
    except BaseException:
        conn.send(("error", rank, traceback.format_exc()))
    finally:
        conn.close()


def _gather(procs: list, conns: list, timeout_s: float | None) -> list[dict]:
    """Each rank's records; the first failure stops the other rank and is raised here."""
    from multiprocessing.connection import wait

    results: dict[int, dict] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = {conn: rank for rank, conn in enumerate(conns)}
    try:
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise RuntimeError(f"disaggregated run did not finish within {timeout_s} s")
            ready = wait([*pending, *(procs[r].sentinel for r in pending.values())], left)
            for conn in [c for c in pending if c in ready or c.poll()]:
                rank = pending.pop(conn)
                try:
                    kind, _, payload = conn.recv()
                except EOFError:
                    raise RuntimeError(f"rank {rank} exited with code {procs[rank].exitcode} "
                                       f"and no result") from None
                if kind == "user_error":
                    raise UserError(payload)
                if kind == "error":
                    raise RuntimeError(f"rank {rank} failed:\n{payload}")
                results[rank] = payload
    finally:
        for p in procs:
            if p.is_alive() and pending:
                p.terminate()
        for p in procs:
            p.join()
    return [results[PREFILL], results[DECODE]]


def run_disagg(config: DisaggConfig, timeout_s: float | None = None) -> DisaggRun:
    """Serve `config.entries` on a prefill engine and a decode engine in two processes."""
    if config.device == "cuda" and torch.cuda.device_count() < 2:
        raise UserError(f"disagg needs two GPUs (a prefill and a decode engine); "
                        f"torch sees {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    port = free_port()
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [ctx.Process(target=_worker, args=(rank, port, config, pipes[rank][1]), daemon=True)
             for rank in (PREFILL, DECODE)]
    for p in procs:
        p.start()
    for _, send_end in pipes:
        send_end.close()
    prefill, decode = _gather(procs, [recv_end for recv_end, _ in pipes], timeout_s)
    return _merge(config, prefill, decode)


def _merge(config: DisaggConfig, prefill: dict, decode: dict) -> DisaggRun:
    """One set of requests, token gaps and steps on the prefill engine's clock."""
    sides = [(prefill, 0.0), (decode, decode["origin"] - prefill["origin"])]
    requests = sorted((Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens)
                       for e in config.entries), key=lambda r: r.arrival_s)
    tokens = []
    for i, req in enumerate(requests):
        ended = [(side, shift) for side, shift in sides if side["requests"][i][2] is not None]
        if len(ended) != 1:
            raise RuntimeError(f"request {req.request_id} finished on {len(ended)} engines")
        [(side, shift)] = ended
        first, last, finish, req.generated, req.preemptions = side["requests"][i]
        req.first_token_s, req.last_token_s, req.finish_s = (t + shift for t in (first, last, finish))
        tokens.append(side["tokens"][i])
    gaps = TokenGaps()
    for side, _ in sides:
        for value, count in zip(*side["gaps"]):
            gaps.add(value, count)
    steps = sorted((StepRecord(**{**s, "start_s": s["start_s"] + shift, "end_s": s["end_s"] + shift})
                    for side, shift in sides for s in side["timeline"]), key=lambda s: s.start_s)

    policy = config.policy
    cost = load_cost_model(config.model, config.gpu, config.calibration)
    seconds, waits = decode["link_seconds"], decode["kv_wait_seconds"]
    extra = {"cost_model": cost.describe(), "model": config.model.name, "gpu": config.gpu.name,
             "kv_blocks": {"prefill": prefill["num_blocks"], "decode": decode["num_blocks"]}, "measured": True,
             "kv_transfer": {
                 "transfers": len(seconds), "bytes": prefill["link_bytes"],
                 "finished_on_prefill_engine": decode["finished_on_prefill"],
                 "seconds": weighted_stats(seconds) if seconds else None,
                 "wait_for_blocks_s": weighted_stats(waits) if waits else None,
                 "backend": "nccl" if config.device == "cuda" else "gloo"}}
    run_config = {"policy": policy.describe(), "max_num_seqs": config.max_num_seqs,
                  "gpu_memory_utilization": config.memory_utilization, "seed": config.seed,
                  "device": config.device, "engines": {"prefill": "rank 0", "decode": "rank 1"}}
    result = make_result(policy, requests, gaps, steps, config.slo_ttft_s, config.slo_tbt_s, extra,
                         run_config)
    return DisaggRun(result, tokens)


def bench_disagg(args, names: list[str], model: ModelSpec, gpu: GPUSpec, entries: list[TraceEntry],
                 console) -> int:
    """`nexus-real bench --policy disagg`: the two engines, then the usual output files."""
    from nexus.cli_args import parse_params
    from nexus.policy import build_policies
    from nexus.report import print_table
    from real.bench import write_outputs
    from real.gpu_info import gpu_facts

    if names != ["disagg"]:
        raise UserError("disagg runs on two engines of its own; give it alone (--policy disagg), not in --compare")
    if args.split:
        raise UserError("--split does not apply to disagg: each phase has a whole device")
    [policy] = build_policies(names, parse_params(args.param))
    config = DisaggConfig(entries, model, gpu, policy, args.device, args.weights, args.calibration,
                          args.num_blocks, args.gpu_memory_utilization, args.max_num_seqs, args.seed,
                          args.slo_ttft, args.slo_tbt)
    console.print(f"running disagg on {len(entries)} requests: prefill and decode engines on "
                  f"{'cuda:0 and cuda:1' if args.device == 'cuda' else 'two CPU processes'} ...")
    result = run_disagg(config).result
    print_table([result.summary])
    if args.device == "cuda":
        machine = {"prefill": gpu_facts(0), "decode": gpu_facts(1)}
    else:
        machine = {"prefill": {"device": "cpu"}, "decode": {"device": "cpu"}}
    extra = {"machine": machine, "trace": str(args.trace), "command": args.command_line}
    write_outputs(Path(args.out), [result], extra, gpu.num_sms)
    console.print(f"wrote results to {args.out}/")
    return 0

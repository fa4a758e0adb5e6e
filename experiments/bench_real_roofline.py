"""How close the real engine's steps come to the GPU's own ceilings (Llama-3.1-8B shapes, random bf16).

    python3 experiments/bench_real_roofline.py      # about 2 minutes on an H200; writes
                                                    # experiments/results/real_roofline_h200.json

Ceilings are measured in the same run, not taken from datasheets: device-to-device copy
bandwidth (bytes read + written, 4 GiB) and the bf16 matrix-product rate at 8192^3 on random
data, on the whole GPU and on the green-context partitions used below.

Every shape is a `ModelRunner.step` as the engine issues it (CUDA graphs where the runner has
them). Per shape:
- time_ms: GPU time of the step, CUDA events around its work queued behind a sleep kernel, so
  host work does not show; median of --reps steps.
- wall_ms: host clock around `runner.step` (packing, launches, wait), median over --reps
  consecutive steps; `stability` gives how far those steps stray from their median.
- time_ms_consecutive: the GPU time of those same back-to-back steps (events around each CUDA
  graph step's own work, `ModelRunner.timing_steps`); host_ms = wall less that, step by step:
  the time the GPU waits for the host. host_fraction = median host_ms / time_ms_consecutive.
  Back to back, compute-bound steps run at the power limit with lower clocks, so
  time_ms_consecutive can exceed time_ms; subtracting time_ms from the wall instead would
  charge that slowdown to the host. Eager steps (no graph) have no such events: their
  host_fraction is (wall_ms - time_ms) / time_ms, an upper bound (`host_measured`).
- decode: fraction = (weight bytes + KV bytes read) / copy bandwidth / time. Weight bytes count
  every matrix a step reads (all layers, final norm, LM head) and of the embedding only the
  rows looked up. `floor_ms` is the sum of each kernel group's own bound (dense layers:
  max(bytes, FLOPs); attention: KV bytes), which is what sequential kernels can reach: at 256
  rows the dense layers are bound by FLOPs, not bytes.
- prefill: fraction = model FLOPs / time / matmul rate; FLOPs: 2 x tokens x layer parameters,
  causal attention (QK^T and PV over the keys each query sees), the LM head of the last token.
- mixed (a prompt chunk plus decode rows in one step): fraction = max(bytes / bandwidth,
  FLOPs / matmul rate) / time.
Partition shapes run on the green contexts of a 64-SM split (prefill 64 SMs, decode the
other 68); their fraction is against the partition's own ceiling, `fraction_of_full_gpu`
against the whole GPU's.

256 sequences of 4096 tokens need 137 GB of KV, more than the card holds beside the weights:
that shape's sequences share KV blocks in pairs (`kv_aliased`); each step still reads every
key, and the two readers of a block are 128 sequences apart, far beyond what L2 can hold.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import nexus.graph_buckets
from nexus.cost.base import FULL_GPU
from nexus.specs import MODELS, ModelSpec
from real import blas_choice
from real.batch import Chunk
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partition, Partitions

DECODE = [(64, 1024), (256, 1024), (64, 4096), (16, 16384), (256, 4096), (128, "conversation")]
PREFILL = [(2048, 0), (4096, 0), (8192, 0), (2048, 8192)]
MIXED_CHUNKS = (256, 512, 1024, 2048)
MIXED_ROWS = (32, 128, 256)
MIXED_CONTEXT = 1024            # mean decode context of a mixed step, spread +-75% as served
SPLIT = 64                      # prefill SMs of the partition shapes; decode gets the rest
TARGETS = {"decode": 0.90, "prefill": 0.80, "mixed_host_fraction": 0.10, "mixed_stability": 0.05}


# ---------------------------------------------------------------- timing
def _sleep_cycles_per_ms() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1000)
    start.record()
    torch.cuda._sleep(20_000_000)
    end.record()
    end.synchronize()
    return 20_000_000 / start.elapsed_time(end)


def event_times_ms(fn, reps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _gpu_times(runner: ModelRunner, batch: list[Chunk], part: Partition, reps: int, sleep_ms: float,
               cycles_per_ms: float) -> list[float]:
    """Event times of the step's work, queued behind a sleep kernel that outlasts the host work."""
    times = []
    with part.use():
        stream = torch.cuda.current_stream()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(cycles_per_ms * sleep_ms))
            start.record(stream)
            _, tokens = runner._run(batch, part, True)
            tokens.to("cpu", non_blocking=True)
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times


def time_step(runner: ModelRunner, batch: list[Chunk], part: Partition, reps: int,
              cycles_per_ms: float) -> dict:
    """GPU time (work queued behind a sleep), and wall time of consecutive `step` calls.

    The sleep is sized in two passes: a long one tells the host time, then one 1.5x that
    (plus 1 ms) times the step. Long pauses let the GPU's clocks recover from its power limit
    (seen at 700 W during prefill, clocks 1.2-2.0 GHz), which makes compute-bound steps look
    faster than they run back to back; `time_ms_rested` is the first pass.
    """
    for _ in range(3):
        runner.step(batch, part)
    torch.cuda.synchronize()
    wall = []
    with runner.timing_steps() as busy:
        for _ in range(reps):
            t = time.perf_counter()
            runner.step(batch, part)
            wall.append((time.perf_counter() - t) * 1e3)
    med_wall = statistics.median(wall)
    rested = statistics.median(_gpu_times(runner, batch, part, 5, 2 * max(wall) + 2, cycles_per_ms))
    gap_ms = max(med_wall - rested, 0.0)
    gpu = _gpu_times(runner, batch, part, reps, 1.5 * gap_ms + 1, cycles_per_ms)
    med_gpu = statistics.median(gpu)
    dev = [abs(w - med_wall) / med_wall for w in wall]
    timing = {"time_ms": med_gpu, "wall_ms": med_wall, "time_ms_rested": rested,
              "stability": {"max_dev": max(dev), "within_5pct": sum(d <= 0.05 for d in dev) / len(dev)},
              "times_ms": [round(t, 4) for t in gpu], "wall_times_ms": [round(t, 4) for t in wall]}
    if len(busy) == reps:
        host = [w - b for w, b in zip(wall, busy)]
        consecutive = statistics.median(busy)
        timing.update(time_ms_consecutive=consecutive, host_ms=statistics.median(host),
                      host_fraction=statistics.median(host) / consecutive, host_measured="events",
                      consecutive_times_ms=[round(b, 4) for b in busy])
    else:
        timing.update(host_ms=med_wall - med_gpu, host_fraction=(med_wall - med_gpu) / med_gpu,
                      host_measured="wall less time_ms")
    return timing


# ---------------------------------------------------------------- ceilings
def copy_bandwidth(reps: int) -> dict:
    n = 2 * 2**30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = event_times_ms(lambda: dst.copy_(src), reps)
    return {"bytes_moved": 2 * n, "median_ms": statistics.median(times),
            "bytes_per_s": 2 * n / (statistics.median(times) / 1e3)}


def matmul_peak(reps: int, size: int = 8192) -> dict:
    sets = [(torch.randn(size, size, device="cuda", dtype=torch.bfloat16),
             torch.randn(size, size, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
    out = torch.empty(size, size, device="cuda", dtype=torch.bfloat16)
    i = [0]

    def one() -> None:
        a, b = sets[i[0] % 3]
        i[0] += 1
        torch.mm(a, b, out=out)

    times = event_times_ms(one, reps, warmup=10)
    flops = 2 * size ** 3
    return {"shape": [size, size, size], "median_ms": statistics.median(times),
            "flops_per_s": flops / (statistics.median(times) / 1e3)}


# ---------------------------------------------------------------- work counts
def weight_bytes(runner: ModelRunner, rows: int) -> int:
    """Bytes of the matrices a step reads: all but the embedding, of which only `rows` rows."""
    model, spec = runner.model, runner.spec
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed.weight")
    if spec.tie_word_embeddings:
        total += model.embed.weight.numel() * model.embed.weight.element_size()
    return total + rows * spec.hidden_size * spec.dtype_bytes


def linear_flops(spec: ModelSpec, tokens: int, logits_rows: int) -> int:
    return 2 * tokens * spec.num_layers * spec.params_per_layer + 2 * logits_rows * spec.hidden_size * spec.vocab_size


def attention_flops(spec: ModelSpec, chunk: int, prior: int) -> int:
    """QK^T and PV over the keys each of the chunk's queries sees (causal)."""
    keys = chunk * prior + chunk * (chunk + 1) // 2
    return spec.num_layers * 4 * spec.num_heads * spec.head_dim * keys


# ---------------------------------------------------------------- shapes
class Shapes:
    def __init__(self, runner: ModelRunner, ceilings: dict, reps: int, cycles_per_ms: float) -> None:
        self.runner, self.spec, self.reps = runner, runner.spec, reps
        self.ceilings, self.cycles_per_ms = ceilings, cycles_per_ms
        self.rng = np.random.default_rng(0)
        self.perm = self.rng.permutation(runner.num_blocks).tolist()
        self.rows: list[dict] = []

    def _tables(self, tokens: list[int]) -> tuple[list[list[int]], bool]:
        """Block tables drawn from a random order of all blocks; wraps (aliases) if they run out."""
        bs, nb = self.runner.block_size, self.runner.num_blocks
        tables, at = [], 0
        for t in tokens:
            n = -(-t // bs)
            tables.append([self.perm[(at + i) % nb] for i in range(n)])
            at += n
        return tables, at > nb

    def _decode_chunks(self, ctx: list[int]) -> tuple[list[Chunk], bool]:
        tables, aliased = self._tables(ctx)
        ids = self.rng.integers(0, self.spec.vocab_size, len(ctx)).tolist()
        return [Chunk([ids[i]], c - 1, tables[i]) for i, c in enumerate(ctx)], aliased

    def _prompt(self, chunk: int, prior: int, table: list[int]) -> Chunk:
        return Chunk(self.rng.integers(0, self.spec.vocab_size, chunk).tolist(), prior, table)

    def _ceiling(self, part: Partition) -> tuple[float, float]:
        key = "full" if part.sm_count == self.runner.num_sms else part.name
        return self.ceilings[key]["copy_bytes_per_s"], self.ceilings[key]["matmul_flops_per_s"]

    def _record(self, row: dict, part: Partition, timing: dict) -> None:
        row.update(partition=part.name, sms=part.sm_count, **timing)
        t = row["time_ms"]
        bw, peak = self._ceiling(part)
        full_bw, full_peak = self.ceilings["full"]["copy_bytes_per_s"], self.ceilings["full"]["matmul_flops_per_s"]
        if row["kind"] == "decode":
            row["fraction"] = row["bytes"] / bw / (t / 1e3)
            row["fraction_of_full_gpu"] = row["bytes"] / full_bw / (t / 1e3)
            row["ceiling"] = {"copy_bytes_per_s": bw}
            row["floor_ms"] = 1e3 * (max(row["dense_bytes"] / bw, row["flops"] / peak) + row["kv_bytes"] / bw)
        elif row["kind"] == "prefill":
            row["fraction"] = row["flops"] / peak / (t / 1e3)
            row["fraction_of_full_gpu"] = row["flops"] / full_peak / (t / 1e3)
            row["ceiling"] = {"matmul_flops_per_s": peak}
        else:
            floor = max(row["bytes"] / bw, row["flops"] / peak)
            row["fraction"] = floor * 1e3 / t
            row["ceiling"] = {"copy_bytes_per_s": bw, "matmul_flops_per_s": peak,
                              "bound": "bytes" if row["bytes"] / bw > row["flops"] / peak else "flops"}
        self.rows.append(row)
        shape = {k: row[k] for k in ("batch", "context", "tokens", "prior", "chunk", "decode_rows") if k in row}
        print(f"{row['kind']:7s} {part.name:12s} {json.dumps(shape):48s} {t:8.2f} ms  wall {row['wall_ms']:8.2f}  "
              f"fraction {row['fraction']:.3f}  host {row['host_fraction']:+.3f}", flush=True)

    def decode(self, batch: int, context, part: Partition) -> None:
        if context == "conversation":
            # Conversation-like: most contexts short, a long tail; the longest is 8k.
            ctx = np.clip(self.rng.lognormal(np.log(600), 1.0, batch), 32, 8192).astype(int)
            ctx[np.argmax(ctx)] = 8192
            ctx = ctx.tolist()
        else:
            ctx = [int(context)] * batch
        chunks, aliased = self._decode_chunks(ctx)
        dense = weight_bytes(self.runner, batch)
        kv = sum(ctx) * self.spec.kv_bytes_per_token
        row = {"kind": "decode", "batch": batch, "context": context, "kv_tokens": sum(ctx),
               "dense_bytes": dense, "kv_bytes": kv, "bytes": dense + kv, "flops": linear_flops(self.spec, batch, batch),
               "kv_aliased": aliased}
        if context == "conversation":
            row["context_stats"] = {"mean": float(np.mean(ctx)), "p50": float(np.median(ctx)),
                                    "p90": float(np.percentile(ctx, 90)), "max": int(max(ctx))}
        self._record(row, part, time_step(self.runner, chunks, part, self.reps, self.cycles_per_ms))

    def prefill(self, tokens: int, prior: int, part: Partition) -> None:
        (table,), _ = self._tables([prior + tokens])
        chunk = self._prompt(tokens, prior, table)
        flops = linear_flops(self.spec, tokens, 1) + attention_flops(self.spec, tokens, prior)
        row = {"kind": "prefill", "tokens": tokens, "prior": prior, "flops": flops}
        self._record(row, part, time_step(self.runner, [chunk], part, self.reps, self.cycles_per_ms))

    def mixed(self, chunk: int, rows: int, part: Partition) -> None:
        lo, hi = 0.25 * MIXED_CONTEXT, 1.75 * MIXED_CONTEXT
        ctx = np.linspace(lo, hi, rows).astype(int).tolist()
        decodes, _ = self._decode_chunks(ctx)
        (table,), _ = self._tables([chunk])
        batch = [self._prompt(chunk, 0, table), *decodes]
        kv = sum(ctx) * self.spec.kv_bytes_per_token
        flops = linear_flops(self.spec, chunk + rows, rows + 1) + attention_flops(self.spec, chunk, 0) \
            + 4 * self.spec.num_layers * self.spec.num_heads * self.spec.head_dim * sum(ctx)
        row = {"kind": "mixed", "chunk": chunk, "decode_rows": rows, "decode_context_mean": MIXED_CONTEXT,
               "kv_tokens": sum(ctx),
               "bytes": weight_bytes(self.runner, chunk + rows) + kv, "flops": flops}
        self._record(row, part, time_step(self.runner, batch, part, self.reps, self.cycles_per_ms))


def add_dense_from(ap: argparse.ArgumentParser) -> None:
    """The benches' --dense-from option (see use_dense_from)."""
    ap.add_argument("--dense-from", type=lambda text: None if text == "off" else int(text),
                    default=nexus.graph_buckets.DENSE_MIN_TOKENS, metavar="TOKENS|off",
                    help="run first prompt chunks of this many tokens or more on cuDNN in eager steps, or "
                         "none (off) (nexus.graph_buckets.DENSE_MIN_TOKENS; default: the engine's, "
                         f"{nexus.graph_buckets.DENSE_MIN_TOKENS})")


def use_dense_from(tokens: int | None) -> None:
    """Set the dense prefill path's lower bound for this process (None: off)."""
    nexus.graph_buckets.DENSE_MIN_TOKENS = tokens


def run(args: argparse.Namespace) -> dict:
    spec = MODELS[args.model]
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": gpu_facts(), "model": spec.name, "dtype": "bfloat16", "weights": "random (seed 0)",
                    "targets": TARGETS, "dense_min_tokens": args.dense_from}
    use_dense_from(args.dense_from)
    parts = Partitions([SPLIT], device="cuda")
    full, pre_side, dec_side = parts.decode(FULL_GPU), parts.prefill(SPLIT), parts.decode(SPLIT)
    ceilings = {}
    with ClockPowerSampler() as clock:
        for part in (full, pre_side, dec_side):
            with part.use():
                copy, mm = copy_bandwidth(args.reps), matmul_peak(args.reps)
            key = "full" if part is full else part.name
            ceilings[key] = {"sms": part.sm_count, "copy_bytes_per_s": copy["bytes_per_s"],
                             "matmul_flops_per_s": mm["flops_per_s"], "copy": copy, "matmul": mm}
            print(f"ceilings {key:12s} copy {copy['bytes_per_s'] / 1e12:.3f} TB/s   "
                  f"matmul {mm['flops_per_s'] / 1e12:.1f} TFLOP/s", flush=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    result["ceilings"] = ceilings
    result["ceilings_clock"] = clock.summary()
    cycles_per_ms = _sleep_cycles_per_ms()

    t0 = time.perf_counter()
    runner = ModelRunner(spec, device="cuda", max_model_len=16384 + 64, max_decode_batch=256,
                         max_batch_tokens=8192 + 256)
    runner.kv.data.normal_()  # random KV: zeros could run faster than real data
    # The graphs the engine captures (real.bench.capture_all_graphs): decode where decode steps
    # run, prefill where prefill-only and one-stream (mixed) steps run.
    runner.capture_graphs([full, dec_side])
    runner.capture_prefill_graphs([full, pre_side])
    result["setup_s"] = time.perf_counter() - t0
    result["blas"] = runner.blas_choices()
    result["kv_blocks"] = runner.num_blocks
    print(f"runner ready in {result['setup_s']:.1f} s, {runner.num_blocks} KV blocks", flush=True)

    shapes = Shapes(runner, ceilings, args.reps, cycles_per_ms)
    only = set(args.only.split(",")) if args.only else None
    with ClockPowerSampler() as clock:
        if not only or "decode" in only:
            for batch, ctx in DECODE:
                shapes.decode(batch, ctx, full)
        if not only or "prefill" in only:
            for tokens, prior in PREFILL:
                shapes.prefill(tokens, prior, full)
        if not only or "mixed" in only:
            for chunk in MIXED_CHUNKS:
                for rows in MIXED_ROWS:
                    shapes.mixed(chunk, rows, full)
        if not only or "partition" in only:
            shapes.decode(64, 1024, dec_side)
            shapes.decode(256, 1024, dec_side)
            shapes.prefill(2048, 0, pre_side)
    result["clock"] = clock.summary()
    result["shapes"] = shapes.rows
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS))
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--only", default="", help="comma list of decode,prefill,mixed,partition (default: all)")
    ap.add_argument("--no-blas-trial", action="store_true",
                    help="capture every graph with the default BLAS library (for an A/B of real.blas_choice)")
    add_dense_from(ap)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/real_roofline_h200.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_real_roofline needs a CUDA GPU")
    if args.no_blas_trial:
        blas_choice.TRIAL_MAX_TOKENS = 0
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How close the real engine's steps come to the GPU's own ceilings (Llama-3.1-8B shapes, random bf16).

    python experiments/bench_real_roofline.py --out experiments/results/real_roofline_h100.json

Ceilings are measured here, not taken from datasheets: device-to-device copy bandwidth (bytes
read + written) and the bf16 matrix-product rate at 8192^3 on random data. Then:

- decode_roofline_fraction: a decode step at batch 64, 1024 tokens of context each, on all
  SMs as a CUDA graph replay: (weight bytes + KV bytes read) / copy bandwidth / step time.
  Weight bytes count every matrix a step reads: all layers, the final norm and the LM head,
  but of the embedding table only the 64 rows looked up.
- prefill_peak_fraction: one 2048-token prompt from scratch: model FLOPs / time / matmul
  rate. Model FLOPs: 2 x tokens x layer parameters, causal attention (QK^T and PV over
  the keys each query sees), and the LM head for the one token whose logits are needed.

All times are medians of CUDA-event timings after warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from nexus.specs import MODELS, ModelSpec
from real.batch import Chunk
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions


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


def copy_bandwidth(reps: int) -> dict:
    n = 2 * 2**30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = event_times_ms(lambda: dst.copy_(src), reps)
    return {"bytes_moved": 2 * n, "times_ms": times,
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
    return {"shape": [size, size, size], "flops": flops, "times_ms": times,
            "flops_per_s": flops / (statistics.median(times) / 1e3)}


def decode_bytes(runner: ModelRunner, batch: int, ctx: int) -> dict:
    spec = runner.spec
    weights = sum(p.numel() * p.element_size() for n, p in runner.model.named_parameters() if n != "embed.weight")
    if spec.tie_word_embeddings:
        weights += runner.model.embed.weight.numel() * runner.model.embed.weight.element_size()
    embed_rows = batch * spec.hidden_size * spec.dtype_bytes
    kv = batch * ctx * spec.kv_bytes_per_token
    return {"weights": weights, "embedding_rows": embed_rows, "kv_read": kv, "total": weights + embed_rows + kv}


def prefill_flops(spec: ModelSpec, tokens: int) -> dict:
    layer_params = spec.num_layers * spec.params_per_layer
    linear = 2 * tokens * layer_params
    attention = spec.num_layers * 4 * spec.num_heads * spec.head_dim * tokens * (tokens + 1) // 2
    head = 2 * spec.hidden_size * spec.vocab_size
    return {"linear": linear, "attention": attention, "lm_head_last_token": head,
            "total": linear + attention + head}


def run(args: argparse.Namespace) -> dict:
    spec = MODELS[args.model]
    facts = gpu_facts()
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": facts, "model": spec.name, "dtype": "bfloat16", "weights": "random (seed 0)"}
    with ClockPowerSampler() as ceilings_clock:
        result["copy"] = copy_bandwidth(args.reps)
        result["matmul"] = matmul_peak(args.reps)
    bw, peak = result["copy"]["bytes_per_s"], result["matmul"]["flops_per_s"]
    print(f"copy {bw / 1e12:.3f} TB/s   matmul {peak / 1e12:.1f} TFLOP/s", flush=True)

    b, ctx, prompt = args.batch, args.context, args.prompt
    blocks_per_seq = -(-ctx // 16)
    num_blocks = b * blocks_per_seq + -(-prompt // 16) + 1
    t0 = time.perf_counter()
    runner = ModelRunner(spec, device="cuda", num_blocks=num_blocks, max_model_len=max(ctx, prompt) + 16,
                         max_decode_batch=b)
    runner.kv.data.normal_()  # random KV: zeros could run faster than real data
    parts = Partitions([], device="cuda")
    part = parts.decode(0)
    runner.capture_graphs([part], buckets=[b])
    result["setup_s"] = time.perf_counter() - t0

    perm = torch.randperm(b * blocks_per_seq, generator=torch.Generator().manual_seed(0)).tolist()
    tables = [perm[i * blocks_per_seq:(i + 1) * blocks_per_seq] for i in range(b)]
    batch = [Chunk([17 + i], ctx - 1, tables[i]) for i in range(b)]
    with ClockPowerSampler() as decode_clock:
        wall = []
        for _ in range(args.reps):
            t = time.perf_counter()
            runner.step(batch, part)
            wall.append((time.perf_counter() - t) * 1e3)
        graph = runner._graphs.graphs[(part.name, b)][0]
        with part.use():
            replay = event_times_ms(graph.replay, args.reps)
    step_s = statistics.median(replay) / 1e3
    moved = decode_bytes(runner, b, ctx)
    result["decode"] = {"batch": b, "context": ctx, "bytes": moved, "graph_replay_ms": replay,
                        "runner_step_wall_ms": wall, "step_s": step_s,
                        "achieved_bytes_per_s": moved["total"] / step_s, "clock": decode_clock.summary()}
    result["decode_roofline_fraction"] = moved["total"] / bw / step_s
    print(f"decode b={b} ctx={ctx}: {step_s * 1e3:.2f} ms  fraction {result['decode_roofline_fraction']:.3f}",
          flush=True)

    ids = torch.randint(0, spec.vocab_size, (prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    table = list(range(b * blocks_per_seq, b * blocks_per_seq + -(-prompt // 16)))
    with ClockPowerSampler() as prefill_clock, part.use():
        times = event_times_ms(lambda: runner.step([Chunk(ids, 0, table)], part), args.reps)
    flops = prefill_flops(spec, prompt)
    pre_s = statistics.median(times) / 1e3
    result["prefill"] = {"tokens": prompt, "flops": flops, "times_ms": times, "step_s": pre_s,
                         "achieved_flops_per_s": flops["total"] / pre_s, "clock": prefill_clock.summary()}
    result["prefill_peak_fraction"] = flops["total"] / pre_s / peak
    print(f"prefill {prompt} tokens: {pre_s * 1e3:.2f} ms  fraction {result['prefill_peak_fraction']:.3f}",
          flush=True)
    result["ceilings_clock"] = ceilings_clock.summary()
    result["targets"] = {"decode_roofline_fraction": 0.80, "prefill_peak_fraction": 0.65}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/real_roofline_h100.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_real_roofline needs a CUDA GPU")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

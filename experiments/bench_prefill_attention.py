"""Prefill attention alone, one layer's call (Llama-3.1-8B heads, bf16, blocks scattered):
the paged Triton kernel against the dense path (keys gathered out of the cache, cuDNN's
fused attention, a chunk after a prefix as two calls merged by log-sum-exp).

    python3 experiments/bench_prefill_attention.py --out experiments/results/prefill_attention_h200.json

Per shape (chunk tokens, prefix tokens): median ms of --repeats calls after a warm-up, by CUDA
events around each call; TFLOP/s counts the causal half only (4 * heads * head_dim per
query-key pair); `dense_no_gather_ms` is the dense path's attention calls on keys already laid
out, so the gather's share shows, and `own_keys_ms`, `prefix_keys_ms` and `merge_ms` its
parts; `rel_diff` is the dense output against the Triton one; `dense_path_taken` whether the
engine's rule (nexus.graph_buckets.runs_dense: first chunks of 3072-32768 tokens, chunks of
2048-4096 after 4096 or more; the bench's committed runs predate it) would send the chunk
there in an eager step. `dense_ms` is the path as the engine runs it (padded, the prefix cut
at nexus.graph_buckets.prefix_cut); the parts are unpadded calls.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

from bench_real_roofline import event_times_ms
from real.attention import _prefill_triton, prefill_dense, takes_dense_path
from real.dense_attention import attend, merge_attention
from real.batch import Chunk, pack
from real.gpu_info import gpu_facts

SHAPES = [(512, 0), (1024, 0), (2048, 0), (4096, 0), (8192, 0), (16384, 0),
          (2048, 2048), (2048, 8192), (1024, 8192), (512, 4096), (4096, 4096)]
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16


def timed(fn, repeats: int) -> float:
    return statistics.median(event_times_ms(fn, repeats, warmup=1))


def shape_result(chunk: int, prior: int, repeats: int) -> dict:
    total = chunk + prior
    blocks = -(-total // BLOCK)
    gen = torch.Generator(device="cuda").manual_seed(chunk + prior)
    k_cache = torch.randn(blocks + 8, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16,
                          generator=gen)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(blocks + 8, generator=torch.Generator().manual_seed(1))[:blocks].tolist()
    batch = pack([Chunk(list(range(chunk)), prior, table)], torch.device("cuda"), BLOCK, KV_HEADS, 132,
                 blocks + 8)
    meta = batch.meta
    q = torch.randn(chunk, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    scale = HEAD_DIM ** -0.5
    triton_out, dense_out = torch.empty_like(q), torch.empty_like(q)
    flops = 4 * HEADS * HEAD_DIM * (chunk * prior + chunk * (chunk + 1) // 2)
    result = {"chunk": chunk, "prior": prior, "dense_path_taken": takes_dense_path(q, meta)}
    result["triton_ms"] = timed(lambda: _prefill_triton(q, k_cache, v_cache, meta, scale, triton_out, range(1), chunk),
                                repeats)
    result["dense_ms"] = timed(lambda: prefill_dense(q, k_cache, v_cache, meta, scale, dense_out, 0), repeats)

    index = torch.tensor(table, device="cuda")
    k = k_cache[index].flatten(0, 1)[:total].transpose(0, 1).unsqueeze(0).contiguous()
    v = v_cache[index].flatten(0, 1)[:total].transpose(0, 1).unsqueeze(0).contiguous()
    qs = q.transpose(0, 1).unsqueeze(0).contiguous()

    def own_keys():
        return attend(qs, k[:, :, prior:], v[:, :, prior:], causal=True, scale=scale)

    def prefix_keys():
        return attend(qs, k[:, :, :prior], v[:, :, :prior], causal=False, scale=scale)

    def laid_out():
        o, lse = own_keys()
        if prior:
            merge_attention(*prefix_keys(), o, lse)

    result["dense_no_gather_ms"] = timed(laid_out, repeats)
    result["own_keys_ms"] = timed(own_keys, repeats)
    if prior:
        result["prefix_keys_ms"] = timed(prefix_keys, repeats)
        parts = own_keys() + prefix_keys()
        result["merge_ms"] = timed(lambda: merge_attention(parts[2], parts[3], parts[0], parts[1]), repeats)
    for name in ("triton", "dense", "dense_no_gather"):
        result[f"{name}_tflops"] = round(flops / result[f"{name}_ms"] / 1e9, 1)
    result["speedup"] = round(result["triton_ms"] / result["dense_ms"], 3)
    diff = (dense_out.float() - triton_out.float()).norm() / triton_out.float().norm()
    result["rel_diff"] = float(diff)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_prefill_attention: needs a CUDA GPU", file=sys.stderr)
        return 2
    result = {"command": "python3 " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "machine": gpu_facts(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "repeats": args.repeats, "shapes": []}
    for chunk, prior in SHAPES:
        r = shape_result(chunk, prior, args.repeats)
        print(json.dumps(r), flush=True)
        result["shapes"].append(r)
        torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

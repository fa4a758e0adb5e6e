"""Where a step's GPU time goes, by kernel group, and how the attention kernels' tile settings move it.

    python3 experiments/bench_step_breakdown.py --out breakdown.json

For decode and prefill shapes of Llama-3.1-8B (random bf16), each kernel group of one forward
(the four matrix products of every layer; attention; the fused elementwise kernels; the LM
head) is captured alone in a CUDA graph and timed by replaying it, and so is the whole
forward, so that sum of groups against whole shows the cost of the kernel boundaries.
Each group's bytes and FLOPs over the ceilings measured in the same run give its own
fraction. The sweep then times the attention alone under other tile settings.
All times: medians of CUDA-event timed replays after warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from nexus.specs import MODELS
from real import attention
from real.attention import paged_attention
from real.batch import Chunk, pack
from real.fused_ops import rms_norm, rope_and_store, silu_and_mul
from real.gpu_info import gpu_facts
from real.model_runner import ModelRunner

sys.path.insert(0, str(Path(__file__).parent))
from bench_real_roofline import copy_bandwidth, matmul_peak  # noqa: E402


def graph_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    del g
    return statistics.median(times)


class Breakdown:
    def __init__(self, runner: ModelRunner, reps: int) -> None:
        self.runner, self.model, self.spec, self.reps = runner, runner.model, runner.spec, reps
        self.rng = np.random.default_rng(0)
        self.perm = self.rng.permutation(runner.num_blocks).tolist()   # blocks scattered, as served
        self.next_block = 0

    def _table(self, tokens: int) -> list[int]:
        n = -(-tokens // 16)
        ids = [self.perm[(self.next_block + i) % self.runner.num_blocks] for i in range(n)]
        self.next_block = (self.next_block + n) % self.runner.num_blocks
        return ids

    def batch(self, kind: str, a: int, b) -> list[Chunk]:
        """decode: a sequences of b tokens (b = "conversation": the roofline bench's mix);
        prefill: a tokens after b cached ones."""
        v = self.spec.vocab_size
        if kind == "decode":
            if b == "conversation":
                ctx = np.clip(np.random.default_rng(0).lognormal(np.log(600), 1.0, a), 32, 8192).astype(int)
                ctx[np.argmax(ctx)] = 8192
            else:
                ctx = [b] * a
            return [Chunk([int(self.rng.integers(v))], int(c) - 1, self._table(int(c))) for c in ctx]
        return [Chunk(self.rng.integers(0, v, a).tolist(), b, self._table(a + b))]

    def groups(self, batch: list[Chunk]) -> dict[str, float]:
        spec, model, kv = self.spec, self.model, self.runner.kv
        p = pack(batch, self.runner.device, kv.block_size, spec.num_kv_heads, self.runner.num_sms, kv.num_blocks)
        t = p.input_ids.shape[0]
        h = spec.hidden_size
        x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        inter = torch.randn(t, spec.intermediate_size, device="cuda", dtype=torch.bfloat16)
        attn_in = torch.randn(t, spec.num_heads * spec.head_dim, device="cuda", dtype=torch.bfloat16)
        qkv = model.layers[0].attn.qkv(x)
        q = qkv[:, :spec.num_heads * spec.head_dim].view(t, spec.num_heads, spec.head_dim)
        gate_up = torch.randn(t, 2 * spec.intermediate_size, device="cuda", dtype=torch.bfloat16)

        def dense() -> None:
            for layer in model.layers:
                layer.attn.qkv(x)
                layer.attn.o(attn_in)
                layer.mlp.gate_up(x)
                layer.mlp.down(inter)

        def attn() -> None:
            for i in range(spec.num_layers):
                paged_attention(q, kv.k[i], kv.v[i], p.meta, model.layers[0].attn.scale)

        res = x.clone()

        def elementwise() -> None:
            for i, layer in enumerate(model.layers):
                layer.input_norm(x, res)
                rope_and_store(qkv, p.positions, model.cos_sin, kv.k[i], kv.v[i], p.meta.slots,
                               spec.num_heads, spec.num_kv_heads)
                layer.post_norm(x, res)
                silu_and_mul(gate_up)

        hidden = x[p.select]

        def head() -> None:
            model.compute_logits(hidden).argmax(-1)

        def whole() -> None:
            out = model(p.input_ids, p.positions, kv, p.meta, p.select)
            model.compute_logits(out).argmax(-1)

        return {name: graph_ms(fn, self.reps) for name, fn in
                (("dense", dense), ("attention", attn), ("elementwise", elementwise), ("lm_head", head),
                 ("whole", whole))}

    def attention_ms(self, batch: list[Chunk]) -> float:
        spec, kv = self.spec, self.runner.kv
        p = pack(batch, self.runner.device, kv.block_size, spec.num_kv_heads, self.runner.num_sms, kv.num_blocks)
        t = p.input_ids.shape[0]
        q = torch.randn(t, spec.num_heads, spec.head_dim, device="cuda", dtype=torch.bfloat16)

        def attn() -> None:
            for i in range(spec.num_layers):
                paged_attention(q, kv.k[i], kv.v[i], p.meta, spec.head_dim ** -0.5)
        return graph_ms(attn, self.reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sweep", action="store_true", help="also sweep the attention kernels' tile settings")
    ap.add_argument("--groups", default="decode:64:1024,decode:256:1024,decode:16:16384,prefill:2048:0,"
                    "prefill:8192:0", help="shapes to break down, kind:a:b (b may be 'conversation')")
    ap.add_argument("--prefill-sweep", action="store_true", help="sweep the prefill attention kernel too")
    ap.add_argument("--blas", action="store_true",
                    help="time the dense layers of decode batches under cuBLAS and cuBLASLt")
    args = ap.parse_args()
    spec = MODELS["llama-3.1-8b"]
    out: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": gpu_facts()}
    bw, peak = copy_bandwidth(args.reps)["bytes_per_s"], matmul_peak(args.reps)["flops_per_s"]
    torch.cuda.empty_cache()
    out["ceilings"] = {"copy_bytes_per_s": bw, "matmul_flops_per_s": peak}
    runner = ModelRunner(spec, device="cuda", num_blocks=40000, max_model_len=16384 + 64, max_batch_tokens=8192)
    runner.kv.data.normal_()
    bd = Breakdown(runner, args.reps)
    layer_bytes = spec.num_layers * spec.params_per_layer * 2
    kvt = spec.kv_bytes_per_token
    rows = []
    for spec_s in filter(None, args.groups.split(",")):
        kind, a, b = spec_s.split(":")
        a, b = int(a), (b if b == "conversation" else int(b))
        batch = bd.batch(kind, a, b)
        g = bd.groups(batch)
        tokens = a
        dense_flops = 2 * tokens * spec.num_layers * spec.params_per_layer
        row = {"kind": kind, "shape": [a, b], "ms": g, "sum_of_groups_ms": sum(v for k, v in g.items() if k != "whole"),
               "dense_fraction_of_bytes": layer_bytes / bw / (g["dense"] / 1e3),
               "dense_fraction_of_flops": dense_flops / peak / (g["dense"] / 1e3)}
        if kind == "decode":
            row["attention_fraction_of_bytes"] = sum(c.end for c in batch) * kvt / bw / (g["attention"] / 1e3)
        else:
            att = spec.num_layers * 4 * spec.num_heads * spec.head_dim * a * (a + 1) // 2
            row["attention_fraction_of_flops"] = att / peak / (g["attention"] / 1e3)
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "ms"}),
              {k: round(v, 3) for k, v in g.items()}, flush=True)
    out["groups"] = rows

    if args.blas:
        blas = []
        for rows in (16, 64, 128, 256):
            x = torch.randn(rows, spec.hidden_size, device="cuda", dtype=torch.bfloat16)
            inter = torch.randn(rows, spec.intermediate_size, device="cuda", dtype=torch.bfloat16)

            def dense() -> None:
                for layer in runner.model.layers:
                    layer.attn.qkv(x)
                    layer.attn.o(x)
                    layer.mlp.gate_up(x)
                    layer.mlp.down(inter)
            row = {"rows": rows}
            for lib in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(lib)
                row[lib] = {"ms": graph_ms(dense, args.reps)}
                row[lib]["fraction_of_bytes"] = layer_bytes / bw / (row[lib]["ms"] / 1e3)
            torch.backends.cuda.preferred_blas_library("default")
            blas.append(row)
            print("blas", json.dumps(row), flush=True)
        out["blas"] = blas

    if args.sweep:
        sweep = []
        base_d, base_p = dict(attention.DECODE_CONFIG), dict(attention.PREFILL_CONFIG)
        base_few = dict(attention.DECODE_CONFIG_FEW_ROWS)
        base_pps = attention.PROGRAMS_PER_SM
        shapes = [("decode", 64, 1024), ("decode", 256, 1024), ("decode", 16, 16384), ("decode", 64, 4096),
                  ("decode", 128, "conversation")]
        batches = {s: bd.batch(*s) for s in shapes}
        kvt = spec.kv_bytes_per_token
        for pps, (bn, w, st) in itertools.product((2, 4), ((64, 4, 3), (64, 4, 2), (128, 8, 3), (128, 4, 3),
                                                          (64, 8, 3))):
            attention.PROGRAMS_PER_SM = pps
            attention.DECODE_CONFIG.update(BLOCK_N=bn, num_warps=w, num_stages=st)
            attention.DECODE_CONFIG_FEW_ROWS.update(BLOCK_N=bn, num_warps=w, num_stages=st)
            try:
                ms = {f"{a}x{b}": bd.attention_ms(batches[(k, a, b)]) for k, a, b in shapes}
                frac = {f"{a}x{b}": sum(c.end for c in batches[(k, a, b)]) * kvt / bw / (ms[f"{a}x{b}"] / 1e3)
                        for k, a, b in shapes}
            except Exception as e:  # a setting that does not fit shared memory or registers
                ms, frac = {"error": repr(e)[:200]}, {}
            sweep.append({"kernel": "decode", "programs_per_sm": pps, "config": dict(attention.DECODE_CONFIG),
                          "ms": ms, "fraction_of_copy": frac})
            print(pps, (bn, w, st), {k: round(v, 3) for k, v in frac.items()}, flush=True)
        attention.PROGRAMS_PER_SM = base_pps
        attention.DECODE_CONFIG.clear()
        attention.DECODE_CONFIG.update(base_d)
        attention.DECODE_CONFIG_FEW_ROWS.clear()
        attention.DECODE_CONFIG_FEW_ROWS.update(base_few)
        pre = bd.batch("prefill", 8192, 0)
        configs = itertools.product((64, 128), (64, 128), (4, 8), (2, 3)) if args.prefill_sweep else []
        for bm, bn, w, st in configs:
            attention.PREFILL_CONFIG.update(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
            try:
                ms = {"8192": bd.attention_ms(pre)}
            except Exception as e:
                ms = {"error": repr(e)[:200]}
            sweep.append({"kernel": "prefill", "config": dict(attention.PREFILL_CONFIG), "ms": ms})
            print(sweep[-1], flush=True)
        attention.PREFILL_CONFIG.clear()
        attention.PREFILL_CONFIG.update(base_p)
        out["sweep"] = sweep
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

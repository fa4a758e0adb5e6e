"""Host time to pack a chunked-prefill (mixed) step into its CUDA graph's inputs, on the CPU.

    python experiments/bench_host_packing.py [--steps 300] [--out experiments/results/host_packing_cpu.json]

What a mixed step's host does before its graph replays: `validate` the batch, then
`PrefillGraphs._fill_host` (block tables, token layout, decode work list). Run as an engine
runs it: step after step, every decode row one token longer than the step before (a new
KV block every 16 tokens) and the prompt one chunk further on. Decode contexts are
lognormal around 1.5k tokens (a conversation-like batch). No GPU: the graph's pinned host
buffer is an ordinary tensor, which `_fill_host` only writes. Median over the steps.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from real.attention import ITEM_FIELDS, MAX_PIECES, decode_items_for  # noqa: E402
from real.batch import BlockTables, Chunk, validate  # noqa: E402
from real.prefill_graphs import MAX_SEQS, PrefillGraphs, _align4  # noqa: E402

BLOCK, NUM_BLOCKS, WIDTH, MAX_LEN = 16, 120_000, 1025, 16_400
SHAPES = ((256, 32), (256, 128), (256, 256), (512, 256), (1024, 256))
BUCKETS = (256, 320, 384, 448, 512, 640, 768, 896, 1024, 1152, 1280, 1408, 1536)


def host_graphs(max_tokens: int = 2304, max_rows: int = 256) -> PrefillGraphs:
    g = PrefillGraphs.__new__(PrefillGraphs)
    g.width, g.max_tokens, g.max_rows = WIDTH, max_tokens, max_rows
    t, p, r = max_tokens, MAX_SEQS, max_rows
    sizes = [t, t, t, p + 1, p, p + r, r, r, r + 1, ITEM_FIELDS * (r + MAX_PIECES), p * WIDTH, r * WIDTH]
    g._sizes = [_align4(n) for n in sizes]
    g._offsets = np.concatenate([[0], np.cumsum(g._sizes)])
    g.host = torch.zeros(int(g._offsets[-1]), dtype=torch.int32)
    g.kv = types.SimpleNamespace(block_size=BLOCK, pad_block=NUM_BLOCKS - 1, num_blocks=NUM_BLOCKS)
    g.tables = BlockTables()
    return g


def time_shape(chunk: int, rows: int, steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    free = rng.permutation(NUM_BLOCKS - 1).tolist()
    ctx = np.clip(rng.lognormal(np.log(1500), 0.8, rows), 32, 8000).astype(int).tolist()
    tables = [[free.pop() for _ in range(-(-c // BLOCK))] for c in ctx]
    prompt_table: list[int] = []
    g = host_graphs()
    bucket = next(b for b in BUCKETS if b >= chunk + rows)
    items = decode_items_for(min(bucket, 256), 8, 132)
    times = []
    for step in range(steps + 5):
        prompt_start = (step * chunk) % 8192
        if prompt_start == 0:
            prompt_table = []
        while len(prompt_table) * BLOCK < prompt_start + chunk:
            prompt_table.append(free.pop())
        batch = [Chunk(list(range(chunk)), prompt_start, prompt_table)]
        batch += [Chunk([7], c - 1, t) for c, t in zip(ctx, tables)]
        t0 = time.perf_counter()
        validate(batch, NUM_BLOCKS, BLOCK, MAX_LEN)
        g._fill_host(batch, bucket, min(bucket, 256), items)
        if step >= 5:
            times.append(time.perf_counter() - t0)
        for i, t in enumerate(tables):   # every row decodes one token
            ctx[i] += 1
            if len(t) * BLOCK < ctx[i]:
                t.append(free.pop())
    return {"chunk": chunk, "decode_rows": rows, "bucket": bucket, "steps": steps,
            "median_ms": statistics.median(times) * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "host_packing_cpu.json"))
    args = ap.parse_args()
    shapes = []
    for chunk, rows in SHAPES:
        r = time_shape(chunk, rows, args.steps)
        print(f"{chunk:5d} + {rows:3d} rows  validate + fill  {r['median_ms']:.3f} ms (p90 {r['p90_ms']:.3f})")
        shapes.append(r)
    record = {"what": "host time of validate + PrefillGraphs._fill_host per mixed step, engine-like step sequence",
              "command": "python experiments/bench_host_packing.py " + " ".join(sys.argv[1:]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "shapes": shapes}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the engine's host side costs: prefill CUDA graphs and the GIL hand-off between streams.

    python experiments/bench_host_overhead.py --out experiments/results/host_overhead_h100.json

Two questions, answered with Llama-3.1-8B shapes (random bf16 weights) on the real engine:

1. Prefill graphs. `ModelRunner.step` wall time of one prompt chunk (32..512 tokens), eager
   vs replaying the chunk's bucket graph, on the whole GPU and on a 64-SM partition. An
   eager forward issues ~300 kernel launches from Python; below a few hundred tokens that
   host work, not the GPU, sets the step time.
2. Decode balance. A decode step of one 8000-token context among fifteen of 200 tokens,
   against sixteen equal contexts of the same total (688 tokens each), on the 68-SM decode
   side. The decode work list cuts long contexts into pieces balanced over the batch, so
   the ratio should be near 1; a fixed split count per batch size made it about 2.
3. Stream threads. A decode step (batch 64, 1024 tokens of context) on the decode side of a
   64/68 split, alone and while a second thread loops prefill steps on the other side, with
   Python's default 5 ms GIL switch interval and with 0.1 ms. (It made no difference on an
   H100, so the engine keeps Python's default.)

Every figure is the median over --reps steps (co-run: over the steps taken in --seconds),
after warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from nexus.specs import MODELS
from real.batch import Chunk
from real.gpu_info import gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions

CHUNKS = (32, 128, 256, 512)
SPLIT = 64
SHORT_SWITCH_S = 1e-4   # the short GIL switch interval tried against Python's 5 ms default


def median_step_ms(runner: ModelRunner, batch: list[Chunk], part, graphs: bool, reps: int) -> float:
    for _ in range(3):
        runner.step(batch, part, graphs=graphs)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.step(batch, part, graphs=graphs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def decode_beside(runner: ModelRunner, decode: list[Chunk], dpart, prefill: list[Chunk] | None, ppart,
                  switch_s: float, seconds: float) -> dict:
    """Median decode step while another thread loops `prefill` (None: decode alone)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    stop, times, prefill_steps = threading.Event(), [], [0]

    def prefill_loop() -> None:
        while not stop.is_set():
            runner.step(prefill, ppart)
            prefill_steps[0] += 1

    other = threading.Thread(target=prefill_loop) if prefill else None
    try:
        if other:
            other.start()
            time.sleep(0.2)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            runner.step(decode, dpart)
            times.append(time.perf_counter() - t0)
    finally:
        stop.set()
        if other:
            other.join()
        sys.setswitchinterval(previous)
    return {"decode_step_ms": statistics.median(times) * 1e3, "decode_steps": len(times),
            "prefill_steps": prefill_steps[0]}


def run(args: argparse.Namespace) -> dict:
    spec = MODELS["llama-3.1-8b"]
    result: dict = {"command": " ".join(["python", *sys.argv]),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": gpu_facts(), "model": spec.name, "weights": "random (seed 0)"}
    runner = ModelRunner(spec, device="cuda", num_blocks=12288, max_model_len=8192, max_decode_batch=64)
    parts = Partitions([SPLIT], device="cuda")
    targets = {"all": parts.decode(0), f"{SPLIT}sm": parts.prefill(SPLIT)}
    runner.capture_prefill_graphs(targets.values())
    runner.capture_graphs([parts.decode(SPLIT)], buckets=[16, 64])
    rng = np.random.default_rng(0)

    def prompt(n: int, first_block: int) -> list[Chunk]:
        return [Chunk(rng.integers(0, spec.vocab_size, n).tolist(), 0,
                      list(range(first_block, first_block + -(-n // 16))))]

    rows = []
    for name, part in targets.items():
        for n in CHUNKS:
            batch = prompt(n, 0)
            eager = median_step_ms(runner, batch, part, False, args.reps)
            graph = median_step_ms(runner, batch, part, True, args.reps)
            rows.append({"partition": name, "chunk_tokens": n, "eager_ms": eager, "graph_ms": graph,
                         "speedup": eager / graph})
            print(f"prefill {n:4d} tokens on {name:5s}: eager {eager:6.2f} ms  graph {graph:6.2f} ms", flush=True)
    result["prefill"] = rows

    dpart, ppart = parts.decode(SPLIT), parts.prefill(SPLIT)
    balance = {}
    for label, lens in (("one long among short", [8000] + [200] * 15), ("equal", [688] * 16)):
        batch = [Chunk([1 + i], n - 1, list(range(1024 + 512 * i, 1024 + 512 * (i + 1))))
                 for i, n in enumerate(lens)]
        balance[label] = {"contexts": lens, "step_ms": median_step_ms(runner, batch, dpart, True, args.reps)}
    balance["ratio"] = balance["one long among short"]["step_ms"] / balance["equal"]["step_ms"]
    result["decode_balance"] = balance
    print(f"decode balance: one long among short {balance['one long among short']['step_ms']:.2f} ms, "
          f"equal {balance['equal']['step_ms']:.2f} ms, ratio {balance['ratio']:.2f}", flush=True)

    decode = [Chunk([1 + i], 1023, list(range(1024 + 64 * i, 1024 + 64 * (i + 1)))) for i in range(64)]
    corun = []
    for label, prefill in (("alone", None), ("eager 2048-token prefill", prompt(2048, 6000)),
                           ("graph 256-token prefill", prompt(256, 6000))):
        for switch in (0.005, SHORT_SWITCH_S):
            r = decode_beside(runner, decode, dpart, prefill, ppart, switch, args.seconds)
            corun.append({"beside": label, "switch_interval_s": switch, **r})
            print(f"decode beside {label:26s} switch {switch * 1e3:5.2f} ms: {r['decode_step_ms']:6.2f} ms "
                  f"({r['prefill_steps']} prefill steps)", flush=True)
    result["decode_beside_prefill"] = corun
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("experiments/results/host_overhead_h100.json"))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

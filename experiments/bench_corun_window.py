"""Does a co-run slowdown depend on how long the two phases have been running together?

    python3 experiments/bench_corun_window.py --out experiments/results/corun_window_h200.json

The profile times a co-run for about 0.3 s (`real.profile.Profiler.time_together`). Served,
a prefill side may stay busy for seconds while decode steps run beside it. On the H200 the
engine's decode steps beside a long prefill ran about 0.7 ms (10%) slower than that profile
predicted, while decode steps alone were within 2% (experiments/results/fidelity_h200.md).
Two candidate causes, each tested here on the same pairs of shapes:
- power: a sustained compute-bound prefill drives the chip to its power limit and the SM
  clock down, which a short window may not reach; so the decode steps are timed by second
  of a 4 s co-run, with the SM clock and the board power sampled beside them;
- the interpreter lock: the two stream threads share one; its switch interval (5 ms by
  default) bounds how long a decode thread waits for a prefill thread that holds it; so the
  long co-run repeats with a 0.5 ms switch interval.
Decode steps are timed both as the profile times them (host clock around `ModelRunner.step`)
and as the engine does (CUDA events on the partition's stream).
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

from nexus.specs import MODELS
from real.bench import capture_all_graphs, warm_up
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions
from real.profile import Profiler

# (prefill SMs, prefill chunk, prior) beside (decode batch, mean context): the engine's
# worst co-runs on the H200 (nexus and static on long-prompt traces) and the profile's points.
PAIRS = [((32, 2048, 0), (16, 1024)), ((32, 2048, 0), (8, 512)), ((64, 2048, 4096), (64, 1024)),
         ((24, 512, 0), (8, 512)), ((64, 512, 0), (16, 512))]
SEGMENTS_S = (0.0, 0.3, 1.0, 2.0, 4.0)


def corun(runner: ModelRunner, pre, pre_part, dec, dec_part, duration_s: float) -> dict:
    """Both phases loop on their partitions for `duration_s`; decode step times by segment."""
    stop = threading.Event()
    decode_steps: list[tuple[float, float, float]] = []   # (start since t0, host s, event s)
    prefill_steps: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def prefill_loop() -> None:
        while not stop.is_set():
            a = time.perf_counter()
            runner.step(pre, pre_part)
            prefill_steps.append((a - t0, time.perf_counter() - a))

    def decode_loop() -> None:
        import torch
        while not stop.is_set():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a = time.perf_counter()
            begin.record(dec_part.stream)
            runner.step(dec, dec_part)
            end.record(dec_part.stream)
            end.synchronize()
            decode_steps.append((a - t0, time.perf_counter() - a, begin.elapsed_time(end) / 1e3))

    threads = [threading.Thread(target=prefill_loop), threading.Thread(target=decode_loop)]
    with ClockPowerSampler(interval_s=0.02) as clocks:
        for t in threads:
            t.start()
        time.sleep(duration_s)
        stop.set()
        for t in threads:
            t.join()
    prefill_end = prefill_steps[-1][0] + prefill_steps[-1][1]
    segments = []
    for lo, hi in zip(SEGMENTS_S, SEGMENTS_S[1:]):
        if hi > duration_s + 1e-9:
            break
        steps = [s for s in decode_steps if lo <= s[0] < hi and s[0] + s[1] <= prefill_end]
        samples = [s for s in clocks.samples if lo <= s[0] < hi]
        segments.append({
            "from_s": lo, "to_s": hi, "decode_steps": len(steps),
            "decode_host_ms": 1e3 * statistics.median(s[1] for s in steps) if steps else None,
            "decode_event_ms": 1e3 * statistics.median(s[2] for s in steps) if steps else None,
            "sm_clock_mhz": statistics.median(s[1] for s in samples) if samples else None,
            "power_w": statistics.median(s[2] for s in samples) if samples else None})
    return {"duration_s": duration_s, "prefill_steps": len(prefill_steps),
            "prefill_ms": 1e3 * statistics.median(s[1] for s in prefill_steps[1:] or prefill_steps),
            "segments": segments}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    splits = sorted({p for (p, _, _), _ in PAIRS})
    runner = ModelRunner(MODELS["llama-3.1-8b"], device="cuda")
    parts = Partitions(splits, device="cuda")
    capture_all_graphs(runner, parts)
    warm_up(runner, parts)
    prof = Profiler(runner, parts, repeats=9)
    rows = []
    for (sms, chunk, prior), (batch, context) in PAIRS:
        pre_part, dec_part = parts.prefill(sms), parts.decode(sms)
        pre, dec = prof.prefill_batch(chunk, prior), prof.decode_batch(batch, context)
        row = {"prefill": {"sms": pre_part.sm_count, "chunk_tokens": chunk, "prior_tokens": prior},
               "decode": {"sms": dec_part.sm_count, "batch": batch, "context": context}}
        row["decode_solo_ms"] = 1e3 * prof.time_alone(dec, dec_part)
        row["prefill_solo_ms"] = 1e3 * prof.time_alone(pre, pre_part)
        row["profile_window"] = dict(zip(("prefill_ms", "decode_ms"),
                                         (1e3 * t for t in prof.time_together((pre, pre_part), (dec, dec_part)))))
        time.sleep(1.0)
        row["sustained"] = corun(runner, pre, pre_part, dec, dec_part, args.seconds)
        time.sleep(1.0)
        default_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            row["sustained_switch_0.5ms"] = corun(runner, pre, pre_part, dec, dec_part, args.seconds)
        finally:
            sys.setswitchinterval(default_interval)
        row["decode_solo_after_ms"] = 1e3 * prof.time_alone(dec, dec_part)
        solo = row["decode_solo_ms"]
        print(f"prefill {chunk}@{prior} on {pre_part.sm_count} | decode {batch}x{context} on {dec_part.sm_count}: "
              f"solo {solo:.2f} ms, profile window x{row['profile_window']['decode_ms'] / solo:.3f}, sustained x "
              + " ".join(f"{s['decode_host_ms'] / solo:.3f}" for s in row["sustained"]["segments"]
                         if s["decode_host_ms"])
              + " (event x " + " ".join(f"{s['decode_event_ms'] / solo:.3f}" for s in row["sustained"]["segments"]
                                        if s["decode_event_ms"])
              + "), switch 0.5 ms x " + " ".join(f"{s['decode_host_ms'] / solo:.3f}"
                                                 for s in row["sustained_switch_0.5ms"]["segments"]
                                                 if s["decode_host_ms"])
              + " | clock MHz " + " ".join(str(s["sm_clock_mhz"]) for s in row["sustained"]["segments"]),
              flush=True)
        rows.append(row)
    record = {"command": " ".join(sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": gpu_facts(), "model": "llama-3.1-8b", "segments_s": SEGMENTS_S, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Does a decode step slow down as the GPU heats up under sustained serving?

    python3 experiments/bench_decode_drift.py --seconds 180 --out decode_drift.json

A profile measures its grid on a GPU that has just started; an engine run serves for
minutes. Decode steps stream the weights and the KV cache from HBM, whose refresh and
clocks may change with temperature. This times whole decode forwards of Llama-3.1-8B
(random bf16, CUDA graph replays, CUDA events) at a few shapes, first cold, then every
few seconds while the GPU is kept busy between probes with the heaviest decode shape.
Each probe records the GPU and HBM temperature, SM and memory clocks and power draw
(nvidia-smi), so a drift in step time can be set against them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path


from nexus.specs import MODELS
from real.batch import pack
from real.gpu_info import gpu_facts
from real.model_runner import ModelRunner

sys.path.insert(0, str(Path(__file__).parent))
from bench_step_breakdown import Breakdown, graph_ms  # noqa: E402

SENSORS = "temperature.gpu,temperature.memory,clocks.sm,clocks.mem,power.draw"


def sensors() -> dict:
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={SENSORS}", "--format=csv,noheader,nounits", "-i", "0"],
                              capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    out = {}
    for key, value in zip(SENSORS.split(","), line.split(",")):
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = None   # "N/A": not every board reports HBM temperature
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long to keep the GPU busy")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between probes")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--shapes", default="8:1024,64:1024,256:1024", help="decode shapes batch:context")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    spec = MODELS["llama-3.1-8b"]
    runner = ModelRunner(spec, device="cuda", num_blocks=40000, max_model_len=16384 + 64, max_batch_tokens=8192)
    runner.kv.data.normal_()
    bd = Breakdown(runner, args.reps)
    model, kv = runner.model, runner.kv
    forwards = {}
    for s in args.shapes.split(","):
        a, b = (int(x) for x in s.split(":"))
        p = pack(bd.batch("decode", a, b), runner.device, kv.block_size, spec.num_kv_heads, runner.num_sms,
                 kv.num_blocks)

        def forward(p=p) -> None:
            out = model(p.input_ids, p.positions, kv, p.meta, p.select)
            model.compute_logits(out).argmax(-1)
        forwards[s] = forward
    heat = forwards[args.shapes.split(",")[-1]]

    def probe(t: float) -> dict:
        row = {"t_s": round(t, 1), **sensors(), "ms": {s: graph_ms(fn, args.reps) for s, fn in forwards.items()}}
        print(json.dumps(row), flush=True)
        return row

    start = time.perf_counter()
    probes = [probe(0.0)]
    while time.perf_counter() - start < args.seconds:
        until = time.perf_counter() + args.every
        while time.perf_counter() < until:
            graph_ms(heat, 20)
        probes.append(probe(time.perf_counter() - start))
    first, last = probes[0]["ms"], probes[-1]["ms"]
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": gpu_facts(), "model": spec.name, "probes": probes,
           "drift_last_over_first": {s: last[s] / first[s] for s in first}}
    args.out.write_text(json.dumps(out, indent=1))
    print("last/first:", {s: round(v, 4) for s, v in out["drift_last_over_first"].items()})


if __name__ == "__main__":
    main()

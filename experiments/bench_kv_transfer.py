"""Time KV transfers between two ranks over KV sizes, and fit the link's latency and bandwidth.

    python experiments/bench_kv_transfer.py --device cpu  --out experiments/results/kv_transfer_cpu_gloo.json
    python experiments/bench_kv_transfer.py --device cuda --out experiments/results/kv_transfer_2gpu.json

Two processes each hold a paged KV cache of the model's shapes (bf16, 16-token blocks). A
request of n tokens has its blocks scattered over the cache, as the engine's are. Rank 0
sends them to rank 1 with `real.kv_transfer.KVLink` (pack into one buffer, header and block
count, payload, scatter into freshly chosen blocks), and rank 1 sends them straight back the
same way; a one-way time is half that round trip, so packing and unpacking are included, as
the engine pays them. On GPUs each rank has its own device and payloads go over NCCL
(NCCL_NVLS_ENABLE=0); on CPU they go over gloo on loopback.

The fit is a line through the median one-way time against payload bytes, least squares on
residuals relative to each time (so the small sizes that fix the latency weigh as much as the
large ones that fix the bandwidth): latency_s is the intercept, bandwidth the inverse slope.
The output's `link` section is what `nexus.topology.LinkSpec.load` reads (`nexus-sim --policy disagg --param link=FILE.json`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_TOKENS = {"cpu": "1,16,64,256,1024,4096", "cuda": "1,16,64,256,1024,4096,16384,65536"}


def _rank(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch

    from nexus.kv import blocks_for
    from nexus.specs import resolve_model
    from real.kv_cache import KVCache
    from real.kv_transfer import KVLink, connect, link_groups

    if args.device == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    spec = resolve_model(args.model)
    sizes = [int(t) for t in args.tokens.split(",")]
    num_blocks = blocks_for(max(sizes))
    cache = KVCache(spec, num_blocks, device, torch.bfloat16)
    cache.data.normal_(generator=torch.Generator(device).manual_seed(rank))
    connect(rank, port)
    outgoing = KVLink(cache, 1 - rank, *link_groups(device))   # rank 0 -> 1 on the first, 1 -> 0 on the second
    incoming = KVLink(cache, 1 - rank, *link_groups(device))
    if rank == 1:
        outgoing, incoming = incoming, outgoing
    rng = np.random.default_rng(rank)
    points = []
    for tokens in sizes:
        n = blocks_for(tokens)
        samples = []
        for i in range(args.warmup + args.repeats):
            ids = rng.permutation(num_blocks)[:n].tolist()
            if rank == 0:
                start = time.perf_counter()
                outgoing.send([tokens], ids)
                msg = incoming.recv(lambda meta, k: rng.permutation(num_blocks)[:k].tolist())
                if i >= args.warmup:
                    samples.append((time.perf_counter() - start) / 2)
            else:
                msg = incoming.recv(lambda meta, k: rng.permutation(num_blocks)[:k].tolist())
                outgoing.send(msg.meta, msg.block_ids)
        if rank == 0:
            points.append({"tokens": tokens, "blocks": n, "bytes": msg.payload_bytes,
                           "one_way_s": statistics.median(samples), "samples_s": samples})
            print(f"{tokens:>7d} tokens  {msg.payload_bytes / 2**20:10.2f} MiB  "
                  f"{statistics.median(samples) * 1e3:10.3f} ms", flush=True)
    if rank == 0:
        Path(out).write_text(json.dumps(points))


def fit_link(points: list[dict]) -> dict:
    """Latency and bandwidth from a line through (bytes, one-way seconds), relative residuals."""
    x = np.array([p["bytes"] for p in points], dtype=float)
    y = np.array([p["one_way_s"] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1, w=1 / y)
    predicted = intercept + slope * x
    rel = (predicted - y) / y
    return {
        "latency_s": float(intercept), "bandwidth_bytes_per_s": float(1 / slope),
        "median_abs_rel_residual": float(np.median(np.abs(rel))),
        "max_abs_rel_residual": float(np.max(np.abs(rel))),
    }


def link_of(fit: dict) -> dict | None:
    """The link section a fit gives (latency clamped at 0), or None where the one-way times did
    not grow with bytes: a slope of zero or less has no bandwidth to report."""
    bandwidth = fit["bandwidth_bytes_per_s"]
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        return None
    return {"latency_s": max(0.0, fit["latency_s"]), "bandwidth_bytes_per_s": bandwidth}


def machine(device: str) -> dict:
    if device == "cuda":
        from real.gpu_info import gpu_facts
        return {"rank0": gpu_facts(0), "rank1": gpu_facts(1)}
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torch
    # Both ranks share these cores with whatever else runs: the load says how much.
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", default="llama-3.1-8b", help="whose KV shapes to move")
    ap.add_argument("--tokens", help="comma-separated KV sizes in tokens "
                                     f"(default cpu: {DEFAULT_TOKENS['cpu']}; cuda: {DEFAULT_TOKENS['cuda']})")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.tokens = args.tokens or DEFAULT_TOKENS[args.device]

    import tempfile

    import torch
    import torch.multiprocessing as mp

    from nexus.specs import resolve_model
    from real.kv_transfer import free_port

    if args.device == "cuda" and torch.cuda.device_count() < 2:
        print(f"--device cuda needs two GPUs; torch sees {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        points_file = f"{tmp}/points.json"
        mp.spawn(_rank, args=(free_port(), args, points_file), nprocs=2, join=True)
        points = json.loads(Path(points_file).read_text())
    spec = resolve_model(args.model)
    record = {
        "benchmark": "one-way KV transfer time between two ranks (half a ping-pong), pack and unpack included",
        "command": "python experiments/bench_kv_transfer.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(args.device),
        "backend": "nccl" if args.device == "cuda" else "gloo",
        "env": {"NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")},
        "model": spec.name, "dtype": "bfloat16", "kv_bytes_per_token": spec.kv_bytes_per_token,
        "repeats": args.repeats, "warmup": args.warmup,
        "link": None, "fit": None, "points": points,
    }
    fit = fit_link(points)
    record["fit"] = {**fit, "method": "least squares of one-way time on bytes, residuals relative to each time"}
    record["link"] = link_of(fit)
    if record["link"] is None:
        print(f"bench_kv_transfer: one-way times do not grow with bytes (fitted slope {1 / fit['bandwidth_bytes_per_s']:.3g} "
              f"s/B): no bandwidth to report and no link file written; sweep larger --tokens", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"latency {fit['latency_s'] * 1e6:.1f} us, bandwidth {fit['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s "
          f"(median |residual| {fit['median_abs_rel_residual']:.1%}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

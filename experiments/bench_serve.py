"""What serving over HTTP costs, on CPU with tiny-llama: the same trace through `nexus-real bench`
and through `nexus-real serve` driven by `nexus-real client`, then a thousand streams at once.

    python experiments/bench_serve.py [--requests 100] [--rate 10] [--out experiments/results/serve_cpu.json]

The server runs in its own process; the client runs in this one. Reported per policy:
- the engine's own mean TTFT and TBT under `bench` and under `serve` (what the HTTP side and
  text decoding add to the engine's loop, which shares the server's Python process);
- the client's TTFT minus the engine's, per request (the HTTP round trip on loopback);
- the wall time of 1,000 streaming requests sent at once, and whether every token arrived.
The machine's load average is recorded: on a shared machine the numbers move with it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from real.cli import main as real_main  # noqa: E402
from traces import TraceEntry, write_trace  # noqa: E402

ENGINE = ["--device", "cpu", "--model", "tiny-llama", "--num-blocks", "512"]


def make_trace(path: Path, n: int, rate: float, seed: int, at_once: bool = False) -> None:
    rng = np.random.default_rng(seed)
    times = np.zeros(n) if at_once else np.concatenate(([0.0], np.cumsum(rng.exponential(1 / rate, n - 1))))
    prompt = rng.integers(8, 200, n) if not at_once else rng.integers(4, 24, n)
    output = rng.integers(2, 40, n) if not at_once else rng.integers(2, 12, n)
    write_trace([TraceEntry(str(i), float(t), int(p), int(o)) for i, (t, p, o) in enumerate(zip(times, prompt, output))],
                path)


class ServeProcess:
    def __init__(self, policy: str, out: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "real.cli", "serve", *ENGINE, "--policy", policy,
                                      "--port", "0", "--out", str(out)],
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("the server exited before listening")
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                self.url = found[1]
                return

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(120)


def run_policy(policy: str, trace: Path, work: Path) -> dict:
    real_main(["bench", *ENGINE, "--policy", policy, "--trace", str(trace), "--out", str(work / "bench")])
    bench = json.loads((work / "bench" / "summary.json").read_text())
    server = ServeProcess(policy, work / "served")
    try:
        real_main(["client", "--url", server.url, "--trace", str(trace), "--out", str(work / "client")])
    finally:
        server.stop()
    served = json.loads((work / "served" / "summary.json").read_text())
    client = pd.read_parquet(work / "client" / "requests.parquet")
    engine = pd.read_parquet(work / "served" / "requests.parquet")
    both = client.merge(engine, left_on="server_request_id", right_on="request_id", suffixes=("_client", "_engine"))
    slack_ms = (both["ttft_s_client"] - both["ttft_s_engine"]) * 1e3
    return {
        "bench_engine": {"ttft_mean_s": bench["ttft_s"]["mean"], "tbt_mean_s": bench["tbt_s"]["mean"]},
        "served_engine": {"ttft_mean_s": served["ttft_s"]["mean"], "tbt_mean_s": served["tbt_s"]["mean"]},
        "client_minus_engine_ttft_ms": {"median": float(slack_ms.median()), "p99": float(slack_ms.quantile(0.99)),
                                        "max": float(slack_ms.max()), "min": float(slack_ms.min()),
                                        "requests": int(len(both))},
    }


def thousand_at_once(work: Path, n: int) -> dict:
    trace = work / "burst.jsonl"
    make_trace(trace, n, 1.0, 1, at_once=True)
    server = ServeProcess("nexus", work / "burst_served")
    try:
        started = time.perf_counter()
        code = real_main(["client", "--url", server.url, "--trace", str(trace), "--out", str(work / "burst")])
        wall = time.perf_counter() - started
    finally:
        server.stop()
    frame = pd.read_parquet(work / "burst" / "requests.parquet")
    return {"requests": n, "client_exit_status": code, "wall_s": wall, "completed": int(len(frame)),
            "all_tokens": bool((frame["generated_tokens"] == frame["requested_tokens"]).all()),
            "ttft_p50_s": float(frame["ttft_s"].median()), "ttft_max_s": float(frame["ttft_s"].max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--policies", default="chunked,nexus")
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "serve_cpu.json"))
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trace = work / "trace.jsonl"
        make_trace(trace, args.requests, args.rate, 0)
        policies = {}
        for policy in args.policies.split(","):
            (work / policy).mkdir()
            policies[policy] = run_policy(policy, trace, work / policy)
        burst = thousand_at_once(work, args.burst)
    result = {
        "command": "python experiments/bench_serve.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "trace": {"requests": args.requests, "rate_rps": args.rate, "prompt_tokens": "8..199",
                  "output_tokens": "2..39"},
        "policies": policies,
        "burst": burst,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

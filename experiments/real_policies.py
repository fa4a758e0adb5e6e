"""Real H100 results per policy, taken from the measured fidelity cases at the trace's own rate.

    python experiments/real_policies.py experiments/results/fidelity_real_*.json

Writes experiments/results/real_policies_h100.json: TTFT and TBT (mean, P95) and
throughput for chunked, static and nexus on the shipped ShareGPT trace (first 400 requests,
20 req/s) and on the shipped mixed trace (first 120 requests, 2 req/s), as measured by
`experiments/fidelity.py real` (see that file for the exact commands).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(paths: list[str]) -> int:
    cases, sources = {}, []
    for path in paths:
        data = json.loads(Path(path).read_text())
        sources.append({"file": str(Path(path).relative_to(ROOT)) if Path(path).is_absolute() else path,
                        "command": data["command"], "date": data["date"]})
        machine = data["machine"]
        for c in data["cases"]:
            if c["rate_scale"] == 1.0:
                cases[(c["trace"], c["policy"])] = c["summary"]
    table = {}
    for (trace, policy), s in sorted(cases.items()):
        table.setdefault(trace, {})[policy] = {
            "ttft_mean_s": s["ttft_s"]["mean"], "ttft_p95_s": s["ttft_s"]["p95"],
            "tbt_mean_s": s["tbt_s"]["mean"], "tbt_p95_s": s["tbt_s"]["p95"],
            "throughput_rps": s["throughput_rps"], "output_tokens_per_s": s["output_tokens_per_s"],
            "preemptions": s["preemptions"], "requests": s["requests"]}
    findings = []
    for trace, row in table.items():
        best_ttft = min(row, key=lambda p: row[p]["ttft_mean_s"])
        best_tbt = min(row, key=lambda p: row[p]["tbt_p95_s"])
        nexus, chunked = row.get("nexus"), row.get("chunked")
        if nexus and chunked:
            findings.append(
                f"{trace}: nexus vs chunked: mean TTFT x{nexus['ttft_mean_s'] / chunked['ttft_mean_s']:.2f}, "
                f"P95 TBT x{nexus['tbt_p95_s'] / chunked['tbt_p95_s']:.2f}; lowest mean TTFT: {best_ttft}, "
                f"lowest P95 TBT: {best_tbt}")
    record = {"what": "chunked, static (64:68) and nexus on the H100, random bf16 Llama-3.1-8B weights",
              "traces": {"sharegpt": "traces/sharegpt.jsonl, first 400 requests, 20 req/s",
                         "mixed": "traces/mixed.jsonl, first 120 requests, 2 req/s"},
              "machine": machine, "sources": sources, "results": table, "findings": findings}
    out = ROOT / "experiments" / "results" / "real_policies_h100.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(findings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Plain-text tables of the paper experiments, and the headline ratios set beside the paper's."""
from __future__ import annotations

def print_sweep(record: dict) -> None:
    print(f"\n{record['experiment']}: TTFT s mean/P95, TBT ms mean/P95, completed req/s per GPU")
    for gpu in record["slos"]:
        for wl in record["workloads"]:
            rows = [r for r in record["runs"] if r["gpu"] == gpu and r["workload"] == wl]
            if not rows:
                continue
            slo = record["slos"][gpu][wl]
            print(f"\n[{gpu} / {wl}]  SLO: P95 TTFT <= {slo['ttft_p95_s']} s, P95 TBT <= "
                  f"{slo['tbt_p95_s'] * 1e3:.0f} ms   ('*' = within)")
            rates = sorted({r["rate_rps"] for r in rows})
            print(f"{'policy':>14} " + " ".join(f"{rate:>22.3g}" for rate in rates))
            for name in dict.fromkeys(r["policy"] for r in rows):
                by_rate = {r["rate_rps"]: r for r in rows if r["policy"] == name}
                cells = []
                for rate in rates:
                    r = by_rate.get(rate)
                    cells.append(f"{'':>22}" if r is None else
                                 f"{r['ttft_s']['mean']:.2f}/{r['ttft_s']['p95']:.2f} "
                                 f"{r['tbt_s']['mean'] * 1e3:.0f}/{r['tbt_s']['p95'] * 1e3:.0f}"
                                 f"{'*' if r.get('within_slo') else ' '}{r['throughput_rps_per_gpu']:.3g}"
                                 .rjust(22))
                print(f"{name:>14} " + " ".join(cells))


def print_max_rates(record: dict) -> None:
    print(f"\n{record['experiment']}: highest rate within SLO (req/s; per GPU in brackets)")
    workloads = list(record["workloads"])
    for gpu in record["slos"]:
        print(f"\n[{gpu}] " + "  ".join(f"{w}: TTFT<={record['slos'][gpu][w]['ttft_p95_s']}s "
                                         f"TBT<={record['slos'][gpu][w]['tbt_p95_s'] * 1e3:.0f}ms"
                                         for w in workloads))
        print(f"{'policy':>14} " + " ".join(f"{w:>20}" for w in workloads))
        rows = [r for r in record["results"] if r["gpu"] == gpu]
        for name in dict.fromkeys(r["policy"] for r in rows):
            cells = []
            for w in workloads:
                r = next((r for r in rows if r["workload"] == w and r["policy"] == name), None)
                if r is None:
                    cells.append(f"{'':>20}")
                elif r["max_rate_rps"] is None:
                    cells.append(f"< {r['first_failing_rate_rps']:.3g}".rjust(20))
                else:
                    more = ">=" if r["status"] == "holds-at-highest" else ""
                    cells.append(f"{more}{r['max_rate_rps']:.3g} ({r['max_rate_rps_per_gpu']:.3g})".rjust(20))
            print(f"{name:>14} " + " ".join(cells))




def _ratio_range(pairs: list[tuple[float, float]]) -> str:
    """min-max of a/b over pairs; above 1 means the second (Nexus) is lower, i.e. better."""
    r = [a / b for a, b in pairs if b > 0]
    return "n/a" if not r else f"{min(r):.2f}-{max(r):.2f}"


def headline(sweep: dict, best: dict, baseline: str = "chunked", ours: str = "nexus") -> list[dict]:
    """Nexus against vLLM-like chunked prefill, as the paper states its gains.

    Throughput: ratio of the highest rates within the SLO. Latency: ratio baseline/Nexus of
    TTFT and TBT at the sweep's rates where Nexus meets its SLO (the regime it can serve),
    given as min-max over those rates; the paper's "up to" figures are maxima of this kind.
    """
    rows = []
    for gpu in best["slos"]:
        for wl in best["workloads"]:
            rate = {r["policy"]: r["max_rate_rps"] or 0.0 for r in best["results"]
                    if r["gpu"] == gpu and r["workload"] == wl}
            runs = [r for r in sweep["runs"] if r["gpu"] == gpu and r["workload"] == wl]
            ok = {r["rate_rps"] for r in runs if r["policy"] == ours and r["within_slo"]}
            pairs = {}
            for r in runs:
                if r["rate_rps"] in ok and r["policy"] in (baseline, ours):
                    pairs.setdefault(r["rate_rps"], {})[r["policy"]] = r
            both = [p for p in pairs.values() if len(p) == 2]

            def rng(metric: str, stat: str) -> str:
                return _ratio_range([(p[baseline][metric][stat], p[ours][metric][stat]) for p in both])

            rows.append({
                "gpu": gpu, "workload": wl,
                "max_rate": {k: rate.get(k) for k in (baseline, "static", ours, "disagg")},
                "throughput_x": rate[ours] / rate[baseline] if rate.get(baseline) else None,
                "ttft_mean_x": rng("ttft_s", "mean"), "ttft_p95_x": rng("ttft_s", "p95"),
                "tbt_mean_x": rng("tbt_s", "mean"), "tbt_p95_x": rng("tbt_s", "p95"),
                "rates_compared": len(both)})
    return rows


def print_headline(sweep: dict, best: dict) -> None:
    print("\nNexus vs chunked prefill (vLLM-like). Paper, on L20: up to 2.2x throughput, "
          "20x lower TTFT, 2.5x lower TBT.")
    print("max rate within SLO in req/s (disagg: both GPUs); latency columns: chunked / nexus, "
          "min-max over sweep rates where nexus meets its SLO (>1 = nexus lower)\n")
    print("| GPU | workload | chunked | static | nexus | disagg (2 GPUs) | nexus/chunked rate "
          "| TTFT mean | TTFT P95 | TBT mean | TBT P95 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for h in headline(sweep, best):
        m = h["max_rate"]
        fmt = lambda x: "fail" if not x else f"{x:.3g}"  # noqa: E731
        x = "n/a" if h["throughput_x"] is None else f"{h['throughput_x']:.2f}x"
        print(f"| {h['gpu']} | {h['workload']} | {fmt(m['chunked'])} | {fmt(m['static'])} | "
              f"{fmt(m['nexus'])} | {fmt(m['disagg'])} | {x} | {h['ttft_mean_x']} | "
              f"{h['ttft_p95_x']} | {h['tbt_mean_x']} | {h['tbt_p95_x']} |")

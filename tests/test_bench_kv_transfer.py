"""The KV transfer sweep: its fit recovers a known line, and a small CPU run writes a link file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.topology import LinkSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
from bench_kv_transfer import fit_link, link_of  # noqa: E402


def test_fit_recovers_latency_and_bandwidth_of_an_exact_line():
    latency, bandwidth = 25e-6, 300e9
    points = [{"bytes": b, "one_way_s": latency + b / bandwidth} for b in (2**21, 2**24, 2**28, 2**33)]
    fit = fit_link(points)
    assert fit["latency_s"] == pytest.approx(latency, rel=1e-6)
    assert fit["bandwidth_bytes_per_s"] == pytest.approx(bandwidth, rel=1e-6)
    assert fit["max_abs_rel_residual"] < 1e-9


def test_fit_weighs_small_transfers_so_latency_is_not_lost_under_large_ones():
    # 1% noise on the largest time would swamp a 10 us latency in an unweighted fit.
    latency, bandwidth = 10e-6, 100e9
    sizes = [2**20, 2**22, 2**30]
    points = [{"bytes": b, "one_way_s": (latency + b / bandwidth) * (1.01 if b == 2**30 else 1.0)} for b in sizes]
    assert fit_link(points)["latency_s"] == pytest.approx(latency, rel=0.2)


def test_a_sweep_whose_times_do_not_grow_with_bytes_gives_no_link():
    flat = [{"bytes": b, "one_way_s": t} for b, t in ((2**10, 1.2e-3), (2**14, 1.0e-3), (2**17, 0.9e-3))]
    assert link_of(fit_link(flat)) is None
    rising = [{"bytes": b, "one_way_s": -1e-6 + b / 1e9} for b in (2**20, 2**24, 2**28)]
    assert link_of(fit_link(rising)) == {"latency_s": 0.0, "bandwidth_bytes_per_s": pytest.approx(1e9)}


@pytest.mark.slow
def test_cpu_sweep_writes_a_link_file_the_simulator_loads(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "link.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_kv_transfer.py"), "--device", "cpu",
                    # Sizes a loaded 2-core machine still tells apart: with 1-512 tokens the times were
                    # latency and noise, and the fitted slope could come out negative.
                    "--model", "tiny-llama", "--tokens", "1,2048,16384", "--repeats", "2", "--warmup", "1",
                    "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    record = json.loads(out.read_text())
    assert [p["tokens"] for p in record["points"]] == [1, 2048, 16384]
    assert [p["bytes"] for p in record["points"]] == [b * 16 * 2 * 2 * 2 * 16 * 2 for b in (1, 128, 1024)]
    assert all(len(p["samples_s"]) == 2 and p["one_way_s"] > 0 for p in record["points"])
    assert record["backend"] == "gloo" and record["machine"]["cores"] >= 1 and record["date"]
    spec = LinkSpec.load(out)
    assert spec.bandwidth_bytes_per_s == record["fit"]["bandwidth_bytes_per_s"]
    assert spec.latency_s == max(0.0, record["fit"]["latency_s"])

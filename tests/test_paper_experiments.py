"""The paper-experiment code paths on a tiny configuration: bisection, SLOs, records, figures."""
import json
import sys
from pathlib import Path

import pytest

from nexus.specs import GPUS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

import paper  # noqa: E402
from paper_search import DOUBLINGS, found, search_from, simulate, within  # noqa: E402
from paper_setup import GPU_SETUPS, WORKLOADS, build_trace, slos, variant  # noqa: E402


def _search(ok_at, lo, hi, rel_tol=0.02):
    search = search_from(lo, hi)
    search.rel_tol = rel_tol
    while (rate := search.next_rate()) is not None:
        point = {"ttft_s": {"p95": 0.0}, "tbt_s": {"p95": 0.0}, "throughput_rps": rate}
        search.tell(rate, ok_at(rate), point=point)
    return found(search)


def test_bisection_brackets_the_threshold():
    seen = []

    def ok_at(rate):
        seen.append(rate)
        return rate <= 3.7

    result = _search(ok_at, 1.0, 2.0, rel_tol=0.01)
    assert result["status"] == "bracketed"
    assert result["max_rate_rps"] <= 3.7 < result["first_failing_rate_rps"]
    assert result["first_failing_rate_rps"] / result["max_rate_rps"] <= 1.01 + 1e-12
    assert [p["rate_rps"] for p in result["probes"]] == seen
    assert all(p["ok"] == (p["rate_rps"] <= 3.7) for p in result["probes"])


def test_bisection_reports_both_edges():
    fails = _search(lambda r: False, 1.0, 2.0)
    assert fails["status"] == "fails-at-lowest" and fails["max_rate_rps"] is None
    assert len(fails["probes"]) == 1
    holds = _search(lambda r: True, 1.0, 2.0)
    assert holds["status"] == "holds-at-highest" and holds["max_rate_rps"] == 2.0 * 2 ** DOUBLINGS
    with pytest.raises(ValueError):
        search_from(2.0, 1.0)


@pytest.fixture(scope="module")
def sharegpt():
    return build_trace(WORKLOADS["sharegpt"], 120)


def test_slos_are_looser_on_a_slower_gpu_and_for_longer_prompts(sharegpt):
    docs = build_trace(WORKLOADS["long-doc"], 60)
    h100, l20 = GPU_SETUPS["h100-sxm"], GPU_SETUPS["l20"]
    assert slos(sharegpt, l20)["ttft_p95_s"] > slos(sharegpt, h100)["ttft_p95_s"]
    assert slos(sharegpt, l20)["tbt_p95_s"] > slos(sharegpt, h100)["tbt_p95_s"]
    assert slos(docs, h100)["ttft_p95_s"] > 5 * slos(sharegpt, h100)["ttft_p95_s"]


def test_chunked_latency_grows_from_light_to_heavy_load(sharegpt):
    setup = GPU_SETUPS["l20"]
    v = variant("chunked", setup)
    light, mid, heavy = (simulate(sharegpt, setup, v, r) for r in (1.0, 8.0, 60.0))
    assert light["ttft_s"]["p95"] <= mid["ttft_s"]["p95"] < heavy["ttft_s"]["p95"]
    assert light["tbt_s"]["mean"] < mid["tbt_s"]["mean"] < heavy["tbt_s"]["mean"]
    assert light["throughput_rps"] < heavy["throughput_rps"]


def test_simulated_max_rate_holds_at_the_answer_and_fails_just_above(sharegpt):
    setup = GPU_SETUPS["l20"]
    v = variant("static", setup)
    slo = slos(sharegpt, setup)
    result = _search(lambda r: within(simulate(sharegpt, setup, v, r), slo), 0.5, 4.0, 0.05)
    assert result["status"] == "bracketed"
    assert within(simulate(sharegpt, setup, v, result["max_rate_rps"]), slo)
    assert not within(simulate(sharegpt, setup, v, result["first_failing_rate_rps"]), slo)
    assert result["first_failing_rate_rps"] / result["max_rate_rps"] <= 1.05 + 1e-12


def test_disagg_counts_two_gpus(sharegpt):
    setup = GPU_SETUPS["h100-sxm"]
    point = simulate(sharegpt, setup, variant("disagg", setup), 20.0)
    assert point["gpus"] == 2
    assert point["throughput_rps_per_gpu"] == pytest.approx(point["throughput_rps"] / 2)


def test_every_gpu_preset_has_a_setup_on_its_own_split(sharegpt):
    for gpu, setup in GPU_SETUPS.items():
        assert setup.split == GPUS[gpu].half_split()
        point = simulate(sharegpt[:30], setup, variant("static", setup), 5.0)
        assert point["throughput_rps"] > 0


def test_all_experiments_write_records_and_figures(tmp_path):
    workloads = ["sharegpt", "long-doc"]
    assert paper.main(["all", "--gpus", "l20", "--workloads", ",".join(workloads),
                       "--requests", "60", "--fractions", "0.3,1.5", "--jobs", "1",
                       "--results-dir", str(tmp_path), "--figures-dir", str(tmp_path)]) == 0
    sweep = json.loads((tmp_path / "paper_rate_sweep.json").read_text())
    best = json.loads((tmp_path / "paper_max_rate.json").read_text())
    ablation = json.loads((tmp_path / "paper_ablation.json").read_text())
    for record in (sweep, best, ablation):
        assert record["command"].startswith("python experiments/paper.py all")
        assert record["date"] and record["machine"]["cpus"] >= 1
        assert record["setups"]["l20"]["cost_model"]["name"] == "analytical"
        assert set(record["slos"]["l20"]) == set(workloads)
        assert all(record["workloads"][w]["requests"] == 60 for w in workloads)

    assert len(sweep["runs"]) == len(workloads) * len(paper.POLICIES) * 2
    for run in sweep["runs"]:
        slo = sweep["slos"][run["gpu"]][run["workload"]]
        assert run["within_slo"] == within(run, slo)
        assert run["throughput_rps"] > 0

    assert len(best["results"]) == len(workloads) * len(paper.POLICIES)
    for res in best["results"] + ablation["results"]:
        probes = {p["rate_rps"]: p for p in res["probes"]}
        if res["max_rate_rps"] is not None:
            assert probes[res["max_rate_rps"]]["ok"]
            assert res["at_max"]["within_slo"]
        if res["first_failing_rate_rps"] is not None:
            assert not probes[res["first_failing_rate_rps"]]["ok"]
        if res["status"] == "bracketed":
            assert res["max_rate_rps"] < res["first_failing_rate_rps"]

    assert {r["policy"] for r in ablation["runs"]} == set(paper.ABLATION)
    assert {r["policy"] for r in ablation["results"]} == set(paper.ABLATION) | set(paper.BETA_SENSITIVITY)
    for name in ("paper_rate_sweep_l20", "paper_max_rate", "paper_ablation", "paper_ablation_sweep_l20"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""vllm_results.json: the keys of vLLM's serving benchmark, computed as it computes them."""
from __future__ import annotations

import json
import math

import pytest

from nexus.errors import UserError
from nexus.metrics import TokenGaps, requests_frame
from nexus.request import Request
from nexus.vllm_results import parse_percentiles, vllm_results, write_vllm_results


def _served(rid, arrival, prompt, first, finish, generated):
    req = Request(rid, arrival, prompt, generated)
    req.generated, req.first_token_s, req.last_token_s, req.finish_s = generated, first, finish, finish
    return req


def test_values_by_hand(tmp_path):
    frame = requests_frame([_served("a", 0.0, 10, 0.1, 0.5, 5), _served("b", 1.0, 20, 1.3, 1.3, 1)])
    gaps = TokenGaps()
    gaps.add(0.01, 2)
    gaps.add(0.03, 1)
    r = write_vllm_results(tmp_path / "v.json", frame, gaps, [50, 90, 99.5], {"backend": "x"})
    assert r == json.loads((tmp_path / "v.json").read_text())
    assert r["backend"] == "x" and r["completed"] == 2 and r["duration"] == pytest.approx(1.3)
    assert r["total_input_tokens"] == 30 and r["total_output_tokens"] == 6
    assert r["request_throughput"] == pytest.approx(2 / 1.3)
    assert r["output_throughput"] == pytest.approx(6 / 1.3)
    assert r["total_token_throughput"] == pytest.approx(36 / 1.3)
    assert r["mean_ttft_ms"] == pytest.approx(200) and r["std_ttft_ms"] == pytest.approx(100)
    assert r["median_ttft_ms"] == pytest.approx(200) and r["p90_ttft_ms"] == pytest.approx(280)
    # TPOT only over requests with more than one token: (0.5 - 0.1) / 4
    assert r["mean_tpot_ms"] == pytest.approx(100) and r["std_tpot_ms"] == 0
    # ITL over every gap, a gap of weight 2 counted twice: [10, 10, 30] ms
    assert r["mean_itl_ms"] == pytest.approx(50 / 3) and r["median_itl_ms"] == pytest.approx(10)
    assert r["std_itl_ms"] == pytest.approx(math.sqrt(800 / 9))
    assert r["p90_itl_ms"] == pytest.approx(26)
    assert r["p99.5_itl_ms"] == pytest.approx(29.8)   # rank 0.995 * 2 = 1.99
    assert r["mean_e2el_ms"] == pytest.approx(400) and r["p50_e2el_ms"] == pytest.approx(400)
    assert {f"{s}_{m}_ms" for s in ("mean", "median", "std", "p50", "p90", "p99.5")
            for m in ("ttft", "tpot", "itl", "e2el")} <= set(r)


@pytest.mark.parametrize("text", ["", "50,x", "0,50", "101", "50,,-1"])
def test_bad_percentiles_are_refused(text):
    with pytest.raises(UserError, match="--percentiles"):
        parse_percentiles(text)


def test_percentiles_parse():
    assert parse_percentiles("50, 90,99.9") == [50.0, 90.0, 99.9]

"""RateSearch: the bracket it reports, the probes it makes, and driving many searches at once."""
import math
from concurrent.futures import ProcessPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.rate_search import RateSearch, search_all
from sim.executors import InlineExecutor


def run(search: RateSearch, threshold: float) -> dict:
    while (rate := search.next_rate()) is not None:
        search.tell(rate, rate <= threshold)
    return search.result()


@settings(max_examples=200, deadline=None)
@given(ratio=st.floats(2.0 ** -9, 2.0 ** 9), start=st.floats(0.05, 20.0), tol=st.sampled_from([0.01, 0.02, 0.1]))
def test_bracket_holds_the_threshold_within_tolerance(ratio, start, tol):
    threshold = ratio * start     # within the 2^10 the search may expand either way
    res = run(RateSearch(start, 2 * start, rel_tol=tol, max_expansions=10), threshold)
    assert res["status"] == "bracketed"
    assert res["max_rate"] <= threshold < res["min_failing"]
    assert res["min_failing"] / res["max_rate"] <= 1 + tol + 1e-9
    # max_rate is the highest passing probe, min_failing the lowest failing one above it
    assert res["max_rate"] == max(p["rate"] for p in res["probes"] if p["ok"])
    assert res["min_failing"] == min(p["rate"] for p in res["probes"] if not p["ok"])


def test_probe_order_doubles_up_then_bisects():
    res = run(RateSearch(1.0, 2.0, rel_tol=0.02, max_expansions=4, expand_down=False), 5.0)
    rates = [p["rate"] for p in res["probes"]]
    assert rates[:4] == [1.0, 2.0, 4.0, 8.0]
    assert rates[4] == pytest.approx(math.sqrt(32.0))
    assert all(lo < r < hi for r, lo, hi in zip(rates[5:], [4.0] * 99, [8.0] * 99))


def test_without_expanding_down_a_failing_start_ends_the_search():
    res = run(RateSearch(1.0, 2.0, expand_down=False), 0.5)
    assert res == {"max_rate": None, "min_failing": 1.0, "status": "fails-at-lowest",
                   "probes": [{"rate": 1.0, "ok": False}]}


def test_expansions_are_bounded_both_ways():
    up = run(RateSearch(1.0, 2.0, max_expansions=3), 1e9)
    assert up["status"] == "holds-at-highest" and up["min_failing"] is None
    assert [p["rate"] for p in up["probes"]] == [1.0, 2.0, 4.0, 8.0, 16.0]
    down = run(RateSearch(1.0, 2.0, max_expansions=3), 1e-9)
    assert down["status"] == "fails-at-lowest" and down["max_rate"] is None
    assert [p["rate"] for p in down["probes"]] == [1.0, 0.5, 0.25, 0.125, 0.0625]


def test_around_a_right_prediction_takes_two_probes():
    res = run(RateSearch.around(10.0), 10.5)          # truth inside [1.0x, 1.1x]
    assert [p["rate"] for p in res["probes"]] == [10.0, pytest.approx(11.0)]
    res = run(RateSearch.around(10.0), 9.5)           # truth inside [0.9x, 1.0x]
    assert [p["rate"] for p in res["probes"]] == [10.0, pytest.approx(10.0 / 1.1)]
    assert res["status"] == "bracketed"


def test_around_a_wrong_prediction_searches_on():
    res = run(RateSearch.around(10.0), 31.0)
    assert res["max_rate"] <= 31.0 < res["min_failing"] <= 1.1 * res["max_rate"] * (1 + 1e-9)
    assert len(res["probes"]) > 2


def test_tell_must_answer_the_pending_rate():
    s = RateSearch(1.0, 2.0)
    s.next_rate()
    with pytest.raises(ValueError):
        s.tell(3.0, True)


def _probe(threshold: float, rate: float) -> dict:
    return {"ok": rate <= threshold, "seen": rate}


@pytest.mark.parametrize("make_executor", [InlineExecutor, lambda: ProcessPoolExecutor(2)])
def test_search_all_runs_each_search_to_its_own_bracket(make_executor):
    thresholds = {"a": 3.0, "b": 0.3, "c": 17.0}
    searches = {k: RateSearch(1.0, 2.0, max_expansions=10) for k in thresholds}
    seen = []
    with make_executor() as ex:
        search_all(searches, _probe, lambda k, r: (thresholds[k], r), ex, lambda k, p: seen.append(k))
    for k, t in thresholds.items():
        res = searches[k].result()
        assert res["max_rate"] <= t < res["min_failing"]
        assert all(p["seen"] == p["rate"] for p in res["probes"])   # the probe's details are kept
        alone = run(RateSearch(1.0, 2.0, max_expansions=10), t)
        assert [p["rate"] for p in res["probes"]] == [p["rate"] for p in alone["probes"]]
    assert len(seen) == sum(len(s.probes) for s in searches.values())

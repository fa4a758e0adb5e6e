"""The simulated link: latency plus bytes over a bandwidth that concurrent transfers share."""
import json

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.errors import UserError
from sim.link import Link, LinkSpec

SPEC = LinkSpec(latency_s=20e-6, bandwidth_bytes_per_s=400e9)


def run_transfers(spec: LinkSpec, starts_and_bytes: list[tuple[float, float]]) -> list[float]:
    """Finish time of each (start, bytes) transfer on one shared link."""
    env = simpy.Environment()
    link = Link(env, spec)
    ends = [None] * len(starts_and_bytes)

    def one(i, start, nbytes):
        yield env.timeout(start)
        yield link.transfer(nbytes)
        ends[i] = env.now

    for i, (start, nbytes) in enumerate(starts_and_bytes):
        env.process(one(i, start, nbytes))
    env.run()
    assert not link.flows and link.transfers == len(starts_and_bytes)
    assert link.bytes_moved == pytest.approx(sum(b for _, b in starts_and_bytes))
    return ends


def test_one_transfer_alone_takes_latency_plus_bytes_over_bandwidth():
    nbytes = 2 * 2**30
    [end] = run_transfers(SPEC, [(0.0, nbytes)])
    assert end == pytest.approx(20e-6 + nbytes / 400e9, rel=1e-12)
    assert end == pytest.approx(SPEC.alone_s(nbytes), rel=1e-12)


def test_two_equal_transfers_started_together_each_take_twice_the_bandwidth_time():
    nbytes = 512 * 2**20
    ends = run_transfers(SPEC, [(0.0, nbytes), (0.0, nbytes)])
    assert ends[0] == ends[1] == pytest.approx(20e-6 + 2 * nbytes / 400e9, rel=1e-12)


def test_a_later_transfer_shares_the_rest_and_the_first_speeds_up_when_it_leaves():
    # bandwidth 1 B/s, no latency: A (2 B) alone for 0.5 s, then both at 0.5 B/s until B's
    # 1 B is through at 2.5 s; A then has 0.5 B left alone and ends at 3.0 s.
    spec = LinkSpec(0.0, 1.0)
    a_end, b_end = run_transfers(spec, [(0.0, 2.0), (0.5, 1.0)])
    assert b_end == pytest.approx(2.5)
    assert a_end == pytest.approx(3.0)


def test_latency_is_not_shared_and_empty_transfers_pay_only_latency():
    spec = LinkSpec(0.25, 1.0)
    ends = run_transfers(spec, [(0.0, 0.0), (0.0, 1.0), (0.1, 0.0)])
    assert ends == pytest.approx([0.25, 1.25, 0.35])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=12))
def test_transfers_started_together_end_in_size_order_and_the_link_never_idles(sizes):
    spec = LinkSpec(0.0, 1e9)
    ends = run_transfers(spec, [(0.0, float(n)) for n in sizes])
    assert max(ends) == pytest.approx(sum(sizes) / 1e9, rel=1e-9)
    by_size = [e for _, e in sorted(zip(sizes, ends))]
    assert by_size == sorted(by_size)
    # The smallest of n flows gets 1/n of the link throughout.
    assert min(ends) == pytest.approx(min(sizes) * len(sizes) / 1e9, rel=1e-9)


def test_link_file_round_trip(tmp_path):
    path = tmp_path / "link.json"
    path.write_text(json.dumps({"link": {"latency_s": 1.5e-5, "bandwidth_bytes_per_s": 3e11}, "points": []}))
    assert LinkSpec.load(path) == LinkSpec(1.5e-5, 3e11)


@pytest.mark.parametrize("content, message", [
    ("{", "not JSON"),
    ("[]", "no 'link' object"),
    ('{"link": {"latency_s": 1e-5}}', "link.bandwidth_bytes_per_s must be a number"),
    ('{"link": {"latency_s": "fast", "bandwidth_bytes_per_s": 1e9}}', "link.latency_s must be a number"),
    ('{"link": {"latency_s": -1, "bandwidth_bytes_per_s": 1e9}}', "latency_s must be a finite number >= 0"),
    ('{"link": {"latency_s": 0, "bandwidth_bytes_per_s": 0}}', "bandwidth_bytes_per_s must be a finite number > 0"),
])
def test_bad_link_file_is_one_user_error_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        LinkSpec.load(path)
    assert str(path) in str(info.value)


def test_missing_link_file():
    with pytest.raises(UserError, match="no such link file"):
        LinkSpec.load("/nonexistent/link.json")

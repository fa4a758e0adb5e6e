"""The simulated link as the engine drives it: one transfer at a time, in the order prompts
finish, the head waiting for decode blocks; and the link files a measured sweep writes."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from nexus.errors import UserError
from nexus.request import Request
from nexus.specs import MODELS
from nexus.topology import LinkSpec
from sim.clock import Clock
from sim.link import Link
from traces.format import TraceEntry

SPEC = LinkSpec(latency_s=20e-6, bandwidth_bytes_per_s=400e9)


def request(name: str, kv_tokens: int) -> Request:
    req = Request(name, 0.0, kv_tokens, 4)
    req.kv_tokens = kv_tokens
    return req


def run_link(spec: LinkSpec, sends: list[tuple[float, int]], room_at: float = 0.0) -> tuple[list[float], Link]:
    """Arrival time of each (send time, KV bytes) transfer; the decode GPU has no room before
    `room_at`, and room for everyone after it."""
    clock = Clock()
    arrivals: dict[str, float] = {}
    link = Link(clock, spec, 1, lambda req: clock.now >= room_at, lambda req: arrivals.__setitem__(req.request_id, clock.now))
    for i, (at, nbytes) in enumerate(sends):
        clock.call_in(at, link.send, request(str(i), nbytes))
    if room_at:
        clock.call_in(room_at, lambda _: link.try_next())
    clock.call_in(100.0, clock.stop)
    clock.run()
    assert not link.busy() and link.transfers == len(sends)
    assert link.bytes_moved == sum(b for _, b in sends)
    return [arrivals[str(i)] for i in range(len(sends))], link


def test_one_transfer_alone_takes_latency_plus_bytes_over_bandwidth():
    nbytes = 2 * 2**30
    [end], _ = run_link(SPEC, [(0.0, nbytes)])
    assert end == pytest.approx(20e-6 + nbytes / 400e9, rel=1e-12)


def test_transfers_cross_one_at_a_time_in_the_order_they_were_sent():
    # bandwidth 1 B/s, latency 0.25 s: A (2 B) at 0, B (1 B) at 0.5 waits for A to be across.
    ends, _ = run_link(LinkSpec(0.25, 1.0), [(0.0, 2), (0.5, 1), (10.0, 0)])
    assert ends == pytest.approx([2.25, 3.5, 10.25])


def test_the_head_waits_for_decode_blocks_and_those_behind_it_wait_too():
    ends, _ = run_link(LinkSpec(0.0, 1.0), [(0.0, 3), (0.1, 1)], room_at=1.0)
    assert ends == pytest.approx([4.0, 5.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10**9)), min_size=1, max_size=12))
def test_the_link_never_idles_while_a_transfer_waits_and_keeps_the_order(sends):
    spec = LinkSpec(1e-3, 1e9)
    sends = sorted(sends, key=lambda s: s[0])
    ends, _ = run_link(spec, sends)
    busy_until = 0.0
    for (at, nbytes), end in zip(sends, ends):
        busy_until = max(busy_until, at) + spec.alone_s(nbytes)
        assert end == pytest.approx(busy_until, rel=1e-9, abs=1e-12)


def test_disagg_transfers_of_prompts_that_finish_together_queue_on_the_link():
    # Two prompts prefilled in one step: the second's KV crosses after the first's, so it
    # finishes at least a whole transfer later (and joins the decode batch at the next step
    # boundary after that); timed each on its own, they crossed and finished together.
    prompt = 4000
    kv_bytes = prompt * MODELS["llama-3.1-8b"].kv_bytes_per_token
    pair = [TraceEntry("a", 0.0, prompt, 8), TraceEntry("b", 0.0, prompt, 8)]
    params = {"link": "pcie4", "prefill_tokens": 2 * prompt}
    both = sim.run(pair, policy="disagg", policy_params=params).requests.set_index("request_id")
    alone = sim.run(pair[:1], policy="disagg", policy_params=params).requests.set_index("request_id")
    transfer = 20e-6 + kv_bytes / 32e9
    assert both.loc["a", "ttft_s"] == pytest.approx(both.loc["b", "ttft_s"])
    gap = both["e2e_s"].max() - both["e2e_s"].min()
    assert transfer <= gap < 2 * transfer
    assert both["e2e_s"].min() > alone.loc["a", "e2e_s"]   # the two prompts' step was longer


def test_a_measured_link_file_drives_disagg(tmp_path):
    path = tmp_path / "link.json"
    path.write_text(json.dumps({"link": {"latency_s": 0.0, "bandwidth_bytes_per_s": 32e9}}))
    trace = [TraceEntry("solo", 0.0, 1500, 20)]
    by_file = sim.run(trace, policy="disagg", policy_params={"link": str(path)}).requests.iloc[0]
    by_name = sim.run(trace, policy="disagg", policy_params={"link": "pcie4", "link_latency_s": 0.0}).requests.iloc[0]
    assert by_file["e2e_s"] == pytest.approx(by_name["e2e_s"], rel=1e-12)


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


def test_disagg_records_its_link_as_given_and_as_json(tmp_path):
    from nexus.policy import make_policy

    path = tmp_path / "link.json"
    path.write_text(json.dumps({"link": {"latency_s": 0.0, "bandwidth_bytes_per_s": 32e9}}))
    for link in ("nvlink", str(path)):
        described = json.loads(json.dumps(make_policy("disagg", link=link).describe()))
        assert described["link"] == link and set(described) == {"policy", "link", "link_latency_s", "prefill_tokens"}

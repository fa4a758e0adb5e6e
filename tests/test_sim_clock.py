"""The simulator's clock orders calls exactly as simpy orders events, so replacing simpy's
processes with it changed no result: checked call by call against simpy, and run for run
against the same engine driven by simpy's event queue."""
import importlib

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from nexus.config import EngineConfig
from sim.clock import NORMAL, URGENT, Clock
from synthetic import make_trace
from traces import TraceEntry

sim_engine = importlib.import_module("sim.engine")


class SimpyClock:
    """The Clock interface on simpy's event queue: each call is a simpy event."""

    def __init__(self) -> None:
        self.env = simpy.Environment()
        self._stopped = False

    @property
    def now(self) -> float:
        return self.env.now

    def call_in(self, delay, fn, arg=None, priority=NORMAL) -> None:
        event = simpy.Event(self.env)
        event.callbacks.append(lambda _event: fn(arg))
        event._ok, event._value = True, None       # triggered, as succeed() would, at any priority
        self.env.schedule(event, simpy.core.URGENT if priority == URGENT else simpy.core.NORMAL, delay)

    def nothing_due_now(self) -> bool:
        # Never: the reference makes every call through the queue, so the runs below also check
        # the engine's shortcut past it (a GPU's finished jobs handed over at once).
        return False

    def stop(self, _arg=None) -> None:
        self._stopped = True

    def run(self) -> None:
        while not self._stopped:
            self.env.step()


# A script of calls: each call, when made, schedules its children (delay index, priority).
DELAYS = [0, 0.0, 0.5, 1.0, 1 / 3, 2 / 3, 1.5]
calls = st.recursive(st.just([]), lambda kids: st.lists(
    st.tuples(st.sampled_from(range(len(DELAYS))), st.sampled_from([URGENT, NORMAL]), kids), max_size=4),
    max_leaves=40)


def replay(clock, script) -> list[tuple[str, float]]:
    log = []

    def call(node):
        name, children = node
        log.append((name, clock.now))
        for i, (d, priority, grandchildren) in enumerate(children):
            clock.call_in(DELAYS[d], call, (f"{name}.{i}", grandchildren), priority)

    for i, (d, priority, children) in enumerate(script):
        clock.call_in(DELAYS[d], call, (str(i), children), priority)
    clock.call_in(10.0, clock.stop)
    clock.run()
    return log


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(DELAYS))), st.sampled_from([URGENT, NORMAL]), calls),
                max_size=6))
def test_calls_come_in_simpys_order_at_simpys_times(script):
    ours, theirs = replay(Clock(), script), replay(SimpyClock(), script)
    assert ours == theirs
    assert [repr(t) for _, t in ours] == [repr(t) for _, t in theirs]   # 0 stays an int, as simpy's


def test_running_out_of_calls_before_stop_is_an_error():
    clock = Clock()
    clock.call_in(1.0, lambda _arg: None)
    with pytest.raises(RuntimeError, match="ran out of events"):
        clock.run()


def test_negative_delay_is_refused():
    with pytest.raises(ValueError):
        Clock().call_in(-1e-9, lambda _arg: None)


def _frames(result):
    return result.requests.to_numpy().tolist(), result.timeline.to_numpy().tolist(), result.summary


def _bursty_trace() -> list[TraceEntry]:
    """A Poisson trace in which every tenth request arrives with the one before it (ties)."""
    base = make_trace(250, 30.0, (16, 3000), (2, 400), seed=7)
    return [TraceEntry(e.request_id, base[i - 1].arrival_time_s if i % 10 == 0 and i else e.arrival_time_s,
                       e.prompt_tokens, e.output_tokens) for i, e in enumerate(base)]


@pytest.mark.skipif(not importlib.import_module("sim.gpu").__file__.endswith(".py"),
                    reason="sim.gpu is compiled (scripts/compile_sim.py): its GPU takes only a sim.clock.Clock")
@pytest.mark.parametrize("policy", ["chunked", "prefill-first", "static", "nexus", "nexus-slo", "disagg"])
@pytest.mark.parametrize("tight_kv", [False, True])
def test_the_engine_gives_the_same_run_on_simpys_queue(policy, tight_kv, monkeypatch):
    # With little KV (and fewer seats) requests are preempted and transfers wait for blocks.
    config = EngineConfig(gpu_memory_utilization=0.3, max_num_seqs=48) if tight_kv else EngineConfig()
    kwargs = dict(policy=policy, config=config, rate_scale=2.0 if tight_kv else 1.0)
    ours = sim.run(_bursty_trace(), **kwargs)
    monkeypatch.setattr(sim_engine, "Clock", SimpyClock)
    theirs = sim.run(_bursty_trace(), **kwargs)
    assert _frames(ours) == _frames(theirs)
    if tight_kv and policy != "nexus":   # nexus turns decode-first and keeps KV use near half here
        assert ours.summary["preemptions"] > 0

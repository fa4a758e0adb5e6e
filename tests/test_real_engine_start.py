"""A run's clock starts once every stream thread has warmed (ModelRunner.warm_thread), and a
thread that fails there fails the run instead of leaving the others waiting."""
import threading

import pytest

torch = pytest.importorskip("torch")

from nexus.cost import load_cost_model  # noqa: E402
from nexus.kv import BlockPool  # noqa: E402
from nexus.policy import Chunked, PrefillFirst, Static  # noqa: E402
from nexus.request import Request  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from nexus.state import ServingState  # noqa: E402
from nexus.step import Stepper  # noqa: E402
from real.engine import RealEngine  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.partitions import Partitions  # noqa: E402

MODEL, GPU = MODELS["tiny-llama"], GPUS["h100-sxm"]


def two_stream_engine(runner: ModelRunner, policy=None) -> RealEngine:
    policy = policy or Static()
    state = ServingState(MODEL, GPU, load_cost_model(MODEL, GPU, None),
                         BlockPool(runner.num_blocks, runner.block_size, track_ids=True), policy.priority)
    requests = [Request(f"r{i}", 0.001 * i, 20 + 7 * i, 3) for i in range(4)]
    parts = Partitions(policy.splits(GPU), device="cpu", cpu_gpu=GPU)
    return RealEngine(runner, parts, Stepper(state, policy), requests)


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(MODEL, device="cpu", num_blocks=64)


def test_each_stream_thread_warms_for_the_longest_prompt_before_the_clock_starts(runner, monkeypatch):
    engine = two_stream_engine(runner)
    seen = []

    def warm_thread(longest_prompt: int, chunk_limit: int | None) -> int:
        seen.append((threading.current_thread().name, (longest_prompt, chunk_limit), engine.clock))
        return 0

    monkeypatch.setattr(runner, "warm_thread", warm_thread)
    engine.run()
    assert sorted(name for name, _, _ in seen) == ["stream-decode", "stream-prefill"]
    # Static's chunks are of at most its chunk_tokens.
    assert all(warm_for == (20 + 7 * 3, 2048) and clock is None for _, warm_for, clock in seen)
    assert engine.clock is not None and len(engine.state.finished) == 4


@pytest.mark.parametrize("policy, chunk_limit", [
    (Chunked(max_num_batched_tokens=30), 30), (PrefillFirst(max_prefill_tokens=16), None)])   # whole prompts
def test_threads_warm_for_the_chunks_the_policy_can_form(runner, monkeypatch, policy, chunk_limit):
    seen = []
    monkeypatch.setattr(runner, "warm_thread", lambda *warm_for: seen.append(warm_for) or 0)
    two_stream_engine(runner, policy).run()
    assert seen and set(seen) == {(20 + 7 * 3, chunk_limit)}


def test_a_thread_that_fails_to_warm_fails_the_run_and_frees_the_other(runner, monkeypatch):
    engine = two_stream_engine(runner)

    def warm_thread(longest_prompt: int, chunk_limit: int | None) -> int:
        if threading.current_thread().name == "stream-prefill":
            raise RuntimeError("no graphs today")
        return 0

    monkeypatch.setattr(runner, "warm_thread", warm_thread)
    done = threading.Event()
    outcome = []

    def run() -> None:
        try:
            engine.run()
        except RuntimeError as e:
            outcome.append(str(e))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "the run hung on its start barrier"
    assert outcome == ["no graphs today"]       # the failure, not the other thread's broken wait
    assert engine.clock is None and not engine.state.finished


def test_warm_up_runs_a_dense_prompt_beside_a_short_one_once_the_cache_holds_it(monkeypatch):
    import nexus.graph_buckets
    from nexus.graph_buckets import runs_dense
    from real.batch import validate
    from real.bench import warm_up_batches

    big = ModelRunner(MODEL, device="cpu", num_blocks=256, max_model_len=4096)
    batches = warm_up_batches(big)
    long = [b for b in batches if any(runs_dense(len(c.token_ids), c.start) for c in b)]
    # The dense call's first run, and the Triton kernel on chunks from index 1 on (a slice off
    # a 16-byte boundary), each a first of its kind in a process otherwise.
    assert len(long) == 1 and runs_dense(len(long[0][0].token_ids), 0)
    assert len(long[0]) == 2 and not runs_dense(len(long[0][1].token_ids), long[0][1].start)
    for batch in batches:
        validate(batch, big.num_blocks, big.block_size, big.max_model_len)
        assert len(big.step(batch)) == len(batch)
    assert len(warm_up_batches(ModelRunner(MODEL, device="cpu", num_blocks=64))) == len(batches) - 1
    monkeypatch.setattr(nexus.graph_buckets, "DENSE_MIN_TOKENS", None)
    assert len(warm_up_batches(big)) == len(batches) - 1


def test_runs_of_one_runner_share_its_stream_threads_so_their_warm_up_lasts(runner, monkeypatch):
    # cuDNN's graphs live per thread: on the runner's long-lived threads a later run finds
    # them built (real.stream_threads).
    seen = []
    monkeypatch.setattr(runner, "warm_thread", lambda *warm_for: seen.append(threading.current_thread()) or 0)
    for _ in range(2):
        engine = two_stream_engine(runner)
        engine.run()
        assert len(engine.state.finished) == 4
    assert len(seen) == 4 and len(set(seen)) == 2          # two streams, two threads, both runs
    assert set(seen[:2]) == set(seen[2:]) and all(t.daemon for t in seen)
    assert sorted(t.name for t in set(seen)) == ["stream-decode", "stream-prefill"]


def test_stream_threads_run_each_name_on_one_thread_and_hand_back_errors():
    from real.stream_threads import StreamThreads
    threads = StreamThreads()
    where = [threads.submit(name, threading.current_thread).result(timeout=5) for name in ("a", "b", "a")]
    assert where[0] is where[2] and where[0] is not where[1] and where[0].name == "a"

    def fail() -> None:
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        threads.submit("a", fail).result(timeout=5)
    assert threads.submit("a", lambda: 7).result(timeout=5) == 7     # the thread lives on

"""Prefill graph buckets a GPU runs slower than a larger one: found by the profile, recorded
in the calibration, and left out by the engine and the simulator alike."""
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")

from nexus.cost import dropped_prefill_buckets  # noqa: E402
from nexus.cost.calibration import read_calibration  # noqa: E402
from nexus.errors import UserError  # noqa: E402
from nexus.graph_buckets import PREFILL_GRAPH_BUCKETS, PREFILL_GRAPH_MAX_SEQS, dominated, prefill_buckets_without  # noqa: E402
from nexus.policy import build_policies  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from real.prefill_graphs import PrefillGraphs  # noqa: E402
from real.profile import drop_dominated_buckets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
H200_CALIBRATION = ROOT / "nexus/cost/calibrations/h200__llama-3.1-8b.json"
LLAMA, H200 = MODELS["llama-3.1-8b"], GPUS["h200"]


def test_a_bucket_slower_than_a_larger_one_is_dominated():
    times = {128: 6.0, 256: 9.0, 384: 11.0, 448: 16.8, 512: 15.0, 640: 17.7}
    assert dominated(times, 0.01) == [448]


def test_dominance_looks_past_the_next_bucket_and_respects_the_margin():
    times = {256: 10.0, 384: 9.95, 512: 9.9}
    assert dominated(times, 0.01) == [256]        # over 1% slower than 512 only
    assert dominated(times, 0.0) == [256, 384]
    assert dominated({16: 5.5, 32: 5.6}, 0.01) == []


def test_the_h200_engine_and_simulator_leave_out_what_the_h200_run_found_dominated():
    run = json.loads((ROOT / "experiments/results/prefill_buckets_h200.json").read_text())
    full = run["partitions"]["full"]
    found = dominated({int(b): t for b, t in full["ms"].items()}, run["margin"])
    assert found == full["dominated"] and found
    dropped = dropped_prefill_buckets(LLAMA, H200)
    assert set(found) <= set(dropped) and set(found) <= set(PREFILL_GRAPH_BUCKETS)
    engine = prefill_buckets_without(dropped)
    assert not set(found) & set(engine)
    # The simulator pads to the buckets the calibration records: the engine's, exactly.
    assert read_calibration(H200_CALIBRATION)["engine"]["prefill_graphs"]["buckets"] == list(engine)


def test_no_calibration_drops_nothing_and_a_malformed_list_is_named(tmp_path):
    assert dropped_prefill_buckets(LLAMA, H200, "analytical") == []
    assert dropped_prefill_buckets(LLAMA, GPUS["h100-sxm"]) == []          # made before the rule
    bad = json.loads(H200_CALIBRATION.read_text())
    bad["engine"]["prefill_graphs"]["dropped"] = ["448"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="engine.prefill_graphs.dropped must be a list"):
        dropped_prefill_buckets(LLAMA, H200, path)


class StubRunner:
    """The runner's prefill-graph bookkeeping, without a GPU."""
    max_model_len = 4096

    def __init__(self, buckets):
        self.buckets = list(buckets)

    def prefill_graph_spec(self):
        return {"buckets": list(self.buckets), "max_seqs": 16, "decode_rows": 256}

    def drop_prefill_buckets(self, buckets):
        self.buckets = [b for b in self.buckets if b not in set(buckets)]


def prefill_record(tokens, ms, **extra):
    return {"sms": 0, "chunk_tokens": tokens, "prior_tokens": 0, "time_s": ms / 1e3, **extra}


def test_the_profile_drops_a_dominated_bucket_once_every_bucket_is_measured():
    runner = StubRunner([256, 448, 512, 640])
    measured = [prefill_record(256, 9.0), prefill_record(448, 16.8), prefill_record(448, 16.6),
                prefill_record(512, 15.0), prefill_record(640, 17.7),
                prefill_record(448, 1.0, prompts=4),                  # several prompts: not the bucket's time
                {**prefill_record(512, 99.0), "sms": 64},              # a partition: not the whole GPU
                {**prefill_record(256, 99.0), "prior_tokens": 4096}]   # after a prefix
    data = {"measurements": {"prefill": measured[:3]}}
    lines = []
    drop_dominated_buckets(runner, data, lines.append)
    assert runner.buckets == [256, 448, 512, 640] and "engine" not in data   # 512 and 640 not measured yet
    data["measurements"]["prefill"] = measured
    drop_dominated_buckets(runner, data, lines.append)
    assert runner.buckets == [256, 512, 640]
    assert data["engine"]["prefill_graphs"] == {"buckets": [256, 512, 640], "max_seqs": 16, "decode_rows": 256,
                                                "dropped": [448]}
    assert len(lines) == 1 and "448-token graph" in lines[0] and "16.70 ms, against 15.00" in lines[0]


def test_dropping_a_bucket_sends_its_steps_to_the_next_one_on_every_partition():
    graphs = PrefillGraphs.__new__(PrefillGraphs)   # the bookkeeping only: no CUDA graphs on CPU
    graphs.graphs = {(name, b): (None, None, rows, 0) for name, rows in (("decode:0", 256), ("prefill:64", 0))
                     for b in (384, 448, 512)}
    graphs._sizes_on = {name: [(b, rows) for b in (384, 448, 512)] for name, rows in (("decode:0", 256),
                                                                                       ("prefill:64", 0))}
    graphs.drop([448])
    assert sorted(graphs.graphs) == [("decode:0", 384), ("decode:0", 512), ("prefill:64", 384), ("prefill:64", 512)]
    assert graphs._sizes_on == {"decode:0": [(384, 256), (512, 256)], "prefill:64": [(384, 0), (512, 0)]}


def test_the_engine_captures_the_calibrations_buckets(tmp_path, monkeypatch):
    import real.bench
    captured = []
    monkeypatch.setattr(real.bench, "capture_all_graphs",
                        lambda runner, parts, buckets=PREFILL_GRAPH_BUCKETS: captured.append(tuple(buckets)))
    policies = build_policies(["chunked"], {})
    real.bench.Bench(MODELS["tiny-llama"], GPUS["h100-sxm"], policies, device="cpu", num_blocks=64,
                     calibration=str(H200_CALIBRATION))
    real.bench.Bench(MODELS["tiny-llama"], GPUS["h100-sxm"], policies, device="cpu", num_blocks=64,
                     calibration="analytical")
    assert 448 not in captured[0] and 512 in captured[0]
    assert captured[1] == PREFILL_GRAPH_BUCKETS


def test_the_fit_leaves_out_the_graph_steps_of_dropped_buckets_and_nothing_else():
    from nexus.cost.fit import fit_calibration, without_dropped_graphs

    data = read_calibration(H200_CALIBRATION)
    data["engine"]["prefill_graphs"]["dropped"] = [448, 1408]
    rec = lambda sms, n, prior=0, prompts=1: {"sms": sms, "chunk_tokens": n, "prior_tokens": prior,  # noqa: E731
                                              **({"prompts": prompts} if prompts > 1 else {}), "time_s": 9.0}
    stale = [rec(0, 448), rec(64, 448), rec(0, 1408)]
    kept = [rec(64, 1408),            # partitions replay graphs up to 512 tokens: this step ran eagerly
            rec(0, 448, prior=512), rec(0, 448, prompts=4)]
    measurements = {**data["measurements"], "prefill": data["measurements"]["prefill"] + stale + kept}
    left = without_dropped_graphs(measurements, data["engine"])["prefill"]
    assert not any(r in left for r in stale) and all(r in left for r in kept)
    # Absurd times at the dropped graphs change neither the fit nor its inversion report.
    data["measurements"] = measurements
    with_stale = fit_calibration(data)
    data["measurements"] = {**measurements, "prefill": [r for r in measurements["prefill"] if r not in stale]}
    without = fit_calibration(data)
    assert with_stale["fit"] == without["fit"]
    assert with_stale["fit_error"]["prefill_inversions"] == without["fit_error"]["prefill_inversions"]


def test_a_chunk_that_runs_dense_sends_its_step_eager_in_the_engine_and_the_model(monkeypatch):
    import nexus.graph_buckets
    from nexus.graph_buckets import prefill_bucket, runs_dense
    from real.batch import Chunk

    # First chunks of DENSE_MIN_TOKENS..DENSE_MAX_TOKENS, and chunks of DENSE_AFTER_TOKENS
    # after DENSE_AFTER_PRIOR or more cached tokens, the whole within DENSE_MAX_TOKENS.
    low, high = nexus.graph_buckets.DENSE_MIN_TOKENS, nexus.graph_buckets.DENSE_MAX_TOKENS
    after_low, after_high = nexus.graph_buckets.DENSE_AFTER_TOKENS
    after = nexus.graph_buckets.DENSE_AFTER_PRIOR
    assert runs_dense(low, 0) and runs_dense(high, 0)
    assert not runs_dense(low - 1, 0) and not runs_dense(high + 1, 0) and not runs_dense(low, 1)
    assert runs_dense(after_low, after) and runs_dense(after_high, after) and runs_dense(after_low, high - after_low)
    assert not runs_dense(after_low - 1, after) and not runs_dense(after_high + 1, after)
    assert not runs_dense(after_low, after - 1) and not runs_dense(after_low, high - after_low + 1)
    assert prefill_bucket([1024, 2304], PREFILL_GRAPH_MAX_SEQS, [(2047, 8192)], 1) == 2304
    assert prefill_bucket([1024, 2304], PREFILL_GRAPH_MAX_SEQS, [(2048, 8192)], 1) is None
    monkeypatch.setattr(nexus.graph_buckets, "DENSE_MIN_TOKENS", None)      # off
    assert not runs_dense(low, 0) and not runs_dense(after_low, after)
    assert nexus.graph_buckets.dense_lengths(high) == [] and nexus.graph_buckets.dense_shapes(high, 2048) == ([], [])
    # No chunk of 3072+ tokens fits a bucket; lower the rule's bound to see the plumbing.
    monkeypatch.setattr(nexus.graph_buckets, "DENSE_MIN_TOKENS", 1024)
    graphs = PrefillGraphs.__new__(PrefillGraphs)
    graphs._sizes_on = {"decode:0": [(1024, 256), (2304, 256)]}
    part = type("Part", (), {"name": "decode:0"})()
    chunk = lambda tokens, start: Chunk(list(range(tokens)), start, list(range(-(-(start + tokens) // 16))))  # noqa: E731
    decode_row = chunk(1, 300)
    for chunks, bucket in (([(512, 0)], 1024), ([(1023, 8192)], 1024), ([(700, 0), (700, 9000)], 2304),
                           ([(1024, 0)], None), ([(2047, 8192)], 2304), ([(2048, 8192)], None),
                           ([(64, 0), (1024, 0)], None)):
        assert graphs.bucket_for(part, [chunk(n, prior) for n, prior in chunks] + [decode_row]) == bucket
        assert prefill_bucket([1024, 2304], PREFILL_GRAPH_MAX_SEQS, chunks, 1) == bucket


@given(st.integers(1, 40000), st.one_of(st.none(), st.integers(1, 40000)), st.data())
def test_a_thread_warmed_for_a_run_has_every_dense_shape_its_chunks_meet(longest_prompt, chunk_limit, data):
    from nexus.graph_buckets import dense_length, dense_shapes, prefix_cut, runs_dense

    own, pairs = dense_shapes(longest_prompt, chunk_limit)
    longest_chunk = min(longest_prompt, chunk_limit or longest_prompt)
    tokens = data.draw(st.integers(1, longest_chunk))
    # Whole prompts (no chunk_limit) never follow a prefix.
    prior = 0 if chunk_limit is None else data.draw(st.integers(0, longest_prompt - tokens))
    if runs_dense(tokens, prior):
        cut = prefix_cut(prior)
        assert cut <= prior < cut + max(256, cut // 16)
        assert dense_length(prior - cut + tokens) in own
        assert cut == 0 or (dense_length(tokens), cut) in pairs
    # Few enough to build before a run: about 60 ms a graph on an H200.
    assert len(own) + len(pairs) <= 57 + 9 * 49


@given(st.integers(1, 40000))
def test_dense_lengths_are_few_and_pad_little(tokens):
    from nexus.graph_buckets import DENSE_MAX_TOKENS, DENSE_MIN_TOKENS, dense_length, dense_lengths

    padded = dense_length(tokens)
    assert tokens <= padded < tokens + max(256, tokens / 16) and padded % 256 == 0
    assert dense_length(padded) == padded
    lengths = dense_lengths(tokens)
    assert lengths == sorted(set(lengths))
    if DENSE_MIN_TOKENS <= tokens <= DENSE_MAX_TOKENS:
        # a thread that warmed for a prompt this long has every length its first chunks pad to
        assert padded in lengths and dense_length(DENSE_MIN_TOKENS) in lengths
        assert lengths == [n for n in dense_lengths(DENSE_MAX_TOKENS) if n <= padded]
    elif tokens < DENSE_MIN_TOKENS:
        assert lengths == []
    assert len(dense_lengths(16384)) == 37

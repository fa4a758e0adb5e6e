"""The profiler's bookkeeping on CPU: a tiny grid is measured, written, resumed and fitted."""
import json
import time

import pandas as pd
import pytest

pytest.importorskip("torch")

from nexus.cost.calibration import read_calibration  # noqa: E402
from nexus.cost.measured import MeasuredCost  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.partitions import Partitions  # noqa: E402
from real.profile import Grid, Profiler, covered_steps, profile  # noqa: E402

TINY_GRID = Grid(prefill=((16, 0), (64, 0), (32, 64)), prefill_prompts=((4, 16),), decode=((1, 32), (4, 64), (8, 32)),
                 corun_splits=(64,), corun_prefill=((32, 0),), corun_decode=((4, 32),),
                 mixed_prefill=((16, 0), (32, 16)), mixed_decode=((2, 32), (8, 32)))


def test_profile_writes_a_valid_resumable_calibration(tmp_path, monkeypatch):
    import itertools

    import real.profile
    runs = itertools.count(1)

    class NumberedSampler(real.profile.ClockPowerSampler):   # no NVML on CPU: number the records
        def summary(self) -> dict:
            return {"samples": next(runs)}
    monkeypatch.setattr(real.profile, "ClockPowerSampler", NumberedSampler)
    model, gpu = MODELS["tiny-llama"], GPUS["h100-sxm"]
    runner = ModelRunner(model, device="cpu", num_blocks=64)
    parts = Partitions([32, 64, 96], device="cpu", cpu_gpu=gpu)
    out = tmp_path / "cal.json"
    profile(runner, parts, model, gpu, out, ["prefill"], "test", repeats=1, grid=TINY_GRID, log=lambda m: None)
    first = read_calibration(out)
    assert len(first["measurements"]["prefill"]) == 4 * (3 + 1)     # FULL + three partitions; one several-prompt shape
    assert not first["measurements"]["decode"]
    assert "fit" not in first                                  # nothing to fit decode with yet
    assert first["clocks"] == {"prefill": {"samples": 1}}     # clocks while each part measured
    profile(runner, parts, model, gpu, out, ["prefill", "decode", "corun", "mixed"], "test", repeats=1,
            grid=TINY_GRID, log=lambda m: None)
    data = read_calibration(out)
    assert data["measurements"]["prefill"] == first["measurements"]["prefill"]   # resumed, not redone
    # A part that measured nothing new keeps the record of the run that measured it.
    assert data["clocks"] == {"prefill": {"samples": 1}, "decode": {"samples": 2}, "corun": {"samples": 3},
                              "mixed": {"samples": 4}}
    several = [r for r in data["measurements"]["prefill"] if r.get("prompts", 1) > 1]
    assert {(r["prompts"], r["chunk_tokens"]) for r in several} == {(4, 16)}
    assert {r["sms"] for r in several} == {r["sms"] for r in data["measurements"]["prefill"]} == {0, 32, 64, 96}
    assert len(data["measurements"]["decode"]) == 4 * 3
    assert {r["sms"] for r in data["measurements"]["decode"]} == {0, 100, 68, 36}
    (corun,) = data["measurements"]["corun"]
    assert corun["prefill"]["sms"] == 64 and corun["decode"]["sms"] == 68
    assert len(data["measurements"]["mixed"]) == 4 and {r["sms"] for r in data["measurements"]["mixed"]} == {0}
    assert set(data["fit"]["mixed"]) == {"host_s", "per_seq_s"}
    assert all(r["time_s"] > 0 for r in data["measurements"]["prefill"] + data["measurements"]["decode"])
    assert "fit" in data and set(data["fit_error"]) >= {"prefill", "decode", "corun_slowdown"}
    assert json.loads(out.read_text())["model"]["name"] == "tiny-llama"
    assert "step_gap_s" not in data.get("engine", {})


def test_profile_measures_the_engine_host_gap_from_a_synthetic_replay(tmp_path):
    model, gpu = MODELS["tiny-llama"], GPUS["h100-sxm"]
    runner = ModelRunner(model, device="cpu", num_blocks=256)
    parts = Partitions([32, 64, 96], device="cpu", cpu_gpu=gpu)
    out = tmp_path / "cal.json"
    logged: list[str] = []
    profile(runner, parts, model, gpu, out, ["prefill", "decode", "corun", "mixed", "engine"], "test",
            repeats=1, grid=TINY_GRID, log=logged.append, gap_requests=40)
    engine = read_calibration(out)["engine"]
    assert engine["step_gap_s"] >= 0 and engine["step_gap_per_seq_s"] >= 0
    assert engine["step_gap_s"] + 8 * engine["step_gap_per_seq_s"] > 0
    assert "synthetic trace" in engine["source"] and engine["step_gap_bands"]
    assert sum(n for _, _, n in engine["step_gap_bands"]) >= 10
    # The replay's decode steps and co-run steps, priced by the fresh fit, give the served
    # scales; on a CPU, whose "partitions" share the cores, they may be far off and are then
    # refused. Either way the calibration loads.
    for key, said, counted in (("decode_scale", "served decode alone steps over the model", "plain"),
                               ("corun_scale", "served co-run steps over the model", "decode")):
        assert any(said in m for m in logged)
        if key in engine:
            scale = engine[key]
            assert scale["steps"][counted] > 0 and "replays" in scale["source"]
        else:
            assert any(m.startswith(f"engine: {key} not kept") for m in logged)
    MeasuredCost.load(out, model, gpu)
    replay = pd.read_csv(out.with_name("cal.replay.csv.gz"))
    assert set(replay["replay"]) == {0, 1} and (replay["prefill_chunks"] >= 0).all()


def test_the_host_gap_line_is_recovered_from_timelines():
    import numpy as np
    import pandas as pd
    from real.host_gap import fit_step_gap
    rng = np.random.default_rng(0)
    rows, t = [], 0.0
    for _ in range(400):
        seqs = int(rng.integers(1, 250))
        rows.append({"stream": "mixed", "start_s": t, "end_s": t + 0.01, "decode_seqs": seqs})
        t += 0.01 + 2e-4 + 3e-6 * seqs
    fit = fit_step_gap([pd.DataFrame(rows)])
    assert fit["step_gap_s"] == pytest.approx(2e-4, rel=0.1)
    assert fit["step_gap_per_seq_s"] == pytest.approx(3e-6, rel=0.1)


class ContendedRunner:
    """Steps that sleep, progressing at half speed while the other side is mid-step."""

    def __init__(self, work_s: dict[str, float]):
        self.work_s, self.active = work_s, set()

    def step(self, chunks, part) -> None:
        self.active.add(part)
        done = 0.0
        while done < self.work_s[part]:
            t0 = time.perf_counter()
            time.sleep(0.002)
            done += (time.perf_counter() - t0) * (0.5 if self.active - {part} else 1.0)
        self.active.discard(part)


def test_time_together_counts_only_steps_the_other_side_overlapped():
    # A step longer than the old fixed 0.6 s window, which read it as 1.75x, must read as 2x.
    runner = ContendedRunner({"prefill": 0.4, "decode": 0.01})
    prof = Profiler(runner, parts=None)
    together_p, together_d = prof.time_together(([], "prefill"), ([], "decode"), min_steps=1)
    assert together_p == pytest.approx(0.8, rel=0.08)
    assert together_d == pytest.approx(0.02, rel=0.25)


def test_covered_steps_drops_steps_outside_the_other_sides_run():
    other = [(1.0, 2.0), (2.0, 3.0)]
    assert covered_steps([(0.5, 1.5), (1.5, 2.5), (2.5, 3.5)], other) == [1.0]


def test_decode_batches_are_skewed_and_scattered_but_keep_their_mean():
    runner = ModelRunner(MODELS["tiny-llama"], device="cpu", num_blocks=64)
    chunks = Profiler(runner, parts=None).decode_batch(8, 40)
    contexts = [c.end for c in chunks]
    assert sum(contexts) == 8 * 40
    assert sorted(contexts) == contexts and contexts[0] < 10 and contexts[-1] > 2.5 * 40   # a tail
    assert sum(c < 40 for c in contexts) >= 5   # most below the mean
    blocks = [b for c in chunks for b in c.block_table]
    assert len(set(blocks)) == len(blocks) == sum(-(-c // runner.block_size) for c in contexts)
    assert blocks != sorted(blocks)
    assert [c.end for c in Profiler(runner, None, contexts="equal").decode_batch(4, 40)] == [40] * 4
    assert [c.end for c in Profiler(runner, None, contexts="spread").decode_batch(3, 40)] == [10, 40, 70]


@pytest.mark.parametrize("shape", ["exponential", "spread", "equal"])
@pytest.mark.parametrize("batch,mean", [(1, 7), (3, 1), (64, 2048), (256, 512), (5, 3)])
def test_decode_contexts_sum_exactly_and_stay_positive(shape, batch, mean):
    from real.profile import decode_contexts
    contexts = decode_contexts(shape, batch, mean)
    assert len(contexts) == batch and sum(contexts) == batch * mean and min(contexts) >= 1


def test_unknown_context_shape_is_a_user_error():
    from nexus.errors import UserError
    from real.profile import decode_contexts
    with pytest.raises(UserError, match="unknown decode context shape 'zipf'"):
        decode_contexts("zipf", 4, 10)


def test_prefill_is_measured_at_every_graph_bucket_too(tmp_path, monkeypatch):
    """A graphed step runs at its bucket, so the profile measures the prefill curve there as
    well as at the grid's sizes (each size once), and the fit puts a knot at each."""
    from dataclasses import replace
    model, gpu = MODELS["tiny-llama"], GPUS["h100-sxm"]
    runner = ModelRunner(model, device="cpu", num_blocks=64)
    spec = {"buckets": [16, 48, 64, 80], "max_seqs": 4, "decode_rows": 8}
    monkeypatch.setattr(runner, "prefill_graph_spec", lambda: spec)
    parts = Partitions([32, 64, 96], device="cpu", cpu_gpu=gpu)
    out = tmp_path / "cal.json"
    profile(runner, parts, model, gpu, out, ["prefill", "decode"], "test", repeats=1, grid=TINY_GRID,
            log=lambda m: None)
    data = read_calibration(out)
    one_prompt = [(r["sms"], r["chunk_tokens"], r["prior_tokens"]) for r in data["measurements"]["prefill"]
                  if r.get("prompts", 1) == 1]
    assert len(one_prompt) == len(set(one_prompt))
    assert {(n, p) for _, n, p in one_prompt} == {(16, 0), (64, 0), (32, 64), (48, 0), (80, 0)}
    assert {s for s, n, _ in one_prompt if n == 48} == {0, 32, 64, 96}
    # On CPU the tiny model's times are noise: whichever buckets that drops, the record is whole,
    # and the fit has a knot at every bucket the engine keeps (none for a dropped one's steps,
    # which no longer run: nexus.cost.fit.without_dropped_graphs).
    recorded = data["engine"]["prefill_graphs"]
    assert set(recorded["dropped"]) <= set(spec["buckets"])
    assert {48, 80} - set(recorded["dropped"]) <= set(data["fit"]["prefill"]["token_knots"])
    assert recorded == {**spec, "buckets": [b for b in spec["buckets"] if b not in recorded["dropped"]],
                        "dropped": recorded["dropped"]}
    plain = tmp_path / "plain.json"
    profile(runner, parts, model, gpu, plain, ["prefill"], "test", repeats=1,
            grid=replace(TINY_GRID, prefill_graph_buckets=False), log=lambda m: None)
    assert {r["chunk_tokens"] for r in read_calibration(plain)["measurements"]["prefill"]} == {16, 64, 32}

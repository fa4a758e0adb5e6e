"""`real.run` on CPU with tiny-llama: the same call and Result as `sim.run`, and progress under KV pressure."""
import pytest

torch = pytest.importorskip("torch")

import real  # noqa: E402
import sim  # noqa: E402
from nexus.config import EngineConfig  # noqa: E402
from synthetic import make_trace  # noqa: E402
from traces import TraceEntry  # noqa: E402

CPU = dict(model="tiny-llama", device="cpu")


def assert_all_served(result, n):
    frame = result.requests
    assert len(frame) == n and frame["finish_s"].notna().all()
    assert (frame["generated_tokens"] == frame["output_tokens"]).all()


def test_real_run_returns_what_sim_run_returns():
    trace = make_trace(12, 50.0, (8, 100), (2, 16), seed=2)
    measured = real.run(trace, policy="static", config=EngineConfig(seed=3), num_blocks=256, **CPU)
    simulated = sim.run(trace, policy="static", model="tiny-llama", calibration="analytical")
    assert_all_served(measured, len(trace))
    assert list(measured.requests.columns) == list(simulated.requests.columns)
    assert list(measured.timeline.columns) == list(simulated.timeline.columns)
    assert set(measured.summary) >= {k for k in simulated.summary if k != "cost_model"}
    assert measured.summary["measured"] is True and measured.config["seed"] == 3
    assert set(measured.timeline["stream"]) == {"prefill", "decode"}


@pytest.mark.parametrize("policy,params", [("chunked", {}), ("static", {}), ("nexus", {"spf": False}),
                                           ("prefill-first", {}), ("nexus-slo", {})])
def test_long_prompts_together_finish_on_the_engine(policy, params):
    # Shrunk from the repro that hung the engine: three 3000-token prompts at t = 0 in a
    # 4096-token cache, each holding part of its prompt. Here one 1500-token prompt fits the
    # 2048-token cache at a time.
    trace = [TraceEntry(f"r{i}", 0.0, 1500, 10) for i in range(3)]
    result = real.run(trace, policy=policy, policy_params=params, num_blocks=128,
                      calibration="analytical", **CPU)
    assert_all_served(result, 3)


def test_nexus_slo_learns_the_engines_step_error():
    """On the CPU every step runs far slower than the H100 model predicts: the engine's
    measured steps reach the controller, and its learnt ratio is in the run's summary."""
    trace = make_trace(16, 40.0, (8, 60), (20, 40), seed=3)
    result = real.run(trace, policy="nexus-slo", gpu="h100-sxm", calibration="analytical",
                      num_blocks=256, **CPU)
    assert_all_served(result, 16)
    mixed = result.summary["learnt"]["step_error"]["mixed"]
    assert mixed["steps"] > 0 and mixed["mean"] > 1.3   # from 1.0, towards the clipped 2.0
    assert "learnt" not in real.run(trace, policy="chunked", gpu="h100-sxm", calibration="analytical",
                                     num_blocks=256, **CPU).summary

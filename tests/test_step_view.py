"""nexus.step_view.step_view: the model's error per kind of step, and apart by the SM clock
the engine sampled beside each step."""
import numpy as np
import pandas as pd

from nexus.step_view import CLOCK_BAND_MHZ, STEPS_FLOAT_FORMAT, step_view


def steps(kinds: list[str], errors: list[float], mhz: list[float] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"kind": kinds, "error_pct": errors})
    if mhz is not None:
        frame["sm_clock_mhz"] = mhz
    return frame


def test_without_clocks_each_kind_has_its_count_and_medians_only() -> None:
    view = step_view(steps(["decode", "decode", "mixed"], [-2.0, 4.0, -6.0]))
    assert view == {"decode": {"n": 2, "median_signed_pct": 1.0, "median_abs_pct": 3.0},
                    "mixed": {"n": 1, "median_signed_pct": -6.0, "median_abs_pct": 6.0}}


def test_throttled_steps_are_told_apart_from_those_at_the_top_clock() -> None:
    # Mixed steps priced right at 1980 MHz and 8% fast at 1710: the split shows the clock.
    top = 1980.0
    view = step_view(steps(["mixed"] * 5 + ["decode"] * 2,
                           [0.5, -0.5, -8.0, -8.5, -7.5, 1.0, 2.0],
                           [top, top - CLOCK_BAND_MHZ, 1710, 1710, 1725, 1800, np.nan]))
    mixed = view["mixed"]
    assert mixed["n"] == 5 and mixed["sm_clock_mhz"] == 1725   # the median
    assert mixed["at_top_clock"] == {"n": 2, "median_signed_pct": 0.0, "median_abs_pct": 0.5}
    assert mixed["below_top_clock"] == {"n": 3, "median_signed_pct": -8.0, "median_abs_pct": 8.0}
    # Throttled against the run's top clock, not its own kind's; a step without a sample
    # counts in neither part.
    decode = view["decode"]
    assert decode["below_top_clock"]["n"] == 1 and "at_top_clock" not in decode


def test_a_run_without_any_sample_reports_no_clock() -> None:
    view = step_view(steps(["decode"], [1.0], [np.nan]))
    assert "sm_clock_mhz" not in view["decode"]


def test_a_steps_csv_keeps_each_steps_length_late_in_a_long_run(tmp_path):
    start = 1000.0 + np.arange(50) * 1.0e-3 + 1.234567e-4
    steps = pd.DataFrame({"start_s": start, "end_s": start + 0.9e-3 + np.arange(50) * 1e-7})
    steps.to_csv(tmp_path / "steps.csv", index=False, float_format=STEPS_FLOAT_FORMAT)
    back = pd.read_csv(tmp_path / "steps.csv")
    np.testing.assert_allclose(back.end_s - back.start_s, steps.end_s - steps.start_s, rtol=1e-5, atol=0)

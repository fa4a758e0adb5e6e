"""The run plots show what they claim: one colour per policy, every policy where it belongs,
a KV axis that shows small use, and TTFT tick labels that do not overlap."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from nexus.report import POLICY_COLOURS, latency_cdf_figure, policy_colours, timeline_figure


def timeline(streams: list[str], sms: list[int], kv_max: float) -> pd.DataFrame:
    n = len(streams)
    t = np.arange(n, dtype=float)
    return pd.DataFrame({"start_s": t, "end_s": t + 1, "stream": streams, "sms": sms,
                         "kv_usage": np.linspace(0, kv_max, n)})


@pytest.fixture
def runs() -> dict[str, pd.DataFrame]:
    two = ["prefill", "decode"] * 3
    return {"chunked": timeline(["mixed"] * 6, [0] * 6, 0.05),
            "prefill-first": timeline(["mixed"] * 6, [0] * 6, 0.04),
            "static": timeline(two, [64, 68] * 3, 0.03),
            "nexus": timeline(two, [0, 0, 48, 84, 96, 36], 0.055),
            "disagg": timeline(two, [0] * 6, 0.02)}


def lines_by_label(ax) -> dict[str, str]:
    return {line.get_label().split(":")[0]: line.get_color() for line in ax.get_lines()}


def test_each_policy_has_one_colour_in_both_panels(runs):
    fig = timeline_figure(runs, 132)
    top, bottom = fig.axes
    top_lines, kv_lines = lines_by_label(top), lines_by_label(bottom)
    assert set(kv_lines) == set(runs)
    for name, colour in top_lines.items():
        assert colour == kv_lines[name] == POLICY_COLOURS[name]
    plt.close(fig)


def test_top_panel_has_one_stream_policies_and_not_two_gpu_ones(runs):
    fig = timeline_figure(runs, 132)
    top = fig.axes[0]
    drawn = lines_by_label(top)
    assert {"chunked", "prefill-first", "static", "nexus"} <= set(drawn)
    assert "disagg" not in drawn and "disagg" in top.get_title()
    for line in top.get_lines():
        if line.get_label().startswith(("chunked", "prefill-first")):
            assert set(line.get_ydata()) == {132}
    plt.close(fig)


def test_kv_axis_fits_small_use(runs):
    fig = timeline_figure(runs, 132)
    low, high = fig.axes[1].get_ylim()
    assert low == 0 and 5.5 <= high <= 10   # the largest use is 5.5%
    plt.close(fig)


@pytest.mark.parametrize("spread", [(0.005, 0.06), (0.001, 40.0)])
def test_ttft_tick_labels_do_not_overlap(spread):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"ttft_s": np.exp(rng.uniform(*np.log(spread), 400)),
                          "tbt_mean_s": rng.uniform(0.008, 0.02, 400)})
    fig = latency_cdf_figure({"chunked": frame, "nexus": frame * 1.3})
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    low, high = ax.get_xlim()
    boxes = sorted((label.get_window_extent(renderer) for tick, label in
                    zip(ax.xaxis.get_major_ticks(), ax.get_xticklabels())
                    if label.get_text() and low <= tick.get_loc() <= high), key=lambda b: b.x0)
    assert len(boxes) >= 2
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))
    assert "each request's mean" in fig.axes[1].get_title()
    plt.close(fig)


def test_palette_keeps_policy_colours_and_gives_others_distinct_ones():
    colours = policy_colours(["nexus beta=2", "nexus", "chunked", "spf-only"])
    assert colours["nexus"] == POLICY_COLOURS["nexus"] and colours["chunked"] == POLICY_COLOURS["chunked"]
    assert len(set(colours.values())) == 4
    assert not set(POLICY_COLOURS.values()) & {colours["nexus beta=2"], colours["spf-only"]}

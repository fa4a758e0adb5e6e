"""Synthetic stand-ins for the Nexus paper's long-prompt workloads.

These are NOT the datasets. Each preset is a shifted lognormal fitted to the
mean, median and 95th percentile of input length, and a lognormal fitted to
the mean and median of output length, as published in the paper's Table 1
(tokens). Only those statistics are matched; shapes, tails and correlations
between input and output length are not.

    long-doc   input mean 5905, P50 5461, P95 9292; output mean 180, P50 159
    arxiv-sum  input mean 3832, P50 3575, P95 6460; output mean 200, P50 181
    mixed      60% ShareGPT requests (the real conversations) and 40% long-doc
"""
from __future__ import annotations

from dataclasses import dataclass

from traces.lengths import LengthDist, LogNormal


@dataclass(frozen=True)
class Preset:
    input: LengthDist
    output: LengthDist


# The clip bounds sit far in the tails, so they move the mean and median by well under 1%.
PRESETS: dict[str, Preset] = {
    "long-doc": Preset(
        input=LogNormal.fit(mean=5905, median=5461, p95=9292, lo=1, hi=32768),
        output=LogNormal.fit(mean=180, median=159, lo=1, hi=4096),
    ),
    "arxiv-sum": Preset(
        input=LogNormal.fit(mean=3832, median=3575, p95=6460, lo=1, hi=32768),
        output=LogNormal.fit(mean=200, median=181, lo=1, hi=4096),
    ),
}

MIXED = "mixed"
MIXED_SHAREGPT_SHARE = 0.6   # the rest is long-doc
PRESET_NAMES = (*PRESETS, MIXED)

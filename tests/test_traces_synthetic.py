"""Length distributions, presets, arrival processes and seeding."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nexus.errors import UserError
from traces import read_trace
from traces.arrivals import arrival_times, resolve_cv
from traces.cli import main
from traces.lengths import parse_length_spec
from traces.presets import PRESETS

# The Nexus paper's Table 1, in tokens: (mean, P50, P95) of inputs, (mean, P50) of outputs.
PUBLISHED = {
    "long-doc": ((5905, 5461, 9292), (180, 159)),
    "arxiv-sum": ((3832, 3575, 6460), (200, 181)),
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def within(value: float, target: float, rel: float) -> bool:
    return abs(value - target) <= rel * target


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_hit_published_statistics(name):
    (in_mean, in_p50, in_p95), (out_mean, out_p50) = PUBLISHED[name]
    rng = np.random.default_rng(1)
    prompts = PRESETS[name].input.sample(20000, rng)
    outputs = PRESETS[name].output.sample(20000, rng)
    assert within(prompts.mean(), in_mean, 0.05)
    assert within(np.median(prompts), in_p50, 0.05)
    assert within(np.percentile(prompts, 95), in_p95, 0.05)
    assert within(outputs.mean(), out_mean, 0.05)
    assert within(np.median(outputs), out_p50, 0.05)
    assert prompts.dtype == np.int64 and prompts.min() >= 1 and outputs.min() >= 1


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_clipping_moves_mean_and_median_by_under_one_percent(name):
    dist = PRESETS[name].input
    rng = np.random.default_rng(2)
    raw = dist.shift + rng.lognormal(dist.mu, dist.sigma, 400_000)
    clipped = np.clip(np.rint(raw), dist.lo, dist.hi)
    assert within(clipped.mean(), raw.mean(), 0.01)
    assert within(np.median(clipped), np.median(raw), 0.01)


def test_length_specs_sample_what_they_say():
    rng = np.random.default_rng(3)
    assert (parse_length_spec("fixed:512").sample(100, rng) == 512).all()

    u = parse_length_spec("uniform:100:200").sample(20000, rng)
    assert u.min() == 100 and u.max() == 200
    assert within(u.mean(), 150, 0.01)

    ln = parse_length_spec("lognormal:mean=1000,median=800").sample(50000, rng)
    assert within(ln.mean(), 1000, 0.03)
    assert within(np.median(ln), 800, 0.03)

    capped = parse_length_spec("lognormal:mean=1000,median=800,min=500,max=900").sample(1000, rng)
    assert capped.min() == 500 and capped.max() == 900

    z = parse_length_spec("zipf:a=1.5,max=4096").sample(50000, rng)
    assert z.min() >= 1 and z.max() <= 4096
    # P(1) / P(2) = 2^a
    assert within(np.sum(z == 1) / np.sum(z == 2), 2 ** 1.5, 0.1)


@pytest.mark.parametrize("spec, words", [
    ("fixed:0", "must be positive"),
    ("fixed:abc", "must be an integer"),
    ("uniform:5", "two bounds"),
    ("uniform:9:3", "min 9 is above max 3"),
    ("lognormal:mean=100", "missing median"),
    ("lognormal:mean=100,median=200", "median <= mean"),
    ("lognormal:mean=100,median=90,p95=80", "p95 > median"),
    ("lognormal:mean=100,median=90,mode=3", "unexpected 'mode=3'"),
    ("lognormal:mean=nan,median=90", "positive finite"),
    ("zipf:a=1.5", "missing max"),
    ("gauss:3", "unknown distribution 'gauss'"),
])
def test_bad_length_specs_are_user_errors(spec, words, tmp_path, capsys):
    code, _, err = run(capsys, "synthetic", "--input", spec, "--output", "fixed:10",
                       "--rate", "1", "-n", "5", "-o", str(tmp_path / "t.jsonl"))
    assert code == 2
    assert err.startswith(f"nexus-trace: error: bad length spec {spec!r}: ")
    assert words in err
    assert not (tmp_path / "t.jsonl").exists()


def gaps(n: int, rate: float, cv: float, seed: int = 0) -> np.ndarray:
    times = arrival_times(n, rate, cv, np.random.default_rng(seed))
    assert times[0] == 0.0
    return np.diff(times)


def test_poisson_gaps_have_the_rate_and_cv_one():
    g = gaps(20000, 8.0, 1.0)
    assert within(g.mean(), 1 / 8, 0.03)
    assert within(g.std() / g.mean(), 1.0, 0.05)


def test_gamma_gaps_have_the_requested_cv():
    g = gaps(20000, 2.0, 3.0)
    assert within(g.mean(), 0.5, 0.08)
    assert within(g.std() / g.mean(), 3.0, 0.15)


def test_constant_and_infinite_rates():
    assert np.allclose(gaps(50, 4.0, 0.0), 0.25)
    assert (arrival_times(10, math.inf, 1.0, np.random.default_rng(0)) == 0).all()


def test_arrival_flags_resolve_to_one_cv():
    assert resolve_cv(None, None) == 1.0
    assert resolve_cv(None, 2.5) == 2.5
    assert resolve_cv("constant", None) == 0.0
    assert resolve_cv("poisson", 1.0) == 1.0
    with pytest.raises(UserError, match="needs --cv"):
        resolve_cv("gamma", None)
    with pytest.raises(UserError, match="use --arrival gamma"):
        resolve_cv("poisson", 2.0)
    with pytest.raises(UserError, match="--cv must be"):
        resolve_cv(None, -1.0)


def synth(tmp_path, name: str, *extra: str) -> bytes:
    path = tmp_path / name
    assert main(["synthetic", "--input", "lognormal:mean=900,median=600", "--output", "uniform:10:300",
                 "-n", "300", "-o", str(path), *extra]) == 0
    return path.read_bytes()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synth(tmp_path, "a.jsonl", "--rate", "3", "--seed", "5")
    assert synth(tmp_path, "b.jsonl", "--rate", "3", "--seed", "5") == a
    assert synth(tmp_path, "c.jsonl", "--rate", "3", "--seed", "6") != a


def test_cv_one_is_exactly_poisson_and_rate_leaves_lengths_alone(tmp_path):
    poisson = synth(tmp_path, "p.jsonl", "--rate", "3", "--arrival", "poisson")
    assert synth(tmp_path, "g.jsonl", "--rate", "3", "--arrival", "gamma", "--cv", "1") == poisson
    synth(tmp_path, "fast.jsonl", "--rate", "30")
    slow, fast = read_trace(tmp_path / "p.jsonl"), read_trace(tmp_path / "fast.jsonl")
    assert [(e.prompt_tokens, e.output_tokens) for e in slow] == [(e.prompt_tokens, e.output_tokens) for e in fast]
    assert fast[-1].arrival_time_s < slow[-1].arrival_time_s / 5


def test_rate_inf_puts_everything_at_zero(tmp_path):
    synth(tmp_path, "burst.jsonl", "--rate", "inf")
    assert {e.arrival_time_s for e in read_trace(tmp_path / "burst.jsonl")} == {0.0}


@pytest.mark.parametrize("argv, words", [
    (["--rate", "0"], "--rate must be a positive number"),
    (["--rate", "nan"], "--rate must be a positive number"),
    (["--rate", "1", "--seed", "-1"], "--seed must be a non-negative integer"),
    (["--rate", "1", "--arrival", "gamma"], "needs --cv"),
])
def test_bad_arrival_options(argv, words, tmp_path, capsys):
    code, _, err = run(capsys, "synthetic", "--preset", "long-doc", "-n", "3", "-o", str(tmp_path / "t"), *argv)
    assert code == 2
    assert words in err


def test_preset_and_specs_are_exclusive(tmp_path, capsys):
    code, _, err = run(capsys, "synthetic", "--preset", "long-doc", "--input", "fixed:3",
                       "--rate", "1", "-n", "3", "-o", str(tmp_path / "t"))
    assert code == 2 and "leave out --input" in err
    code, _, err = run(capsys, "synthetic", "--input", "fixed:3", "--rate", "1", "-n", "3", "-o", str(tmp_path / "t"))
    assert code == 2 and "give both --input and --output" in err

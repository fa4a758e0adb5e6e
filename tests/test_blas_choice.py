"""real.blas_choice's pick, with the library switch and the GPU timer stood in for (the
graphs themselves are tested on a GPU in test_real_gpu.py)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from real import blas_choice


@pytest.fixture
def trial(monkeypatch):
    """Captures record the library in force; replays take the times set in `trial.ms`."""
    class Trial:
        active = blas_choice.DEFAULT
        captures: list[str] = []
        ms: dict[str, float] = {}
        timed: list[list[str]] = []

    @contextmanager
    def library(name):
        before, Trial.active = Trial.active, name
        try:
            yield
        finally:
            Trial.active = before

    def timer(graphs):
        Trial.timed.append([g["lib"] for g in graphs])
        return [Trial.ms[g["lib"]] for g in graphs]

    monkeypatch.setattr(blas_choice, "library", library)
    monkeypatch.setattr(blas_choice, "median_replay_ms", timer)
    Trial.captures, Trial.timed = [], []
    return Trial


def capture(trial):
    def run():
        trial.captures.append(trial.active)
        return {"lib": trial.active}, f"out-{trial.active}"
    return run


def test_a_clearly_faster_challenger_is_kept_with_its_own_output(trial) -> None:
    trial.ms = {"default": 1.0, "cublaslt": 0.95}
    graph, out, name = blas_choice.capture_fastest(capture(trial), tokens=64)
    assert (graph["lib"], out, name) == ("cublaslt", "out-cublaslt", "cublaslt")
    assert trial.captures == ["default", "cublaslt"] and trial.timed == [["default", "cublaslt"]]
    assert trial.active == blas_choice.DEFAULT


@pytest.mark.parametrize("challenger_ms", [0.995, 1.0, 1.2])
def test_the_default_stays_unless_beaten_by_the_margin(trial, challenger_ms) -> None:
    trial.ms = {"default": 1.0, "cublaslt": challenger_ms}
    graph, out, name = blas_choice.capture_fastest(capture(trial), tokens=128)
    assert (graph["lib"], name) == ("default", "default")


def test_graphs_past_the_trial_size_are_captured_once_untimed(trial) -> None:
    trial.ms = {"default": 1.0, "cublaslt": 0.1}
    graph, out, name = blas_choice.capture_fastest(capture(trial), tokens=blas_choice.TRIAL_MAX_TOKENS + 1)
    assert name == "default" and trial.captures == ["default"] and trial.timed == []

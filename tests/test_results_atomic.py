"""Results are complete or absent: an interrupt while writing leaves no partial folder, and
an earlier run's results survive an interrupted rewrite."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

import nexus.report as report
from nexus.report import PLOT_FILES, RESULT_FILES, RunOutput, write_results
from sim.cli import main as sim_main
from synthetic import make_trace
from traces import write_trace


@pytest.fixture
def fast_plots(monkeypatch):
    """Blank figures: these tests are about files, and real plots take a second each."""
    import matplotlib.pyplot as plt
    monkeypatch.setattr(report, "latency_cdf_figure", lambda *a: plt.figure(figsize=(1, 1)))
    monkeypatch.setattr(report, "timeline_figure", lambda *a: plt.figure(figsize=(1, 1)))


def run_output(policy: str) -> RunOutput:
    requests = pd.DataFrame({"ttft_s": [0.01, 0.02, 0.05], "tbt_mean_s": [0.01, 0.012, 0.011]})
    timeline = pd.DataFrame({"start_s": [0.0, 0.1], "end_s": [0.1, 0.2], "stream": ["prefill", "decode"],
                             "sms": [64, 68], "kv_usage": [0.01, 0.02]})
    return RunOutput({"policy": policy}, requests, timeline, {"command": "test"})


def tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_complete_write_has_every_file(tmp_path):
    out = tmp_path / "deep" / "out"
    write_results(out, {"static": run_output("static"), "nexus": run_output("nexus")}, 132)
    assert tree(out) == {*PLOT_FILES, "static", "nexus", *(f"{p}/{f}" for p in ("static", "nexus") for f in RESULT_FILES)}
    assert json.loads((out / "nexus" / "summary.json").read_text())["policy"] == "nexus"
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("where", ["write_run", "latency_cdf_figure", "timeline_figure"])
def test_interrupt_while_writing_leaves_nothing(tmp_path, monkeypatch, fast_plots, where):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, where, interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_results(out, {"static": run_output("static"), "nexus": run_output("nexus")}, 132)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_interrupted_rewrite_keeps_the_earlier_results(tmp_path, monkeypatch, fast_plots):
    out = tmp_path / "out"
    write_results(out, {"chunked": run_output("chunked")}, 132)
    before = {p: (out / p).read_bytes() for p in tree(out)}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "timeline_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_results(out, {"nexus": run_output("nexus")}, 132)
    assert {p: (out / p).read_bytes() for p in tree(out)} == before
    assert leftovers(tmp_path) == []


def test_rewrite_replaces_the_earlier_results_whole(tmp_path, fast_plots):
    out = tmp_path / "out"
    write_results(out, {"static": run_output("static"), "nexus": run_output("nexus")}, 132)
    write_results(out, {"chunked": run_output("chunked")}, 132)
    assert tree(out) == {*RESULT_FILES, *PLOT_FILES}   # no stale per-policy folders
    assert json.loads((out / "summary.json").read_text())["policy"] == "chunked"
    assert leftovers(tmp_path) == []


def test_ctrl_c_between_the_two_renames_is_held_until_both_are_done(tmp_path, monkeypatch, fast_plots):
    out = tmp_path / "out"
    write_results(out, {"chunked": run_output("chunked")}, 132)
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)   # arrives with the old results moved aside

    monkeypatch.setattr(report.os, "replace", replace_then_interrupt)
    write_results(out, {"nexus": run_output("nexus")}, 132)
    assert len(calls) == 2
    assert json.loads((out / "summary.json").read_text())["policy"] == "nexus"
    assert leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sim_cli_interrupted_while_plotting_writes_nothing(tmp_path, monkeypatch, fast_plots, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(30, 10.0, (16, 200), (2, 20)), trace)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "latency_cdf_figure", interrupted)
    out = tmp_path / "out"
    assert sim_main(["--trace", str(trace), "--quiet", "--compare", "chunked,static", "--out", str(out)]) == 130
    assert "interrupted; no results written" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


# Ctrl-C while the command's modules import: tests/test_launch_exit.py (it leaves with
# os._exit, so it runs in a subprocess there).


def test_sigint_soon_after_start_exits_130_without_a_traceback(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(2000, 50.0, (16, 2000), (2, 400)), trace)
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["nexus-sim", "--trace", {str(trace)!r}, "--quiet", "--out", {str(tmp_path / "out")!r}]
        from nexus.launch import nexus_sim
        nexus_sim()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)   # inside the imports of numpy, pandas, simpy (or, on a fast machine, the run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", ["notes.txt", "nexus/notes.txt"])
def test_results_folder_with_the_users_files_is_not_replaced(tmp_path, fast_plots, extra):
    from nexus.errors import UserError
    out = tmp_path / "out"
    write_results(out, {"static": run_output("static"), "nexus": run_output("nexus")}, 132)
    (out / extra).write_text("mine")
    with pytest.raises(UserError, match="a folder holding other files"):
        write_results(out, {"chunked": run_output("chunked")}, 132)
    assert (out / extra).read_text() == "mine"

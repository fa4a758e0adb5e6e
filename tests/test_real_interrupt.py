"""nexus-real bench on CPU: Ctrl-C mid-run exits 130 cleanly with nothing written; a model
too large for the machine and a bad --out are one-line errors before anything is allocated."""
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")

import real.memory  # noqa: E402
from real.cli import main  # noqa: E402
from synthetic import make_trace  # noqa: E402
from traces import write_trace  # noqa: E402


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nexus-real: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(make_trace(8, 40.0, (4, 60), (2, 12), seed=1), path)
    return path


def test_model_larger_than_host_memory_is_refused_before_allocating(trace_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(real.memory, "host_available_bytes", lambda: 16 * 10**9)
    assert main(["bench", "--device", "cpu", "--model", "llama-3.1-70b", "--trace", str(trace_file),
                 "--out", str(tmp_path / "o")]) == 2
    err = one_error_line(capsys)
    assert "llama-3.1-70b needs 29" in err and "282.2 GB of float32 weights" in err
    assert "but only 16.0 GB of host memory is available" in err
    assert not (tmp_path / "o").exists()


def test_bad_out_is_refused_before_the_model_is_built(trace_file, capsys, monkeypatch):
    import real.model_runner
    monkeypatch.setattr(real.model_runner, "ModelRunner", None)   # building it would fail loudly
    assert main(["bench", "--device", "cpu", "--model", "tiny-llama", "--trace", str(trace_file),
                 "--out", "/dev/null"]) == 2
    assert "--out /dev/null: exists and is not a folder" in one_error_line(capsys)


def test_ctrl_c_mid_run_exits_130_and_writes_nothing(tmp_path):
    trace = tmp_path / "long.jsonl"
    write_trace(make_trace(400, 100.0, (150, 250), (150, 250), seed=2), trace)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "real.cli", "bench", "--device", "cpu", "--model", "tiny-llama",
                             "--trace", str(trace), "--compare", "static,nexus", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "running static" not in seen:
        line = proc.stderr.readline()
        assert line, f"bench ended before running: {seen}"
        seen += line
    time.sleep(1.0)   # both stream threads are stepping now
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # It used to abort: "terminate called without an active exception", status 134.
    assert proc.returncode == 130, err
    assert "terminate called" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "nexus-real: interrupted; no results written"
    assert time.monotonic() - started < 30   # the threads stop after their step, not at the trace's end
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["long.jsonl"]

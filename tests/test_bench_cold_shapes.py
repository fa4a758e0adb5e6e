"""experiments/bench_cold_shapes.py on CPU: every shape is timed first, repeated and in a new
thread, and the shapes' own paths are reported (no graphs and no cuDNN on a CPU)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import bench_cold_shapes  # noqa: E402


def test_shapes_parse_as_steps_of_tokens_and_prior():
    assert bench_cold_shapes.parse_shapes("40:0,24:16,7,4797:0+1019") == [
        ((40, 0),), ((24, 16),), ((7, 0),), ((4797, 0), (1019, 0))]


def test_in_new_thread_runs_elsewhere_and_raises_its_failure_here():
    import threading
    seen = []
    assert bench_cold_shapes.in_new_thread(lambda: seen.append(threading.current_thread())) >= 0
    assert seen and seen[0] is not threading.main_thread()
    with pytest.raises(ZeroDivisionError):
        bench_cold_shapes.in_new_thread(lambda: 1 / 0)


def test_cpu_run_times_each_shape_three_ways(tmp_path):
    out = tmp_path / "cold.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_cold_shapes.py"), "--device", "cpu",
                    "--model", "tiny-llama", "--shapes", "40:0,24:16,40:0+17:0", "--dense-from", "30", "--warm-up",
                    "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    assert [r["chunks"] for r in result["shapes"]] == [[[40, 0]], [[24, 16]], [[40, 0], [17, 0]]]
    for r in result["shapes"]:
        assert r["first_ms"] > 0 and r["repeat_ms"] > 0 and r["new_thread_ms"] > 0
        assert r["first_over_repeat"] == pytest.approx(r["first_ms"] / r["repeat_ms"])
        assert r["dense"] is False and r["graph"] is False      # the rule picks 40-token chunks, but a CPU has no cuDNN
    assert result["dense_min_tokens"] == 30 and result["engine_warm_up"] is True and result["warm"] is True
    assert result["repeats"] == bench_cold_shapes.REPEATS and "bench_cold_shapes.py" in result["command"]

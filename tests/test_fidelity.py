"""The fidelity study replays the calibration the measured Nexus controller planned with."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from fidelity import CALIBRATION, controller_calibration  # noqa: E402


def _cases(created: str) -> list[dict]:
    return [{"policy": "chunked", "summary": {"cost_model": {}}},
            {"policy": "nexus", "summary": {"cost_model": {"created": created}}}]


def test_the_calibration_the_runs_recorded_is_accepted(tmp_path):
    shipped = json.loads(CALIBRATION.read_text())["created"]
    assert controller_calibration(None, _cases(shipped), CALIBRATION) is None   # plan on the shipped one
    older = tmp_path / "older.json"
    older.write_text(json.dumps({**json.loads(CALIBRATION.read_text()), "created": "2020-01-01T00:00:00+00:00"}))
    assert controller_calibration(str(older), _cases("2020-01-01T00:00:00+00:00"), CALIBRATION) == str(older)
    # Runs made with a calibration profiled on their own machine are checked against that one.
    assert controller_calibration(None, _cases("2020-01-01T00:00:00+00:00"), older) is None


def test_a_calibration_other_than_the_runs_used_is_refused():
    with pytest.raises(SystemExit, match="planned with calibration .*2020-01-01.*--controller-calibration"):
        controller_calibration(None, _cases("2020-01-01T00:00:00+00:00"), CALIBRATION)


def test_runs_that_recorded_a_digest_are_checked_by_contents(tmp_path):
    from nexus.cost.calibration import content_digest

    data = json.loads(CALIBRATION.read_text())
    runs = [{"policy": "nexus", "summary": {"cost_model": {"created": data["created"],
                                                           "digest": content_digest(data)}}}]
    assert controller_calibration(None, runs, CALIBRATION) is None
    # Same stamp, other contents (a refit kept its stamp): refused.
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**data, "engine": {**data["engine"], "step_gap_s": 0.0009}}))
    with pytest.raises(SystemExit, match="--controller-calibration"):
        controller_calibration(None, runs, edited)


@pytest.mark.parametrize("command", ["real", "fit-gap", "compare"])
def test_every_subcommand_prints_its_help(command):
    import subprocess
    script = Path(__file__).resolve().parent.parent / "experiments" / "fidelity.py"
    out = subprocess.run([sys.executable, str(script), command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--calibration" in out.stdout

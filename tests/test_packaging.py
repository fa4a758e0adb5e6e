"""What an installed nexus-pd ships: versions on every command, type markers, the licence, notebook tooling."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nexus

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module, prog", [("sim.cli", "nexus-sim"), ("real.cli", "nexus-real"),
                                          ("traces.cli", "nexus-trace")])
def test_every_command_prints_its_version(module, prog, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_:
        code = main(["--version"])
        raise SystemExit(code)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {nexus.__version__}"
    assert nexus.__version__[0].isdigit()


def test_packages_are_typed_and_licensed():
    for package in ("nexus", "sim", "real", "traces"):
        assert (ROOT / package / "py.typed").is_file()
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_jupyter_execute_is_installed():
    beside = Path(sys.executable).parent / "jupyter"
    jupyter = str(beside) if beside.exists() else shutil.which("jupyter")
    assert jupyter, "the dev extra must provide the jupyter command"
    done = subprocess.run([jupyter, "execute", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "notebook" in done.stdout.lower()

"""nexus.launch.exit_with: an interrupt's status leaves without the interpreter's teardown
(exit handlers do not run); any other status exits normally (they do)."""
import subprocess
import sys

import pytest

SCRIPT = ("import atexit, sys; from nexus.launch import exit_with; "
          "atexit.register(lambda: sys.stdout.write('teardown')); print('ran'); exit_with({code})")


@pytest.mark.parametrize("code, teardown", [(130, False), (0, True), (2, True)])
def test_exit_with_skips_teardown_only_after_an_interrupt(code, teardown):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(code=code)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == code
    assert proc.stdout.startswith("ran")                 # flushed before the hard exit
    assert ("teardown" in proc.stdout) == teardown


LAUNCH = """
import importlib, sys
from nexus import launch

def failing_import(name):
    {body}

importlib.import_module = failing_import
launch._launch("sim.cli", "nexus-sim")
"""


@pytest.mark.parametrize("body, interrupted", [
    ("raise KeyboardInterrupt", True),
    # Ctrl-C inside an extension module's initialisation surfaces as its ImportError
    ("try:\n        raise KeyboardInterrupt\n    except KeyboardInterrupt as e:\n"
     "        raise ImportError('initialization failed') from e", True),
    ("raise ImportError('no such module')", False)])
def test_an_interrupt_while_importing_the_command_exits_130_without_a_traceback(body, interrupted):
    proc = subprocess.run([sys.executable, "-c", LAUNCH.format(body=body)], capture_output=True, text=True,
                          timeout=60)
    if interrupted:
        assert proc.returncode == 130
        assert proc.stderr == "nexus-sim: interrupted while starting; nothing was done\n"
    else:
        assert proc.returncode == 1 and "ImportError: no such module" in proc.stderr

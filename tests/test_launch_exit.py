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

"""Console-script entry points that import their command only once an interrupt can be reported.

Importing a command pulls in numpy, pandas and (for nexus-real) torch, which takes seconds;
Ctrl-C in that time would otherwise print a traceback from deep inside an import.
"""
from __future__ import annotations

import importlib
import sys
from typing import NoReturn


def _launch(module: str, prog: str) -> NoReturn:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted while starting; nothing was done\n")
        sys.exit(130)
    sys.exit(main())


def nexus_sim() -> NoReturn:
    _launch("sim.cli", "nexus-sim")


def nexus_real() -> NoReturn:
    _launch("real.cli", "nexus-real")


def nexus_trace() -> NoReturn:
    _launch("traces.cli", "nexus-trace")

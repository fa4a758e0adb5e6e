"""Console-script entry points that import their command only once an interrupt can be reported.

Importing a command pulls in numpy, pandas and (for nexus-real) torch, which takes seconds;
Ctrl-C in that time would otherwise print a traceback from deep inside an import.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, NoReturn

INTERRUPTED = 130


def exit_with(code: int) -> NoReturn:
    """Exit with `code`; after an interrupt, at once, without the interpreter's teardown.

    For nexus-real: a run interrupted mid-step has already said so, written nothing and joined
    its stream threads and worker processes, and tearing down with torch's C++ threads still
    alive once aborted it after that message ("terminate called without an active exception",
    status 134 where 130 was due). Not for nexus-sim, whose process pools and Ray end in the
    interpreter's exit handlers."""
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    sys.exit(code)


def _launch(module: str, prog: str, leave: Callable[[int], NoReturn] = sys.exit) -> NoReturn:
    try:
        main = importlib.import_module(module).main
    except BaseException as e:
        if not caused_by_interrupt(e):
            raise
        sys.stderr.write(f"{prog}: interrupted while starting; nothing was done\n")
        # At once: Ctrl-C inside an extension module's initialisation leaves it half made
        # (matplotlib's ft2font raised "ImportError: initialization failed" from the
        # KeyboardInterrupt), and the interpreter's teardown then aborted (status -6). Nothing
        # has started that would need the exit handlers.
        exit_with(INTERRUPTED)
    leave(main())


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether `error` is a KeyboardInterrupt or was raised while handling one, as an extension
    module's failed import is."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def nexus_sim() -> NoReturn:
    _launch("sim.cli", "nexus-sim")


def nexus_real() -> NoReturn:
    _launch("real.cli", "nexus-real", leave=exit_with)


def nexus_trace() -> NoReturn:
    _launch("traces.cli", "nexus-trace")

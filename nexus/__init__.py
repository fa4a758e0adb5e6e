"""Shared core of Nexus: specs, requests, KV accounting, cost models, policies and metrics.

Everything here is plain Python and numpy, so that the simulator and the real
engine agree on one implementation. Nothing in this package imports torch or simpy.
"""


def __getattr__(name: str) -> str:
    # Looked up on first use: importing importlib.metadata here would run before the console
    # scripts (nexus.launch) can report a Ctrl-C, and a SIGINT 0.4 s after start on a loaded
    # 2-core machine landed inside it with a traceback.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version
    try:
        value = version("nexus-pd")
    except PackageNotFoundError:   # run from a source tree that was never installed
        value = "unknown"
    globals()["__version__"] = value
    return value

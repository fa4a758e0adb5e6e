"""Shared core of Nexus: specs, requests, KV accounting, cost models, policies and metrics.

Everything here is plain Python and numpy, so that the simulator and the real
engine agree on one implementation. Nothing in this package imports torch or simpy.
"""

from importlib.metadata import PackageNotFoundError, version as _distribution_version

try:
    __version__ = _distribution_version("nexus-pd")
except PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = "unknown"

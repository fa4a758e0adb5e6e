"""Where probes run: in this process, on a local process pool, or on a Ray cluster.

Each is a `concurrent.futures.Executor`, so a search or sweep only ever calls `submit` and
waits on futures. Ray is an optional extra (`pip install -e '.[ray]'`); it is imported only
when asked for.
"""
from __future__ import annotations

import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, Callable

from nexus.errors import UserError


class InlineExecutor(Executor):
    """Runs each call at once, in this process (one worker: nothing to gain from a pool)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:   # re-raised by fut.result(), as a pool would
            fut.set_exception(e)
        return fut


class RayExecutor(Executor):
    """Each call becomes one Ray task (one CPU) on the cluster at `address` ("auto" finds a
    running one; "local" starts one in this process)."""

    def __init__(self, address: str):
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs Ray: pip install -e '.[ray]'") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=None if address == "local" else address, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"--ray {address}: cannot connect to a Ray cluster ({e})") from None
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1)(fn)
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(ray: str | None = None, jobs: int | None = None) -> Executor:
    """Ray if `ray` names a cluster, else a pool of `jobs` processes (default: every core)."""
    if ray:
        return RayExecutor(ray)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    return InlineExecutor() if jobs == 1 else ProcessPoolExecutor(jobs)

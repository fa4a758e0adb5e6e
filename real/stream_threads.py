"""Long-lived threads that run an engine's streams, one per stream name, for every run of a
ModelRunner.

What a thread builds for itself outlives a run this way: cuDNN's attention graphs, which
PyTorch keeps per thread (nexus.graph_buckets.dense_shapes), are built once per stream and
process instead of once per run. With a thread per run, every run of a validate call or probe
of a max-rate search rebuilt them before its clock: 29-47 graphs (1.5-2.5 s on an H200) for
the shipped policies' 2048-token chunks, about 260 (13 s) for 4096-token chunks of 16k
prompts. The threads are daemons, so a stream stuck on the device never holds the process
open at exit. Two engines run at once on one runner take turns on a stream's thread: the
second's streams start when the first's return.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class StreamThreads:
    """One daemon thread per name, each running the calls submitted to it in order."""

    def __init__(self) -> None:
        self._queues: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()

    def submit(self, name: str, fn: Callable[[], Any]) -> Future:
        """Run fn on the thread called `name` (started on first use); its future."""
        with self._lock:
            jobs = self._queues.get(name)
            if jobs is None:
                jobs = self._queues[name] = queue.SimpleQueue()
                threading.Thread(target=_serve, args=(jobs,), name=name, daemon=True).start()
        future: Future = Future()
        jobs.put((fn, future))
        return future


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        fn, future = jobs.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn())
        except BaseException as e:   # handed to whoever waits on the future
            future.set_exception(e)

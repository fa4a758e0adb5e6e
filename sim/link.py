"""The link between the prefill GPU and the decode GPU, as the engine drives it.

The engine (real/disagg.py) sends one request's KV at a time, in the order prompts finish:
the decode side first finds blocks for the request at the head of the queue, waiting for
room if it must, and only then takes its bytes, so the requests behind it wait as well. A
transfer then holds the link for latency + bytes / bandwidth (nexus.topology.LinkSpec, which
a measured sweep calibrates). The queue's story, told in callbacks on the simulator's clock:
a request joins the back; when the link is free and the head has its blocks, the head
crosses; on arrival it decodes, and the next head tries.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from nexus.request import Request
from nexus.topology import LinkSpec
from sim.clock import Clock


class Link:
    def __init__(self, clock: Clock, spec: LinkSpec, kv_bytes_per_token: int,
                 reserve: Callable[[Request], bool], arrived: Callable[[Request], None]):
        """`reserve(req)` takes the decode GPU's blocks for a request (False while it has no room
        yet); `arrived(req)` is called when its KV is across."""
        self.clock, self.spec, self.kv_bytes_per_token = clock, spec, kv_bytes_per_token
        self.reserve, self.arrived = reserve, arrived
        self.queue: deque[Request] = deque()
        self.crossing: Request | None = None
        self.transfers = 0
        self.bytes_moved = 0

    def send(self, req: Request) -> None:
        """Queue a prefilled request's KV behind those already waiting."""
        self.queue.append(req)
        self.try_next()

    def try_next(self) -> None:
        """Start the head's transfer if the link is free and the decode GPU has room for it;
        call again whenever decode blocks come free."""
        if self.crossing is not None or not self.queue or not self.reserve(self.queue[0]):
            return
        req = self.crossing = self.queue.popleft()
        self.clock.call_in(self.spec.alone_s(req.kv_tokens * self.kv_bytes_per_token), self._across, req)

    def busy(self) -> bool:
        """Whether a transfer is under way or waiting for its turn."""
        return self.crossing is not None or bool(self.queue)

    def _across(self, req: Request) -> None:
        self.crossing = None
        self.transfers += 1
        self.bytes_moved += req.kv_tokens * self.kv_bytes_per_token
        self.arrived(req)
        self.try_next()

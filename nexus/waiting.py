"""Requests waiting for (more) prefill, in the policy's priority order.

Priorities are static while a request waits (shortest-prompt-first with ageing reduces to
`remaining + gamma * arrival`, because the `gamma * now` term is common to all), so a heap
serves every policy in O(log n) per request, however long the queue grows.
"""
from __future__ import annotations

import heapq
from typing import Callable, Iterator

from nexus.request import Request


class WaitingQueue:
    def __init__(self, priority: Callable[[Request], float]):
        self.priority = priority
        self._heap: list[tuple[float, int, Request]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, req: Request) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.priority(req), self._seq, req))

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def peek(self) -> Request | None:
        return self._heap[0][2] if self._heap else None

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request, in no particular order."""
        return (entry[2] for entry in self._heap)

    def pending_tokens(self) -> int:
        return sum(req.prefill_remaining for req in self)

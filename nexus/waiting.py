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
        # Ties go to the request that first arrived: a partly prefilled or preempted request
        # keeps its place rather than queueing behind newcomers of the same priority.
        self._first_seen: dict[Request, int] = {}

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, req: Request) -> None:
        seq = self._first_seen.setdefault(req, len(self._first_seen))
        heapq.heappush(self._heap, (self.priority(req), seq, req))

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def pop_started(self) -> Request | None:
        """Take the first request, in priority order, whose prefill already holds its blocks.

        O(n), and used only when KV is short: then a new prompt that cannot get its blocks
        must not keep waiting the requests that hold theirs and could finish.
        """
        started = [entry for entry in self._heap if entry[2].kv_blocks]
        if not started:
            return None
        entry = min(started)
        self._heap.remove(entry)
        heapq.heapify(self._heap)
        return entry[2]

    def forget(self, req: Request) -> None:
        """`req` finished: it will never be pushed again."""
        self._first_seen.pop(req, None)

    def peek(self) -> Request | None:
        return self._heap[0][2] if self._heap else None

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request, in no particular order."""
        return (entry[2] for entry in self._heap)

    def first(self, n: int, where: Callable[[Request], bool]) -> list[Request]:
        """The first `n` waiting requests in priority order for which `where` holds; the heap's
        own keys order them, so no priority is computed again."""
        if n <= 0:
            return []
        return [entry[2] for entry in heapq.nsmallest(n, [e for e in self._heap if where(e[2])])]

    def pending_tokens(self) -> int:
        return sum(req.prefill_remaining for req in self)

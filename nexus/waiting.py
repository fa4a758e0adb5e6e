"""Requests waiting for (more) prefill, in the policy's priority order.

Priorities are static while a request waits (shortest-prompt-first with ageing reduces to
`remaining + gamma * arrival`, because the `gamma * now` term is common to all), so a heap
serves every policy in O(log n) per request, however long the queue grows.

New prompts and prompts already partly prefilled wait in two heaps, merged on every pop, with
the prefill tokens each holds kept as running sums: a request changes only outside the queue
(it is popped, given a chunk, and pushed back), so what it counted at push still holds. A
controller that asks every step how much prefill is waiting, or which new prompts come first,
then pays for the answer, not for the queue's length (thousands deep past saturation).
"""
from __future__ import annotations

import heapq
from itertools import chain
from typing import Callable, Iterator

from nexus.request import Request

_Entry = tuple[float, int, Request]


class WaitingQueue:
    def __init__(self, priority: Callable[[Request], float]):
        self.priority = priority
        self._new: list[_Entry] = []       # no prefill yet (or preempted back to none)
        self._started: list[_Entry] = []   # part of the prompt computed
        self._new_tokens = self._started_tokens = 0
        # Ties go to the request that first arrived: a partly prefilled or preempted request
        # keeps its place rather than queueing behind newcomers of the same priority.
        self._first_seen: dict[Request, int] = {}

    def __len__(self) -> int:
        return len(self._new) + len(self._started)

    def __bool__(self) -> bool:
        return bool(self._new) or bool(self._started)

    def push(self, req: Request) -> None:
        seq = self._first_seen.setdefault(req, len(self._first_seen))
        if req.kv_tokens:
            heapq.heappush(self._started, (self.priority(req), seq, req))
            self._started_tokens += req.prefill_remaining
        else:
            heapq.heappush(self._new, (self.priority(req), seq, req))
            self._new_tokens += req.prefill_remaining

    def _front(self) -> list[_Entry] | None:
        """The heap whose head comes first overall, or None if both are empty."""
        if not self._started:
            return self._new or None
        if not self._new:
            return self._started
        return self._started if self._started[0] < self._new[0] else self._new

    def _took(self, heap: list[_Entry], req: Request) -> Request:
        if heap is self._started:
            self._started_tokens -= req.prefill_remaining
        else:
            self._new_tokens -= req.prefill_remaining
        return req

    def pop(self) -> Request:
        heap = self._front()
        if heap is None:
            raise IndexError("pop from an empty waiting queue")
        return self._took(heap, heapq.heappop(heap)[2])

    def pop_started(self) -> Request | None:
        """Take the first request, in priority order, whose prefill already holds its blocks.

        O(n), and used only when KV is short: then a new prompt that cannot get its blocks
        must not keep waiting the requests that hold theirs and could finish.
        """
        found = min(((e, heap) for heap in (self._started, self._new) for e in heap if e[2].kv_blocks),
                    default=None, key=lambda pair: pair[0])
        if found is None:
            return None
        entry, heap = found
        heap.remove(entry)
        heapq.heapify(heap)
        return self._took(heap, entry[2])

    def forget(self, req: Request) -> None:
        """`req` finished: it will never be pushed again."""
        self._first_seen.pop(req, None)

    def peek(self) -> Request | None:
        heap = self._front()
        return heap[0][2] if heap is not None else None

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request, in no particular order."""
        return (entry[2] for entry in chain(self._started, self._new))

    def first_new(self, n: int) -> Iterator[Request]:
        """Up to `n` prompts with no prefill yet, in priority order, walking the heap lazily
        (O(k log k) for the k taken, whatever the queue's length)."""
        heap = self._new
        frontier = [(heap[0], 0)] if heap and n > 0 else []
        for _ in range(n):
            if not frontier:
                return
            entry, i = heapq.heappop(frontier)
            yield entry[2]
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def started_tokens(self) -> int:
        """Prompt tokens still to compute for the requests already part prefilled."""
        return self._started_tokens

    def new_count(self) -> int:
        return len(self._new)

    def pending_tokens(self) -> int:
        return self._new_tokens + self._started_tokens

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
import struct
from itertools import chain
from typing import Callable, Iterator

from nexus.request import Request

SEQ_BITS = 40   # arrival ranks below 2**40
_DOUBLE = struct.Struct(">d")
_SIGN, _ALL = 1 << 63, (1 << 64) - 1


def order_key(priority: float, seq: int) -> int:
    """An int that sorts as (priority, seq) does: the heaps hold these, not tuples, because
    a heap of ints pops in half the time (a queue thousands deep past saturation pops one
    per prompt). A double's bits sort as the double does once a negative's are all flipped
    and a positive's sign bit is set; adding 0.0 makes -0.0 the 0.0 it compares equal to."""
    bits = int.from_bytes(_DOUBLE.pack(priority + 0.0), "big")
    return (bits ^ _ALL if bits & _SIGN else bits | _SIGN) << SEQ_BITS | seq


class WaitingQueue:
    def __init__(self, priority: Callable[[Request], float]):
        self.priority = priority
        self._new: list[int] = []       # order_keys of those with no prefill yet (or preempted back to none)
        self._started: list[int] = []   # and of those with part of the prompt computed
        self._requests: dict[int, Request] = {}   # by order_key
        self._new_tokens = self._started_tokens = 0
        # Ties go to the request that first arrived: a partly prefilled or preempted request
        # keeps its place rather than queueing behind newcomers of the same priority.
        self._first_seen: dict[Request, int] = {}

    def __len__(self) -> int:
        return len(self._new) + len(self._started)

    def __bool__(self) -> bool:
        return bool(self._new) or bool(self._started)

    def push(self, req: Request) -> None:
        key = order_key(self.priority(req), self._first_seen.setdefault(req, len(self._first_seen)))
        self._requests[key] = req
        if req.kv_tokens:
            heapq.heappush(self._started, key)
            self._started_tokens += req.prefill_remaining
        else:
            heapq.heappush(self._new, key)
            self._new_tokens += req.prefill_remaining

    def _front(self) -> list[int] | None:
        """The heap whose head comes first overall, or None if both are empty."""
        if not self._started:
            return self._new or None
        if not self._new:
            return self._started
        return self._started if self._started[0] < self._new[0] else self._new

    def _took(self, heap: list[int], req: Request) -> Request:
        if heap is self._started:
            self._started_tokens -= req.prefill_remaining
        else:
            self._new_tokens -= req.prefill_remaining
        return req

    def pop(self) -> Request:
        heap = self._front()
        if heap is None:
            raise IndexError("pop from an empty waiting queue")
        return self._took(heap, self._requests.pop(heapq.heappop(heap)))

    def pop_started(self) -> Request | None:
        """Take the first request, in priority order, whose prefill already holds its blocks.

        O(n), and used only when KV is short: then a new prompt that cannot get its blocks
        must not keep waiting the requests that hold theirs and could finish.
        """
        requests = self._requests
        found = min(((key, heap) for heap in (self._started, self._new) for key in heap if requests[key].kv_blocks),
                    default=None, key=lambda pair: pair[0])
        if found is None:
            return None
        key, heap = found
        heap.remove(key)
        heapq.heapify(heap)
        return self._took(heap, requests.pop(key))

    def forget(self, req: Request) -> None:
        """`req` finished: it will never be pushed again."""
        self._first_seen.pop(req, None)

    def peek(self) -> Request | None:
        heap = self._front()
        return self._requests[heap[0]] if heap is not None else None

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request, in no particular order."""
        requests = self._requests
        return (requests[key] for key in chain(self._started, self._new))

    def first_new(self, n: int) -> Iterator[Request]:
        """Up to `n` prompts with no prefill yet, in priority order, walking the heap lazily
        (O(k log k) for the k taken, whatever the queue's length)."""
        heap, requests = self._new, self._requests
        frontier = [(heap[0], 0)] if heap and n > 0 else []
        for _ in range(n):
            if not frontier:
                return
            key, i = heapq.heappop(frontier)
            yield requests[key]
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

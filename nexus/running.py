"""The decoding requests: they advance together, one token each per engine step.

Progress is kept lazily. A member's generated count and KV length follow from the set's
step counter, so running k steps costs O(1) rather than O(members); that is what lets the
simulator jump over decode steps in closed form. A member's own fields are written back
when it leaves, or by `materialize()` (the real engine calls it every step).
"""
from __future__ import annotations

import heapq
from bisect import bisect_right

from nexus.kv import BLOCK_SIZE, BlockPool, blocks_for
from nexus.request import Request

# The members' padding is kept for every step phase at once, as BLOCK_SIZE counters packed
# into one int, _LANE_BITS bits each (phase p in bits p*_LANE_BITS up): a join or a leave then
# adds or subtracts one int instead of rebuilding a list of BLOCK_SIZE sums (that rebuild was
# 3% of a static-split run's loop, 6% of chunked prefill's). A lane holds at most (BLOCK_SIZE - 1) * members, far below 2**32.
_LANE_BITS = 32
_LANE = (1 << _LANE_BITS) - 1
# _PAD_ROW[m]: packed, the padding of the last block of a member whose KV length is m mod the
# block size, at each step phase (steps mod the block size).
_PAD_ROW = [sum(((-(m + phase)) % BLOCK_SIZE) << (phase * _LANE_BITS) for phase in range(BLOCK_SIZE))
            for m in range(BLOCK_SIZE)]


class _Member:
    __slots__ = ("kv_offset", "gen_offset", "finish_step")

    def __init__(self, kv_offset: int, gen_offset: int, finish_step: int):
        self.kv_offset = kv_offset      # kv_tokens - steps, constant while a member
        self.gen_offset = gen_offset    # generated - steps
        self.finish_step = finish_step


class RunningSet:
    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.steps = 0
        self.members: dict[Request, _Member] = {}   # insertion order = join order
        self.batch_size = 0                         # len(members), read several times a step
        self.pending: list[Request] = []            # joined since the last step started
        self.last_step_end_s = 0.0
        self._finish_heap: list[tuple[int, int, Request, _Member]] = []
        self._seq = 0
        self._kv_offset_sum = 0
        self._residues = [0] * BLOCK_SIZE           # members per kv_offset mod block size
        self._held_blocks = 0                       # blocks the pool counts for members
        # By step phase (steps mod block size): the padding of the members' last blocks, kept
        # up to date as members join and leave (a join or leave nearly every step under load,
        # each followed by several look-ups), packed as _PAD_ROW is; and their block growth,
        # computed when asked for and emptied whenever a member joins or leaves.
        self._pad_by_phase = 0
        self._growth_by_phase: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.members) + len(self.pending)

    def kv_tokens(self) -> int:
        return self._kv_offset_sum + self.batch_size * self.steps

    def blocks_needed(self, steps: int) -> int:
        """Blocks the members need after `steps` more steps (closed form over residues)."""
        s = self.steps + steps
        pad = (self._pad_by_phase >> (s % BLOCK_SIZE * _LANE_BITS)) & _LANE
        return (self._kv_offset_sum + self.batch_size * s + pad) // BLOCK_SIZE

    def add(self, req: Request) -> None:
        """A request whose prefill produced its token; it decodes from the next step on."""
        self.pending.append(req)

    def admit_pending(self) -> list[Request]:
        joined, self.pending = self.pending, []
        if not joined:
            return joined
        steps, members, residues, heap = self.steps, self.members, self._residues, self._finish_heap
        pad = self._pad_by_phase
        for req in joined:
            offset = req.kv_tokens - steps
            finish_step = steps + req.output_tokens - req.generated
            member = members[req] = _Member(offset, req.generated - steps, finish_step)
            self._kv_offset_sum += offset
            residues[offset % BLOCK_SIZE] += 1
            pad += _PAD_ROW[offset % BLOCK_SIZE]
            self._held_blocks += req.kv_blocks
            self._seq += 1
            heapq.heappush(heap, (finish_step, self._seq, req, member))
        self._pad_by_phase = pad
        self._growth_by_phase.clear()
        self.batch_size = len(members)
        return joined

    def steps_until_finish(self) -> int:
        heap = self._finish_heap
        while heap and self.members.get(heap[0][2]) is not heap[0][3]:
            heapq.heappop(heap)   # left the set (finished or preempted) since it was pushed
        return heap[0][0] - self.steps if heap else 0

    def steps_that_fit(self, limit: int) -> int:
        """Most steps (<= limit) whose KV growth fits in the pool's free blocks.

        A member whose KV length is L needs a new block on the step that takes it to
        16q + 1 tokens, so within any 16 steps each residue class of members grows once:
        the blocks needed after j steps are B * (j // 16) plus a prefix sum over the
        classes that have crossed within the last partial cycle.
        """
        members = self.batch_size
        if not members:
            return limit
        spare = self.pool.free + self._held_blocks - self.blocks_needed(0)
        cycles = spare // members
        if cycles * BLOCK_SIZE >= limit:
            return limit   # whole cycles alone cover it: no need for the partial one
        left = spare - cycles * members
        extra = bisect_right(self._growth_prefix(self.steps % BLOCK_SIZE), left) - 1
        return min(limit, cycles * BLOCK_SIZE + extra)

    def _growth_prefix(self, phase: int) -> list[int]:
        """[members that take a new block within j steps, for j = 0 .. BLOCK_SIZE - 1], at this
        step phase, for the current residues (cached like the padding)."""
        prefix = self._growth_by_phase.get(phase)
        if prefix is None:
            crossing_at = [0] * (BLOCK_SIZE + 1)
            for m, count in enumerate(self._residues):
                if count:
                    crossing_at[(1 - m - phase) % BLOCK_SIZE or BLOCK_SIZE] += count
            prefix = [0] * BLOCK_SIZE
            for j in range(1, BLOCK_SIZE):
                prefix[j] = prefix[j - 1] + crossing_at[j]
            self._growth_by_phase[phase] = prefix
        return prefix

    def reserve(self, steps: int) -> None:
        """Take from the pool the blocks `steps` more steps will need."""
        extra = self.blocks_needed(steps) - self._held_blocks
        if extra > 0:
            ok = self.pool.take(extra)
            assert ok, "reserve() called for more steps than fit"
            self._held_blocks += extra

    def advance(self, steps: int) -> None:
        """Record `steps` completed steps and hand back blocks reserved beyond them."""
        self.steps += steps
        surplus = self._held_blocks - self.blocks_needed(0)
        if surplus > 0:
            self.pool.give(surplus)
            self._held_blocks -= surplus

    def finished_now(self) -> list[Request]:
        done = []
        heap = self._finish_heap
        while heap and heap[0][0] <= self.steps:
            _, _, req, member = heapq.heappop(heap)
            if self.members.get(req) is member:
                done.append(req)
        return done

    def remove(self, req: Request) -> None:
        """Take a member out, writing its progress back; its blocks stay counted to it."""
        member = self.members.pop(req)
        self.batch_size -= 1
        req.kv_tokens = member.kv_offset + self.steps
        req.generated = member.gen_offset + self.steps
        req.kv_blocks = blocks_for(req.kv_tokens, self.pool.block_size)
        self._kv_offset_sum -= member.kv_offset
        self._residues[member.kv_offset % BLOCK_SIZE] -= 1
        self._pad_by_phase -= _PAD_ROW[member.kv_offset % BLOCK_SIZE]
        self._growth_by_phase.clear()
        self._held_blocks -= req.kv_blocks

    def newest(self) -> Request | None:
        return next(reversed(self.members), None)

    def materialize(self, lookahead: int = 0) -> None:
        """Write every member's progress back to its Request and sync its block ids.

        With lookahead=1 (after reserve(1)) each block table also covers the token the next
        step writes, which is what the real engine needs before launching that step.
        """
        for req, member in self.members.items():
            req.kv_tokens = member.kv_offset + self.steps
            req.generated = member.gen_offset + self.steps
            req.kv_blocks = blocks_for(req.kv_tokens + lookahead, self.pool.block_size)
            self.pool.sync_ids(req)

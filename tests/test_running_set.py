"""The running set's closed forms (blocks needed, steps that fit), kept up to date as members
join and leave, against counting member by member."""
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.kv import BlockPool, blocks_for
from nexus.request import Request
from nexus.running import RunningSet

# A script: join a request (prompt, generated so far, output), run some steps, or remove one.
ops = st.lists(st.one_of(
    st.tuples(st.just("join"), st.integers(1, 200), st.integers(1, 5), st.integers(6, 400)),
    st.tuples(st.just("steps"), st.integers(1, 40)),
    st.tuples(st.just("remove"), st.integers(0, 1000))), max_size=60)


def needed_one_by_one(running: RunningSet, joined_at: dict, steps: int) -> int:
    """Blocks after `steps` more steps, from each member's KV length when it joined the set
    (its `kv_tokens` then) and the steps the set has run since."""
    return sum(blocks_for(req.kv_tokens + running.steps - start + steps) for req, start in joined_at.items())


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 120))
def test_blocks_needed_and_steps_that_fit_match_member_by_member(script, spare_blocks):
    pool = BlockPool(100_000)
    running = RunningSet(pool)
    joined_at = {}   # member -> the set's step counter when it joined
    for op in script:
        if op[0] == "join":
            _, prompt, generated, output = op
            req = Request(f"r{len(joined_at)}", 0.0, prompt, output)
            req.kv_tokens, req.generated = prompt + generated - 1, generated
            assert pool.grow(req, req.kv_tokens)
            running.add(req)
            running.admit_pending()
            joined_at[req] = running.steps
        elif op[0] == "steps" and running.batch_size:
            steps = min(op[1], running.steps_until_finish())
            running.reserve(steps)
            running.advance(steps)
            for req in running.finished_now():
                running.remove(req)
                pool.release(req)
                del joined_at[req]
        elif op[0] == "remove" and running.batch_size:
            req = list(running.members)[op[1] % running.batch_size]
            running.remove(req)
            pool.release(req)
            del joined_at[req]
        assert running.batch_size == len(running.members)   # kept as members join and leave
        for ahead in (0, 1, 7, 16, 33):
            assert running.blocks_needed(ahead) == needed_one_by_one(running, joined_at, ahead)
    # Leave `spare_blocks` free, then the steps that fit are the most whose growth fits in them.
    assert pool.take(pool.free - spare_blocks)
    most = 200
    fit = 0
    while fit < most and (needed_one_by_one(running, joined_at, fit + 1)
                          - needed_one_by_one(running, joined_at, 0)) <= spare_blocks:
        fit += 1
    for limit in range(most + 1):
        assert running.steps_that_fit(limit) == (min(limit, fit) if running.batch_size else limit)

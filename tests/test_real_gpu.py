"""On a CUDA GPU: green-context partitions, CUDA graphs on them, and the model end to end."""
from __future__ import annotations

import threading

import pytest
import torch

from nexus.cost.base import FULL_GPU
from nexus.errors import UserError
from nexus.specs import ModelSpec
from real.batch import Chunk
from real.model_runner import ModelRunner
from real_helpers import rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = ModelSpec("small", num_layers=2, hidden_size=1024, num_heads=8, num_kv_heads=2, head_dim=128,
                  intermediate_size=2816, vocab_size=4096, rope_theta=500000.0, max_position_embeddings=4096)


@pytest.fixture(scope="module")
def parts():
    from real.partitions import Partitions
    p = Partitions([8, 32, 64], device="cuda")
    yield p
    torch.cuda.synchronize()
    p.close()


if torch.cuda.is_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _where_am_i(out_ptr, spin_ns):
        zero = tl.zeros([1], tl.int32)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [zero], dtype=tl.int32,
                                       is_pure=False, pack=1)
        t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [zero], dtype=tl.int64,
                                       is_pure=False, pack=1)
        t = t0
        while tl.max(t - t0, axis=0) < spin_ns:  # keep each SM busy so blocks spread over all
            t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [zero], dtype=tl.int64,
                                          is_pure=False, pack=1)
        tl.store(out_ptr + tl.program_id(0) + tl.arange(0, 1), sm)


def _sm_ids(stream: torch.cuda.Stream, programs: int = 4000, spin_ns: int = 20_000) -> torch.Tensor:
    """The SM id each of `programs` blocks ran on, launched on `stream`."""
    with torch.cuda.stream(stream):
        out = torch.full((programs,), -1, dtype=torch.int32, device="cuda")
        _where_am_i[(programs,)](out, spin_ns)
    return out


def test_partitions_are_disjoint_and_of_granted_size(parts) -> None:
    total = torch.cuda.get_device_properties(0).multi_processor_count
    assert parts.num_sms == total and parts.sm_min >= 1 and parts.sm_step >= 1
    full = _sm_ids(parts.prefill(FULL_GPU).stream)
    torch.cuda.synchronize()
    assert len(set(full.tolist())) == total
    for p in parts.made():
        a, b = parts.prefill(p), parts.decode(p)
        assert a.sm_count == p and b.sm_count == total - p
        ids_a, ids_b = _sm_ids(a.stream), _sm_ids(b.stream)  # run at the same time
        torch.cuda.synchronize()
        set_a, set_b = set(ids_a.tolist()), set(ids_b.tolist())
        assert -1 not in set_a | set_b
        assert not set_a & set_b, f"split {p}: partitions share SMs {sorted(set_a & set_b)}"
        assert len(set_a) == p and len(set_b) == total - p


def test_impossible_split_is_a_user_error(parts) -> None:
    from real.partitions import Partitions
    with pytest.raises(UserError, match="cannot split off"):
        Partitions([parts.sm_min + 1 if parts.sm_step > 1 else parts.num_sms], device="cuda")


def test_matmul_slows_as_its_partition_shrinks(parts) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def ms(part) -> float:
        with part.use():
            for _ in range(2):
                a @ b
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                a @ b
            end.record()
        end.synchronize()
        return start.elapsed_time(end)

    t32, t64, t_all = ms(parts.prefill(32)), ms(parts.prefill(64)), ms(parts.prefill(FULL_GPU))
    assert t32 > 1.5 * t64 and t64 > 1.4 * t_all, (t32, t64, t_all)


def _prefilled_runner(num_seqs: int, prompt: int):
    runner = ModelRunner(SMALL, device="cuda", num_blocks=512, max_model_len=2048, max_decode_batch=16)
    gen = torch.Generator().manual_seed(0)
    tables = [list(range(i * 32, (i + 1) * 32)) for i in range(num_seqs)]
    prompts = [torch.randint(0, SMALL.vocab_size, (prompt + i,), generator=gen).tolist() for i in range(num_seqs)]
    runner.step([Chunk(p, 0, t) for p, t in zip(prompts, tables)])
    return runner, prompts, tables


def _assert_graph_replays_like_eager(runner: ModelRunner, batch: list[Chunk], part) -> None:
    """The graph's logits match an eager step's, and padding wrote only to the sink block:
    every cache slot the replay changed is one of the batch's tokens (each token must be new
    to its slot, so that writing it changes the slot)."""
    before = runner.kv.data[:, :, :runner.num_blocks].clone()
    graph = runner.logits(batch, part)
    after = runner.kv.data[:, :, :runner.num_blocks].clone()
    eager = runner.logits(batch, part, graphs=False)
    assert rel_err(graph, eager) < 1e-2, part.name
    changed = (before != after).flatten(4).any(-1).any(0).any(0).nonzero().tolist()
    expected = sorted((c.block_table[p // 16], p % 16) for c in batch for p in range(c.start, c.end))
    assert sorted(map(tuple, changed)) == expected


def test_graphs_replay_like_eager_on_every_partition(parts) -> None:
    runner, prompts, tables = _prefilled_runner(8, 100)
    targets = [parts.decode(64), parts.prefill(32), parts.decode(FULL_GPU)]
    runner.capture_graphs(targets, buckets=[1, 4, 8])
    assert runner.graph_buckets(parts.decode(64)) == [1, 4, 8]
    for k, part in enumerate(targets):
        for n in (3, 8, 1):  # a padded bucket, a full one, and a single sequence
            # A new token each time, so every batch token changes its cache slot.
            batch = [Chunk([(7 + i + 31 * n + 97 * k) % SMALL.vocab_size], len(prompts[i]), tables[i])
                     for i in range(n)]
            _assert_graph_replays_like_eager(runner, batch, part)


def test_prefill_graphs_replay_like_eager_and_pad_into_the_sink(parts) -> None:
    runner, prompts, tables = _prefilled_runner(4, 100)
    targets = [parts.prefill(32), parts.decode(FULL_GPU)]
    runner.capture_prefill_graphs(targets, buckets=[64, 256])
    # The plain stream's graphs also take decode rows (chunked-prefill steps); the green one's none.
    assert runner.prefill_graph_spec() == {"buckets": [64, 256], "max_seqs": 16,
                                           "decode_rows": runner.max_decode_batch}
    gen = torch.Generator().manual_seed(3)
    for k, part in enumerate(targets):
        # New tokens for every batch, so each token changes the cache slot it writes.
        def tokens(n: int) -> list[int]:
            return torch.randint(0, SMALL.vocab_size, (n,), generator=gen).tolist()
        fresh = [list(range(300 + 16 * j + 64 * k, 316 + 16 * j + 64 * k)) for j in range(3)]
        prior = [len(p) + 60 * k for p in prompts]   # this partition's own slots of each prompt
        cases = [
            [Chunk(tokens(40), 0, fresh[0])],                                   # bucket 64, padded
            [Chunk(tokens(50), 0, fresh[1]),                                    # two prompts, one
             Chunk(tokens(30), prior[1], tables[1])],                           # continuing a prefix
            [Chunk(tokens(64), 0, fresh[2])] + [Chunk(tokens(12), prior[i] + 30 * (i == 1), tables[i])
                                                for i in range(4)],             # 112 tokens, 5 seqs
        ]
        for batch in cases:
            assert runner._prefill_graphs.bucket_for(part, batch) is not None
            _assert_graph_replays_like_eager(runner, batch, part)
    too_long = [Chunk(list(range(150)), 0, list(range(400, 416))), Chunk(list(range(150)), 0, list(range(420, 436)))]
    assert runner._prefill_graphs.bucket_for(targets[0], too_long) is None


def test_a_dropped_prefill_bucket_pads_to_the_next_and_replays_like_eager(parts) -> None:
    runner, prompts, tables = _prefilled_runner(1, 100)
    targets = [parts.prefill(32), parts.decode(FULL_GPU)]
    runner.capture_prefill_graphs(targets, buckets=[64, 128, 256])
    runner.drop_prefill_buckets([128])      # as a profile does with a bucket slower than a larger one
    assert runner.prefill_graph_spec()["buckets"] == [64, 256]
    gen = torch.Generator().manual_seed(5)
    for k, part in enumerate(targets):
        batch = [Chunk(torch.randint(0, SMALL.vocab_size, (100,), generator=gen).tolist(), 0,
                       list(range(300 + 8 * k, 308 + 8 * k)))]
        assert runner._prefill_graphs.bucket_for(part, batch) == 256
        _assert_graph_replays_like_eager(runner, batch, part)


def test_mixed_graphs_replay_like_eager_on_the_plain_stream(parts) -> None:
    runner, prompts, tables = _prefilled_runner(6, 100)
    full, green = parts.decode(FULL_GPU), parts.prefill(32)
    runner.capture_prefill_graphs([green, full], buckets=[64, 256, 768])
    assert runner.prefill_graph_spec() == {"buckets": [64, 256, 768], "max_seqs": 16,
                                           "decode_rows": runner.max_decode_batch}
    gen = torch.Generator().manual_seed(5)

    def tokens(n: int) -> list[int]:
        return torch.randint(0, SMALL.vocab_size, (n,), generator=gen).tolist()

    def decode(i: int, step: int) -> Chunk:   # a new token at a new position of sequence i
        return Chunk(tokens(1), len(prompts[i]) + step, tables[i])

    fresh = [list(range(300 + 48 * j, 348 + 48 * j)) for j in range(3)]
    cases = [
        [Chunk(tokens(40), 0, fresh[0]), decode(0, 0), decode(1, 0), decode(2, 0)],      # bucket 64
        [decode(3, 0), Chunk(tokens(120), 0, fresh[1]), decode(4, 0),                    # interleaved, and
         Chunk(tokens(30), len(prompts[5]), tables[5]), decode(0, 1)],                   # a prefix continued
        [*(decode(i, 1) for i in range(1, 5)), Chunk(tokens(700), 0, fresh[2])],        # bucket 768
    ]
    for batch in cases:
        assert runner._prefill_graphs.bucket_for(full, batch) is not None
        assert runner._prefill_graphs.bucket_for(green, batch) is None   # green sides: prefill only
        _assert_graph_replays_like_eager(runner, batch, full)


def test_timing_steps_times_each_graph_step_within_its_wall_time(parts) -> None:
    import time
    runner, prompts, tables = _prefilled_runner(8, 100)
    full = parts.decode(FULL_GPU)
    runner.capture_graphs([full], buckets=[8])
    batch = [Chunk([5 + i], len(prompts[i]), tables[i]) for i in range(8)]
    wall = []
    with runner.timing_steps() as busy:
        for _ in range(3):
            t = time.perf_counter()
            runner.step(batch, full)
            wall.append((time.perf_counter() - t) * 1e3)
        runner.step(batch, full, graphs=False)   # eager: not timed
    assert len(busy) == 3
    assert all(0 < b < w for b, w in zip(busy, wall)), (busy, wall)
    with runner.timing_steps() as after:
        pass
    assert after == [] and runner._graphs.step_events is None   # off again after the block


def test_prefill_and_decode_run_concurrently_on_a_split(parts) -> None:
    runner, prompts, tables = _prefilled_runner(8, 60)
    decode = parts.decode(64)
    runner.capture_graphs([decode], buckets=[8])
    long_prompt = torch.randint(0, SMALL.vocab_size, (1500,), generator=torch.Generator().manual_seed(1)).tolist()
    long_table = list(range(400, 400 + 94))

    def decode_steps() -> list[list[int]]:
        out, last = [], [1] * 8
        for step in range(20):
            batch = [Chunk([last[i]], len(prompts[i]) + step, tables[i]) for i in range(8)]
            last = runner.step(batch, decode)
            out.append(last)
        return out

    serial_decode = decode_steps()
    serial_prefill = runner.logits([Chunk(long_prompt, 0, long_table)], parts.prefill(64))
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("decode", decode_steps()))
    thread.start()
    results["prefill"] = runner.logits([Chunk(long_prompt, 0, long_table)], parts.prefill(64))
    thread.join()
    assert results["decode"] == serial_decode
    assert rel_err(results["prefill"], serial_prefill) < 1e-3


def test_bf16_gpu_model_matches_transformers_fp32(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from real.weights import spec_from_hf_config
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                      max_position_embeddings=1024, rms_norm_eps=1e-5, initializer_range=0.1)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    runner = ModelRunner(spec_from_hf_config(tmp_path), device="cuda", weights=tmp_path, num_blocks=64)
    ids = torch.randint(0, 512, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    table = list(range(20))
    got = [runner.logits([Chunk(ids[:200], 0, table)])[0]]
    for pos in range(200, 203):
        got.append(runner.logits([Chunk(ids[pos:pos + 1], pos, table)])[0])
    got = torch.stack(got).cpu()
    assert rel_err(got, ref[199:203]) < 3e-2


def test_step_times_share_the_host_clock_the_sampler_reads() -> None:
    """Engine step times are CUDA events from the run's origin; the clock sampler stamps
    perf_counter. A step's SM clock is looked up by the one in the other's terms
    (real.bench.add_sm_clock), so the two must agree to well under a sampling interval."""
    import time

    import pandas as pd

    from real.bench import add_sm_clock
    from real.clock import Clock
    from real.gpu_info import ClockPowerSampler
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.current_stream()
    with ClockPowerSampler(interval_s=0.01) as sampler:
        clock = Clock(cuda=True)
        marks = []
        for _ in range(40):
            begin = clock.mark(stream)
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            marks.append((begin, clock.mark(stream)))
        torch.cuda.synchronize()
        host_end = clock.host_now()
        time.sleep(0.03)
    steps = pd.DataFrame([(clock.seconds(b), clock.seconds(e)) for b, e in marks], columns=["start_s", "end_s"])
    assert abs(steps["end_s"].iloc[-1] - host_end) < 0.002   # the last event ended just before the host saw it
    add_sm_clock(steps, sampler, clock.host_origin)
    sampled = [s[1] for s in sampler.samples]
    mhz = steps["sm_clock_mhz"]
    assert mhz.notna().mean() > 0.9 and mhz.between(min(sampled), max(sampled)).sum() == mhz.notna().sum()


def test_dense_chunks_on_a_green_partition_use_graphs_built_outside_it_and_match_triton(parts, monkeypatch) -> None:
    # A stream thread builds its cuDNN graphs before the run, outside any partition
    # (ModelRunner.warm_thread); its steps then run them on the partition it serves.
    import nexus.graph_buckets
    from nexus.graph_buckets import runs_dense
    from real.dense_attention import dense_attention_works
    if not dense_attention_works(torch.device("cuda"), torch.bfloat16, SMALL.head_dim):
        pytest.skip("cuDNN's fused attention is not available")
    long = ModelSpec("small-long", num_layers=2, hidden_size=1024, num_heads=8, num_kv_heads=2, head_dim=128,
                     intermediate_size=2816, vocab_size=4096, rope_theta=500000.0, max_position_embeddings=8192)
    runner = ModelRunner(long, device="cuda", num_blocks=520, max_model_len=8192, max_decode_batch=16)
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, long.vocab_size, (4400 + 2048,), generator=gen).tolist()
    table = list(range(0, 404))
    first, after = Chunk(prompt[:4400], 0, table), Chunk(prompt[4400:], 4400, table)
    assert runs_dense(4400, 0) and runs_dense(2048, 4400)
    built = runner.warm_thread(len(prompt), 2048)
    assert built >= 3        # the first chunk's length, the causal call's and the prefix call's
    part = parts.prefill(32)
    runner.step([first], part)
    dense = runner.logits([after], part)
    monkeypatch.setattr(nexus.graph_buckets, "DENSE_MIN_TOKENS", None)     # the Triton kernel
    assert not runs_dense(2048, 4400)
    triton = runner.logits([after], part)
    assert rel_err(dense, triton) < 1e-2


def test_graphs_captured_on_cublaslt_replay_like_eager_and_are_reported(parts, monkeypatch) -> None:
    from real import blas_choice
    previous = torch.backends.cuda.preferred_blas_library()
    # Times that crown the challenger wherever there is a trial: the graphs then hold cuBLASLt's kernels.
    monkeypatch.setattr(blas_choice, "median_replay_ms", lambda graphs: [1.0] + [0.5] * (len(graphs) - 1))
    runner, prompts, tables = _prefilled_runner(8, 100)
    part = parts.decode(64)
    runner.capture_graphs([part], buckets=[4, 8])
    assert torch.backends.cuda.preferred_blas_library() == previous    # the switch is put back
    assert runner.blas_choices() == {"decode": {part.name: {"4": "cublaslt", "8": "cublaslt"}}}
    for n in (3, 8):
        batch = [Chunk([(5 + i + 13 * n) % SMALL.vocab_size], len(prompts[i]), tables[i]) for i in range(n)]
        _assert_graph_replays_like_eager(runner, batch, part)


def test_blas_trial_times_every_candidate_and_keeps_the_default_within_the_margin(parts) -> None:
    from real import blas_choice
    a, b = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16), torch.randn(1024, 4096, device="cuda",
                                                                                    dtype=torch.bfloat16)
    pool = torch.cuda.graph_pool_handle()

    def capture():
        torch.mm(a, b)
        torch.cuda.current_stream().synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=torch.cuda.current_stream()):
            out = torch.mm(a, b)
        return graph, out

    with parts.decode(64).use():
        graph, out, name = blas_choice.capture_fastest(capture, tokens=64)
        graph.replay()
        torch.cuda.current_stream().synchronize()
        times = blas_choice.median_replay_ms([graph, graph])
    assert name in blas_choice.LIBRARIES
    assert rel_err(out.float(), (a.float() @ b.float())) < 1e-2
    assert len(times) == 2 and all(t > 0 for t in times)

"""`nexus-real profile`: measure the engine's own step times on every partition the GPU offers.

The grid is dense where the curves bend (every SM step, so the low counts and the decode
knee are covered) and sparse in shapes, where the fitted model interpolates well. A full
profile is three parts, each a few minutes on an H100; after every SM count the file is
written, and a rerun skips the points it already holds, so an interrupted profile resumes.

Times are the engine's view: wall time of `ModelRunner.step` (packing, launch or graph
replay, and the wait for tokens), which is what the simulator must predict.
"""
from __future__ import annotations

import gc
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from nexus.cost.calibration import merge_calibrations, new_calibration, read_calibration, write_calibration
from nexus.cost.fit import fit_calibration, one_prompt_prefill_medians
from nexus.cost.served import read_replay, served_scales, write_replay
from nexus.errors import UserError
from nexus.graph_buckets import dominated, runs_dense
from nexus.specs import GPUSpec, ModelSpec
from real.batch import Chunk
from real.dense_attention import dense_attention_works
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions

PARTS = ("prefill", "decode", "corun", "mixed", "engine")


@dataclass(frozen=True)
class Grid:
    """Shapes to measure at every SM count: prefill (chunk, prior), decode (batch, context)."""
    # Long prefixes too: chunks of long-document prompts continue 6-18k cached tokens.
    prefill: tuple = ((32, 0), (64, 0), (128, 0), (256, 0), (384, 0), (512, 0), (1024, 0), (2048, 0),
                      (8192, 0), (128, 4096), (512, 4096), (2048, 4096), (2048, 12288))
    # Decode batches are measured as served: KV blocks scattered over the cache, and contexts
    # as skewed as a running batch's (most short, a few long: exponential quantiles around
    # the point's context, their mean). Equal contexts in contiguous blocks ran 4-17% faster
    # on an H100 than a +-75% spread; on an H200 that spread ran 0-13% faster than the
    # exponential one at 64-256 rows (experiments/results/decode_contexts_h200.json), and
    # served decode steps were 5-13% slower than a profile of such spread batches predicted.
    decode_contexts: str = "exponential"
    # Contexts of 256 too: ShareGPT's decode rows average about 300 tokens, below the grid's
    # 512, and on the H200 (GPU-e41ea686) the fit priced such steps 5-7% slow where rows of
    # 1-3k tokens were within 3%: below its grid the fit only extrapolates.
    decode: tuple = ((1, 512), (1, 4096), (8, 1024), (16, 256), (16, 512), (16, 2048), (32, 1024), (32, 4096),
                     (64, 256), (64, 512), (64, 2048), (96, 1024), (128, 256), (128, 512), (128, 2048),
                     (192, 1024), (256, 512), (256, 1024))
    # Small prefill sides too: Nexus gives prefill 16-56 SMs on long-prompt traces, and the
    # co-run slowdown there was 25% above what the model extrapolated from 32 SMs and up.
    corun_splits: tuple = (16, 24, 32, 64, 96)
    # And a sliver: ShareGPT's prefill steps beside decode (a median 26 tokens on the H200)
    # ran 27-36% under a slowdown extrapolated from 256-token chunks and up.
    corun_prefill: tuple = ((64, 0), (256, 0), (512, 0), (2048, 0), (2048, 4096), (2048, 12288))
    corun_decode: tuple = ((16, 1024), (64, 1024), (128, 2048))
    # Steps of several equal prompts (prompts, tokens each), as served ShareGPT steps hold 8-16:
    # with the one-prompt sizes they identify attention's own pairs (see nexus.cost.fit).
    prefill_prompts: tuple = ((4, 512), (8, 256), (16, 128))
    # Chunked-prefill steps on the whole GPU: (chunk, prior) x (decode batch, context). With
    # every decode context at 512-1024 tokens, rows and KV tokens moved together and the fit
    # could not tell them apart: on the H200 engine, steps of <= 64-token chunks beside 16-64
    # rows of about 200-token contexts took 6.5 ms where the model said 8.5, while 256-1024
    # token chunks ran 9-14% (and nexus-slo's ~1k-token mixed steps 8-15%) over it. Hence
    # short and long contexts at the same row counts, and a 1k-token chunk. And 16 and 64 rows
    # at three context lengths each: beside a 16-token chunk, the H200 grid's error followed
    # the rows' context (256 tokens +2..+5%, 1k -5..-6%, 4k -9%) more than their KV bytes.
    mixed_prefill: tuple = ((16, 0), (64, 4096), (128, 0), (512, 0), (1024, 0), (2048, 0), (512, 2048),
                            (2048, 8192))
    mixed_decode: tuple = ((1, 1024), (16, 256), (16, 1024), (16, 4096), (32, 256), (64, 256), (64, 1024),
                           (64, 4096), (128, 256), (128, 1024), (256, 512))
    # Prefill also at every token count the engine's prefill graphs run (a graphed step takes
    # its bucket's time), no prior. Between two of the sizes above the curve is no line: on
    # the H200 engine, nexus-slo's steps padded to 384-2048 tokens where the grid measures ran
    # within 2% of the model, those padded to 640 9% over it (890 steps) and to 448 25% over.
    prefill_graph_buckets: bool = True


CONTEXT_SHAPES = ("exponential", "spread", "equal")


def decode_contexts(shape: str, batch: int, mean: int) -> list[int]:
    """`batch` contexts of at least 1 token summing to exactly batch x mean, shaped as
    `shape`: "exponential" (at evenly spaced quantiles: most short, a tail of about
    mean x ln(2 batch)), "spread" (evenly over +-75% of the mean) or "equal"."""
    if shape not in CONTEXT_SHAPES:
        raise UserError(f"unknown decode context shape {shape!r}; known: {', '.join(CONTEXT_SHAPES)}")
    if shape == "exponential":
        weights = -np.log1p(-(np.arange(batch) + 0.5) / batch)
    elif shape == "spread" and batch > 1:
        weights = 1.0 + 0.75 * np.linspace(-1.0, 1.0, batch)
    else:
        weights = np.ones(batch)
    contexts = np.maximum(np.floor(weights / weights.sum() * batch * mean), 1).astype(int)
    contexts[-1] += batch * mean - contexts.sum()   # the longest takes the rounding
    return contexts.tolist()


class Profiler:
    def __init__(self, runner: ModelRunner, parts: Partitions, repeats: int = 5,
                 contexts: str = Grid.decode_contexts):
        self.runner, self.parts, self.repeats = runner, parts, repeats
        self.contexts = contexts
        self.rng = np.random.default_rng(0)
        self._next_block = 0

    def _table(self, tokens: int) -> list[int]:
        """Distinct blocks where the cache has room, wrapping around where it does not."""
        n = -(-tokens // self.runner.block_size)
        ids = [(self._next_block + i) % self.runner.num_blocks for i in range(n)]
        self._next_block = (self._next_block + n) % self.runner.num_blocks
        return ids

    def prefill_batch(self, chunk: int, prior: int, prompts: int = 1) -> list[Chunk]:
        """`prompts` chunks of `chunk` new tokens, each after `prior` cached ones, in one step."""
        return [Chunk(self.rng.integers(0, self.runner.spec.vocab_size, chunk).tolist(), prior,
                      self._table(prior + chunk)) for _ in range(prompts)]

    def decode_batch(self, batch: int, context: int) -> list[Chunk]:
        """`batch` sequences whose contexts average `context`, in blocks scattered over the cache."""
        return self.decode_batch_of(decode_contexts(self.contexts, batch, context))

    def decode_batch_of(self, contexts: list[int]) -> list[Chunk]:
        """One decode row per context, in blocks scattered over the cache."""
        contexts = np.maximum(np.asarray(contexts, dtype=int), 1)
        bs, blocks = self.runner.block_size, self.runner.num_blocks
        need = [-(-int(c) // bs) for c in contexts]
        order = self.rng.permutation(blocks)
        ids = order[np.arange(sum(need)) % blocks].tolist()   # wraps only if the cache is too small
        chunks, at = [], 0
        for c, n in zip(contexts, need):
            chunks.append(Chunk([int(self.rng.integers(0, self.runner.spec.vocab_size))], int(c) - 1,
                                ids[at:at + n]))
            at += n
        return chunks

    def time_alone(self, chunks: list[Chunk], part) -> float:
        step = self.runner.step
        step(chunks, part)
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            step(chunks, part)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def time_together(self, a: tuple[list[Chunk], object], b: tuple[list[Chunk], object],
                      min_steps: int = 3, min_duration_s: float = 0.3) -> tuple[float, float]:
        """Median step time of each phase while both loop on their partitions at once.

        Only steps that ran entirely while the other side was stepping count. A fixed window
        would not do: a long prefill step (half a second on 16 SMs) would finish alone after
        the decode loop stopped, and read as barely slowed.
        """
        stop = threading.Event()
        spans: list[list[tuple[float, float]]] = [[], []]

        def loop(which: int, chunks: list[Chunk], part) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                self.runner.step(chunks, part)
                spans[which].append((t0, time.perf_counter()))

        threads = [threading.Thread(target=loop, args=(i, *pair)) for i, pair in enumerate((a, b))]
        start = time.perf_counter()
        for t in threads:
            t.start()

        def enough() -> bool:
            return (time.perf_counter() - start >= min_duration_s
                    and all(len(s) > 0 for s in spans)
                    and len(covered_steps(spans[0], spans[1])) >= min_steps
                    and len(covered_steps(spans[1], spans[0])) >= min_steps)

        while not enough():
            time.sleep(0.005)
        stop.set()
        for t in threads:
            t.join()
        return (statistics.median(covered_steps(spans[0], spans[1])),
                statistics.median(covered_steps(spans[1], spans[0])))


def covered_steps(steps: list[tuple[float, float]], other: list[tuple[float, float]]) -> list[float]:
    """Durations of the (start, end) steps that lie within the other side's stepping."""
    first, last = other[0][0], other[-1][1]
    return [end - begin for begin, end in steps if begin >= first and end <= last]


@contextmanager
def clocks_while(data: dict, kind: str) -> Iterator[None]:
    """Record in data["clocks"][kind] the SM clock and power while `kind` was measured (if it
    measured anything): run back to back at the 700 W limit, an H200's steps slow by 9-13%,
    and a grid measured late in a profile may run hotter than one measured early."""
    before = len(data["measurements"].get(kind, []))
    with ClockPowerSampler() as sampler:
        yield
    if len(data["measurements"].get(kind, [])) > before:
        data.setdefault("clocks", {})[kind] = sampler.summary()


def drop_dominated_buckets(runner: ModelRunner, data: dict, log=print) -> None:
    """Stop the runner replaying prefill buckets whose graphs ran slower on the whole GPU than
    a larger bucket's, once the prefill grid holds every bucket, and record them in
    data["engine"]["prefill_graphs"]["dropped"]: later engines leave them out and the
    simulator pads past them (nexus.graph_buckets)."""
    spec = runner.prefill_graph_spec()
    if spec is None:
        return
    median = {n: t for (sms, n), t in one_prompt_prefill_medians(data["measurements"].get("prefill", [])).items()
              if sms == 0 and n in spec["buckets"]}
    if not {b for b in spec["buckets"] if b <= runner.max_model_len} <= set(median):
        return   # the prefill grid has not measured every bucket (yet)
    dropped = dominated(median)
    for b in dropped:
        log(f"prefill: the {b}-token graph ran slower than a larger bucket's on the whole GPU "
            f"({median[b] * 1e3:.2f} ms, against {min(t for n, t in median.items() if n > b) * 1e3:.2f}); "
            f"the engine pads past it")
    runner.drop_prefill_buckets(dropped)
    after = runner.prefill_graph_spec()
    data.setdefault("engine", {})["prefill_graphs"] = {
        **after, "buckets": [b for b in after["buckets"] if b not in dropped], "dropped": dropped}


def profile(runner: ModelRunner, parts: Partitions, model: ModelSpec, gpu: GPUSpec, out: Path,
            which: list[str], command: str, repeats: int = 5, grid: Grid = Grid(), log=print,
            gap_requests: int = 240) -> dict:
    gc.freeze()   # as the engine does before a run: eager steps must not pay for collections it skips
    data = new_calibration(model, gpu, command=command, machine=gpu_facts(),
                           grid={"sms": [0, *parts.made()], **asdict(grid)})
    if out.exists():
        data = merge_calibrations(read_calibration(out), data, str(out))
    # The simulator pads steps to graph buckets as the engine does.
    prefill_graphs = runner.prefill_graph_spec()
    for key, spec in (("prefill_graphs", prefill_graphs), ("decode_graphs", runner.decode_graph_spec())):
        if spec is not None:
            data.setdefault("engine", {})[key] = spec
    if runner.blas_choices():   # for the record: the steps measured ran these graphs
        data.setdefault("engine", {})["blas"] = runner.blas_choices()
    have = {(k, tuple(sorted((kk, str(vv)) for kk, vv in r.items() if not kk.endswith("_s"))))
            for k in PARTS for r in data["measurements"].get(k, [])}

    def missing(kind: str, rec: dict) -> bool:
        return (kind, tuple(sorted((k, str(v)) for k, v in rec.items()))) not in have

    fits = lambda tokens: tokens <= runner.max_model_len  # noqa: E731  (the tiny CPU model is short)

    def runs_dense_here(chunk: int, prior: int) -> bool:
        # Which kernel a chunk's attention over its prefix runs on: the fit prices the two apart.
        return runs_dense(chunk, prior) and dense_attention_works(runner.device, runner.dtype, runner.spec.head_dim)

    prefill_sizes = list(grid.prefill)
    if grid.prefill_graph_buckets and prefill_graphs is not None:
        prefill_sizes += [(b, 0) for b in prefill_graphs["buckets"] if (b, 0) not in prefill_sizes]
    prefill_shapes = [(c, p, 1) for c, p in prefill_sizes if fits(c + p)] + \
        [(c, 0, k) for k, c in grid.prefill_prompts if fits(c)]
    decode_shapes = [(b, c) for b, c in grid.decode if fits(c)]
    corun_prefill = [(c, p) for c, p in grid.corun_prefill if fits(c + p)]
    prof = Profiler(runner, parts, repeats, grid.decode_contexts)
    meas = data["measurements"]
    if "prefill" in which:
        with clocks_while(data, "prefill"):
            for p in [0, *parts.made()]:
                part = parts.prefill(p)
                for chunk, prior, prompts in prefill_shapes:
                    key = {"sms": part.sm_count if p else 0, "chunk_tokens": chunk, "prior_tokens": prior,
                           **({"prompts": prompts} if prompts > 1 else {}),
                           **({"dense": True} if prior and runs_dense_here(chunk, prior) else {})}
                    if missing("prefill", key):
                        steps = prof.prefill_batch(chunk, prior, prompts)
                        meas["prefill"].append({**key, "time_s": prof.time_alone(steps, part)})
                write_calibration(data, out)
                log(f"prefill: {part.name} done")
    drop_dominated_buckets(runner, data, log)   # before the grids and the replay that step as the engine will
    if "decode" in which:
        with clocks_while(data, "decode"):
            for p in [0, *parts.made()]:
                part = parts.decode(p)
                for batch, context in decode_shapes:
                    key = {"sms": part.sm_count if p else 0, "batch": batch, "context": context}
                    if missing("decode", key):
                        meas["decode"].append({**key, "time_s": prof.time_alone(prof.decode_batch(batch, context), part)})
                write_calibration(data, out)
                log(f"decode: {part.name} done")
    if "corun" in which:
        with clocks_while(data, "corun"):
            for p in grid.corun_splits:
                if p not in parts.made():
                    continue
                pp, dp = parts.prefill(p), parts.decode(p)
                for chunk, prior in corun_prefill:
                    for batch, context in grid.corun_decode:
                        rec = {"prefill": {"sms": pp.sm_count, "chunk_tokens": chunk, "prior_tokens": prior},
                               "decode": {"sms": dp.sm_count, "batch": batch, "context": context}}
                        if not missing("corun", rec):
                            continue
                        dec = prof.decode_batch(batch, context)
                        pre = prof.prefill_batch(chunk, prior)
                        solo_p, solo_d = prof.time_alone(pre, pp), prof.time_alone(dec, dp)
                        together_p, together_d = prof.time_together((pre, pp), (dec, dp))
                        meas["corun"].append({**rec, "prefill_time_s": together_p, "decode_time_s": together_d,
                                              "prefill_solo_s": solo_p, "decode_solo_s": solo_d})
                write_calibration(data, out)
                log(f"corun: split {p} done")
    if "mixed" in which:
        with clocks_while(data, "mixed"):
            part = parts.decode(0)   # where a single-stream engine runs
            for chunk, prior in [(c, p) for c, p in grid.mixed_prefill if fits(c + p)]:
                for batch, context in [(b, c) for b, c in grid.mixed_decode if fits(c)]:
                    key = {"sms": 0, "chunk_tokens": chunk, "prior_tokens": prior, "batch": batch,
                           "context": context}
                    if missing("mixed", key):
                        steps = prof.decode_batch(batch, context) + prof.prefill_batch(chunk, prior)
                        meas.setdefault("mixed", []).append({**key, "time_s": prof.time_alone(steps, part)})
            write_calibration(data, out)
            log("mixed: done")
    timelines = []
    if "engine" in which:
        from nexus.policy import build_policies
        from real.bench import Bench, warm_up
        from real.host_gap import measure_host_gap
        warm_up(runner, parts)
        bench = Bench(model, gpu, build_policies(["chunked", "static"], {}), ready=(runner, parts))
        gap, timelines = measure_host_gap(bench, requests=gap_requests)
        data.setdefault("engine", {}).update({k: v for k, v in gap.items() if k != "bands"},
                                             step_gap_bands=gap["bands"], command=command)
        write_calibration(data, out)
        log(f"engine: host gap {gap['step_gap_s'] * 1e3:.3f} ms + {gap['step_gap_per_seq_s'] * 1e6:.2f} us per decode row")
    try:
        data.update(fit_calibration(data))
    except UserError as e:
        log(f"not fitted yet ({e}); measure the remaining parts and rerun")
    else:
        if timelines:   # beside the calibration, so that a refit can re-derive its scales
            log(f"engine: the replays' steps are in {write_replay(timelines, out)}")
        # Without a fresh replay, the scales of the replay beside `out` (if it is this board's).
        served_scales(data, timelines or read_replay(out), log)
    write_calibration(data, out)
    return data

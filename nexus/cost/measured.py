"""The measured cost model: latencies fitted to a GPU profile (a calibration file).

See nexus.cost.fit for the model and how it is fitted. At load, each phase's base curve
is resampled between its knots (`densify`) and all its coefficients are tabulated at every
SM count 0..num_sms, so a call is a bisection, a few list look-ups and multiply-adds.

Between measured SM counts each coefficient is interpolated linearly in 1/s (exact for
work that scales with SMs, and for work that has stopped scaling). Outside them it is
extrapolated from the two nearest columns along 1/s, but never past the
nearest measured value nor beyond perfect scaling from it (s0/s times it); above the largest
partition, a measured plain stream stands in for a partition of every SM. Each
coefficient is then made non-increasing in s, and the plain stream (FULL_GPU) no slower
than a partition of every SM. Because every term is a non-negative weight times such a
coefficient, and is evaluated in the same order for every s, more SMs never predict a
slower time, to the last bit. Without a measured plain-stream column, FULL_GPU is
predicted as a partition of all SMs; without partitions, a partition of s SMs as the
plain stream scaled by num_sms/s.

An iteration that mixes prefill chunks and a decode step (chunked prefill) is read off the
prefill curve at prefill tokens + decode sequences, since the dense layers take every
token of the batch in one pass (and the fixed cost, launches and one sweep over the
weights, is paid once), padded to the graph the engine replays for it; both phases'
attention terms are added. A floor that grows with the decode rows lies under that time
(fitted by nexus.cost.fit.fit_mixed): on the H100, whose engine ran such steps eagerly, a
16-token chunk beside a few decode rows took 12-15 ms, not the 7 ms its kernels need; on
the H200, with the steps graphed, 6.2 ms beside one row and 13.8 ms beside 128.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nexus.cost.base import FULL_GPU, BatchShape, make_shape, sms_array
from nexus.cost.calibration import check_matches, content_digest, read_calibration
from nexus.cost.terms import (CORUN_TERMS, FIT_METHOD, FIT_VERSION, PREFILL_ATTENTION, READABLE_FIT_VERSIONS,
                              corun_excess, prefill_attention, sm_share)
from nexus.cost.roofline import IterationWork
from nexus.graph_buckets import bucket_for, prefill_bucket
from nexus.errors import UserError
from nexus.specs import GPUSpec, ModelSpec

_CACHE_LIMIT = 4096
_UNKNOWN = object()   # a memo's "not asked yet", where None is an answer
# Points per interval between measured sizes at which the base curve is tabulated.
SEGMENT_STEPS = 16


def tabulate(sms: list[int], coef: np.ndarray, num_sms: int) -> np.ndarray:
    """Coefficients (measured SM columns x k) -> (num_sms + 1) x k, row s for s SMs.

    Row 0 is the plain stream. See the module docstring for the rules.
    """
    coef = np.asarray(coef, dtype=float)
    by_s = {s: coef[i] for i, s in enumerate(sms)}
    green = sorted(s for s in by_s if s != FULL_GPU)
    full = by_s.get(FULL_GPU)
    s = np.arange(1, num_sms + 1, dtype=float)[:, None]
    table = np.empty((num_sms + 1, coef.shape[1]))
    if not green:
        table[1:] = by_s[FULL_GPU] * (num_sms / s)
    else:
        g = np.array(green, dtype=float)
        vals = np.array([by_s[x] for x in green])
        if full is not None and green[-1] < num_sms:
            # Above the largest partition, interpolate toward the measured plain stream standing
            # in for all SMs, rather than extrapolate the partitions' trend past it: that trend
            # is a difference of two noisy columns, and the plain stream may be no slower than
            # it. On an H200 profile whose 108- and 116-SM decode columns happened to fall
            # steeply, the extrapolated 132 SMs clipped the measured plain stream to 8% under
            # its own points at batch 1 (5.09 against 5.54 ms), and every chunked decode step
            # with it.
            g, vals = np.append(g, float(num_sms)), np.vstack([vals, full])
        inv, x = 1.0 / g, 1.0 / s
        out = np.empty((num_sms, coef.shape[1]))
        for k in range(coef.shape[1]):
            out[:, k] = np.interp(x[:, 0], inv[::-1], vals[::-1, k])
        if len(g) >= 2:
            for lo, hi, mask in ((0, 1, s[:, 0] < g[0]), (-1, -2, s[:, 0] > g[-1])):
                slope = (vals[lo] - vals[hi]) / (inv[lo] - inv[hi])
                line = vals[lo] + slope * (x - inv[lo])
                bound = vals[lo] * (g[lo] / s)
                clipped = np.clip(line, np.minimum(vals[lo], bound), np.maximum(vals[lo], bound))
                out[mask] = clipped[mask]
        else:
            below = s[:, 0] < g[0]
            out[below] = (vals[0] * (g[0] / s))[below]
        table[1:] = out
    table[1:] = np.minimum.accumulate(np.maximum(table[1:], 0.0), axis=0)
    table[0] = table[num_sms] if full is None else np.minimum(full, table[num_sms])
    return table


def densify(knots: list[int], base: np.ndarray, steps: int = SEGMENT_STEPS
            ) -> tuple[np.ndarray, np.ndarray]:
    """The base curves (SM columns x knots) resampled at `steps` points per knot interval.

    Between two knots a plain chord overshoots a knee (weight-bound turning compute-bound)
    by up to a third on a sparse grid. Where the curve bends upward there, the knee is put
    where the neighbouring intervals' lines, extended inward, cross: min(chord,
    max(line of the interval before, line of the interval after)). Where it bends the
    other way the chord stays. The first interval's "line before" is flat, as the curve is
    below the first knot; the last interval keeps its chord.
    """
    kn = np.asarray(knots, dtype=float)
    base = np.asarray(base, dtype=float)
    slopes = np.diff(base, axis=1) / np.diff(kn)            # columns x intervals
    fine_knots, fine = [], []
    last = len(kn) - 1
    for j in range(1, last + 1):
        x = np.linspace(kn[j - 1], kn[j], steps + 1)[:-1]
        lo, hi = base[:, j - 1:j], base[:, j:j + 1]
        chord = lo + slopes[:, j - 1:j] * (x - kn[j - 1])
        fine_knots.append(x)
        if j == last:
            fine.append(chord)
            continue
        before = lo + (slopes[:, j - 2:j - 1] if j >= 2 else 0.0) * (x - kn[j - 1])
        after = hi - slopes[:, j:j + 1] * (kn[j] - x)
        fine.append(np.minimum(chord, np.maximum(before, after)))
    fine_knots.append(kn[-1:])
    fine.append(base[:, -1:])
    values = np.maximum.accumulate(np.concatenate(fine, axis=1), axis=1)   # rounding only
    return np.concatenate(fine_knots), values


def _buckets(graphs: dict) -> list[int]:
    """A graph spec's sorted buckets; ValueError unless they are positive integers."""
    buckets = sorted(int(b) for b in graphs["buckets"])
    if not buckets or buckets[0] < 1:
        raise ValueError("buckets must be positive")
    return buckets


class _Phase:
    """One phase's fitted terms, tabulated over SM counts.

    Table columns: 0 the fixed part (value at the first knot); 1..K-1 the rise of the base
    curve from knot 0 to knot i (on the densified knots); K the slope beyond the last knot;
    K+1.. the attention coefficients.
    """

    def __init__(self, table: np.ndarray, knots: list[float]):
        self.table = table
        self.rows: list[list[float]] = table.tolist()
        self.cols: list[np.ndarray] = [c.copy() for c in table.T]
        self.knots = knots
        self.k = len(knots)

    @staticmethod
    def fitted(sms: list[int], knots: list[int], base: np.ndarray, attention: np.ndarray,
               num_sms: int) -> "_Phase":
        base = np.asarray(base, dtype=float)
        tail = (base[:, -1] - base[:, -2]) / (knots[-1] - knots[-2])
        fine_knots, base = densify(knots, base)
        coef = np.concatenate([base[:, :1], base[:, 1:] - base[:, :1], tail[:, None],
                               np.asarray(attention, dtype=float).reshape(len(sms), -1)], axis=1)
        return _Phase(tabulate(sms, coef, num_sms), [float(v) for v in fine_knots])

    def scaled(self, plain: float, partitions: float) -> "_Phase":
        """This curve with the plain stream's row times `plain` and every partition's times
        `partitions`, where a partition stays no faster than the plain stream.

        Where the two scales disagree, the plain stream keeps its own: it was measured there,
        while partitions of nearly every SM never are (the replay's partitions are its static
        split). Capping the plain stream at the scaled partitions instead once priced every
        plain decode step at the partitions' x0.938 rather than its own x0.993 (an H200
        profile), 6% under what the profile's own replay measured.
        """
        table = self.table.copy()
        table[0] *= plain
        table[1:] = np.maximum(table[1:] * partitions, table[0])
        return _Phase(table, self.knots)

    def locate(self, x: float) -> tuple[int, float, int, float, float]:
        """Where x falls: (i, weight of rise i, j, weight of rise j, beyond the last knot)."""
        kn = self.knots
        if x <= kn[0]:
            return 0, 0.0, 0, 0.0, 0.0
        if x >= kn[-1]:
            return self.k - 1, 1.0, 0, 0.0, x - kn[-1]
        j = bisect_right(kn, x)
        f = (x - kn[j - 1]) / (kn[j] - kn[j - 1])
        return j - 1, 1.0 - f, j, f, 0.0

    def variable(self, c: Any, where: tuple, attention: tuple[float, ...]) -> Any:
        """Everything above the fixed part; `c` is a table row, or the columns at array s."""
        i, wi, j, wj, beyond = where
        k = self.k
        # Rise 0 is zero: only positive weights on non-increasing coefficients, in a fixed order.
        # A term of weight zero is left out rather than added as 0.0: every term is >= 0, so
        # the sum is the same to the bit (the scalar twin in _scalar_time adds them all), and
        # on the arrays a split controller prices each term left out is two numpy calls fewer
        # (a new prompt's chunk has no prior tokens: two of its three attention terms are zero).
        v = c[i] * wi if i else 0.0
        if j:
            v = v + c[j] * wj
        if beyond:
            v = v + c[k] * beyond
        for a in attention:   # columns k+1, k+2, ...
            k += 1
            if a:
                v = v + c[k] * a
        return v


class _Columns:
    """Looks like a table row but yields each column at an array of SM counts (each column
    gathered once: a controller scores the same candidate splits again and again)."""
    __slots__ = ("cols", "s", "_gathered")

    def __init__(self, cols: list[np.ndarray], s: np.ndarray):
        self.cols, self.s = cols, s
        self._gathered: dict[int, np.ndarray] = {}

    def __getitem__(self, k: int) -> np.ndarray:
        col = self._gathered.get(k)
        if col is None:
            col = self._gathered[k] = self.cols[k][self.s]
        return col


# A served step 2x off the grid's model means the fit or the replay is broken, not that the
# engine differs: such a scale (corun_scale, decode_scale) is refused rather than applied.
SERVED_SCALE_RANGE = (0.5, 2.0)
# The engine's served scales: fitted on an engine replay against the grid's fit, so never
# part of fitting or scoring the grid itself.
SERVED_SCALES = ("corun_scale", "decode_scale")


class _AtSMs:
    """What the model has worked out at one array of SM counts: the array, both phases'
    columns at it, its SM shares, and per shape (by its contents) the solo times and bandwidth
    uses at it. A controller scores one shape on one array of candidate splits several times
    (its own time, then inside both slowdowns), and Nexus's controller meets the chunks of an
    earlier step in two searches in three."""
    __slots__ = ("s", "prefill", "decode", "share", "times", "uses")

    def __init__(self, s: np.ndarray, prefill: _Columns, decode: _Columns, share: np.ndarray):
        self.s, self.prefill, self.decode, self.share = s, prefill, decode, share
        self.times: dict[BatchShape, np.ndarray] = {}
        self.uses: dict[BatchShape, np.ndarray] = {}


def _hold(memo: dict, shape: BatchShape, value: float | np.ndarray) -> float | np.ndarray:
    """`value`, kept in one of `_AtSMs`'s memos under the shape if it is an array, made
    read-only first."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
        if len(memo) >= 64:
            memo.clear()
        memo[shape] = value
    return value


def _served_scale(engine: dict, key: str, parts: tuple[str, str], where: str) -> tuple[float, float]:
    """The pair of factors engine[key] gives for `parts`, (1, 1) where it has none."""
    scale = engine.get(key)
    if scale is None:
        return 1.0, 1.0
    try:
        pair = (float(scale[parts[0]]), float(scale[parts[1]]))
        if not all(SERVED_SCALE_RANGE[0] <= v <= SERVED_SCALE_RANGE[1] for v in pair):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: engine.{key} must be {{'{parts[0]}': x, '{parts[1]}': y}} with "
                        f"x, y in {list(SERVED_SCALE_RANGE)}, got {scale!r}") from None
    return pair


class MeasuredCost:
    """Latencies from a fitted GPU profile (nexus.cost.fit), with two-way co-run contention.

    `sms` arguments take an int or an integer numpy array (FULL_GPU = 0 for a plain stream);
    array arguments broadcast and return arrays.
    """

    name = "measured"

    def __init__(self, model: ModelSpec, gpu: GPUSpec, fit: dict[str, Any], *,
                 calibration: str | None = None, fit_error: dict | None = None,
                 created: str | None = None):
        self.model, self.gpu = model, gpu
        self.fit = fit
        self.calibration, self.fit_error, self.created = calibration, fit_error, created
        self.digest: str | None = None     # of the calibration file's contents, when loaded from one
        # Host time an engine spends between two iterations of a stream (scheduling,
        # bookkeeping, a loop over the decode rows); measured from engine runs, not from
        # the kernel profile.
        self.step_gap_s, self.step_gap_per_seq_s = 0.0, 0.0
        self.engine: dict = {}
        self._graph_buckets: list[int] = []   # token buckets of prefill graphs, if the engine has them
        self._graph_max_seqs = 0
        self._graph_decode_rows = 0   # decode rows a prefill graph takes beside its chunks
        self._decode_buckets: list[int] = []  # batch buckets of decode graphs, likewise
        self._corun_scale = (1.0, 1.0)   # (prefill, decode): served co-runs against the grid's
        self._corun_unscaled = True      # whether both are 1 (then a co-run's factor is left unscaled)
        self._decode_scale = (1.0, 1.0)  # (plain stream, partitions): served decode steps, likewise
        origin = calibration or "fit"
        try:
            self._prefill, self._decode_fitted, self._corun = self._parse(fit, gpu.num_sms)
            self._decode = self._decode_fitted   # the grid's, until the engine says otherwise
            # The co-run terms the simulator reads at every retiming, without the dict.
            self._corun_k: float = self._corun["k"]
            self._corun_prefill, self._corun_decode = tuple(self._corun["prefill"]), tuple(self._corun["decode"])
            mixed = fit.get("mixed", {"host_s": 0.0, "per_seq_s": 0.0})
            self._mixed = (float(mixed["host_s"]), float(mixed["per_seq_s"]))
            if not all(math.isfinite(v) and v >= 0 for v in self._mixed):
                raise ValueError("mixed-batch coefficients must be finite and non-negative")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"{origin}: malformed fit ({type(e).__name__}: {e}); refit it with "
                            f"`python -m nexus.cost.fit {origin}`") from None
        self._bytes_of = IterationWork(model, 1.0, 1.0)
        self._bytes: dict[int, tuple[BatchShape, float]] = {}   # by shape object, like _uses
        # Memos: the simulator asks for the same shape's time many times (its job, then both
        # slowdowns at every retiming while it runs); decode shapes rarely recur for long.
        self._plans: dict[BatchShape, tuple | None] = {}
        self._chunk_parts: dict[tuple, float] = {}   # see _scalar_time
        self._mixed_parts: dict[tuple[int, int, int], dict[int, float]] = {}   # see mixed_step_times
        self._uses: dict[tuple[int, int], tuple[BatchShape, tuple | None]] = {}
        self._uses_by_shape: dict[tuple[BatchShape, int], tuple | None] = {}   # see _use
        self._columns: dict[tuple, _AtSMs] = {}
        self._decode_lines: dict[tuple[int, int], tuple[float, float, float]] = {}
        self._decode_lines_each: dict[tuple, list[tuple[float, float, float]]] = {}   # see _solo_each
        self._solo_lists: dict[tuple, list[float]] = {}   # likewise
        self._decode_bytes_head: dict[int, tuple[float, ...]] = {}
        self._bandwidth = gpu.hbm_bandwidth
        # Each SM count's share of the GPU (sm_share), looked up at every co-run retiming.
        self._shares: list[float] = [sm_share(s, gpu.num_sms) for s in range(gpu.num_sms + 1)]

    def __reduce__(self) -> tuple:
        # Pickled by its constructor (a sweep may send a model to its workers): compiled
        # (scripts/compile_sim.py), the class has no __dict__ for pickle to restore. The memos
        # start empty, which changes no answer.
        return _restore, (self.model, self.gpu, self.fit, self.calibration, self.fit_error, self.created,
                          self.digest, self.engine, self.step_gap_s, self.step_gap_per_seq_s)

    @classmethod
    def load(cls, path: str | Path, model: ModelSpec, gpu: GPUSpec) -> "MeasuredCost":
        """Read and check a fitted calibration file for this model and GPU.

        A file without a fit (fresh from a profile, or merged) is refused rather than fitted
        here: fitting is a step of its own (`python -m nexus.cost.fit FILE`) that writes the
        fit and its held-out error into the file, so every run reads the same parameters.
        """
        data = read_calibration(path)
        check_matches(data, model, gpu, str(path))
        if "fit" not in data:
            raise UserError(f"{path}: the calibration has no fit yet; fit it with "
                            f"`python -m nexus.cost.fit {path}`")
        fit, fit_error = data["fit"], data.get("fit_error")
        cost = cls(model, gpu, fit, calibration=str(path), fit_error=fit_error,
                   created=data["created"])
        cost.digest = content_digest(data)
        cost.use_engine(data.get("engine", {}), str(path))
        return cost

    def use_engine(self, engine: Any, where: str = "calibration") -> None:
        """Take what the calibration says of the engine: its host gap between steps, the graphs
        that pad its steps, and how its served steps differ from the grid's model, both
        measured by the profile's engine replay: its co-run steps (`corun_scale`, see
        `slowdown`) and its decode steps (`decode_scale`).

        A served decode step can differ from the same shape timed alone in the profile: on
        the H200, whole-GPU decode steps of every fidelity run were priced 4-6% over their
        measured time, and those on a 68-SM partition 1-4% over, with the grid's own fit within
        1% at those shapes. `decode_scale` multiplies the decode curve (the plain stream's and
        the partitions' apart); the decode rows' attention in a chunked-prefill step reads the
        same curve."""
        if not isinstance(engine, dict):
            raise UserError(f"{where}: engine must be an object, got {engine!r}")
        for key in ("step_gap_s", "step_gap_per_seq_s"):   # attributes of the same names
            gap = engine.get(key, 0.0)
            if not isinstance(gap, (int, float)) or isinstance(gap, bool) or not 0 <= gap < 1:
                raise UserError(f"{where}: engine.{key} must be a number of seconds in [0, 1), got {gap!r}")
            setattr(self, key, float(gap))
        self.engine = engine
        self._corun_scale = _served_scale(engine, "corun_scale", ("prefill", "decode"), where)
        self._corun_unscaled = self._corun_scale == (1.0, 1.0)
        self._decode_scale = _served_scale(engine, "decode_scale", ("plain", "partitions"), where)
        self._decode = (self._decode_fitted if self._decode_scale == (1.0, 1.0)
                        else self._decode_fitted.scaled(*self._decode_scale))
        graphs = engine.get("prefill_graphs")
        if graphs is not None:
            try:
                buckets, max_seqs = _buckets(graphs), int(graphs["max_seqs"])
                # Calibrations made before chunked-prefill steps were graphed say nothing of rows.
                rows = int(graphs.get("decode_rows", 0))
                if max_seqs < 1 or rows < 0:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{where}: engine.prefill_graphs must be {{'buckets': [positive token "
                                f"counts], 'max_seqs': positive int, 'decode_rows': int >= 0}}, "
                                f"got {graphs!r}") from None
            self._graph_buckets, self._graph_max_seqs, self._graph_decode_rows = buckets, max_seqs, rows
        graphs = engine.get("decode_graphs")
        if graphs is not None:
            try:
                self._decode_buckets = _buckets(graphs)
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{where}: engine.decode_graphs must be {{'buckets': [positive batch "
                                f"sizes]}}, got {graphs!r}") from None
        # The graphs pad the steps, so times worked out before no longer hold.
        for memo in (self._plans, self._chunk_parts, self._mixed_parts, self._uses, self._uses_by_shape,
                     self._columns, self._decode_lines, self._decode_lines_each, self._solo_lists):
            memo.clear()

    def _padded_tokens(self, chunks: tuple[tuple[int, int], ...], tokens: int, decode_rows: int = 0) -> int:
        """Tokens the engine computes for a step with prompt chunks: a captured graph pads the
        chunks' tokens and the decode rows beside them to its bucket. A 513-token mixed step runs
        the 640-token graph: on the H200 profile, chunks of 512 beside 1-64 decode rows took
        18-25% longer than the unpadded prediction, and 10-11% with the padding."""
        if decode_rows > self._graph_decode_rows:
            return tokens + decode_rows   # eager
        bucket = prefill_bucket(self._graph_buckets, self._graph_max_seqs, chunks, decode_rows)
        return tokens + decode_rows if bucket is None else bucket

    @staticmethod
    def _parse(fit: dict, num_sms: int) -> tuple[_Phase, _Phase, dict]:
        if fit.get("method") != FIT_METHOD or fit.get("version") not in READABLE_FIT_VERSIONS:
            raise ValueError(f"fit method {fit.get('method')!r} version {fit.get('version')!r}, "
                             f"this build reads {FIT_METHOD!r} version {FIT_VERSION}")
        p, d, c = fit["prefill"], fit["decode"], fit["corun"]
        if fit["version"] < 5:   # they priced every chunk after a prefix by one coefficient
            p = {**p, "dense_cross_pair_s": p["cross_pair_s"]}
        phases = []
        for spec, knots, att in ((p, "token_knots", PREFILL_ATTENTION),
                                 (d, "batch_knots", ("kv_token_s",))):
            sms, kn, base = spec["sms"], spec[knots], np.asarray(spec["base_s"], dtype=float)
            attention = np.stack([np.asarray(spec[a], dtype=float) for a in att], axis=1)
            if (len(kn) < 2 or list(kn) != sorted(set(kn)) or base.shape != (len(sms), len(kn))
                    or attention.shape[0] != len(sms) or len(set(sms)) != len(sms)
                    or not all(0 <= s <= num_sms for s in sms)):
                raise ValueError(f"inconsistent shapes in the {knots.split('_')[0]} fit")
            if not (np.all(np.isfinite(base)) and np.all(base >= 0)
                    and np.all(np.isfinite(attention)) and np.all(attention >= 0)):
                raise ValueError("coefficients must be finite and non-negative")
            phases.append(_Phase.fitted(sms, kn, base, attention, num_sms))
        corun: dict[str, Any] = {"k": float(c["bandwidth_fraction"])}
        for phase in ("prefill", "decode"):
            terms = [0.0 if t == "other_share" and fit["version"] == 3 else float(c[phase][t])
                     for t in CORUN_TERMS]
            if not all(math.isfinite(v) and v >= 0 for v in terms):
                raise ValueError("co-run coefficients must be finite and non-negative")
            corun[phase] = terms
        return phases[0], phases[1], corun

    def step_overhead(self, shape: BatchShape) -> float:
        seqs = shape.decode_seqs
        return self.step_gap_s + self.step_gap_per_seq_s * (seqs if seqs > 0 else 0)

    # ---- solo time ---------------------------------------------------------------------

    def _plan(self, shape: BatchShape) -> tuple | None:
        try:
            return self._plans[shape]
        except KeyError:
            if len(self._plans) >= _CACHE_LIMIT:
                self._plans.clear()
            plan = self._plans[shape] = self._make_plan(shape)
            return plan

    def _make_plan(self, shape: BatchShape) -> tuple | None:
        """(phase curve, where the size falls on it, its attention features, decode KV tokens)."""
        chunks = shape.prefill_chunks
        seqs = shape.decode_seqs if shape.decode_seqs > 0 else 0
        tokens, own, cross, prior, dense = prefill_attention(chunks) if chunks else (0, 0, 0, 0, 0)
        if tokens:
            size = self._padded_tokens(chunks, tokens, seqs)
            return (self._prefill, self._prefill.locate(size), (own, cross, prior, dense),
                    shape.decode_kv_tokens if seqs else 0, seqs)
        if seqs:
            # A decode graph runs its whole bucket; padded rows read no KV, so attention is unpadded.
            size = bucket_for(self._decode_buckets, seqs) or seqs
            return self._decode, self._decode.locate(size), (shape.decode_kv_tokens,), 0, 0
        return None

    def _time(self, plan: tuple, p: Any, d: Any) -> Any:
        """Solo time from table rows (or columns at array s) p of prefill and d of decode."""
        phase, where, attention, decode_kv, mixed_seqs = plan
        c = p if phase is self._prefill else d
        t = c[0] + phase.variable(c, where, attention)
        if decode_kv:
            t = t + d[self._decode.k + 1] * decode_kv
        if mixed_seqs:   # the floor under a chunked-prefill step (see fit_mixed)
            floor = self._mixed[0] + self._mixed[1] * mixed_seqs
            t = np.maximum(t, floor) if isinstance(t, np.ndarray) else max(t, floor)
        return t

    def _scalar_time(self, shape: BatchShape, s: int) -> float:
        """`_time(_make_plan(shape), ...)` on row s, written out as one function: nexus-slo
        prices about five candidate mixed steps a step, and the general path's calls and tuples
        were a third of its loop. The same terms are added in the same order (its twin is the
        array path; tests/test_cost_scalar_paths.py holds the two equal to the bit)."""
        chunks = shape.prefill_chunks
        seqs = shape.decode_seqs if shape.decode_seqs > 0 else 0
        # The chunks' part is memoised by the chunks, the decode rows and s: nexus-slo prices
        # the same candidate chunks beside a decode batch of the same size step after step,
        # and only the decode batch's KV tokens, added below, differ.
        key = (chunks, seqs, s)
        t = self._chunk_parts.get(key)
        if t is None:
            t = self._chunk_part(chunks, seqs, s) if chunks else None
            if t is None:
                plan = self._make_plan(shape)   # decode only, or nothing
                return 0.0 if plan is None else self._time(plan, self._prefill.rows[s], self._decode.rows[s])
            if len(self._chunk_parts) >= _CACHE_LIMIT:
                self._chunk_parts.clear()
            self._chunk_parts[key] = t
        if seqs:
            decode_kv = shape.decode_kv_tokens
            if decode_kv:
                t = t + self._decode.rows[s][self._decode.k + 1] * decode_kv
            t = max(t, self._mixed[0] + self._mixed[1] * seqs)
        return t

    def _chunk_part(self, chunks: tuple[tuple[int, int], ...], seqs: int, s: int) -> float | None:
        """The part of `_scalar_time` that the prompt chunks decide: the prefill curve at the
        padded step, and the chunks' attention; None if they hold no token."""
        parts = self._chunk_parts_each(chunks, seqs, (s,))
        return parts[0] if parts else None

    def _chunk_parts_each(self, chunks: tuple[tuple[int, int], ...], seqs: int, sms: tuple[int, ...]
                          ) -> list[float]:
        """`_chunk_part` at each of (checked) SM counts, the chunks' features and where they fall
        on the curve worked out once: a split search asks at a dozen, and working them out per
        count was four fifths of its solo times (callgrind). Empty if the chunks hold no token."""
        tokens, own, cross, prior, dense = prefill_attention(chunks)
        if not tokens:
            return []
        phase = self._prefill
        i, wi, j, wj, beyond = phase.locate(self._padded_tokens(chunks, tokens, seqs))
        rows, k = phase.rows, phase.k
        parts: list[float] = []
        for s in sms:
            c = rows[s]
            v = (c[i] * wi if i else 0.0) + (c[j] * wj if j else 0.0) + c[k] * beyond
            parts.append(c[0] + (v + c[k + 1] * own + c[k + 2] * cross + c[k + 3] * prior + c[k + 4] * dense))
        return parts

    def mixed_step_times(self, prior: int, seqs: int, kv_tokens: int, sms: int) -> Callable[[int], float]:
        """`n -> float(solo_time(shape, sms)) + step_overhead(shape)`, to the last bit, where
        `shape` is a chunk of n tokens after `prior` cached ones beside a decode step of `seqs`
        sequences over `kv_tokens` KV tokens (n = 0: the decode step alone).

        nexus-slo's budget search asks about five of these a step, for chunk sizes it asked
        before beside the same batch size: here each is a memo look-up by n and a few float
        operations (the search was a sixth of that policy's loop; this took a tenth off it)."""
        if not 0 <= sms <= self.gpu.num_sms:
            self._check_sms(sms)   # raises
        seqs = seqs if seqs > 0 else 0
        decode = make_shape(((), seqs, kv_tokens))
        overhead = self.step_overhead(decode)
        alone = float(self.solo_time(decode, sms)) + overhead   # n = 0: every search asks it
        key = (prior, seqs, sms)
        parts = self._mixed_parts.get(key)
        if parts is None:
            if len(self._mixed_parts) >= _CACHE_LIMIT:
                self._mixed_parts.clear()
            parts = self._mixed_parts[key] = {}
        per_kv_token = self._decode.rows[sms][self._decode.k + 1]
        floor = self._mixed[0] + self._mixed[1] * seqs

        def step_time(n: int) -> float:
            if n <= 0:
                return alone
            t = parts.get(n)
            if t is None:
                t = parts[n] = self._chunk_parts_each(((n, prior),), seqs, (sms,))[0]
            if seqs:   # as _scalar_time adds the decode step
                if kv_tokens:
                    t = t + per_kv_token * kv_tokens
                if floor > t:   # max(t, floor) without the builtin's call: the operand it keeps
                    t = floor
            return t + overhead

        return step_time

    def _check_sms(self, s: int) -> int:
        if not 0 <= s <= self.gpu.num_sms:
            raise ValueError(f"SM count {s} outside 0..{self.gpu.num_sms} (0 = whole GPU)")
        return int(s)

    def _sms_array(self, sms: int | np.ndarray) -> np.ndarray:
        return sms_array(sms, self.gpu.num_sms)

    def solo_time(self, shape: BatchShape, sms: int | np.ndarray) -> float | np.ndarray:
        """Seconds for the iteration with the GPU otherwise idle."""
        if sms.__class__ is not int:
            if not isinstance(sms, np.integer):
                return self._solo_at(shape, self._columns_at(sms))
            sms = int(sms)   # compiled (scripts/compile_sim.py), the paths below take only an int
        if not shape.prefill_chunks and shape.decode_seqs > 0:
            # A decode step is affine in its KV tokens at a batch size; the simulator asks
            # for a new KV length every step, so memoise the line, not the shape.
            fixed, rest, per_kv_token = self._decode_line(shape.decode_seqs, sms)
            return fixed + (rest + per_kv_token * shape.decode_kv_tokens)
        if not 0 <= sms <= self.gpu.num_sms:
            self._check_sms(sms)   # raises
        return self._scalar_time(shape, sms)

    def _solo_at(self, shape: BatchShape, at: _AtSMs) -> float | np.ndarray:
        """solo_time at an array of SM counts, memoised there by the shape; read-only, so that
        no caller can change what the next one is given."""
        times = at.times
        memoised = times.get(shape)
        if memoised is not None:
            return memoised
        plan = self._plan(shape)
        if plan is None:
            return np.zeros(at.s.shape)
        return _hold(times, shape, self._time(plan, at.prefill, at.decode))

    def _use_at(self, shape: BatchShape, at: _AtSMs) -> float | np.ndarray:
        """The share of the chip's bandwidth `shape` draws alone at an array of SM counts
        (its bytes over its solo time), memoised there like `_solo_at`."""
        uses = at.uses
        memoised = uses.get(shape)
        if memoised is not None:
            return memoised
        return _hold(uses, shape, self._total_bytes(shape) / self._solo_at(shape, at) / self._bandwidth)

    def _columns_at(self, sms: int | np.ndarray) -> _AtSMs:
        """The checked SM array and what is memoised at it (`_AtSMs`), memoised by its contents."""
        a = np.asarray(sms)
        key = (a.dtype.str, a.shape, a.tobytes())
        entry = self._columns.get(key)
        if entry is None:
            s = self._sms_array(a).copy()   # its own: the caller may reuse the array
            share = sm_share(s, self.gpu.num_sms)
            share.flags.writeable = False
            if len(self._columns) >= 64:
                self._columns.clear()
            entry = self._columns[key] = _AtSMs(s, _Columns(self._prefill.cols, s), _Columns(self._decode.cols, s),
                                                share)
        return entry

    def _decode_line(self, seqs: int, sms: int) -> tuple[float, float, float]:
        """(fixed part, rest of the base curve, attention per KV token) of a decode step of
        `seqs` sequences on `sms` SMs: `_time` adds them in the order
        fixed + (rest + per_kv_token * kv_tokens), so the sum is the same to the last bit."""
        key = (seqs, sms)
        line = self._decode_lines.get(key)
        if line is None:
            line = self._decode_lines[key] = self._decode_lines_at(seqs, (self._check_sms(sms),))[0]
        return line

    def _decode_lines_at(self, seqs: int, sms: tuple[int, ...]) -> list[tuple[float, float, float]]:
        """`_decode_line` at each of (checked) SM counts, located on the curve once."""
        phase = self._decode
        where, k = phase.locate(bucket_for(self._decode_buckets, seqs) or seqs), phase.k
        return [(row[0], phase.variable(row, where, ()), row[k + 1]) for row in map(phase.rows.__getitem__, sms)]

    # ---- contention ----------------------------------------------------------------------

    def _total_bytes(self, shape: BatchShape) -> float:
        seqs = shape.decode_seqs
        if not shape.prefill_chunks and seqs > 0:
            return self._decode_bytes(seqs, shape.decode_kv_tokens)
        entry = self._bytes.get(id(shape))
        if entry is not None and entry[0] is shape:
            return entry[1]
        if len(self._bytes) >= _CACHE_LIMIT:
            self._bytes.clear()
        b = self._bytes_of.total_bytes(shape)
        self._bytes[id(shape)] = (shape, b)
        return b

    def _decode_bytes(self, seqs: int, kv_tokens: int) -> float:
        """`_total_bytes` of a decode step: only the attention operator (the last) depends on
        the KV tokens, so the others are memoised by batch size."""
        head = self._decode_bytes_head.get(seqs)
        if head is None:
            ops = self._bytes_of(BatchShape((), seqs, 0)).ops
            head = self._decode_bytes_head[seqs] = tuple(b for _, b in ops[:-1])
        work = self._bytes_of
        return sum((*head, work._kv_bytes_per_token * kv_tokens + work._q_bytes_per_token * seqs))

    def memory_demand(self, shape: BatchShape, sms: int | np.ndarray) -> float | np.ndarray:
        """Average HBM bytes/s the iteration draws alone on `sms` SMs (bytes from the model's
        shapes, time from the fit)."""
        t = self.solo_time(shape, sms)
        if shape.is_empty:
            return t
        return self._total_bytes(shape) / t

    def _excess(self, phase: str, own: Any, other: Any, other_share: Any) -> Any:
        return corun_excess(self._corun[phase], self._corun["k"], own, other, other_share)

    def slowdown(self, shape: BatchShape, sms: int | np.ndarray,
                 other: BatchShape, other_sms: int | np.ndarray) -> float | np.ndarray:
        """Factor >= 1 by which `shape` on `sms` is stretched while `other` runs on `other_sms`.

        Each side's bandwidth use is its bytes over its fitted solo time; the factor is
        1 + the fitted contention of nexus.cost.fit for the slowed phase. A batch mixing
        prefill and decode takes the two phases' contention weighted by their share of its
        solo time.

        The engine's served co-run steps may run slower than the profile's co-run grid
        predicts, for causes the grid's fixed shapes do not reproduce: on the H200, decode
        steps beside a busy prefill side ran about 10% over it at every split (68-108 decode
        SMs), where decode steps alone were within 2%. The factor is therefore multiplied by
        the calibration's `corun_scale` for the phase (weighted likewise for a mixed batch),
        and never falls below 1.
        """
        if sms.__class__ is int and other_sms.__class__ is int:   # the simulator's hot path
            return self._scalar_slowdown(shape, sms, other, other_sms)
        scalar = isinstance(sms, (int, np.integer)) and isinstance(other_sms, (int, np.integer))
        if shape.is_empty or other.is_empty:
            return 1.0 if scalar else np.ones(np.broadcast_shapes(np.shape(sms),
                                                                  np.shape(other_sms)))
        if sms.__class__ is np.ndarray and other_sms.__class__ is np.ndarray:
            # A controller scoring candidate splits: the same terms, memoised at each array.
            at, other_at = self._columns_at(sms), self._columns_at(other_sms)
            own, rival, share = self._use_at(shape, at), self._use_at(other, other_at), other_at.share
        else:
            bw = self._bandwidth
            own = self._total_bytes(shape) / self.solo_time(shape, sms) / bw
            rival = self._total_bytes(other) / self.solo_time(other, other_sms) / bw
            share = sm_share(other_sms, self.gpu.num_sms)
        has_pre, has_dec = shape.prefill_tokens > 0, shape.decode_seqs > 0
        scale_p, scale_d = self._corun_scale
        if has_pre and has_dec:
            pre_only = BatchShape(prefill_chunks=shape.prefill_chunks)
            tp = self.solo_time(pre_only, sms)
            w = tp / (tp + self.solo_time(BatchShape(decode_seqs=shape.decode_seqs,
                                                     decode_kv_tokens=shape.decode_kv_tokens), sms))
            excess = w * self._excess("prefill", own, rival, share) + \
                (1.0 - w) * self._excess("decode", own, rival, share)
            scale = w * scale_p + (1.0 - w) * scale_d
        else:
            excess = self._excess("prefill" if has_pre else "decode", own, rival, share)
            scale = scale_p if has_pre else scale_d
        # Unscaled unless a phase has a scale: w * 1 + (1 - w) * 1 need not be exactly 1.
        unscaled = scale_p == 1.0 and scale_d == 1.0
        factor = 1.0 + excess if unscaled else np.maximum(1.0, scale * (1.0 + excess))
        if scalar:
            return float(factor)
        if isinstance(factor, np.ndarray) and factor.shape == np.shape(sms) == np.shape(other_sms):
            return factor   # already the broadcast shape, and a fresh array
        return np.broadcast_to(factor, np.broadcast_shapes(np.shape(sms),
                                                           np.shape(other_sms))).copy()

    def corun_times_fast(self, shape: BatchShape, sms: np.ndarray, other: BatchShape, other_sms: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray] | None:
        """`nexus.cost.base.corun_times` over arrays of candidate splits: `corun_times_each_fast`'s
        answer as arrays. None (not answered here) unless both SM arguments are arrays of one
        dimension and one length and each shape is one phase alone."""
        if sms.__class__ is not np.ndarray or other_sms.__class__ is not np.ndarray \
                or sms.ndim != 1 or sms.shape != other_sms.shape:
            return None
        sms, other_sms = self._sms_array(sms), self._sms_array(other_sms)   # checked as the general path checks
        found = self.corun_times_each_fast(shape, tuple(sms.tolist()), other, tuple(other_sms.tolist()))
        return None if found is None else (np.array(found[0]), np.array(found[1]))

    def corun_times_each_fast(self, shape: BatchShape, sms: tuple[int, ...], other: BatchShape,
                              other_sms: tuple[int, ...]) -> tuple[list[float], list[float]] | None:
        """`nexus.cost.base.corun_times_each` in plain floats. A split controller scores a dozen
        candidate splits at a time, and on arrays that small each numpy call costs about as
        much as a dozen float operations: over stacked arrays, one pass cost 320k instructions
        (callgrind, fresh prompt shapes on the H100), in plain floats under 200k. Each side's solo
        times at its SM counts, then per pair each side's `_stretch`, whose terms are those of
        `slowdown`'s array path (corun_excess) in the same order, so the same bits. None (not
        answered here) unless each shape is one phase alone (a mixed batch weighs two)."""
        pre, dec = shape.prefill_tokens > 0, shape.decode_seqs > 0
        other_pre, other_dec = other.prefill_tokens > 0, other.decode_seqs > 0
        if pre == dec or other_pre == other_dec or shape.is_empty or other.is_empty or len(sms) != len(other_sms):
            return None
        num_sms = self.gpu.num_sms
        for s in (*sms, *other_sms):
            if not 0 <= s <= num_sms:
                self._check_sms(s)   # raises
        times, other_times = self._solo_each(shape, sms), self._solo_each(other, other_sms)
        bw, stretch = self._bandwidth, self._stretch
        bytes_, other_bytes = self._total_bytes(shape), self._total_bytes(other)
        out, other_out = [], []
        for t, ot, s, os_ in zip(times, other_times, sms, other_sms):
            own, rival = bytes_ / t / bw, other_bytes / ot / bw
            # One phase a side, so _stretch's prefill weight is never read.
            out.append(t * stretch((own, 1.0, pre, dec), rival, os_))
            other_out.append(ot * stretch((rival, 1.0, other_pre, other_dec), own, s))
        return out, other_out

    def _solo_each(self, shape: BatchShape, sms: tuple[int, ...]) -> list[float]:
        """`solo_time` at each of (checked) SM counts of a shape that is one phase alone. A
        prompt step is memoised by its contents (Nexus's controller meets the chunks of an
        earlier search in about half its searches); a decode step by its lines at its batch
        size, as `solo_time` does."""
        if shape.prefill_tokens <= 0:
            key = (shape.decode_seqs, sms)
            lines = self._decode_lines_each.get(key)
            if lines is None:
                if len(self._decode_lines_each) >= _CACHE_LIMIT:
                    self._decode_lines_each.clear()
                lines = self._decode_lines_each[key] = self._decode_lines_at(shape.decode_seqs, sms)
            kv_tokens = shape.decode_kv_tokens
            return [fixed + (rest + per_kv_token * kv_tokens) for fixed, rest, per_kv_token in lines]
        times = self._solo_lists.get((shape, sms))
        if times is None:
            # With no decode rows, a prompt step's time is its chunks' part (see _scalar_time).
            if len(self._solo_lists) >= _CACHE_LIMIT:
                self._solo_lists.clear()
            times = self._solo_lists[(shape, sms)] = self._chunk_parts_each(shape.prefill_chunks, 0, sms)
        return times

    def _use(self, shape: BatchShape, sms: int) -> tuple[float, float, bool, bool] | None:
        """(bandwidth use, prefill's share of the solo time, has prefill, has decode) of `shape`
        alone on `sms` SMs, or None if it is empty; the terms `slowdown` reads, memoised."""
        # Keyed by the shape object (held in the entry, so its id stays its own): the
        # simulator asks again for the shapes of the jobs it runs, and hashing a shape's
        # chunks costs more than that look-up saves. Only where it misses are the contents
        # looked up (below), for shapes with chunks.
        key = (id(shape), sms)
        entry = self._uses.get(key)
        if entry is not None and entry[0] is shape:
            return entry[1]
        seqs = shape.decode_seqs
        use: tuple[float, float, bool, bool] | None
        if not shape.prefill_chunks and seqs > 0:
            # A decode step (most jobs): its bytes and its time, as _total_bytes and solo_time
            # give them, without asking either (a new job's terms are asked once per pairing).
            fixed, rest, per_kv_token = self._decode_line(seqs, sms)
            kv_tokens = shape.decode_kv_tokens
            use = (self._decode_bytes(seqs, kv_tokens) / (fixed + (rest + per_kv_token * kv_tokens))
                   / self._bandwidth, 1.0, False, True)
        else:
            # A step with prompt chunks: two in three that a split policy runs have the chunks
            # of one before it (whole short prompts, or full chunks of long ones), so its terms
            # are also memoised by the shape's contents.
            found: Any = self._uses_by_shape.get((shape, sms), _UNKNOWN)
            if found is _UNKNOWN:
                use = self._chunked_use(shape, sms)
                if len(self._uses_by_shape) >= _CACHE_LIMIT:
                    self._uses_by_shape.clear()
                self._uses_by_shape[(shape, sms)] = use
            else:
                use = found
        if len(self._uses) >= _CACHE_LIMIT:
            self._uses.clear()
        self._uses[key] = (shape, use)
        return use

    def _chunked_use(self, shape: BatchShape, sms: int) -> tuple[float, float, bool, bool] | None:
        """`_use` worked out afresh, for a shape that is not a decode step alone."""
        seqs = shape.decode_seqs
        prefill_tokens = shape.prefill_tokens
        if prefill_tokens + seqs == 0:   # shape.is_empty
            return None
        own = self._total_bytes(shape) / float(self.solo_time(shape, sms)) / self._bandwidth
        has_pre, has_dec = prefill_tokens > 0, seqs > 0
        w = 1.0
        if has_pre and has_dec:
            tp = float(self.solo_time(BatchShape(prefill_chunks=shape.prefill_chunks), sms))
            w = tp / (tp + float(self.solo_time(BatchShape(decode_seqs=shape.decode_seqs,
                                                           decode_kv_tokens=shape.decode_kv_tokens), sms)))
        return own, w, has_pre, has_dec

    def _scalar_slowdown(self, shape: BatchShape, sms: int, other: BatchShape, other_sms: int) -> float:
        """`slowdown` for one SM count each: the same arithmetic, in the same order, as the
        general path (corun_excess written out), from memoised per-shape terms."""
        mine, theirs = self._use(shape, sms), self._use(other, other_sms)
        if mine is None or theirs is None:
            return 1.0
        return self._stretch(mine, theirs[0], other_sms)

    def slowdowns_fast(self, shape: BatchShape, sms: int, other: BatchShape, other_sms: int
                       ) -> tuple[float, float] | None:
        """`nexus.cost.base.slowdowns` for one SM count each: both `_scalar_slowdown`s from one
        look-up of each side's terms (the simulator asks for both whenever a GPU's pair of jobs
        changes); None (not answered here) unless both SM counts are ints."""
        if sms.__class__ is not int or other_sms.__class__ is not int:
            return None
        mine, theirs = self._use(shape, sms), self._use(other, other_sms)
        if mine is None or theirs is None:
            return 1.0, 1.0
        return self._stretch(mine, theirs[0], other_sms), self._stretch(theirs, mine[0], sms)

    def _stretch(self, mine: tuple[float, float, bool, bool], rival: float, other_sms: int) -> float:
        """The slowdown of a side whose `_use` terms are `mine` beside a rival drawing `rival`
        on `other_sms` SMs."""
        own, w, has_pre, has_dec = mine
        share = self._shares[other_sms]
        # min(rival, max(..., 0.0)) as comparisons that keep the operand the builtins keep: the
        # two builtin calls were a sixth of this function (callgrind).
        over = own + rival - self._corun_k
        if over < 0.0:
            over = 0.0
        if not over < rival:
            over = rival
        unscaled = self._corun_unscaled
        if has_pre:
            a, b, c, d, e = self._corun_prefill
            pre = a * rival + b * own * rival + c * over + d * share * rival + e * share
            if not has_dec:
                return 1.0 + pre if unscaled else max(1.0, self._corun_scale[0] * (1.0 + pre))
        a, b, c, d, e = self._corun_decode
        dec = a * rival + b * own * rival + c * over + d * share * rival + e * share
        scale_p, scale_d = self._corun_scale
        if has_pre:
            scale = w * scale_p + (1.0 - w) * scale_d
            factor = 1.0 + (w * pre + (1.0 - w) * dec)
            return factor if unscaled else max(1.0, scale * factor)
        return 1.0 + dec if unscaled else max(1.0, scale_d * (1.0 + dec))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "calibration": self.calibration,
            "gpu": self.gpu.name,
            "model": self.model.name,
            "fit_error": self.fit_error,
            "created": self.created,
            "digest": self.digest,
            "step_gap_s": self.step_gap_s,
            "step_gap_per_seq_s": self.step_gap_per_seq_s,
            "engine": self.engine,
        }


def _restore(model: ModelSpec, gpu: GPUSpec, fit: dict[str, Any], calibration: str | None, fit_error: dict | None,
             created: str | None, digest: str | None, engine: dict, step_gap_s: float,
             step_gap_per_seq_s: float) -> MeasuredCost:
    """A pickled MeasuredCost (see its __reduce__)."""
    cost = MeasuredCost(model, gpu, fit, calibration=calibration, fit_error=fit_error, created=created)
    cost.digest = digest
    cost.use_engine(engine)
    cost.step_gap_s, cost.step_gap_per_seq_s = step_gap_s, step_gap_per_seq_s
    return cost

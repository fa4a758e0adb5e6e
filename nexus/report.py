"""What a run leaves behind: summary.json, requests.parquet, timeline.parquet and plots.

The real engine writes the same files through these functions, so results compare
column for column.
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from nexus.errors import UserError  # noqa: E402


RESULT_FILES = ("summary.json", "requests.parquet", "timeline.parquet")
PLOT_FILES = ("latency_cdf.png", "split_and_kv.png")

# One colour per policy in every figure (tab10's first five); other names take the rest in turn.
POLICY_COLOURS = {"chunked": "#1f77b4", "prefill-first": "#ff7f0e", "static": "#2ca02c",
                  "nexus": "#d62728", "disagg": "#9467bd"}
_OTHER_COLOURS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000")


def policy_colours(names: Iterable[str]) -> dict[str, str]:
    """A colour for each name: the policy's own, or the next unused one for other names."""
    spare = itertools.cycle(_OTHER_COLOURS)
    return {n: POLICY_COLOURS.get(n) or next(spare) for n in dict.fromkeys(names)}


@dataclass
class RunOutput:
    """One policy's results, as write_results lays them out."""
    summary: dict
    requests: pd.DataFrame
    timeline: pd.DataFrame
    extra: dict = field(default_factory=dict)


def check_out(out: Path) -> None:
    """Refuse, before any work, an --out that write_results could not fill or would clobber."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _holds_results(out):
        raise UserError(f"--out {out}: a folder holding other files; results replace the folder "
                        f"as a whole, so give a new or empty one")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--out {out}: {ancestor} is not a folder")
    try:   # the one honest test of writability (permissions, read-only mounts, /proc ...)
        Path(tempfile.mkdtemp(prefix=".nexus-probe-", dir=ancestor)).rmdir()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write in {ancestor}: {e.strerror or e}") from None


def _holds_results(folder: Path) -> bool:
    """A folder an earlier run wrote, and nothing else: its files, or one subfolder of them
    per policy. Replacing anything more would delete what the user put there."""
    ours = {*RESULT_FILES, *PLOT_FILES}

    def run_folder(path: Path) -> bool:
        return path.is_dir() and (path / "summary.json").is_file() and all(
            p.name in ours and p.is_file() for p in path.iterdir())

    return run_folder(folder) or all(
        (p.name in PLOT_FILES and p.is_file()) or run_folder(p) for p in folder.iterdir())


def write_results(out: Path, runs: dict[str, RunOutput], num_sms: int) -> None:
    """Write every run's files and the plots to `out`, all or nothing.

    Everything is written to a hidden folder beside `out`, which then takes `out`'s place
    by renaming; an interrupt or error before that removes it and leaves `out` as it was.
    One run lands in `out` itself, several in one subfolder per policy.
    """
    check_out(out)
    out = Path(os.path.abspath(out))   # so that "." and "x/.." have a name and a parent
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        stage.mkdir()   # not mkdtemp: the results folder keeps the umask's permissions
        for name, run in runs.items():
            write_run(stage if len(runs) == 1 else stage / name, run.summary, run.requests,
                      run.timeline, run.extra)
        plot_latency_cdfs({n: r.requests for n, r in runs.items()}, stage / PLOT_FILES[0])
        plot_timeline({n: r.timeline for n, r in runs.items()}, num_sms, stage / PLOT_FILES[1])
        _replace(out, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _replace(out: Path, stage: Path) -> None:
    """Move `stage` to `out`; an existing `out` (an earlier run's results) goes away.

    Two renames cannot be one atomic step, so Ctrl-C waits until both are done: an
    interrupt then finds either the old results or the new ones, never neither.
    """
    with _interrupts_held():
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT for the duration; one that came is dropped, as the work it would stop is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_run(out: Path, summary: dict, requests: pd.DataFrame, timeline: pd.DataFrame,
              extra: dict | None = None) -> None:
    """One run's three files into the folder `out` (write_results makes that folder atomic)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({**summary, **(extra or {})}, indent=2, sort_keys=True,
                                                 default=str) + "\n")
    requests.to_parquet(out / "requests.parquet", index=False)
    timeline.to_parquet(out / "timeline.parquet", index=False)


def plot_latency_cdfs(runs: dict[str, pd.DataFrame], path: Path) -> None:
    _save(latency_cdf_figure(runs), path)


def plot_timeline(runs: dict[str, pd.DataFrame], num_sms: int, path: Path) -> None:
    _save(timeline_figure(runs, num_sms), path)


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def latency_cdf_figure(runs: dict[str, pd.DataFrame]) -> plt.Figure:
    """TTFT and per-request mean TBT CDFs, one colour per policy."""
    colours = policy_colours(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, df in runs.items():
        for ax, col, scale in ((axes[0], "ttft_s", 1.0), (axes[1], "tbt_mean_s", 1e3)):
            v = np.sort(df[col].dropna().to_numpy() * scale)
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=name, color=colours[name])
    axes[0].set(xlabel="TTFT (s)", ylabel="fraction of requests", xscale="log", title="Time to first token")
    _label_log_axis(axes[0])
    axes[1].set(xlabel="mean time between tokens of one request (ms)", ylabel="fraction of requests",
                title="TBT, each request's mean (summary.json's tbt_s is over all tokens)")
    axes[1].title.set_fontsize(10)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def _label_log_axis(ax) -> None:
    """Plain-number labels on 1-2-5 steps over a short range, on decades over a long one
    (the default labels every minor tick of a short log axis, and they overlap)."""
    low, high = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if high / low <= 10**2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def timeline_figure(runs: dict[str, pd.DataFrame], num_sms: int) -> plt.Figure:
    """Top: SMs on the prefill side (a one-stream policy runs on every SM; a two-GPU policy
    is listed, not drawn, as its prefill has a GPU of its own). Bottom: KV cache use."""
    from nexus.policy import POLICIES

    colours = policy_colours(runs)
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    elsewhere = []
    one_stream = [n for n, tl in runs.items() if len(tl) and set(tl["stream"]) <= {"mixed"}]
    kv_top = 0.0
    for name, tl in runs.items():
        colour = colours[name]
        if getattr(POLICIES.get(name), "gpus", 1) > 1:
            elsewhere.append(name)
        elif name in one_stream:
            # Interleaved dashes, so that several one-stream policies on the same line all show.
            k, i = len(one_stream), one_stream.index(name)
            axes[0].plot([tl["start_s"].min(), tl["end_s"].max()], [num_sms, num_sms], color=colour, lw=2,
                         linestyle=(4 * i, (4, 4 * (k - 1))) if k > 1 else "--",
                         label=f"{name}: one stream, all SMs")
        else:
            pre = tl[tl["stream"] == "prefill"]
            if len(pre):
                sms = pre["sms"].where(pre["sms"] > 0, num_sms)
                axes[0].step(pre["start_s"], sms, where="post", color=colour, label=name)
        if len(tl):
            axes[1].plot(tl["end_s"], tl["kv_usage"] * 100, color=colour, label=name)
            kv_top = max(kv_top, float(tl["kv_usage"].max()) * 100)
    title = "SMs on the prefill side"
    if elsewhere:
        title += f" ({', '.join(elsewhere)}: prefill on a GPU of its own, not shown)"
    axes[0].set(ylabel="prefill SMs", ylim=(0, num_sms * 1.08), title=title)
    # Scale the KV axis to the data, so that a few percent of use is visible.
    axes[1].set(xlabel="time (s)", ylabel="KV use (%)", ylim=(0, min(100.0, max(1.0, kv_top * 1.15))),
                title="KV cache in use")
    for ax, where in zip(axes, ("lower right", "upper right")):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc=where, fontsize=8)
    fig.tight_layout()
    return fig


def print_table(summaries: Sequence[dict], console: Console | None = None) -> None:
    console = console or Console(width=150)
    table = Table(title="Serving summary (latencies: mean / p95 / p99)")
    for col in ("policy", "req/s", "out tok/s", "TTFT s", "TBT ms", "E2E s", "norm. ms/tok", "preempt"):
        table.add_column(col, justify="right")
    for s in summaries:
        def fmt(key: str, scale: float = 1.0, digits: int = 3) -> str:
            m = s[key]
            return " / ".join(f"{m[k] * scale:.{digits}f}" for k in ("mean", "p95", "p99"))
        table.add_row(s["policy"], f"{s['throughput_rps']:.2f}", f"{s['output_tokens_per_s']:.0f}",
                      fmt("ttft_s"), fmt("tbt_s", 1e3, 1), fmt("e2e_s", 1.0, 2),
                      fmt("normalized_latency_s", 1e3, 1), str(s["preemptions"]))
    console.print(table)
    first = summaries[0]
    console.print(f"[dim]{first['model']} on {first['gpu']}, cost model: {first['cost_model'].get('name')}"
                  + (f" ({first['cost_model'].get('calibration')})" if first['cost_model'].get('calibration') else "")
                  + "[/dim]")
    for s in summaries:
        if "slo" in s:
            slo = s["slo"]
            console.print(f"{s['policy']}: SLO attainment {slo['attainment']:.1%}, "
                          f"goodput {slo['goodput_rps']:.2f} req/s "
                          f"(TTFT <= {slo['ttft_s']} s, TBT <= {slo['tbt_s']} s)")

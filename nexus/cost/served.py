"""The engine's served scales: a profile's engine replay, priced step by step with the
calibration's fit (nexus.step_view), against what the replay measured.

A scale is relative to the fit it was measured against, so whoever writes a fit writes its
scales too: the profile, from the replay it has just run, and a refit (`python -m
nexus.cost.fit FILE`), from the replay the profile left beside the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from nexus.cost.calibration import spec_from_dict
from nexus.cost.measured import SERVED_SCALE_RANGE, SERVED_SCALES, MeasuredCost
from nexus.errors import UserError
from nexus.specs import GPUSpec, ModelSpec
from nexus.step_view import corun_scale, decode_scale, step_table


def replay_path(calibration: str | Path) -> Path:
    """Where a calibration's engine replay lies: NAME.replay.csv.gz beside NAME.json."""
    calibration = Path(calibration)
    return calibration.with_name(calibration.stem + ".replay.csv.gz")


def write_replay(timelines: list[pd.DataFrame], calibration: str | Path) -> Path:
    path = replay_path(calibration)
    pd.concat(timelines, keys=range(len(timelines)), names=["replay", None]).reset_index(level=0) \
        .to_csv(path, index=False, float_format="%.7g")
    return path


def read_replay(calibration: str | Path) -> list[pd.DataFrame] | None:
    """The replay's timelines (one per replayed policy), or None if there is none."""
    path = replay_path(calibration)
    if not path.exists():
        return None
    try:
        steps = pd.read_csv(path)
        return [tl.drop(columns="replay").reset_index(drop=True) for _, tl in steps.groupby("replay")]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a readable engine replay ({type(e).__name__}: {e})") from None


def served_scales(data: dict, timelines: list[pd.DataFrame] | None, log: Callable[[str], None] = print) -> None:
    """Set data["engine"]'s served scales for data["fit"]: how the replay's decode steps, then
    its co-run steps, differ from the fit's prices; without a replay, none (a stale one would
    belong to another fit).

    The decode scale comes first: a co-run step's prediction is its solo time stretched, so
    the co-run scale is measured against solo times already served-scaled. A scale outside
    SERVED_SCALE_RANGE is logged and not kept (seen once on CPU: 0.007, from a broken fit).
    """
    engine = data.setdefault("engine", {})
    for key in SERVED_SCALES:
        engine.pop(key, None)
    if not timelines:
        return
    cost = MeasuredCost(spec_from_dict(ModelSpec, data["model"], "model"),
                        spec_from_dict(GPUSpec, data["gpu"], "gpu"), data["fit"])
    source = ("median measured / predicted time of the {} steps of the engine replays that measured "
              "the host gap (real.host_gap), against this fit")
    lo, hi = SERVED_SCALE_RANGE
    for key, of_steps, parts, what in (("decode_scale", decode_scale, ("plain", "partitions"), "decode alone"),
                                       ("corun_scale", corun_scale, ("prefill", "decode"), "co-run")):
        cost.use_engine(engine, "calibration")
        scale = of_steps(pd.concat([step_table(tl, cost) for tl in timelines], ignore_index=True))
        log(f"engine: served {what} steps over the model: " + ", ".join(
            f"{p} x{scale[p]:.3f} ({scale['steps'][p]} steps)" for p in parts))
        if all(lo <= scale[p] <= hi for p in parts):
            engine[key] = {**scale, "source": source.format(what)}
        else:
            log(f"engine: {key} not kept: a scale outside [{lo}, {hi}] says the fit or the replay is off")

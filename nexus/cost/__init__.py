"""Latency models: how long one engine iteration takes on S SMs, alone or beside the other phase.

`CostModel` is the one interface. The simulator advances time with it and the Nexus
controller picks splits with it, so both always agree.
"""
from nexus.cost.base import BatchShape, CostModel, FULL_GPU

__all__ = ["BatchShape", "CostModel", "FULL_GPU"]

from pathlib import Path

from nexus.errors import UserError
from nexus.specs import GPUSpec, ModelSpec

CALIBRATIONS_DIR = Path(__file__).parent / "calibrations"


def default_calibration(model: ModelSpec, gpu: GPUSpec) -> Path | None:
    """The shipped calibration file for this pair, if one exists."""
    path = CALIBRATIONS_DIR / f"{gpu.name}__{model.name}.json"
    return path if path.exists() else None


def _calibration_path(model: ModelSpec, gpu: GPUSpec, calibration: str | Path | None) -> Path | None:
    """The file `calibration` names (default: the shipped one); None for the analytical model."""
    if calibration == "analytical":
        return None
    return Path(calibration) if calibration is not None else default_calibration(model, gpu)


def load_cost_model(model: ModelSpec, gpu: GPUSpec, calibration: str | Path | None = None) -> CostModel:
    """The measured model from `calibration` (or the shipped one), else the analytical model.

    calibration="analytical" forces the analytical roofline even where a file ships.
    """
    from nexus.cost.analytical import AnalyticalCost

    path = _calibration_path(model, gpu, calibration)
    if path is None:
        return AnalyticalCost(model, gpu)
    try:
        from nexus.cost.measured import MeasuredCost
    except ImportError:
        raise UserError(f"{path}: measured cost models are not available in this build") from None
    return MeasuredCost.load(path, model, gpu)


def dropped_prefill_buckets(model: ModelSpec, gpu: GPUSpec, calibration: str | Path | None = None) -> list[int]:
    """Prefill graph buckets that the calibration's profile found slower than a larger one
    (engine.prefill_graphs.dropped); none for the analytical model or an older calibration.
    The engine leaves them out, as the simulator does when it pads steps to the buckets."""
    from nexus.cost.calibration import read_calibration

    path = _calibration_path(model, gpu, calibration)
    if path is None:
        return []
    graphs = read_calibration(path).get("engine", {}).get("prefill_graphs") or {}
    dropped = graphs.get("dropped", [])
    if not isinstance(dropped, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                                for b in dropped):
        raise UserError(f"{path}: engine.prefill_graphs.dropped must be a list of positive token counts, "
                        f"got {dropped!r}")
    return sorted(dropped)


def engine_prefill_buckets(model: ModelSpec, gpu: GPUSpec, calibration: str | Path | None = None
                           ) -> tuple[int, ...]:
    """The prefill graph buckets an engine built with `calibration` captures."""
    from nexus.graph_buckets import prefill_buckets_without

    return prefill_buckets_without(dropped_prefill_buckets(model, gpu, calibration))

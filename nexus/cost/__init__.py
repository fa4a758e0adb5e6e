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


def load_cost_model(model: ModelSpec, gpu: GPUSpec, calibration: str | Path | None = None) -> CostModel:
    """The measured model from `calibration` (or the shipped one), else the analytical model.

    calibration="analytical" forces the analytical roofline even where a file ships.
    """
    from nexus.cost.analytical import AnalyticalCost

    if calibration == "analytical":
        return AnalyticalCost(model, gpu)
    path = Path(calibration) if calibration is not None else default_calibration(model, gpu)
    if path is None:
        return AnalyticalCost(model, gpu)
    try:
        from nexus.cost.measured import MeasuredCost
    except ImportError:
        raise UserError(f"{path}: measured cost models are not available in this build") from None
    return MeasuredCost.load(path, model, gpu)

"""Latency models: how long one engine iteration takes on S SMs, alone or beside the other phase.

`CostModel` is the one interface. The simulator advances time with it and the Nexus
controller picks splits with it, so both always agree.
"""
from nexus.cost.base import BatchShape, CostModel, FULL_GPU

__all__ = ["BatchShape", "CostModel", "FULL_GPU"]

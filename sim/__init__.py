"""Discrete-event simulator of one GPU serving LLM requests with intra-GPU PD disaggregation.

`sim.run(...)` is the Python API; `nexus-sim` is the CLI. Time advances on `sim.clock`;
co-running iterations progress with the fluid contention model of `sim.gpu`.
"""
from sim.run import Result, run

__all__ = ["Result", "run"]

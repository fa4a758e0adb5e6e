"""Shared core of Nexus: specs, requests, KV accounting, cost models, policies and metrics.

Everything here is plain Python and numpy, so that the simulator and the real
engine agree on one implementation. Nothing in this package imports torch or simpy.
"""

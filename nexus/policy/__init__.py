"""Scheduling policies: who runs next, on how many SMs. Written once, driven by sim and real."""
from __future__ import annotations

from nexus.errors import UserError
from nexus.policy.base import Policy, decode_step, make_decode_room, take_prefill_chunks
from nexus.policy.chunked import Chunked
from nexus.policy.disagg import Disagg
from nexus.policy.nexus import Nexus
from nexus.policy.prefill_first import PrefillFirst
from nexus.policy.static import Static

POLICIES: dict[str, type[Policy]] = {
    "chunked": Chunked,
    "prefill-first": PrefillFirst,
    "static": Static,
    "nexus": Nexus,
    "disagg": Disagg,
}


def make_policy(name: str, **params) -> Policy:
    """Build a policy by name; unknown names and parameters are user errors."""
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    try:
        return POLICIES[name](**params)
    except TypeError as e:
        raise UserError(f"policy {name!r}: {e}") from None


__all__ = ["POLICIES", "Policy", "make_policy", "decode_step", "make_decode_room", "take_prefill_chunks",
           "Chunked", "PrefillFirst", "Static", "Nexus", "Disagg"]

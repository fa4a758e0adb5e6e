"""Scheduling policies: who runs next, on how many SMs. Written once, driven by sim and real."""
from __future__ import annotations

from nexus.errors import UserError
from nexus.policy.base import Policy, decode_step, make_decode_room, prefill_step, take_prefill_chunks
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


def build_policies(names: list[str], params: dict, split: tuple[int, int] | None = None) -> list[Policy]:
    """Policies by name for a command line: shared --param values go to the policies that take
    them (so --compare can share flags), and --split sets static's split and nexus's fallback."""
    from inspect import signature

    accepts = {name: signature(cls.__init__).parameters for name, cls in POLICIES.items()}
    unknown = [k for k in params if not any(k in a for a in accepts.values())]
    if unknown:
        raise UserError(f"unknown policy parameter(s): {', '.join(unknown)}")
    policies = []
    for name in names:
        if name not in POLICIES:
            raise UserError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
        kwargs = {k: v for k, v in params.items() if k in accepts[name]}
        if split and name == "static":
            kwargs.update(prefill_sms=split[0], decode_sms=split[1])
        elif split and name == "nexus":
            kwargs["static_split"] = split
        policies.append(make_policy(name, **kwargs))
    return policies


__all__ = ["build_policies", "POLICIES", "Policy", "make_policy", "decode_step", "make_decode_room", "prefill_step", "take_prefill_chunks",
           "Chunked", "PrefillFirst", "Static", "Nexus", "Disagg"]

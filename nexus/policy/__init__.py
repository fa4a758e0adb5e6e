"""Scheduling policies: who runs next, on how many SMs. Written once, driven by sim and real."""
from __future__ import annotations

import math
from dataclasses import dataclass
from inspect import signature
from typing import Any

from nexus.errors import UserError
from nexus.policy.base import Policy, decode_step, make_decode_room, prefill_step, take_prefill_chunks
from nexus.policy.chunked import Chunked
from nexus.policy.disagg import Disagg
from nexus.policy.nexus import Nexus
from nexus.policy.prefill_first import PrefillFirst
from nexus.policy.static import Static
from nexus.specs import GPUSpec
from nexus.state import Split

POLICIES: dict[str, type[Policy]] = {
    "chunked": Chunked,
    "prefill-first": PrefillFirst,
    "static": Static,
    "nexus": Nexus,
    "disagg": Disagg,
}


@dataclass(frozen=True)
class Param:
    """What one policy parameter may be: a kind and, for numbers, a closed range."""
    kind: str                 # "int", "number", "bool", "str" or "split"
    low: float = -math.inf
    high: float = math.inf
    why: str = ""

    def check(self, name: str, value: Any) -> None:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise UserError(f"policy parameter {name} must be true or false, got {value!r}")
            return
        if self.kind == "str":
            if not isinstance(value, str):
                raise UserError(f"policy parameter {name} must be a string, got {value!r}")
            return
        if self.kind == "split":
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
                raise UserError(f"policy parameter {name} must be a pair of SM counts like [64, 68], got {value!r}")
            return
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if self.kind == "int" and not is_int:
            raise UserError(f"policy parameter {name} must be an integer{self._range()}, got {value!r}")
        if not (is_int or isinstance(value, float)) or isinstance(value, bool):
            raise UserError(f"policy parameter {name} must be a number{self._range()}, got {value!r}")
        if not (math.isfinite(value) and self.low <= value <= self.high):
            what = " an integer" if self.kind == "int" else ""
            why = f" ({self.why})" if self.why else ""
            raise UserError(f"policy parameter {name} must be{what}{self._range()}{why}, got {value!r}")

    def _range(self) -> str:
        if self.high == math.inf:
            return f" >= {self.low:g}" if self.low > -math.inf else ""
        return f" from {self.low:g} to {self.high:g}"


# Every parameter of every registered policy, by name: the one place their ranges live.
# A name means the same thing in every policy that takes it.
PARAMS: dict[str, Param] = {
    "alpha": Param("number", 1.0, why="a bound on prefill time relative to prefill alone on the whole GPU"),
    "beta": Param("number", 1.0, why="a bound on decode time relative to decode alone on the whole GPU"),
    "kv_threshold": Param("number", 0.0, 1.0, why="a fraction of the KV cache"),
    "hysteresis": Param("number", 0.0, 1.0, why="a fraction of the best split's cost"),
    "gamma": Param("number", 0.0, why="prompt tokens forgiven per second waited"),
    "chunk_tokens": Param("int", 1),
    "max_num_batched_tokens": Param("int", 1),
    "max_prefill_tokens": Param("int", 1),
    "prefill_tokens": Param("int", 1),
    "prefill_sms": Param("int", 1),
    "decode_sms": Param("int", 1),
    "static_split": Param("split"),
    "spf": Param("bool"),
    "dynamic": Param("bool"),
    "link": Param("str"),
    "link_latency_s": Param("number", 0.0),
}


def _accepted(cls: type[Policy]) -> set[str]:
    return {k for k in signature(cls.__init__).parameters if k != "self"}


def check_params(params: dict) -> None:
    """Raise UserError for a parameter value outside its declared kind and range."""
    for name, value in params.items():
        declared = PARAMS.get(name)
        if declared is not None:
            declared.check(name, value)


def make_policy(name: str, **params) -> Policy:
    """Build a policy by name; unknown names, parameters it does not take, and out-of-range
    values are user errors."""
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    cls = POLICIES[name]
    takes = _accepted(cls)
    foreign = [k for k in params if k not in takes]
    if foreign:
        raise UserError(f"{name} takes no parameter {foreign[0]!r}; it takes {', '.join(sorted(takes)) or 'none'}")
    check_params(params)
    return cls(**params)


def build_policies(names: list[str], params: dict, split: tuple[int, int] | None = None) -> list[Policy]:
    """Policies by name for a command line: shared --param values go to the policies that take
    them (so --compare can share flags), and --split sets static's split and nexus's fallback.

    A parameter none of the named policies takes is an error, so a typo or a parameter of
    another policy is never silently ignored.
    """
    for name in names:
        if name not in POLICIES:
            raise UserError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    takes = {name: _accepted(POLICIES[name]) for name in names}
    for key in params:
        if not any(key in t for t in takes.values()):
            owners = [n for n, cls in POLICIES.items() if key in _accepted(cls)]
            if not owners:
                raise UserError(f"unknown policy parameter {key!r}; known: {', '.join(PARAMS)}")
            raise UserError(f"{' and '.join(names)} take{'s' if len(names) == 1 else ''} no parameter "
                            f"{key!r} ({' and '.join(owners)} take{'s' if len(owners) == 1 else ''} it)")
    check_params(params)
    policies = []
    for name in names:
        kwargs = {k: v for k, v in params.items() if k in takes[name]}
        if split and name == "static":
            kwargs.update(prefill_sms=split[0], decode_sms=split[1])
        elif split and name == "nexus":
            kwargs["static_split"] = split
        policies.append(make_policy(name, **kwargs))
    return policies


def check_policy(policy: Policy, gpu: GPUSpec) -> None:
    """What an engine checks before it starts: the policy's own check, and that every
    partition its `splits` lists is one the GPU can give."""
    policy.check(gpu)
    sizes = gpu.partition_sizes()
    for sms in policy.splits(gpu):
        if sms not in sizes:
            raise UserError(f"policy {policy.name!r} lists a prefill partition of {sms} SMs, which "
                            f"{gpu.name} cannot give: partitions are multiples of {gpu.sm_step} SMs "
                            f"from {sizes[0]} to {sizes[-1]}")


def check_split(policy: Policy, split: Split, gpu: GPUSpec) -> None:
    """A split a policy returned while running: the whole GPU, or one `gpu` can give."""
    if split != Split():
        try:
            gpu.check_split(split.prefill_sms, split.decode_sms)
        except UserError as e:
            raise UserError(f"policy {policy.name!r} chose a split the GPU cannot give: {e}") from None


__all__ = ["build_policies", "check_params", "check_policy", "check_split", "PARAMS", "POLICIES", "Policy",
           "make_policy", "decode_step", "make_decode_room", "prefill_step", "take_prefill_chunks",
           "Chunked", "PrefillFirst", "Static", "Nexus", "Disagg"]

"""Model and GPU specifications: shapes and datasheet numbers, nothing that runs.

Presets cite their sources; users may pass their own spec as a JSON or TOML file
with the same field names.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nexus.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072
    dtype_bytes: int = 2

    @property
    def params_per_layer(self) -> int:
        h, d = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * d
        bias = (self.num_heads + 2 * self.num_kv_heads) * d if self.attention_bias else 0
        o = self.num_heads * d * h
        mlp = 3 * h * self.intermediate_size
        return qkv + bias + o + mlp + 2 * h

    @property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return self.num_layers * self.params_per_layer + embed + head + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def check(self, origin: str) -> None:
        """Raise UserError for shapes no model has."""
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"{origin}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                            f"({self.num_kv_heads}): each KV head serves a whole group of query heads")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GPUSpec:
    name: str
    num_sms: int
    sm_step: int          # green-context partitions come in multiples of this
    sm_min: int           # and are at least this large
    peak_flops: float     # dense bf16 tensor-core FLOP/s
    hbm_bandwidth: float  # bytes/s
    memory_bytes: int
    compute_capability: str = ""
    source: str = ""
    # Smallest side a split may have in practice. On an H100 the driver grants 8 SMs, but
    # cuBLAS GEMMs failed to launch on a 12-SM green context (its kernels use thread-block
    # clusters larger than such a partition can host), so both sides keep at least 16.
    usable_min_sms: int = 0

    def partition_sizes(self) -> list[int]:
        """SM counts a green context split off the device can have, smallest first.

        The other side of a split is the remainder, num_sms - size, which need not be a
        multiple of the step (132 = 16 x 8 + 4 on an H100).
        """
        least = max(self.sm_min, self.usable_min_sms)
        return [s for s in range(self.sm_min, self.num_sms, self.sm_step)
                if s >= least and self.num_sms - s >= least]

    def check_split(self, prefill_sms: int, decode_sms: int) -> None:
        """Raise UserError unless the GPU can give this split.

        The prefill partition is split off the device, so it must be grantable; decode runs
        on the remainder, or on a grantable part of it.
        """
        total = prefill_sms + decode_sms
        if total > self.num_sms:
            raise UserError(f"split {prefill_sms}:{decode_sms} asks for {total} SMs; "
                            f"{self.name} has {self.num_sms}")
        remainder = self.num_sms - prefill_sms
        if prefill_sms not in self.partition_sizes():
            raise UserError(
                f"{self.name} cannot give a prefill partition of {prefill_sms} SMs: partitions are "
                f"multiples of {self.sm_step} SMs from {self.partition_sizes()[0]} to "
                f"{self.partition_sizes()[-1]}, e.g. --split 64:{self.num_sms - 64}")
        if decode_sms != remainder and (decode_sms < max(self.sm_min, self.usable_min_sms)
                                        or decode_sms % self.sm_step):
            raise UserError(
                f"{self.name} cannot give a decode partition of {decode_sms} SMs: it must be the "
                f"remaining {remainder} SMs or a multiple of {self.sm_step} below that")

    def check(self, origin: str) -> None:
        """Raise UserError unless the GPU can be split at all."""
        if not self.partition_sizes():
            raise UserError(f"{origin}: {self.num_sms} SMs cannot be split in steps of {self.sm_step} into "
                            f"two partitions of at least {max(self.sm_min, self.usable_min_sms)} SMs")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# Shapes from each model's published config.json on its Hugging Face model card.
MODELS: dict[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256,
                              rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE),
    "llama-3.1-70b": ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256,
                               rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE),
    "qwen2.5-3b": ModelSpec("qwen2.5-3b", 36, 2048, 16, 2, 128, 11008, 151936,
                            rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=True,
                            tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen2.5-14b": ModelSpec("qwen2.5-14b", 48, 5120, 40, 8, 128, 13824, 152064,
                             rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=True,
                             max_position_embeddings=32768),
    # A toy model for CPU runs of the real engine and for tests; not a published model.
    "tiny-llama": ModelSpec("tiny-llama", 2, 64, 4, 2, 16, 128, 256, max_position_embeddings=4096),
}

# Dense (no sparsity) bf16 tensor throughput and HBM bandwidth from NVIDIA's datasheets:
# H100 SXM5 and H200 SXM (Hopper datasheets, 2023/2024), A100 80GB SXM (A100 datasheet,
# 2021), L20 (L20 product brief, 2023). SM step/min from the CUDA driver API docs of
# cuDevSmResourceSplitByCount: multiples of 8, at least 8 on compute capability 9.0;
# multiples of 2, at least 4 on 8.x.
GPUS: dict[str, GPUSpec] = {
    "h100-sxm": GPUSpec("h100-sxm", 132, 8, 8, 989.4e12, 3.35e12, 80 * 2**30, "9.0",
                        "NVIDIA H100 Tensor Core GPU datasheet (SXM5)", usable_min_sms=16),
    "h200": GPUSpec("h200", 132, 8, 8, 989.4e12, 4.8e12, 141 * 10**9, "9.0",
                    "NVIDIA H200 Tensor Core GPU datasheet (SXM)", usable_min_sms=16),
    "a100-80gb": GPUSpec("a100-80gb", 108, 2, 4, 312e12, 2.039e12, 80 * 2**30, "8.0",
                         "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)"),
    "l20": GPUSpec("l20", 92, 2, 4, 119.5e12, 864e9, 48 * 2**30, "8.9",
                   "NVIDIA L20 product brief (48GB GDDR6)"),
}


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise UserError(f"{path}: no such spec file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a spec file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except (ValueError, tomllib.TOMLDecodeError) as e:   # JSONDecodeError, or a number past the digit limit
        raise UserError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object of spec fields, got a {type(data).__name__}")
    return data


# Integers go to numpy and torch as 64-bit values.
_MAX_INT = 2**63 - 1


def _field_value(value: Any, kind: str, origin: str, name: str) -> Any:
    """A spec field's value in its declared type; JSON numbers like 8e10 count as integers."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{origin}: field {name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{origin}: field {name} must be a string, got {value!r}")
        return value
    if kind == "dict | None":
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{origin}: field {name} must be an object, got {value!r}")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not (number and isinstance(value, int)):
            raise UserError(f"{origin}: field {name} must be an integer, got {value!r}")
        if not 0 < value <= _MAX_INT:
            raise UserError(f"{origin}: field {name} must be a positive integer below 2**63, got {value!r}")
        return value
    if not number or not math.isfinite(value) or value <= 0:
        raise UserError(f"{origin}: field {name} must be a positive number, got {value!r}")
    return float(value)


def _build(cls: type, data: dict[str, Any], origin: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise UserError(f"{origin}: unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
    if missing:
        raise UserError(f"{origin}: missing {cls.__name__} field(s): {', '.join(missing)}")
    values = {}
    for name, value in data.items():
        if name in _MAY_BE_ZERO and value == 0 and not isinstance(value, bool):
            values[name] = 0
            continue
        values[name] = _field_value(value, known[name].type, origin, name)
    spec = cls(**values)
    spec.check(origin)
    return spec


_MAY_BE_ZERO = {"usable_min_sms"}


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name, or a path to a JSON/TOML file with ModelSpec fields."""
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".json", ".toml"):
        return _build(ModelSpec, _read_spec_file(path), str(path))
    raise UserError(f"unknown model {name_or_path!r}; known: {', '.join(MODELS)} (or a .json/.toml spec file)")


def resolve_gpu(name_or_path: str) -> GPUSpec:
    """A preset name, or a path to a JSON/TOML file with GPUSpec fields."""
    if name_or_path in GPUS:
        return GPUS[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".json", ".toml"):
        return _build(GPUSpec, _read_spec_file(path), str(path))
    raise UserError(f"unknown GPU {name_or_path!r}; known: {', '.join(GPUS)} (or a .json/.toml spec file)")

"""Load a local Hugging Face safetensors checkpoint (Llama / Qwen2 layout) into `Transformer`.

Hugging Face keeps q/k/v and gate/up as separate matrices; the model fuses them, so each
checkpoint tensor maps to a row range of one model parameter. Every tensor's shape is
checked against the spec, and a mismatch names the tensor.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from nexus.errors import UserError
from nexus.specs import ModelSpec
from real.model import Transformer

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Tensors that some checkpoints carry but that the model recomputes.
_IGNORED = ("rotary_emb.inv_freq",)


def _targets(spec: ModelSpec) -> dict[str, tuple[str, int, int]]:
    """Checkpoint tensor name -> (model parameter name, first row, row count)."""
    h, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    i = spec.intermediate_size
    out: dict[str, tuple[str, int, int]] = {
        "model.embed_tokens.weight": ("embed.weight", 0, spec.vocab_size),
        "model.norm.weight": ("norm.weight", 0, spec.hidden_size),
    }
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = ("lm_head.weight", 0, spec.vocab_size)
    for n in range(spec.num_layers):
        hf, me = f"model.layers.{n}.", f"layers.{n}."
        out[hf + "input_layernorm.weight"] = (me + "input_norm.weight", 0, spec.hidden_size)
        out[hf + "post_attention_layernorm.weight"] = (me + "post_norm.weight", 0, spec.hidden_size)
        kinds = ["weight", "bias"] if spec.attention_bias else ["weight"]
        for kind in kinds:
            out[hf + f"self_attn.q_proj.{kind}"] = (me + f"attn.qkv.{kind}", 0, h)
            out[hf + f"self_attn.k_proj.{kind}"] = (me + f"attn.qkv.{kind}", h, kv)
            out[hf + f"self_attn.v_proj.{kind}"] = (me + f"attn.qkv.{kind}", h + kv, kv)
        out[hf + "self_attn.o_proj.weight"] = (me + "attn.o.weight", 0, spec.hidden_size)
        out[hf + "mlp.gate_proj.weight"] = (me + "mlp.gate_up.weight", 0, i)
        out[hf + "mlp.up_proj.weight"] = (me + "mlp.gate_up.weight", i, i)
        out[hf + "mlp.down_proj.weight"] = (me + "mlp.down.weight", 0, spec.hidden_size)
    return out


@torch.no_grad()
def load_weights(model: Transformer, directory: str | Path) -> None:
    """Copy every tensor of the checkpoint in `directory` into `model`; UserError on any mismatch."""
    from safetensors import safe_open

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"{directory}: no *.safetensors files (expected a Hugging Face checkpoint dir)")
    spec = model.spec
    check_config(spec, directory)
    params = dict(model.named_parameters())
    targets = _targets(spec)
    loaded: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.endswith(_IGNORED) or (spec.tie_word_embeddings and name == "lm_head.weight"):
                    continue
                if name not in targets:
                    raise UserError(f"{file.name}: tensor {name} has no place in model {spec.name} "
                                    f"({_why_unexpected(name, spec)})")
                pname, row, rows = targets[name]
                param = params[pname]
                expected = (rows, *param.shape[1:])
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected:
                    raise UserError(f"{file.name}: tensor {name} has shape {list(shape)}, "
                                    f"model {spec.name} expects {list(expected)}")
                param[row:row + rows].copy_(f.get_tensor(name))
                loaded.add(name)
    missing = [n for n in targets if n not in loaded]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{directory}: checkpoint lacks {', '.join(missing[:3])}{more} "
                        f"needed by model {spec.name}")


def _why_unexpected(name: str, spec: ModelSpec) -> str:
    m = _LAYER.fullmatch(name)
    if m and int(m.group(1)) >= spec.num_layers:
        return f"the spec has {spec.num_layers} layers"
    if "bias" in name and not spec.attention_bias:
        return "the spec has attention_bias = false"
    return "unknown tensor name"


# Hugging Face config.json key -> ModelSpec field.
_CONFIG_KEYS = {
    "num_hidden_layers": "num_layers", "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim", "intermediate_size": "intermediate_size", "vocab_size": "vocab_size",
    "rms_norm_eps": "rms_norm_eps", "tie_word_embeddings": "tie_word_embeddings",
    "max_position_embeddings": "max_position_embeddings",
}


def _config_fields(config: dict) -> dict:
    fields = {ours: config[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in config}
    if "head_dim" not in config and "hidden_size" in config and "num_attention_heads" in config:
        fields["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = config.get("rope_theta", rope.pop("rope_theta", None))
    if theta is not None:
        fields["rope_theta"] = float(theta)
    if rope and rope.get("rope_type", rope.get("type")) not in (None, "default"):
        fields["rope_scaling"] = rope
    if "attention_bias" in config:
        fields["attention_bias"] = bool(config["attention_bias"])
    elif config.get("model_type") == "qwen2":
        fields["attention_bias"] = True  # Qwen2 always has q/k/v biases
    return fields


def _read_config(directory: Path) -> dict | None:
    path = directory / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None


def spec_from_hf_config(directory: str | Path, name: str | None = None) -> ModelSpec:
    """A ModelSpec read from a checkpoint directory's config.json."""
    directory = Path(directory)
    config = _read_config(directory)
    if config is None:
        raise UserError(f"{directory}: no config.json")
    fields = _config_fields(config)
    needed = {"num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size"}
    if needed - fields.keys():
        raise UserError(f"{directory}/config.json lacks {', '.join(sorted(needed - fields.keys()))}")
    fields.setdefault("num_kv_heads", fields["num_heads"])
    return ModelSpec(name=name or directory.name, **fields)


def check_config(spec: ModelSpec, directory: Path) -> None:
    """If the checkpoint has a config.json, its shapes and rope settings must match the spec."""
    config = _read_config(directory)
    if config is None:
        return
    for field, value in _config_fields(config).items():
        ours = getattr(spec, field)
        same = abs(ours - value) <= 1e-9 * abs(value) if isinstance(value, float) else ours == value
        if not same:
            raise UserError(f"{directory}/config.json: {field} is {value!r}, model {spec.name} has {ours!r}")

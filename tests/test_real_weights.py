"""Loading Hugging Face safetensors checkpoints: round trip, and clear errors on mismatches."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from nexus.errors import UserError  # noqa: E402
from real.model import build_model  # noqa: E402
from real.weights import load_weights, spec_from_hf_config  # noqa: E402


def _save_tiny(path, **overrides) -> transformers.LlamaForCausalLM:
    config = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config.update(overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    model.save_pretrained(path)
    return model


def test_round_trip_puts_every_tensor_in_place(tmp_path) -> None:
    hf = _save_tiny(tmp_path)
    spec = spec_from_hf_config(tmp_path)
    assert (spec.num_layers, spec.hidden_size, spec.head_dim, spec.num_kv_heads) == (2, 32, 8, 2)
    model = build_model(spec, "cpu", torch.float32, 256, seed=1)
    load_weights(model, tmp_path)
    sd = hf.state_dict()
    layer = model.layers[1]
    q, k, v = (sd[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(layer.attn.qkv.weight, torch.cat([q, k, v]))
    gate, up = sd["model.layers.1.mlp.gate_proj.weight"], sd["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(layer.mlp.gate_up.weight, torch.cat([gate, up]))
    assert torch.equal(layer.mlp.down.weight, sd["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(model.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(model.embed.weight, sd["model.embed_tokens.weight"])
    assert torch.equal(layer.post_norm.weight, sd["model.layers.1.post_attention_layernorm.weight"])


def test_shape_mismatch_names_the_tensor(tmp_path) -> None:
    _save_tiny(tmp_path, intermediate_size=96)
    spec = dataclasses.replace(spec_from_hf_config(tmp_path), intermediate_size=64)
    (tmp_path / "config.json").unlink()  # only the tensors can tell now
    model = build_model(spec, "cpu", torch.float32, 256)
    with pytest.raises(UserError, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight has shape"):
        load_weights(model, tmp_path)


def test_config_mismatch_is_reported(tmp_path) -> None:
    _save_tiny(tmp_path)
    spec = dataclasses.replace(spec_from_hf_config(tmp_path), num_kv_heads=4)
    model = build_model(spec, "cpu", torch.float32, 256)
    with pytest.raises(UserError, match="num_kv_heads is 2"):
        load_weights(model, tmp_path)


def test_missing_and_extra_tensors(tmp_path) -> None:
    _save_tiny(tmp_path)
    spec = spec_from_hf_config(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(file)
    (tmp_path / "config.json").unlink()

    del tensors["model.layers.1.self_attn.v_proj.weight"]
    safetensors_torch.save_file(tensors, file)
    with pytest.raises(UserError, match=r"lacks model\.layers\.1\.self_attn\.v_proj\.weight"):
        load_weights(build_model(spec, "cpu", torch.float32, 256), tmp_path)

    fewer_layers = dataclasses.replace(spec, num_layers=1)
    with pytest.raises(UserError, match="the spec has 1 layers"):
        load_weights(build_model(fewer_layers, "cpu", torch.float32, 256), tmp_path)


def test_empty_dir_and_bad_config(tmp_path) -> None:
    with pytest.raises(UserError, match="no \\*.safetensors"):
        load_weights(build_model(spec_from_hf_config(_config_dir(tmp_path)), "cpu", torch.float32, 64), tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        spec_from_hf_config(tmp_path / "bad")


def _config_dir(tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 64, "vocab_size": 128}))
    return d

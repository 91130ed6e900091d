"""Bad checkpoints and configs give clear errors naming the problem (no torch needed)."""

import json
import shutil

import equinox as eqx
import jax
import numpy as np
import pytest

import converters
import jaxinterp as ji
from converters._common import read_safetensors, write_safetensors

from .helpers import tiny_config

GPT2 = tiny_config(
    positional="learned", norm="ln", act_fn="gelu_new", gated_mlp=False, n_kv_heads=4,
    tied_embeddings=True,
)  # fmt: skip


@pytest.fixture
def gpt2_dir(tmp_path):
    model = ji.init_transformer(GPT2, jax.random.key(0))
    d = tmp_path / "gpt2"
    converters.save_pretrained(model, d, architecture="GPT2LMHeadModel")
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d, fn):
    tensors = {
        k: np.array(v) for k, v in read_safetensors(d / "model.safetensors").items()
    }
    fn(tensors)
    write_safetensors(d / "model.safetensors", tensors)


def test_round_trip_without_torch(gpt2_dir):
    model = converters.from_pretrained(gpt2_dir)
    assert model.cfg == GPT2


def test_unknown_architecture(gpt2_dir):
    _edit_config(gpt2_dir, architectures=["FalconForCausalLM"])
    with pytest.raises(
        converters.ConversionError, match="unsupported architecture 'Falcon"
    ):
        converters.from_pretrained(gpt2_dir)


def test_unsupported_config_value_names_the_field(gpt2_dir):
    _edit_config(gpt2_dir, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(
        converters.ConversionError, match="scale_attn_by_inverse_layer_idx"
    ):
        converters.from_pretrained(gpt2_dir)


def test_unknown_config_field_names_the_field(gpt2_dir):
    _edit_config(gpt2_dir, attn_logit_softcapping=30.0)
    with pytest.raises(converters.ConversionError, match="attn_logit_softcapping"):
        converters.from_pretrained(gpt2_dir)


def test_llama_rope_scaling_of_unknown_type(tmp_path):
    model = ji.init_transformer(tiny_config(), jax.random.key(0))
    converters.save_pretrained(model, tmp_path, architecture="LlamaForCausalLM")
    _edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(converters.ConversionError, match="rope_type 'yarn'"):
        converters.from_pretrained(tmp_path)


def test_missing_key(gpt2_dir):
    _edit_tensors(gpt2_dir, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(
        converters.ConversionError, match=r"missing keys.*h\.1\.mlp\.c_fc\.bias"
    ):
        converters.from_pretrained(gpt2_dir)


def test_unexpected_key(gpt2_dir):
    _edit_tensors(
        gpt2_dir, lambda t: t.update({"transformer.h.0.extra": np.zeros(3, "f4")})
    )
    with pytest.raises(
        converters.ConversionError, match=r"unexpected keys.*h\.0\.extra"
    ):
        converters.from_pretrained(gpt2_dir)


def test_wrong_shape(gpt2_dir):
    def shrink(t):
        t["transformer.h.0.mlp.c_fc.weight"] = t["transformer.h.0.mlp.c_fc.weight"][
            :, :10
        ]

    _edit_tensors(gpt2_dir, shrink)
    with pytest.raises(
        converters.ConversionError, match=r"h\.0\.mlp\.c_fc\.weight.*expected"
    ):
        converters.from_pretrained(gpt2_dir)


def test_truncated_safetensors(gpt2_dir):
    path = gpt2_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(converters.ConversionError, match="truncated"):
        converters.from_pretrained(gpt2_dir)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(converters.ConversionError, match="corrupt safetensors header"):
        converters.from_pretrained(gpt2_dir)


def test_no_weights_at_all(gpt2_dir):
    (gpt2_dir / "model.safetensors").unlink()
    with pytest.raises(converters.ConversionError, match="no model.safetensors"):
        converters.from_pretrained(gpt2_dir)


def test_sharded_checkpoint_loads_like_a_single_file(gpt2_dir, tmp_path):
    tensors = read_safetensors(gpt2_dir / "model.safetensors")
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(gpt2_dir / "config.json", d / "config.json")
    keys = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, part in shards.items():
        write_safetensors(d / name, {k: np.array(tensors[k]) for k in part})
        weight_map.update({k: name for k in part})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    a, b = converters.from_pretrained(gpt2_dir), converters.from_pretrained(d)
    for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_refuses_parameters_the_format_cannot_hold(tmp_path):
    model = ji.process.fold_ln(ji.init_transformer(tiny_config(), jax.random.key(0)))
    model = eqx.tree_at(lambda m: m.blocks.mlp.b_in, model, model.blocks.mlp.b_in + 1)
    with pytest.raises(converters.ConversionError, match="b_in is nonzero"):
        converters.save_pretrained(model, tmp_path, architecture="LlamaForCausalLM")


@pytest.mark.hf
def test_pytorch_bin_is_read_with_weights_only(gpt2_dir):
    torch = pytest.importorskip("torch")
    tensors = read_safetensors(gpt2_dir / "model.safetensors")
    state = {k: torch.tensor(np.array(v)) for k, v in tensors.items()}
    torch.save(state, gpt2_dir / "pytorch_model.bin")
    (gpt2_dir / "model.safetensors").unlink()
    model = converters.from_pretrained(gpt2_dir)
    np.testing.assert_array_equal(
        np.asarray(model.embed.W_E), np.asarray(tensors["transformer.wte.weight"])
    )
    # a pickle that is not plain tensors is refused by weights_only loading
    torch.save({"x": object()}, gpt2_dir / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        converters.from_pretrained(gpt2_dir)

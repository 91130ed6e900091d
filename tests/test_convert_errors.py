"""Bad checkpoints and configs give clear errors naming the problem (no torch needed)."""

import json
import re
import shutil
import struct

import equinox as eqx
import jax
import ml_dtypes
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


# ---------------------------------------------------------------------------------------------
# Bad input never yields a wrong answer: every class of bad input below raises one error that
# names the file and the field / tensor, instead of a KeyError, a JAX or einops shape error,
# or a silently wrong model.


def _rewrite_config(d, changes=(), drop=()):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(dict(changes))
    for key in drop:
        cfg.pop(key)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def llama_dir(tmp_path):
    model = ji.init_transformer(tiny_config(), jax.random.key(0))
    d = tmp_path / "llama"
    converters.save_pretrained(model, d, architecture="LlamaForCausalLM")
    return d


# --- 1. config problems: one ConversionError naming config.json and the field -----------------

_LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
_LLAMA3 |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}


@pytest.mark.parametrize(
    "changes,drop,match",
    [
        ({}, ("n_layer",), "required config field 'n_layer' is missing"),
        ({"n_head": 0}, (), "'n_head' must be >= 1, got 0"),
        ({"vocab_size": -5}, (), "'vocab_size' must be >= 1, got -5"),
        ({"n_embd": 64.0}, (), "'n_embd' must be an integer, got 64.0"),
        ({"n_layer": True}, (), "'n_layer' must be an integer, got True"),
        ({"n_positions": None}, (), "'n_positions' is null"),
        ({"n_inner": 0}, (), "'n_inner' must be >= 1, got 0"),
        ({"n_head": 5}, (), "'n_embd' = 64 is not a multiple of 'n_head' = 5"),
        (
            {"layer_norm_epsilon": 0.0},
            (),
            "'layer_norm_epsilon' must be finite and pos",
        ),
        (
            {"layer_norm_epsilon": float("nan")},
            (),
            "'layer_norm_epsilon' must be finite",
        ),
        ({"layer_norm_epsilon": "1e-5"}, (), "'layer_norm_epsilon' must be a number"),
        (
            {"tie_word_embeddings": "false"},
            (),
            "'tie_word_embeddings' must be true or f",
        ),
        ({"architectures": "GPT2LMHeadModel"}, (), "'architectures' must be a list"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_bad_gpt2_config_names_file_and_field(gpt2_dir, changes, drop, match):
    _rewrite_config(gpt2_dir, changes, drop)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir)
    assert str(e.value).startswith(f"{gpt2_dir / 'config.json'}: ")
    assert match in str(e.value)


@pytest.mark.parametrize(
    "changes,drop,match",
    [
        # a partial llama3 rope_parameters (no factor)
        (
            {"rope_parameters": {k: v for k, v in _LLAMA3.items() if k != "factor"}},
            (),
            "required config field 'rope_parameters.factor' is missing",
        ),
        (
            {"rope_parameters": _LLAMA3 | {"factor": 0}},
            (),
            "'rope_parameters.factor' mu",
        ),
        (
            {
                "rope_parameters": _LLAMA3
                | {"low_freq_factor": 4.0, "high_freq_factor": 1}
            },
            (),
            "high_freq_factor=1.0 must be greater than low_freq_factor=4.0",
        ),
        # transformers 4 style, with the legacy `type` key and no high_freq_factor
        (
            {"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}},
            ("rope_parameters",),
            "required config field 'rope_scaling.high_freq_factor' is missing",
        ),
        (
            {"rope_scaling": "llama3"},
            ("rope_parameters",),
            "'rope_scaling' must be an o",
        ),
        (
            {"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}},
            (),
            "'rope_parameters.rope_theta' must be finite and positive, got -1.0",
        ),
        (
            {"rope_scaling": _LLAMA3},
            (),
            "'rope_parameters' and 'rope_scaling' are both given and differ",
        ),
        ({"num_key_value_heads": 0}, (), "'num_key_value_heads' must be >= 1, got 0"),
        ({"num_key_value_heads": 3}, (), "n_heads=4 is not a multiple of n_kv_heads=3"),
        ({"head_dim": 0}, (), "'head_dim' must be >= 1, got 0"),
        ({}, ("max_position_embeddings",), "'max_position_embeddings' is missing"),
        ({"rms_norm_eps": -1e-6}, (), "'rms_norm_eps' must be finite and positive"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_bad_llama_config_names_file_and_field(llama_dir, changes, drop, match):
    _rewrite_config(llama_dir, changes, drop)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(llama_dir)
    assert str(e.value).startswith(f"{llama_dir / 'config.json'}: ")
    assert match in str(e.value)


def test_llama3_scaling_defaults_like_transformers(llama_dir):
    # original_max_position_embeddings absent: transformers uses max_position_embeddings
    _rewrite_config(llama_dir, {"rope_parameters": _LLAMA3})
    cfg = converters.from_pretrained(llama_dir).cfg
    assert cfg.rope_scaling == ji.Llama3RopeScaling(8.0, 1.0, 4.0, cfg.n_ctx)


_GPTJ = {
    "architectures": ["GPTJForCausalLM"], "n_embd": 64, "n_layer": 2, "n_head": 4,
    "n_positions": 32, "vocab_size": 97, "rotary_dim": 8,
}  # fmt: skip
_NEOX = {
    "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 97,
    "max_position_embeddings": 32,
}  # fmt: skip


@pytest.mark.parametrize(
    "config,match",
    [
        # HF GPT-J rotates nothing for rotary_dim=0; null means whole heads
        (_GPTJ | {"rotary_dim": 0}, "'rotary_dim' must be >= 1, got 0"),
        (_GPTJ | {"n_head": 0}, "'n_head' must be >= 1, got 0"),
        (_NEOX | {"rotary_pct": 1.5}, "'rotary_pct' must be in (0, 1], got 1.5"),
        (_NEOX | {"rotary_pct": 0.0}, "'rotary_pct' must be finite and positive"),
        (_NEOX | {"rotary_emb_base": "1e4"}, "'rotary_emb_base' must be a number"),
        (_NEOX | {"num_attention_heads": 5}, "'hidden_size' = 64 is not a multiple of"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_bad_config_dict_names_the_field(config, match):
    with pytest.raises(converters.ConversionError) as e:
        converters.from_hf_dict(config, {}, source="my/config.json")
    assert str(e.value).startswith("my/config.json: ") and match in str(e.value)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"d_model": 0}, "TransformerConfig.d_model must be positive, got 0"),
        ({"n_layers": -1}, "TransformerConfig.n_layers must be positive, got -1"),
        ({"d_vocab": True}, "TransformerConfig.d_vocab must be an integer, got True"),
        ({"n_ctx": 0}, "TransformerConfig.n_ctx must be positive"),
        ({"n_kv_heads": 0}, "TransformerConfig.n_kv_heads must be positive"),
        ({"rotary_dim": -2}, "TransformerConfig.rotary_dim must be >= 0"),
        ({"eps": 0.0}, "TransformerConfig.eps must be finite and positive, got 0.0"),
        ({"eps": -1e-5}, "TransformerConfig.eps must be finite and positive"),
        ({"eps": float("nan")}, "TransformerConfig.eps must be finite and positive"),
        ({"rotary_base": 0.0}, "TransformerConfig.rotary_base must be finite and pos"),
        ({"rotary_base": float("inf")}, "TransformerConfig.rotary_base must be finite"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_transformer_config_rejects_impossible_values(overrides, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "field,value",
    [
        ("d_head", 16.0),
        ("d_mlp", "96"),
        ("tied_embeddings", "yes"),
        ("rope_scaling", {"factor": 8.0}),
    ],
)
def test_transformer_config_rejects_wrongly_typed_values(field, value):
    # TransformerConfig's own check raises ValueError; under this suite's jaxtyping import
    # hook, beartype's check of the annotations may fire first (a TypeError). Both name it.
    with pytest.raises((ValueError, TypeError), match=field):
        tiny_config(**{field: value})


def test_transformer_config_normalises_numbers():
    cfg = tiny_config(eps=np.float64(0.5), rotary_base=np.float64(500))
    assert type(cfg.eps) is float and type(cfg.rotary_base) is float
    assert cfg == tiny_config(eps=0.5, rotary_base=500.0)


def test_llama3_scaling_and_from_dict_reject_bad_values():
    with pytest.raises(ValueError, match="Llama3RopeScaling.factor must be finite"):
        ji.Llama3RopeScaling(0.0, 1.0, 4.0, 16)
    with pytest.raises(ValueError, match="high_freq_factor=1.0 must be greater"):
        ji.Llama3RopeScaling(8.0, 1.0, 1.0, 16)
    with pytest.raises(ValueError, match="original_max_position must be positive"):
        ji.Llama3RopeScaling(8.0, 1.0, 4.0, 0)
    d = tiny_config().to_dict()
    with pytest.raises(
        ValueError, match=r"missing TransformerConfig fields: \['eps'\]"
    ):
        ji.TransformerConfig.from_dict({k: v for k, v in d.items() if k != "eps"})
    with pytest.raises(ValueError, match="rope_scaling must be a dict with keys"):
        ji.TransformerConfig.from_dict(d | {"rope_scaling": [8.0, 1.0, 4.0, 16]})


# --- 2. wrongly shaped tensors: named (key, expected vs got) before any reshape ---------------


@pytest.mark.parametrize(
    "key,shape,match",
    [
        # before: einops errors ("shape mismatch, can't divide axis of length 190 in
        # chunks of 3") or a zip length error, neither naming the key
        (
            "transformer.h.0.attn.c_attn.weight",
            (64, 190),
            "(64, 190), expected (64, 192)",
        ),
        ("transformer.h.1.attn.c_attn.bias", (190,), "shape (190,), expected (192,)"),
        ("transformer.h.0.attn.c_attn.weight", (64, 3, 64), "expected (64, 192)"),
        ("transformer.h.0.attn.c_proj.weight", (64,), "shape (64,), expected (64, 64)"),
        ("transformer.wte.weight", (97, 64, 1), "shape (97, 64, 1), expected (97, 64)"),
    ],
    ids=lambda x: str(x)[:40],
)
def test_misshapen_tensor_is_named_before_reshaping(gpt2_dir, key, shape, match):
    _edit_tensors(gpt2_dir, lambda t: t.update({key: np.zeros(shape, np.float32)}))
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir)
    assert str(e.value).startswith(key + ": ") and match in str(e.value)


def test_misshapen_gqa_projection_is_named(llama_dir):
    key = "model.layers.1.self_attn.k_proj.weight"
    _edit_tensors(llama_dir, lambda t: t.update({key: np.zeros((64, 32), np.float32)}))
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(llama_dir)
    assert str(e.value).startswith(f"{key}: shape (64, 32), expected (32, 64)")


# --- 3. malformed containers: one error naming the file ---------------------------------------


def _raw_safetensors(path, header, data=b""):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _entry(dtype="F32", shape=(4,), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "header,data,match",
    [
        ([1, 2], b"", "corrupt safetensors header (a JSON list, not an object)"),
        ("w", b"", "corrupt safetensors header (a JSON str, not an object)"),
        ({"w": 3}, b"", "bad header entry for 'w' (not an object)"),
        ({"w": {"dtype": "F32", "shape": [4]}}, b"", "(no 'data_offsets')"),
        ({"w": _entry("F8_E4M3", (4,), (0, 4))}, bytes(4), "unknown dtype 'F8_E4M3'"),
        (
            {"w": _entry(shape=(-1, -4))},
            bytes(16),
            "shape must be a list of non-negative",
        ),
        ({"w": _entry(shape=(2.5, 1.6))}, bytes(16), "shape must be a list of non-neg"),
        (
            {"w": _entry(shape=(True, 4))},
            bytes(16),
            "shape must be a list of non-negat",
        ),
        (
            {"w": _entry(shape=(4,), offsets=(-4, 12))},
            bytes(12),
            "data_offsets must be",
        ),
        ({"w": _entry(offsets=(0, 16, 32))}, bytes(16), "data_offsets must be two non"),
        ({"w": _entry(offsets=(0, 12))}, bytes(12), "12 bytes for shape (4,) of F32"),
        (
            {"a": _entry(), "b": _entry(offsets=(8, 24))},
            bytes(24),
            "bad data_offsets for 'b': [8, 24] overlaps the previous tensor",
        ),
        (
            {"a": _entry(), "b": _entry(offsets=(20, 36))},
            bytes(36),
            "bad data_offsets for 'b': [20, 36] leaves a gap after byte 16",
        ),
        ({"w": _entry()}, bytes(8), "truncated: tensors end at byte"),
        ({"w": _entry()}, bytes(20), "corrupt: 4 bytes after the last tensor"),
    ],
    ids=lambda x: str(x)[:40],
)
def test_malformed_safetensors_header_names_the_file(tmp_path, header, data, match):
    path = tmp_path / "model.safetensors"
    _raw_safetensors(path, header, data)
    with pytest.raises(converters.ConversionError) as e:
        read_safetensors(path)
    assert str(e.value).startswith(f"{path}: ") and match in str(e.value)


def test_negative_offset_no_longer_reads_the_header(tmp_path):
    # before: this mapped the last 4 header bytes as the weight, silently
    path = tmp_path / "model.safetensors"
    _raw_safetensors(path, {"w": _entry(shape=(1,), offsets=(-4, 0))})
    with pytest.raises(converters.ConversionError, match="data_offsets must be two"):
        read_safetensors(path)


def _shard(gpt2_dir, tmp_path):
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(gpt2_dir / "config.json", d / "config.json")
    shutil.copy(gpt2_dir / "model.safetensors", d / "model-00001-of-00001.safetensors")
    keys = read_safetensors(d / "model-00001-of-00001.safetensors")
    return d, {k: "model-00001-of-00001.safetensors" for k in keys}


@pytest.mark.parametrize(
    "index,match",
    [
        (b'{"metadata": {}}', "'weight_map' must be an object mapping tensor names"),
        (b'{"weight_map": ["a"]}', "'weight_map' must be an object mapping tensor"),
        (b'{"weight_map": {"a": 3}}', "'weight_map' must be an object mapping tensor"),
        (b'{"weight_map": ', "not valid JSON"),
        (b"[]", "expected a JSON object, got a list"),
        (
            b'{"weight_map": {"transformer.wte.weight": "gone.safetensors"}}',
            "shard 'gone",
        ),
    ],
    ids=lambda x: str(x)[:30],
)
def test_malformed_index_names_the_file(gpt2_dir, tmp_path, index, match):
    d, _ = _shard(gpt2_dir, tmp_path)
    (d / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(d)
    index_path = str(d / "model.safetensors.index.json")
    assert str(e.value).startswith(index_path + ": ") and match in str(e.value)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('"GPT2LMHeadModel"', "expected a JSON object, got a str"),
    ],
)
def test_config_json_that_is_not_an_object_names_the_file(gpt2_dir, text, match):
    (gpt2_dir / "config.json").write_text(text)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir)
    assert str(e.value).startswith(str(gpt2_dir / "config.json") + ": ")
    assert match in str(e.value)


@pytest.mark.hf
@pytest.mark.parametrize(
    "state,match",
    [
        ("list", "expected a state dict (tensor name -> tensor), got a list"),
        ("ints", "not a state dict: entry 'a' is a int, not a tensor"),
        ("nested", "not a state dict: entry 'model' is a dict, not a tensor"),
        ("truncated", "cannot be read with torch.load(weights_only=True)"),
        ("int64", "transformer.h.0.ln_1.weight: dtype int64 is not a floating dtype"),
    ],
)
def test_pytorch_bin_that_is_not_a_float_state_dict(gpt2_dir, state, match):
    torch = pytest.importorskip("torch")
    tensors = {
        k: torch.tensor(np.array(v))
        for k, v in read_safetensors(gpt2_dir / "model.safetensors").items()
    }
    (gpt2_dir / "model.safetensors").unlink()
    path = gpt2_dir / "pytorch_model.bin"
    if state == "list":
        torch.save(list(tensors.values()), path)
    elif state == "ints":
        torch.save({"a": 1}, path)
    elif state == "nested":
        torch.save({"model": tensors}, path)
    elif state == "truncated":
        torch.save(tensors, path)
        path.write_bytes(path.read_bytes()[:1000])
    else:
        tensors["transformer.h.0.ln_1.weight"] = torch.ones(64, dtype=torch.int64)
        torch.save(tensors, path)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir)
    assert match in str(e.value)
    if state != "int64":
        assert str(e.value).startswith(f"{path}: ")


def _tokenizer_dir(tmp_path):
    from tokenizers import Tokenizer, models

    d = tmp_path / "tok"
    d.mkdir()
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    (d / "tokenizer.json").write_text(tok.to_str())
    return d


@pytest.mark.parametrize(
    "file,content,match",
    [
        ("tokenizer.json", "truncated", "not a valid tokenizer.json"),
        ("tokenizer.json", "{}", "not a valid tokenizer.json"),
        ("tokenizer.json", "[]", "not a valid tokenizer.json"),
        ("tokenizer_config.json", "{oops", "not valid JSON"),
        ("tokenizer_config.json", "[]", "expected a JSON object, got a list"),
        ("config.json", '"x"', "expected a JSON object, got a str"),
    ],
)
def test_bad_tokenizer_files_name_the_file(tmp_path, file, content, match):
    from converters.tokenizer import TextTokenizer

    d = _tokenizer_dir(tmp_path)
    path = d / file
    if content == "truncated":
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
    else:
        path.write_text(content)
    with pytest.raises(ValueError) as e:
        TextTokenizer.from_hf(d)
    assert str(e.value).startswith(f"{path}: ") and match in str(e.value)


# --- 4. only floating weights and dtypes --------------------------------------------------------


@pytest.mark.parametrize(
    "key,dtype",
    [
        ("transformer.h.1.ln_1.weight", np.int32),  # before: cast to float silently
        ("transformer.wte.weight", np.int8),  # before: the whole model became int8
        ("transformer.h.0.mlp.c_fc.bias", np.bool_),
    ],
)
def test_integer_checkpoint_tensor_is_named(gpt2_dir, key, dtype):
    _edit_tensors(gpt2_dir, lambda t: t.update({key: t[key].astype(dtype)}))
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir)
    want = f"{key}: dtype {np.dtype(dtype)} is not a floating dtype"
    assert str(e.value).startswith(want)


@pytest.mark.parametrize(
    "dtype,match",
    [
        ("int8", "requested dtype int8 is not a floating dtype"),
        (np.int32, "requested dtype int32 is not a floating dtype"),
        ("bool", "requested dtype bool is not a floating dtype"),
        ("float8_e4m3fn", "requested dtype float8_e4m3fn is not a floating dtype"),
        ("complex64", "requested dtype complex64 is not a floating dtype"),
        ("no-such-dtype", "requested dtype 'no-such-dtype' is not a dtype"),
    ],
)
def test_non_float_requested_dtype_is_refused(gpt2_dir, dtype, match):
    for load in (converters.load, converters.from_pretrained):
        with pytest.raises(converters.ConversionError, match=re.escape(match)):
            load(gpt2_dir, dtype=dtype)


# --- 5. non-finite weights are named at conversion ----------------------------------------------


def test_nan_and_inf_weights_are_named(gpt2_dir):
    def poison(t):
        t["transformer.h.1.mlp.c_fc.weight"][3, 5] = np.nan
        t["transformer.ln_f.bias"][0] = -np.inf
        t["transformer.h.0.attn.c_attn.weight"][0, 130] = np.inf  # a V column

    _edit_tensors(gpt2_dir, poison)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir)
    msg = str(e.value)
    assert msg.startswith("checkpoint has non-finite weights (NaN/Inf): ")
    assert "transformer.h.1.mlp.c_fc.weight (1 NaN, 0 Inf of 6144)" in msg
    assert "transformer.ln_f.bias (0 NaN, 1 Inf of 64)" in msg
    assert "transformer.h.0.attn.c_attn.weight (0 NaN, 1 Inf" in msg
    assert "h.0.mlp" not in msg and "h.1.attn" not in msg


def test_nan_in_bfloat16_checkpoint_is_named(gpt2_dir):
    def to_bf16(t):
        for k in t:
            t[k] = t[k].astype(ml_dtypes.bfloat16)
        t["transformer.wpe.weight"][7, 1] = np.nan

    _edit_tensors(gpt2_dir, to_bf16)
    with pytest.raises(
        converters.ConversionError, match=r"transformer\.wpe\.weight \(1 NaN"
    ):
        converters.from_pretrained(gpt2_dir)


def test_weight_that_overflows_the_requested_dtype_is_named(gpt2_dir):
    key = "transformer.h.0.mlp.c_proj.weight"
    _edit_tensors(gpt2_dir, lambda t: t[key].__setitem__((0, 0), 1e6))
    converters.from_pretrained(gpt2_dir)  # fine in float32
    with pytest.raises(converters.ConversionError) as e:
        converters.from_pretrained(gpt2_dir, dtype="float16")
    assert f"{key} (finite, but overflows float16: max |w| = 1000000.0)" in str(e.value)

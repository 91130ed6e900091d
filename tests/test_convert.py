"""Golden tests: tiny random HF models -> converter -> logits and every tap with an HF
equivalent, at float32 and highest matmul precision.

Tolerances: 1e-5 for taps of the first layer's attention input (one module from a matched
input), 1e-4 for everything composed of several modules (later layers, logits).
"""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
import jaxinterp as ji
from jaxinterp import taps as tapslib

from .helpers import max_abs, randomize_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

V = 97


def _variants():
    T = transformers
    llama = dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
        vocab_size=V, head_dim=16, max_position_embeddings=64,
    )  # fmt: skip
    neox = dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
        vocab_size=V, max_position_embeddings=64,
    )  # fmt: skip
    gpt = dict(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=V,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return {
        "gpt2": T.GPT2Config(**gpt),
        "gpt2-untied-relu": T.GPT2Config(
            **gpt, tie_word_embeddings=False, activation_function="relu"
        ),
        "neox-parallel": T.GPTNeoXConfig(**neox),
        "neox-serial-half-rotary": T.GPTNeoXConfig(
            **neox, use_parallel_residual=False,
            rope_parameters={
                "rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5,
            },
        ),
        "neox-tied-nobias": T.GPTNeoXConfig(**neox, tie_word_embeddings=True, attention_bias=False),
        "gptj": T.GPTJConfig(**gpt, rotary_dim=8),
        "gptj-full-rotary": T.GPTJConfig(**gpt, rotary_dim=16),
        "llama-gqa": T.LlamaConfig(**llama, num_key_value_heads=2),
        "llama-mqa": T.LlamaConfig(**llama, num_key_value_heads=1),
        "llama-mha-tied": T.LlamaConfig(**llama, num_key_value_heads=4, tie_word_embeddings=True),
        "llama3-rope-scaling": T.LlamaConfig(
            **llama, num_key_value_heads=2,
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        "llama-attention-bias": T.LlamaConfig(**llama, num_key_value_heads=2, attention_bias=True),
        "qwen2-gqa-bias": T.Qwen2Config(**llama, num_key_value_heads=2),
    }  # fmt: skip


VARIANTS = list(_variants())


def _module_hooks(arch: str, layer: int) -> dict[str, tuple[str, str]]:
    """tap suffix -> (HF module path, "in" | "out") for one layer."""
    if arch == "GPT2LMHeadModel":
        p = f"transformer.h.{layer}."
        return {
            "ln1.hook_normalized": (p + "ln_1", "out"),
            "ln2.hook_normalized": (p + "ln_2", "out"),
            "hook_attn_out": (p + "attn", "out"),
            "hook_mlp_out": (p + "mlp", "out"),
            "mlp.hook_pre": (p + "mlp.c_fc", "out"),
            "mlp.hook_post": (p + "mlp.c_proj", "in"),
            "attn.hook_z": (p + "attn.c_proj", "in"),
            "qkv": (p + "attn.c_attn", "out"),
            "hook_resid_post": (p[:-1], "out"),
        }
    if arch == "GPTNeoXForCausalLM":
        p = f"gpt_neox.layers.{layer}."
        return {
            "ln1.hook_normalized": (p + "input_layernorm", "out"),
            "ln2.hook_normalized": (p + "post_attention_layernorm", "out"),
            "hook_attn_out": (p + "attention", "out"),
            "hook_mlp_out": (p + "mlp", "out"),
            "mlp.hook_pre": (p + "mlp.dense_h_to_4h", "out"),
            "mlp.hook_post": (p + "mlp.dense_4h_to_h", "in"),
            "attn.hook_z": (p + "attention.dense", "in"),
            "qkv": (p + "attention.query_key_value", "out"),
            "hook_resid_post": (p[:-1], "out"),
        }
    if arch == "GPTJForCausalLM":
        p = f"transformer.h.{layer}."
        return {
            "ln1.hook_normalized": (p + "ln_1", "out"),
            "ln2.hook_normalized": (p + "ln_1", "out"),
            "hook_attn_out": (p + "attn", "out"),
            "hook_mlp_out": (p + "mlp", "out"),
            "mlp.hook_pre": (p + "mlp.fc_in", "out"),
            "mlp.hook_post": (p + "mlp.fc_out", "in"),
            "attn.hook_z": (p + "attn.out_proj", "in"),
            "attn.hook_q": (p + "attn.q_proj", "out"),
            "attn.hook_k": (p + "attn.k_proj", "out"),
            "attn.hook_v": (p + "attn.v_proj", "out"),
            "hook_resid_post": (p[:-1], "out"),
        }
    p = f"model.layers.{layer}."
    return {
        "ln1.hook_normalized": (p + "input_layernorm", "out"),
        "ln2.hook_normalized": (p + "post_attention_layernorm", "out"),
        "hook_attn_out": (p + "self_attn", "out"),
        "hook_mlp_out": (p + "mlp", "out"),
        "mlp.hook_pre": (p + "mlp.gate_proj", "out"),
        "mlp.hook_pre_linear": (p + "mlp.up_proj", "out"),
        "mlp.hook_post": (p + "mlp.down_proj", "in"),
        "attn.hook_z": (p + "self_attn.o_proj", "in"),
        "attn.hook_q": (p + "self_attn.q_proj", "out"),
        "attn.hook_k": (p + "self_attn.k_proj", "out"),
        "attn.hook_v": (p + "self_attn.v_proj", "out"),
        "hook_resid_post": (p[:-1], "out"),
    }


def _embed_module(arch: str) -> str:
    return {
        "GPT2LMHeadModel": "transformer.wte",
        "GPTNeoXForCausalLM": "gpt_neox.embed_in",
        "GPTJForCausalLM": "transformer.wte",
    }.get(arch, "model.embed_tokens")


def _hf_reference(
    hf_model, arch: str, tokens: np.ndarray, cfg, **hf_kwargs
) -> tuple[np.ndarray, dict]:
    """Runs HF with forward hooks; returns logits and TL-named reference taps."""
    raw: dict[str, np.ndarray] = {}
    handles = []
    modules = dict(hf_model.named_modules())

    def hook(name, where):
        def fn(module, args, output):
            value = args[0] if where == "in" else output
            if isinstance(value, tuple):
                value = value[0]
            raw[name] = value.detach().numpy()

        return fn

    plan = {"hook_embed": (_embed_module(arch), "out")}
    if arch == "GPT2LMHeadModel":
        plan["hook_pos_embed"] = ("transformer.wpe", "out")
    for layer in range(cfg.n_layers):
        for suffix, spec in _module_hooks(arch, layer).items():
            plan[f"blocks.{layer}.{suffix}"] = spec
    for name, (path, where) in plan.items():
        handles.append(modules[path].register_forward_hook(hook(name, where)))
    with torch.no_grad():
        out = hf_model(
            torch.tensor(tokens),
            output_hidden_states=True,
            output_attentions=True,
            **hf_kwargs,
        )
    for h in handles:
        h.remove()

    h, kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    ref = {}
    for name, value in raw.items():
        if name.endswith(".qkv"):
            base = name[: -len("qkv")]
            if arch == "GPT2LMHeadModel":
                q, k, v = np.split(value, 3, axis=-1)
            else:  # NeoX: per-head interleaved (head, [q|k|v], d_head)
                per_head = value.reshape(*value.shape[:-1], h, 3, d)
                q, k, v = (
                    per_head[..., i, :].reshape(*value.shape[:-1], h * d)
                    for i in range(3)
                )
            for suffix, x in zip(
                ("hook_q", "hook_k", "hook_v"), (q, k, v), strict=True
            ):
                ref[base + "attn." + suffix] = x
            continue
        ref[name] = value
    for name, value in list(ref.items()):
        if name.endswith(("attn.hook_z", "attn.hook_q")):
            ref[name] = value.reshape(*value.shape[:-1], h, d)
        elif name.endswith(("attn.hook_k", "attn.hook_v")):
            ref[name] = value.reshape(*value.shape[:-1], kv, d)
    hidden = [x.numpy() for x in out.hidden_states]
    for layer in range(cfg.n_layers):
        ref[f"blocks.{layer}.hook_resid_pre"] = hidden[layer]
        ref[f"blocks.{layer}.attn.hook_pattern"] = out.attentions[layer].numpy()
        if not cfg.parallel_residual:
            ref[f"blocks.{layer}.hook_resid_mid"] = (
                hidden[layer] + ref[f"blocks.{layer}.hook_attn_out"]
            )
    ref["ln_final.hook_normalized"] = hidden[-1]
    return out.logits.numpy(), ref


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request, tmp_path_factory):
    """(variant, HF model, our model, tokens, HF directory) for one variant."""
    torch.manual_seed(0)
    config = _variants()[request.param]
    hf_model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    randomize_hf(hf_model.eval(), seed=1)
    if getattr(config, "tie_word_embeddings", False):
        hf_model.tie_weights()
    d = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(d)
    model = converters.from_pretrained(d)
    tokens = np.random.default_rng(0).integers(0, V, size=(2, 12))
    return request.param, hf_model, model, tokens, d


def test_logits_and_every_tap_match_hf(converted):
    variant, hf_model, model, tokens, _ = converted
    arch = hf_model.config.architectures[0]
    cfg = model.cfg
    ref_logits, ref = _hf_reference(hf_model, arch, tokens, cfg)
    logits, cache = ji.run(model, tokens, capture=ref.keys())
    assert max_abs(logits, ref_logits) < 1e-4, variant
    simple = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1")
    simple += ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v")
    for name, expected in ref.items():
        tol = 1e-5 if name.startswith(simple) else 1e-4
        err = max_abs(cache[name], expected)
        assert err < tol, f"{variant} {name}: max abs diff {err:.3g}"
    # the reference covers every tap that has an HF equivalent
    covered = {n.split(".", 2)[-1] for n in ref if n.startswith("blocks.0.")}
    expected_cover = {
        "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "ln2.hook_normalized",
        "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
    }  # fmt: skip
    assert expected_cover <= covered


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_hf(converted, side):
    """With an attention mask (HF semantics) every real position's logits and taps equal
    transformers' given the same mask and position ids counted over real tokens (what
    HF's `generate` passes); padded positions are not compared."""
    variant, hf_model, model, tokens, _ = converted
    arch = hf_model.config.architectures[0]
    mask = np.ones(tokens.shape, np.int64)
    if side == "left":
        mask[0, :3], mask[1, :1] = 0, 0
    else:
        mask[0, -4:], mask[1, -1:] = 0, 0
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    ref_logits, ref = _hf_reference(
        hf_model,
        arch,
        tokens,
        model.cfg,
        attention_mask=torch.tensor(mask),
        position_ids=torch.tensor(positions),
    )
    logits, cache = ji.run(model, tokens, capture=ref.keys(), attention_mask=mask)
    real = mask.astype(bool)
    assert max_abs(np.asarray(logits)[real], ref_logits[real]) < 1e-4, variant
    simple = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1")
    simple += ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v")
    for name, expected in ref.items():
        got = np.asarray(cache[name])
        if name.endswith("hook_pattern"):  # [batch, head, query, key]: real queries
            got, expected = np.moveaxis(got, 2, 1), np.moveaxis(expected, 2, 1)
        tol = 1e-5 if name.startswith(simple) else 1e-4
        err = max_abs(got[real], expected[real])
        assert err < tol, f"{variant} {side} {name}: max abs diff {err:.3g}"


def test_rotary_taps_match_hf_rotation(converted):
    """hook_rot_q/k equal HF's own rotary function applied to hook_q/k."""
    variant, hf_model, model, tokens, _ = converted
    cfg = model.cfg
    if cfg.positional != "rotary":
        pytest.skip("learned positions")
    names = [
        "blocks.1.attn." + s for s in ("hook_q", "hook_k", "hook_rot_q", "hook_rot_k")
    ]
    _, cache = ji.run(model, tokens[0], capture=names)
    q, k, rot_q, rot_k = (torch.tensor(np.asarray(cache[n])) for n in names)
    pos = torch.arange(tokens.shape[1])[None]
    arch = hf_model.config.architectures[0]
    if arch == "GPTJForCausalLM":
        from transformers.models.gptj import modeling_gptj as m

        sincos = m.create_sinusoidal_positions(tokens.shape[1], cfg.rotary_dim)
        sin, cos = torch.split(sincos[None], cfg.rotary_dim // 2, dim=-1)
        r = cfg.rotary_dim

        def rot(x):
            x = x[None]
            y = m.apply_rotary_pos_emb(x[..., :r], sin, cos)
            return torch.cat([y, x[..., r:]], -1)[0]

        exp_q, exp_k = rot(q), rot(k)
    else:
        inner = hf_model.base_model
        cos, sin = inner.rotary_emb(q[None], pos)
        mod = importlib.import_module(type(hf_model).__module__)
        exp_q, exp_k = mod.apply_rotary_pos_emb(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin
        )
        exp_q, exp_k = exp_q[0].transpose(0, 1), exp_k[0].transpose(0, 1)
    assert max_abs(rot_q, exp_q) < 1e-5, variant
    assert max_abs(rot_k, exp_k) < 1e-5, variant


def test_capture_of_all_taps_has_table_shapes(converted):
    _, _, model, tokens, _ = converted
    names = tapslib.available_taps(model.cfg)
    logits, cache = ji.run(model, tokens, capture=names)
    assert set(cache) == set(names)
    for name in names:
        shape = tapslib.tap_shape(name, model.cfg, tokens.shape[1])
        assert cache[name].shape == (tokens.shape[0], *shape), name
    plain, _ = ji.run(model, tokens)
    # Capture does not change the computation, but XLA may fuse (and so round) differently
    # when intermediates are also outputs, and attn.hook_result sums per-head results.
    np.testing.assert_allclose(np.asarray(plain), np.asarray(logits), atol=1e-5, rtol=0)


def test_export_round_trip_is_lossless(converted, tmp_path):
    variant, hf_model, model, tokens, d = converted
    arch = hf_model.config.architectures[0]
    converters.save_pretrained(model, tmp_path, architecture=arch)
    again = converters.from_pretrained(tmp_path)
    for a, b in zip(
        jax.tree_util.tree_leaves(model),
        jax.tree_util.tree_leaves(again),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert again.cfg == model.cfg
    # transformers loads the export and computes the same logits as the original
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        x = torch.tensor(tokens)
        np.testing.assert_allclose(
            reloaded(x).logits.numpy(), hf_model(x).logits.numpy(), atol=1e-6, rtol=0
        )
    json.loads((tmp_path / "config.json").read_text())


def test_bf16_checkpoint_keeps_dtype(tmp_path):
    config = _variants()["llama-gqa"]
    hf_model = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.bfloat16
    )
    hf_model.save_pretrained(tmp_path)
    m16 = converters.from_pretrained(tmp_path)
    assert m16.embed.W_E.dtype == jnp.bfloat16
    logits = ji.run(m16, np.arange(6))[0]
    assert logits.dtype == jnp.bfloat16
    m32 = converters.from_pretrained(tmp_path, dtype=jnp.float32)
    assert m32.embed.W_E.dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(m32.embed.W_E),
        hf_model.model.embed_tokens.weight.detach().float().numpy(),
    )

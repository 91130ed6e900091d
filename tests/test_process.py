"""TransformerLens weight processing: logits preserved (up to center_unembed's per-position
constant), and identical to TransformerLens's own processed weights when it is installed."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import process

from .helpers import max_abs, tiny_config

LN = tiny_config(
    positional="learned", norm="ln", act_fn="gelu_new", gated_mlp=False, n_kv_heads=4
)
RMS = tiny_config()  # Llama-like: RMSNorm, GQA, SwiGLU
TOKENS = jnp.array([3, 14, 15, 92, 65, 35, 89, 79])


def _randomized(cfg, seed=0):
    """Random weights with nonzero biases and non-unit norms, so every fold has work to do."""
    model = ji.init_transformer(cfg, jax.random.key(seed), std=0.3)
    leaves, treedef = jax.tree_util.tree_flatten(model)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    out = []
    for leaf, key in zip(leaves, keys, strict=True):
        noise = 0.2 * jax.random.normal(key, leaf.shape)
        out.append(leaf + noise if leaf.ndim <= 3 else leaf)
    model = jax.tree_util.tree_unflatten(treedef, out)
    if cfg.norm == "rms":  # RMSNorm has no bias
        model = eqx.tree_at(
            lambda m: (m.blocks.ln1.b, m.blocks.ln2.b, m.ln_final.b),
            model,
            (
                jnp.zeros_like(model.blocks.ln1.b),
                jnp.zeros_like(model.blocks.ln2.b),
                jnp.zeros_like(model.ln_final.b),
            ),
        )
    return model


@pytest.mark.parametrize("cfg", [LN, RMS], ids=["ln", "rms"])
def test_processing_preserves_logits(cfg):
    model = _randomized(cfg)
    base, _ = ji.run(model, TOKENS)
    folded = process.fold_ln(model)
    assert max_abs(ji.run(folded, TOKENS)[0], base) < 1e-4
    assert float(jnp.abs(folded.blocks.ln1.w - 1).max()) == 0.0
    vb = process.fold_value_biases(model)
    assert max_abs(ji.run(vb, TOKENS)[0], base) < 1e-4
    assert float(jnp.abs(vb.blocks.attn.b_V).max()) == 0.0
    cu, _ = ji.run(process.center_unembed(model), TOKENS)
    expected = base - base.mean(-1, keepdims=True)
    assert max_abs(cu, expected) < 1e-4
    full, _ = ji.run(process.tl_default(model), TOKENS)
    assert max_abs(full, expected) < 1e-4


def test_center_writing_weights_preserves_logits_for_layernorm_only():
    model = _randomized(LN)
    base, _ = ji.run(model, TOKENS)
    centred = process.center_writing_weights(model)
    assert max_abs(ji.run(centred, TOKENS)[0], base) < 1e-4
    assert float(jnp.abs(centred.blocks.mlp.W_out.mean(-1)).max()) < 1e-6
    with pytest.raises(ValueError, match="LayerNorm"):
        process.center_writing_weights(_randomized(RMS))


def test_mlp_post_and_z_are_unchanged_by_processing():
    """Folding norms and centring leave mlp.hook_post / attn.hook_z / patterns alone;
    fold_value_biases shifts hook_z by exactly -b_V (TransformerLens does the same)."""
    model = _randomized(LN)
    names = [
        "blocks.1.mlp.hook_post",
        "blocks.1.attn.hook_z",
        "blocks.0.attn.hook_pattern",
    ]
    _, a = ji.run(model, TOKENS, capture=names)
    centred = process.center_unembed(
        process.center_writing_weights(process.fold_ln(model))
    )
    _, b = ji.run(centred, TOKENS, capture=names)
    for n in names:
        assert max_abs(a[n], b[n]) < 1e-4, n
    _, c = ji.run(process.fold_value_biases(centred), TOKENS, capture=names)
    b_V = process.fold_ln(model).blocks.attn.b_V[1]  # [head, d_head]
    assert (
        max_abs(c["blocks.1.attn.hook_z"], b["blocks.1.attn.hook_z"] - b_V[None]) < 1e-4
    )


def _tl_config(cfg):
    import torch
    from transformer_lens import HookedTransformerConfig

    kw = dict(
        d_model=cfg.d_model, d_head=cfg.d_head, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, n_layers=cfg.n_layers, act_fn=cfg.act_fn,
        eps=cfg.eps, device="cpu", dtype=torch.float32,
    )  # fmt: skip
    if cfg.norm == "ln":
        kw.update(normalization_type="LN", positional_embedding_type="standard")
    else:
        kw.update(
            normalization_type="RMS", positional_embedding_type="rotary",
            rotary_dim=cfg.rotary_dim, n_key_value_heads=cfg.n_kv_heads, gated_mlp=True,
            final_rms=True,
        )  # fmt: skip
    return HookedTransformerConfig(**kw)


def _tl_state_dict(model):
    """Our parameters under TransformerLens state-dict names."""
    import torch

    gqa = model.cfg.n_kv_heads != model.cfg.n_heads
    out = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(model)
    for path, leaf in flat:
        name = ".".join(k.name for k in path)
        arr = np.asarray(leaf)
        if name.startswith("blocks."):
            _, mod, param = name.split(".")
            if gqa and param in ("W_K", "W_V", "b_K", "b_V"):
                param = "_" + param
            if model.cfg.norm == "rms" and mod.startswith("ln") and param == "b":
                continue
            for layer in range(model.cfg.n_layers):
                out[f"blocks.{layer}.{mod}.{param}"] = torch.tensor(arr[layer])
        elif not (model.cfg.norm == "rms" and name == "ln_final.b"):
            out[name] = torch.tensor(arr)
    return out


@pytest.mark.tl
@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
@pytest.mark.parametrize("cfg", [LN, RMS], ids=["ln", "rms"])
def test_tl_default_matches_transformer_lens(cfg):
    torch = pytest.importorskip("torch")
    tl = pytest.importorskip("transformer_lens")
    model = _randomized(cfg)
    hooked = tl.HookedTransformer(_tl_config(cfg))
    hooked.load_and_process_state_dict(
        _tl_state_dict(model),
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
    )
    ours = _tl_state_dict(process.tl_default(model))
    theirs = hooked.state_dict()
    compared = 0
    for key, value in theirs.items():
        if key in ours:
            assert max_abs(ours[key].numpy(), value.numpy()) < 1e-5, key
            compared += 1
    assert compared >= 10 * cfg.n_layers
    with torch.no_grad():
        tl_logits = hooked(torch.tensor(np.asarray(TOKENS))[None])[0].numpy()
    ours_logits, _ = ji.run(process.tl_default(model), TOKENS)
    assert max_abs(ours_logits, tl_logits) < 1e-4

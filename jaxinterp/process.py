"""TransformerLens weight processing as pure, opt-in `Transformer -> Transformer` functions.

By default a converted model computes exactly what the Hugging Face checkpoint computes.
Results reported with TransformerLens's `HookedTransformer.from_pretrained` (the paper's among
them) used processed weights, which change logits by a per-position constant and change the
values of some taps (not `mlp.hook_post`, `attn.hook_z` or `attn.hook_pattern`). Apply the
same processing here to compare numbers with them:

    model = process.tl_default(model)   # = fold_ln, center_writing_weights (LN models only),
                                        #   center_unembed, fold_value_biases

Semantics follow TransformerLens 3.x (`HookedTransformer.process_weights_`):
* `fold_ln` folds each norm's weight (and LayerNorm bias) into the matrices that read from it;
  for LayerNorm models it also centres those matrices over `d_model`, since their input has
  zero mean. The norms are left with `w = 1`, `b = 0` (TL's `LNPre` / `RMSPre`).
* `center_writing_weights` removes the `d_model` mean of everything that writes to the
  residual stream (exact only when every reader is a LayerNorm).
* `center_unembed` removes the vocabulary mean of `W_U`/`b_U` (softmax is unchanged; logits
  shift by a per-position constant).
* `fold_value_biases` moves `b_V` into `b_O` (attention rows sum to one).
"""

import equinox as eqx
import jax.numpy as jnp

from .model import Transformer

__all__ = [
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "tl_default",
]


def _center(w, axis):
    return w - w.mean(axis, keepdims=True)


def fold_ln(model: Transformer, *, center_weights: bool = True) -> Transformer:
    """Folds ln1 into W_Q/W_K/W_V, ln2 into W_in/W_gate, ln_final into W_U.

    Arguments:
        model: the model.
        center_weights: also centre the folded matrices over `d_model` (LayerNorm models
            only; ignored for RMSNorm, as in TransformerLens).

    Returns:
        A model with identical logits whose norms have unit weight and zero bias.
    """
    cfg = model.cfg
    center = center_weights and cfg.norm == "ln"
    blocks = model.blocks
    attn, mlp = blocks.attn, blocks.mlp
    # stacked shapes: ln w/b [layer, d_model]; W_Q [layer, head, d_model, d_head]
    w1, b1 = blocks.ln1.w, blocks.ln1.b
    w2, b2 = blocks.ln2.w, blocks.ln2.b
    if cfg.gated_mlp and bool(jnp.any(b2 != 0)):
        raise ValueError(
            "cannot fold a LayerNorm bias into a gated MLP (b_in is post-gate)"
        )

    def fold_attn(W, b):  # W [layer, head, d_model, d_head] reads ln1
        b = b + jnp.einsum("lhmd,lm->lhd", W, b1)
        W = W * w1[:, None, :, None]
        return (_center(W, 2) if center else W), b

    def fold_mlp(W):  # W [layer, d_model, d_mlp] reads ln2
        W = W * w2[:, :, None]
        return _center(W, 1) if center else W

    W_Q, b_Q = fold_attn(attn.W_Q, attn.b_Q)
    W_K, b_K = fold_attn(attn.W_K, attn.b_K)
    W_V, b_V = fold_attn(attn.W_V, attn.b_V)
    b_in = mlp.b_in + jnp.einsum("lmf,lm->lf", mlp.W_in, b2)
    W_in = fold_mlp(mlp.W_in)
    W_gate = None if mlp.W_gate is None else fold_mlp(mlp.W_gate)

    wf, bf = model.ln_final.w, model.ln_final.b
    W_U = model.unembed.W_U
    b_U = model.unembed.b_U + (W_U * bf[:, None]).sum(0)
    W_U = W_U * wf[:, None]
    if center:
        W_U = _center(W_U, 0)

    def ones_zeros(norm):
        return eqx.tree_at(
            lambda n: (n.w, n.b), norm, (jnp.ones_like(norm.w), jnp.zeros_like(norm.b))
        )

    new_blocks = eqx.tree_at(
        lambda b: (
            b.attn.W_Q,
            b.attn.b_Q,
            b.attn.W_K,
            b.attn.b_K,
            b.attn.W_V,
            b.attn.b_V,
            b.mlp.W_in,
            b.mlp.b_in,
            b.ln1,
            b.ln2,
        ),
        blocks,
        (
            W_Q,
            b_Q,
            W_K,
            b_K,
            W_V,
            b_V,
            W_in,
            b_in,
            ones_zeros(blocks.ln1),
            ones_zeros(blocks.ln2),
        ),
    )
    if W_gate is not None:
        new_blocks = eqx.tree_at(lambda b: b.mlp.W_gate, new_blocks, W_gate)
    return eqx.tree_at(
        lambda m: (m.blocks, m.ln_final, m.unembed.W_U, m.unembed.b_U),
        model,
        (new_blocks, ones_zeros(model.ln_final), W_U, b_U),
    )


def center_writing_weights(model: Transformer) -> Transformer:
    """Centres W_E, W_pos, W_O, b_O, W_out, b_out over `d_model` (LayerNorm models only)."""
    if model.cfg.norm != "ln":
        raise ValueError(
            "center_writing_weights is exact only for LayerNorm models; this model uses "
            "RMSNorm (TransformerLens skips it there too)"
        )
    m = eqx.tree_at(lambda m: m.embed.W_E, model, _center(model.embed.W_E, -1))
    if m.pos_embed is not None:
        m = eqx.tree_at(lambda m: m.pos_embed.W_pos, m, _center(m.pos_embed.W_pos, -1))
    b = m.blocks
    return eqx.tree_at(
        lambda m: (
            m.blocks.attn.W_O,
            m.blocks.attn.b_O,
            m.blocks.mlp.W_out,
            m.blocks.mlp.b_out,
        ),
        m,
        (
            _center(b.attn.W_O, -1),
            _center(b.attn.b_O, -1),
            _center(b.mlp.W_out, -1),
            _center(b.mlp.b_out, -1),
        ),
    )


def center_unembed(model: Transformer) -> Transformer:
    """Removes the vocabulary mean of W_U and b_U (logits shift by a per-position constant)."""
    u = model.unembed
    return eqx.tree_at(
        lambda m: (m.unembed.W_U, m.unembed.b_U),
        model,
        (_center(u.W_U, -1), _center(u.b_U, -1)),
    )


def fold_value_biases(model: Transformer) -> Transformer:
    """Moves b_V into b_O: `b_O += sum_h b_V[kv(h)] @ W_O[h]`, then `b_V = 0`."""
    attn = model.blocks.attn
    g = model.cfg.n_query_per_kv
    b_V = jnp.repeat(attn.b_V, g, axis=1)  # [layer, head_index, d_head]
    b_O = attn.b_O + jnp.einsum("lhd,lhdm->lm", b_V, attn.W_O)
    return eqx.tree_at(
        lambda m: (m.blocks.attn.b_O, m.blocks.attn.b_V),
        model,
        (b_O, jnp.zeros_like(attn.b_V)),
    )


def tl_default(model: Transformer) -> Transformer:
    """TransformerLens `from_pretrained` defaults: fold_ln, center_writing_weights (skipped for
    RMSNorm models, as TL does), center_unembed, fold_value_biases."""
    model = fold_ln(model)
    if model.cfg.norm == "ln":
        model = center_writing_weights(model)
    return fold_value_biases(center_unembed(model))

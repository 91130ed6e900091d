"""Logit lens and direct logit attribution (DLA).

* `logit_lens`: the residual stream entering every layer (and leaving the last) read through
  the final norm and unembedding, at one position.
* `direct_logit_attribution`: the last residual stream at one position split into its
  additive pieces (embedding, each head, each attention bias, each neuron, each MLP bias),
  each mapped linearly through the final norm with the run's own norm scale frozen (as
  TransformerLens's `apply_ln_to_stack`) and projected on a logit direction. The pieces sum
  exactly to the direction's logit.
* `neuron_logit_lens`: a neuron's value vector `W_out[l, n]` through the unembedding, with or
  without TransformerLens weight processing (paper-spec §1.2 item 4).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Float, Int
from ..model import Transformer
from ._stream import stacked_names
from .layers import embed, forward_layers, unembed
from .run import check_tokens

__all__ = [
    "logit_lens",
    "direct_logit_attribution",
    "logit_direction",
    "neuron_logit_lens",
]


@eqx.filter_jit
def _lens(model, tokens, pos):
    n = model.cfg.n_layers

    def one(tokens):
        names = frozenset(stacked_names("hook_resid_pre", range(n)))
        x, rec = forward_layers(
            model, embed(model, tokens), 0, capture=names, logits=False
        )
        resid = jnp.stack(
            [rec[m][pos] for m in stacked_names("hook_resid_pre", range(n))]
        )
        return unembed(model, jnp.concatenate([resid, x[pos][None]]))

    return jax.vmap(one)(tokens)


def logit_lens(
    model: Transformer, tokens: Int[ArrayLike, "prompt pos"], *, pos: int = -1
) -> Float[Array, "prompt layer_plus_1 d_vocab"]:
    """Logits read from `blocks.{l}.hook_resid_pre` for every layer `l` and from the final
    residual (last entry: the model's logits), at position `pos`; each vector is normalized
    by the final norm with its own scale."""
    check_tokens(tokens, model.cfg.d_vocab)
    return _lens(model, jnp.asarray(tokens), pos)


def logit_direction(
    d_vocab: int,
    correct: Int[ArrayLike, " prompt"],
    wrong: Int[ArrayLike, " prompt"] | None,
) -> Float[Array, "prompt d_vocab"]:
    """`onehot(correct) - onehot(wrong)` per prompt (just `onehot(correct)` without wrong)."""
    d = jax.nn.one_hot(jnp.asarray(correct), d_vocab)
    return d if wrong is None else d - jax.nn.one_hot(jnp.asarray(wrong), d_vocab)


@eqx.filter_jit
def _dla(model, tokens, directions, pos):
    cfg = model.cfg
    n = cfg.n_layers
    blocks = model.blocks

    def one(tokens, direction):
        names = frozenset(
            stacked_names("attn.hook_z", range(n))
            + stacked_names("mlp.hook_post", range(n))
        )
        x0 = embed(model, tokens)
        x, rec = forward_layers(model, x0, 0, capture=names, logits=False)
        z = jnp.stack([rec[m][pos] for m in stacked_names("attn.hook_z", range(n))])
        post = jnp.stack(
            [rec[m][pos] for m in stacked_names("mlp.hook_post", range(n))]
        )
        h = x[pos]
        ln = model.ln_final
        if ln.kind == "ln":
            scale = jnp.sqrt(jnp.var(h) + ln.eps)
        else:
            scale = jnp.sqrt(jnp.mean(h * h) + ln.eps)
        u = model.unembed.W_U @ direction  # [d_model]
        v = ln.w * u
        if ln.kind == "ln":
            v = v - v.mean()
        v = v / scale
        return dict(
            embed=x0[pos] @ v,
            heads=jnp.einsum("lhd,lhdm,m->lh", z, blocks.attn.W_O, v),
            attn_bias=blocks.attn.b_O @ v,
            neurons=post * (blocks.mlp.W_out @ v),
            mlp_bias=blocks.mlp.b_out @ v,
            constant=(ln.b @ u if ln.kind == "ln" else 0.0)
            + model.unembed.b_U @ direction,
        )

    return jax.vmap(one)(tokens, directions)


def direct_logit_attribution(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    directions: Float[ArrayLike, "prompt d_vocab"],
    *,
    pos: int = -1,
) -> dict[str, Array]:
    """Direct contribution of every component to `logits[pos] @ direction`.

    Arguments:
        model: the transformer (processed or not; with `process.tl_default` the numbers are
            TransformerLens's).
        tokens: `[prompt, pos]`.
        directions: `[prompt, d_vocab]` logit directions (see `logit_direction`).
        pos: the position read.

    Returns:
        dict of `embed [prompt]` (token + position embedding), `heads [prompt, layer,
        head_index]`, `attn_bias [prompt, layer]`, `neurons [prompt, layer, d_mlp]`,
        `mlp_bias [prompt, layer]` and `constant [prompt]` (final-norm bias and `b_U`), whose
        total is `logits[prompt, pos] @ directions[prompt]`.
    """
    check_tokens(tokens, model.cfg.d_vocab)
    directions = jnp.asarray(directions, model.unembed.W_U.dtype)
    return _dla(model, jnp.asarray(tokens), directions, pos)


def neuron_logit_lens(
    model: Transformer,
    layer: int,
    neurons: Int[ArrayLike, " neuron"] | None = None,
    *,
    tl_processing: bool = True,
) -> Float[Array, "neuron d_vocab"]:
    """`W_out[layer, n] @ W_U` for the chosen neurons (all by default).

    With `tl_processing` the unembedding is the one TransformerLens's `fold_ln` +
    `center_unembed` produce (paper-spec §1.2 item 4): the final norm weight folded in,
    centred over `d_model` for LayerNorm models, then centred over the vocabulary; no
    division by the residual's norm scale. Equals the product of the weights of
    `process.tl_default(model)`. Without it, the raw `W_out @ W_U`.
    """
    W_out = model.blocks.mlp.W_out[layer]
    if neurons is not None:
        W_out = W_out[np.asarray(neurons)]
    W_U = model.unembed.W_U
    if tl_processing:
        W_U = model.ln_final.w[:, None] * W_U
        if model.cfg.norm == "ln":
            W_U = W_U - W_U.mean(0, keepdims=True)
        W_U = W_U - W_U.mean(1, keepdims=True)
    return W_out @ W_U

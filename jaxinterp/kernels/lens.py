"""Logit lens and direct logit attribution (DLA).

* `logit_lens`: the residual stream entering every layer (and leaving the last) read through
  the final norm and unembedding, at one position.
* `direct_logit_attribution`: the last residual stream at one position split into its
  additive pieces (embedding, each head, each attention bias, each neuron, each MLP bias),
  each mapped linearly through the final norm with the run's own norm scale frozen (as
  TransformerLens's `apply_ln_to_stack`) and projected on a logit direction. The pieces sum
  to the direction's logit up to float rounding (1e-4 in float32 in the tests; the frozen
  scale is computed in the residual's dtype, so bfloat16 models round more).
* `neuron_logit_lens`: a neuron's value vector `W_out[l, n]` through the unembedding, with or
  without TransformerLens weight processing (as the paper's code reads value vectors).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Float, Int
from ..inputs import check_indices, prompts
from ..model import Transformer
from ..taps import Taps
from .sweep import activations

__all__ = [
    "logit_lens",
    "direct_logit_attribution",
    "logit_direction",
    "neuron_logit_lens",
]


@eqx.filter_jit
def _lens(model, batch):
    key = "blocks.*.hook_resid_pre"

    def one(prompt):
        x, rec = activations(model, prompt, frozenset({key}))
        index = prompt.answer
        resid = jnp.concatenate([rec[key], x[None]])[:, index]  # [layer + 1, d_model]
        return model.unembed_resid(resid, Taps(model.cfg))

    return jax.vmap(one)(batch)


def logit_lens(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    *,
    pos: int | None = None,
    attention_mask: ArrayLike | None = None,
) -> Float[Array, "prompt layer_plus_1 d_vocab"]:
    """Logits read from `blocks.{l}.hook_resid_pre` for every layer `l` and from the final
    residual (last entry: the model's logits), at position `pos` (default: each prompt's
    last real token); each vector is normalized by the final norm with its own scale."""
    batch = prompts(model.cfg, tokens, attention_mask, _read_at(tokens, pos))
    return _lens(model, jax.tree.map(jnp.asarray, batch))


def _read_at(tokens, pos: int | None):
    """`answer_pos` reading position `pos` of every prompt (validated by `prompts`)."""
    return None if pos is None else np.full(np.shape(tokens)[0], pos)


def logit_direction(
    d_vocab: int,
    correct: Int[ArrayLike, " prompt"],
    wrong: Int[ArrayLike, " prompt"] | None,
) -> Float[Array, "prompt d_vocab"]:
    """`onehot(correct) - onehot(wrong)` per prompt (just `onehot(correct)` without wrong)."""
    d = jax.nn.one_hot(jnp.asarray(correct), d_vocab)
    return d if wrong is None else d - jax.nn.one_hot(jnp.asarray(wrong), d_vocab)


@eqx.filter_jit
def _dla(model, batch, directions):
    blocks = model.blocks
    keys = frozenset({"blocks.*.attn.hook_z", "blocks.*.mlp.hook_post", "hook_embed"})
    keys |= {"hook_pos_embed"} if model.pos_embed is not None else set()

    def one(prompt, direction):
        x, rec = activations(model, prompt, keys)
        index = prompt.answer
        z = rec["blocks.*.attn.hook_z"][:, index]
        post = rec["blocks.*.mlp.hook_post"][:, index]
        x0 = sum(rec[k][index] for k in ("hook_embed", "hook_pos_embed") if k in rec)
        h = x[index]
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
            embed=x0 @ v,
            heads=jnp.einsum("lhd,lhdm,m->lh", z, blocks.attn.W_O, v),
            attn_bias=blocks.attn.b_O @ v,
            neurons=post * (blocks.mlp.W_out @ v),
            mlp_bias=blocks.mlp.b_out @ v,
            constant=(ln.b @ u if ln.kind == "ln" else 0.0)
            + model.unembed.b_U @ direction,
        )

    return jax.vmap(one)(batch, directions)


def direct_logit_attribution(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    directions: Float[ArrayLike, "prompt d_vocab"],
    *,
    pos: int | None = None,
    attention_mask: ArrayLike | None = None,
) -> dict[str, Array]:
    """Direct contribution of every component to `logits[pos] @ direction`.

    Arguments:
        model: the transformer (processed or not; with `process.tl_default` the numbers are
            TransformerLens's).
        tokens: `[prompt, pos]`.
        directions: `[prompt, d_vocab]` logit directions (see `logit_direction`).
        pos: the position read (default: each prompt's last real token).
        attention_mask: `[prompt, pos]`, 1 = token, 0 = padding.

    Returns:
        dict of `embed [prompt]` (token + position embedding), `heads [prompt, layer,
        head_index]`, `attn_bias [prompt, layer]`, `neurons [prompt, layer, d_mlp]`,
        `mlp_bias [prompt, layer]` and `constant [prompt]` (final-norm bias and `b_U`), whose
        total is `logits[prompt, pos] @ directions[prompt]`.
    """
    batch = prompts(model.cfg, tokens, attention_mask, _read_at(tokens, pos))
    directions = jnp.asarray(directions, model.unembed.W_U.dtype)
    return _dla(model, jax.tree.map(jnp.asarray, batch), directions)


def neuron_logit_lens(
    model: Transformer,
    layer: int,
    neurons: Int[ArrayLike, " neuron"] | None = None,
    *,
    tl_processing: bool = True,
) -> Float[Array, "neuron d_vocab"]:
    """`W_out[layer, n] @ W_U` for the chosen neurons (all by default).

    With `tl_processing` the unembedding is the one TransformerLens's `fold_ln` +
    `center_unembed` produce (as the paper's code does): the final norm weight folded in,
    centred over `d_model` for LayerNorm models, then centred over the vocabulary; no
    division by the residual's norm scale. Equals the product of the weights of
    `process.tl_default(model)`. Without it, the raw `W_out @ W_U`.
    """
    layer = int(check_indices(layer, model.cfg.n_layers, "layer"))
    W_out = model.blocks.mlp.W_out[layer]
    if neurons is not None:
        W_out = W_out[check_indices(neurons, model.cfg.d_mlp, "neurons").reshape(-1)]
    W_U = model.unembed.W_U
    if tl_processing:
        W_U = model.ln_final.w[:, None] * W_U
        if model.cfg.norm == "ln":
            W_U = W_U - W_U.mean(0, keepdims=True)
        W_U = W_U - W_U.mean(1, keepdims=True)
    return W_out @ W_U

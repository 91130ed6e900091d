"""Activation statistics over a prompt set, streamed in fixed-size batches.

`mean_cache` gives the per-position mean of whole stacked taps (`[layer, pos, ...]`), the
values that mean ablation writes (per position, over every prompt); `stacked_activations`
per-prompt activations (resample ablation, patching sources); `answer_logits` the logits at
each prompt's answer position. Each is one compile for the whole prompt set.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._typing import Array, ArrayLike, Float, Int
from ..inputs import prompts
from ..model import Transformer
from ..taps import Taps
from .batching import stream
from .sweep import activations, site

__all__ = ["mean_cache", "stacked_activations", "answer_logits"]


@eqx.filter_jit
def _sums(model, batch, keys, weight):
    def one(prompt):
        return activations(model, prompt, keys)[1]

    acts = jax.vmap(one)(batch)
    # weight every prompt's real positions: [prompt, pos]
    w = weight[:, None] * batch.mask.astype(weight.dtype)
    sums = {}
    for key, a in acts.items():
        lead = "l" if key.startswith("blocks.") else ""
        a = a.astype(jnp.float32)
        sums[key] = jnp.einsum(f"bp,b{lead}p...->{lead}p...", w, a)
    return sums, w.sum(0)


def mean_cache(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    taps: Sequence[str] = ("attn.hook_z", "mlp.hook_post"),
    *,
    attention_mask: ArrayLike | None = None,
    batch_size: int = 64,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> dict[str, Float[Array, "..."]]:
    """Per-position mean of each tap over all prompts (over the prompts whose position is a
    real token, when padded; 0 where none is).

    Arguments:
        model: the transformer.
        tokens: `[prompt, pos]`.
        taps: block tap suffixes (`"mlp.hook_post"`, `"attn.hook_z"`, ...: every layer)
            and/or `"hook_embed"` / `"hook_pos_embed"`.
        attention_mask: `[prompt, pos]`, 1 = token, 0 = padding.
        batch_size: prompts per device call.
        progress_bar: show a tqdm bar over batches.
        mesh: split the prompts over this mesh's `data` axis (see `jaxinterp.sharding`).

    Returns:
        tap (as given) -> mean `[layer, pos, *tap_tail]` (e.g. `[layer, pos, head_index,
        d_head]` for `attn.hook_z`; `[pos, d_model]` for `hook_embed`), summed in float64
        on the host.
    """
    batch = prompts(model.cfg, tokens, attention_mask)
    taps = tuple(taps)
    keys = {t: site(t, model.cfg).key for t in taps}
    total = stream(
        lambda chunk, weight: _sums(model, chunk, frozenset(keys.values()), weight),
        batch,
        batch_size=batch_size,
        desc="mean cache",
        progress_bar=progress_bar,
        mesh=mesh,
        weighted_sum=True,
    )
    sums, count = total
    dtype = model.embed.W_E.dtype
    means = {}
    for t, key in keys.items():
        n_lead = 1 if key.startswith("blocks.") else 0
        tail = (1,) * (sums[key].ndim - n_lead - 1)
        per_pos = np.maximum(count, 1).reshape(*(1,) * n_lead, -1, *tail)
        means[t] = jnp.asarray(sums[key] / per_pos, dtype)
    return means


@eqx.filter_jit
def _acts(model, batch, keys, logits):
    def one(prompt):
        x, records = activations(model, prompt, keys)
        if not logits:
            return records
        h = jax.lax.dynamic_index_in_dim(x, prompt.answer, keepdims=True)
        return model.unembed_resid(h, Taps(model.cfg))[0]

    return jax.vmap(one)(batch)


def stacked_activations(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    tap: str,
    *,
    attention_mask: ArrayLike | None = None,
    batch_size: int = 64,
    progress_bar: bool = False,
    mesh: Mesh | None = None,
) -> Float[Array, "prompt ..."]:
    """Every layer of one block tap (or a top-level tap such as `hook_embed`) for every
    prompt, `[prompt, layer, pos, *tap_tail]` (resample-ablation values, patching
    sources)."""
    batch = prompts(model.cfg, tokens, attention_mask)
    key = site(tap, model.cfg).key
    return stream(
        lambda chunk: _acts(model, chunk, frozenset({key}), False)[key],
        batch,
        batch_size=batch_size,
        desc=tap,
        progress_bar=progress_bar,
        mesh=mesh,
    )


def answer_logits(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    *,
    attention_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 64,
    progress_bar: bool = False,
    mesh: Mesh | None = None,
) -> Float[Array, "prompt d_vocab"]:
    """The logits at each prompt's answer position (default: its last real token); no
    other position is unembedded."""
    batch = prompts(model.cfg, tokens, attention_mask, answer_pos)
    return stream(
        lambda chunk: _acts(model, chunk, frozenset(), True),
        batch,
        batch_size=batch_size,
        desc="logits",
        progress_bar=progress_bar,
        mesh=mesh,
    )

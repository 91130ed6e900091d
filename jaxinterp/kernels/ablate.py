"""Ablation sweeps: zero / mean / resample ablation of many neuron, head or component sets in
one compiled program.

A *set* is a boolean mask over `[layer, *unit]` of one block tap, where `unit` is a leading
part of the tap's per-position shape: `[layer, d_mlp]` for neurons of `mlp.hook_post`,
`[layer, head_index]` for heads of `attn.hook_z`, `[layer]` for whole components (any tap);
for a top-level tap (`hook_embed`) there is no `layer` axis. Every set's masked units are
overwritten with `values` (zeros, a mean cache, or per-prompt resample activations) at the
chosen positions, and `metric` is read at each prompt's answer position.

Shared computation (see `sweep`): layers below the first edited layer and positions before
the first edited position run once per prompt; each set runs the rest, and only the answer
position is unembedded. Sets are `vmap`ped inside each prompt batch; one compile per sweep.
"""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Bool, Float, Int, PyTree, Shaped
from ..edits import Replace
from ..inputs import prompts
from ..model import Transformer
from .batching import stream
from .sweep import EMBED, first_edited, site, start_at, sweep, unit_mask

__all__ = ["ablation_sweep"]

Positions = Literal["last", "all"] | Bool[ArrayLike, " pos"]


@eqx.filter_jit
def _ablate(model, batch, masks, values, pos_mask, site, L, p0, metric):
    n_lead, n_tail = len(site.lead), len(site.tail)

    def per_prompt(item):
        prompt, margs = item["prompt"], item["margs"]
        vals = item["values"] if "values" in item else values
        state = start_at(model, prompt, L, p0)
        index = prompt.answer - p0
        last = jnp.arange(vals.shape[n_lead]) == index
        hot = last if pos_mask is None else pos_mask
        hot = hot.reshape(*(1,) * n_lead, -1, *(1,) * n_tail)

        def edits(mask):
            return {site.key: Replace(vals, unit_mask(mask, site) & hot)}

        return sweep(model, state, L, masks, edits, metric, margs, index)

    return jax.vmap(per_prompt)(batch)


def ablation_sweep(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    masks: Bool[ArrayLike, "set ..."],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "mlp.hook_post",
    values: Float[ArrayLike, "..."] | None = None,
    positions: Positions = "last",
    attention_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 32,
    progress_bar: bool = True,
) -> PyTree[Shaped[Array, "prompt set ..."]]:
    """Metric of every prompt with every set of units ablated.

    Arguments:
        model: the transformer.
        tokens: `[prompt, pos]` (padded with `attention_mask` when ragged).
        masks: `[set, layer, *unit]` (`[set, *unit]` for a top-level tap), True = ablate.
        metric: `metric(logits, *args) -> scalar or pytree` (see `metrics`), on the logits
            `[d_vocab]` at each prompt's answer position.
        metric_args: arrays with a leading `prompt` axis, sliced per prompt for `metric`.
        tap: block tap suffix (`"mlp.hook_post"`, `"attn.hook_z"`, ...) or `"hook_embed"`.
        values: replacement values: None (zero ablation), `[layer, pos, *tail]` (mean
            ablation, e.g. from `means.mean_cache`), or `[prompt, layer, pos, *tail]`
            (resample ablation, e.g. `means.stacked_activations` of other prompts); no
            `layer` axis for a top-level tap.
        positions: `"last"` (each prompt's answer position), `"all"`, or a bool `[pos]`
            mask of the edited positions.
        attention_mask: `[prompt, pos]`, 1 = token, 0 = padding.
        answer_pos: `[prompt]` positions the metric reads (default: last real token).
        batch_size: prompts per device call (each runs every set).
        progress_bar: tqdm over prompt batches.

    Returns:
        The metric's output with leading axes `[prompt, set]`.
    """
    cfg = model.cfg
    batch = {"prompt": prompts(cfg, tokens, attention_mask, answer_pos)}
    n_pos = batch["prompt"].tokens.shape[1]
    where = site(tap, cfg)
    masks = np.asarray(masks)
    if masks.dtype != np.bool_ or masks.shape[1 : 1 + len(where.lead)] != where.lead:
        raise ValueError(
            f"masks must be bool [set, {', '.join(map(str, where.lead))}"
            f"{', ' if where.lead else ''}*unit], got {masks.dtype}{list(masks.shape)}"
        )
    L = first_edited(masks, 1) if where.stacked else EMBED
    if isinstance(positions, str):
        if positions not in ("last", "all"):
            raise ValueError(
                f"positions must be 'last', 'all' or a mask: {positions!r}"
            )
        p0 = int(batch["prompt"].answer.min()) if positions == "last" else 0
        pos_mask = None if positions == "last" else np.ones(n_pos, bool)
    else:
        pos_mask = np.asarray(positions)
        if pos_mask.shape != (n_pos,) or pos_mask.dtype != np.bool_:
            raise ValueError(f"position mask must be bool [{n_pos}]: {pos_mask.shape}")
        p0 = min(first_edited(pos_mask, 0), int(batch["prompt"].answer.min()))
    if values is None:
        values = np.zeros((*where.lead, n_pos, *where.tail), model.embed.W_E.dtype)
    values = jnp.asarray(values)
    shape = (*where.lead, n_pos, *where.tail)
    if values.shape not in (shape, (len(batch["prompt"].tokens), *shape)):
        raise ValueError(
            f"values must be {list(shape)} or [prompt, {str(list(shape))[1:-1]}], got "
            f"{list(values.shape)}"
        )
    per_prompt = values.ndim == 2 + len(where.lead) + len(where.tail)
    pos_axis = len(where.lead) + per_prompt
    values = jax.lax.slice_in_dim(values, p0, n_pos, axis=pos_axis)
    if per_prompt:
        batch["values"] = values
    batch["margs"] = jax.tree.map(np.asarray, tuple(metric_args))
    masks = jnp.asarray(masks)
    pos_mask = None if pos_mask is None else jnp.asarray(pos_mask[p0:])
    shared = None if per_prompt else values

    def chunk(batch):
        return _ablate(model, batch, masks, shared, pos_mask, where, L, p0, metric)

    return stream(
        chunk, batch, batch_size=batch_size, desc="ablate", progress_bar=progress_bar
    )

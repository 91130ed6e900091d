"""Ablation sweeps: zero / mean / resample ablation of many neuron, head or component sets in
one compiled program.

A *set* is a boolean mask over `[layer, *unit]` of one block tap, where `unit` is a leading
part of the tap's per-position shape: `[layer, d_mlp]` for neurons of `mlp.hook_post`,
`[layer, head_index]` for heads of `attn.hook_z`, `[layer]` for whole components (any tap).
Every set's masked units are overwritten with `values` (zeros, a mean cache, or per-prompt
resample activations) at the chosen positions, and `metric` is read at the last position.

Computation shared across sets (all exact, verified against plain `run` in the tests):
* layers below the first layer `L` that any set edits run once per prompt, not per set;
* positions before the first edited position `p0` are never recomputed: their keys and
  values above `L` come from one clean pass over `tokens[:p0]`, and each set runs layers
  `>= L` on positions `>= p0` only (with only the last position edited, that is one token);
* only the last position is unembedded.

Sets are `vmap`ped inside each prompt batch; the whole sweep is one compile (the last batch
is padded).
"""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Bool, Float, Int
from ..edits import Replace
from ..model import Transformer
from ..taps import every_layer
from ._stream import chunks, head_rows, pad_rows, padded_slice, progress, tail_shape
from .layers import clean_prefix, forward_layers, unembed
from .run import check_tokens

__all__ = ["ablation_sweep", "unit_mask", "first_edited"]

Positions = Literal["last", "all"] | Bool[ArrayLike, " pos"]


def unit_mask(mask: Bool[Array, " layer *unit"], tail: tuple[int, ...]) -> Array:
    """Reshapes a `[layer, *unit]` mask to broadcast against a stacked tap
    `[layer, pos, *tail]`: `[layer, 1, *unit, 1, ...]`."""
    unit = mask.shape[1:]
    if tuple(tail[: len(unit)]) != tuple(unit):
        raise ValueError(
            f"mask unit shape {unit} must be a leading part of the tap's per-position "
            f"shape {tail}"
        )
    return mask.reshape(mask.shape[0], 1, *unit, *(1,) * (len(tail) - len(unit)))


def first_edited(masks: np.ndarray, axis: int) -> int:
    """Index of the first entry along `axis` that any mask sets (0 if none)."""
    hit = np.asarray(masks).any(axis=tuple(i for i in range(masks.ndim) if i != axis))
    return int(np.argmax(hit)) if hit.any() else 0


def _position_mask(positions, n_pos: int) -> np.ndarray:
    if isinstance(positions, str):
        if positions not in ("last", "all"):
            raise ValueError(
                f"positions must be 'last', 'all' or a mask, not {positions!r}"
            )
        mask = np.zeros(n_pos, bool)
        mask[-1 if positions == "last" else slice(None)] = True
        return mask
    mask = np.asarray(positions)
    if mask.shape != (n_pos,) or mask.dtype != np.bool_:
        raise ValueError(f"position mask must be bool [{n_pos}], got {mask.shape}")
    return mask


@eqx.filter_jit
def _ablate_chunk(model, tokens, masks, values, pos_mask, margs, tap, L, p0, metric):
    tail = tail_shape(tap, model.cfg)

    def per_prompt(tokens, values, margs):
        x, kv = clean_prefix(model, tokens, L, p0)

        def per_set(mask):
            where = unit_mask(mask, tail) & pos_mask.reshape(1, -1, *(1,) * len(tail))
            edit = Replace(values, where)
            h, _ = forward_layers(
                model, x, L, edits={every_layer(tap): edit}, past_kv=kv, logits=False
            )
            return metric(unembed(model, h[-1]), *margs)

        return jax.vmap(per_set)(masks)

    value_axis = 0 if values.ndim == 3 + len(tail) else None
    out = jax.vmap(per_prompt, in_axes=(0, value_axis, 0))(tokens, values, margs)
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)


def ablation_sweep(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    masks: Bool[ArrayLike, "set layer *unit"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "mlp.hook_post",
    values: Float[ArrayLike, "layer pos *tail"]
    | Float[ArrayLike, "prompt layer pos *tail"]
    | None = None,
    positions: Positions = "last",
    batch_size: int = 32,
    progress_bar: bool = True,
):
    """Metric of every prompt with every set of units ablated.

    Arguments:
        model: the transformer.
        tokens: `[prompt, pos]`.
        masks: `[set, layer, *unit]`, True = ablate (see the module docstring).
        metric: `metric(last_logits, *args) -> scalar or pytree` (see `metrics`).
        metric_args: arrays with a leading `prompt` axis, sliced per prompt for `metric`.
        tap: block tap suffix to ablate (`"mlp.hook_post"`, `"attn.hook_z"`, ...).
        values: replacement values: None (zero ablation), `[layer, pos, *tail]` (mean
            ablation, e.g. from `means.mean_cache`), or `[prompt, layer, pos, *tail]`
            (resample ablation, e.g. `means.stacked_activations` of other prompts).
        positions: `"last"`, `"all"` or a bool `[pos]` mask of the edited positions.
        batch_size: prompts per device call (each runs every set: `set * batch_size`
            single-position forwards above the first edited layer).
        progress_bar: tqdm over prompt batches.

    Returns:
        The metric's output with leading axes `[set, prompt]`.
    """
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = np.asarray(tokens)
    n_prompt, n_pos = tokens.shape
    cfg = model.cfg
    tail = tail_shape(tap, cfg)
    masks = np.asarray(masks)
    if masks.ndim < 2 or masks.shape[1] != cfg.n_layers:
        raise ValueError(
            f"masks must be [set, layer={cfg.n_layers}, *unit]: {masks.shape}"
        )
    pos_mask = _position_mask(positions, n_pos)
    L = first_edited(masks, 1)
    p0 = int(np.argmax(pos_mask))
    dtype = model.embed.W_E.dtype
    if values is None:
        values = jnp.zeros((cfg.n_layers, n_pos, *tail), dtype)
    values = jnp.asarray(values)
    per_prompt = values.ndim == 3 + len(tail)
    values = values[:, L:, p0:] if per_prompt else values[L:, p0:]
    masks = jnp.asarray(masks[:, L:])
    pos_mask = jnp.asarray(pos_mask[p0:])
    margs = jax.tree.map(np.asarray, tuple(metric_args))
    batch_size = min(batch_size, n_prompt)
    outs = []
    for start, stop in progress(
        chunks(n_prompt, batch_size), -(-n_prompt // batch_size), "ablate", progress_bar
    ):
        sl = slice(start, stop)
        chunk_vals = pad_rows(values[sl], batch_size) if per_prompt else values
        out = _ablate_chunk(
            model,
            jnp.asarray(pad_rows(tokens[sl], batch_size)),
            masks,
            chunk_vals,
            pos_mask,
            padded_slice(margs, start, stop, batch_size),
            tap,
            L,
            p0,
            metric,
        )
        outs.append(head_rows(out, stop - start, axis=1))
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs)

"""Ablation sweeps: zero / mean / resample ablation of many neuron, head or component sets in
one compiled program.

A *set* is a boolean mask over `[layer, *unit]` of one block tap, where `unit` is a leading
part of the tap's per-position shape: `[layer, d_mlp]` for neurons of `mlp.hook_post`,
`[layer, head_index]` for heads of `attn.hook_z`, `[layer]` for whole components (any tap);
for a top-level tap (`hook_embed`) there is no `layer` axis. Every set's masked units are
overwritten with `values` (zeros, a mean cache, or per-prompt resample activations) at the
chosen positions, and `metric` is read at each prompt's answer position. Several taps can be
ablated together (heads and neurons of a circuit): one mask per tap for every set. Sets may
also differ per prompt (`masks_per_prompt`, e.g. the neurons associated with each prompt).

Shared computation (see `sweep`): layers below the first edited layer and positions before
the first edited position run once per prompt; each set runs the rest, and only the answer
position is unembedded. Sets are `vmap`ped inside each prompt batch; one compile per sweep.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._typing import Array, ArrayLike, Bool, Float, Int, PyTree, Shaped
from ..edits import Replace
from ..inputs import prompts
from ..model import Transformer
from .batching import stream
from .sweep import (
    EMBED,
    first_edited,
    first_layers,
    in_set_order,
    site,
    stack_size,
    start_at,
    start_groups,
    sweep,
    unit_mask,
)

__all__ = ["ablation_sweep"]

Positions = Literal["last", "all"] | Bool[ArrayLike, " pos"]


@eqx.filter_jit
def _ablate(model, batch, masks, values, pos_mask, sites, L, p0, metric, read_all):
    def per_prompt(item):
        prompt, margs = item["prompt"], item["margs"]
        vals = item["values"] if "values" in item else values
        sets = item["masks"] if "masks" in item else masks
        state = start_at(model, prompt, L, p0)
        index = prompt.answer - p0
        last = jnp.arange(prompt.tokens.shape[0] - p0) == index
        hot = last if pos_mask is None else pos_mask
        index = None if read_all else index

        def edits(mask):
            out = {}
            for where, m, v in zip(sites, mask, vals, strict=True):
                n_lead, n_tail = len(where.lead), len(where.tail)
                h = hot.reshape(*(1,) * n_lead, -1, *(1,) * n_tail)
                out[where.key] = Replace(v, unit_mask(m, where) & h)
            return out

        return sweep(model, state, L, sets, edits, metric, margs, index)

    return jax.vmap(per_prompt)(batch)


def ablation_sweep(
    model: Transformer,
    tokens: Int[ArrayLike, "*checkpoint prompt pos"],
    masks: Bool[ArrayLike, "..."] | Sequence[Bool[ArrayLike, "..."]],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str | Sequence[str] = "mlp.hook_post",
    values: Float[ArrayLike, "..."] | None | Sequence = None,
    positions: Positions = "last",
    masks_per_prompt: bool = False,
    attention_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, "*checkpoint prompt"] | None = None,
    read: Literal["answer", "all"] = "answer",
    n_layer_groups: int = 1,
    batch_size: int = 32,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
    stacked: bool = False,
    stacked_inputs: bool = False,
) -> PyTree[Shaped[Array, "..."]]:
    """Metric of every prompt with every set of units ablated.

    Arguments:
        model: the transformer.
        tokens: `[prompt, pos]` (padded with `attention_mask` when ragged).
        masks: `[set, layer, *unit]` (`[set, *unit]` for a top-level tap), True = ablate;
            with several taps, a sequence of such masks, one per tap, with the same sets.
        metric: `metric(logits, *args) -> scalar or pytree` (see `metrics`), on the logits
            `[d_vocab]` at each prompt's answer position.
        metric_args: arrays with a leading `prompt` axis, sliced per prompt for `metric`.
        tap: block tap suffix (`"mlp.hook_post"`, `"attn.hook_z"`, ...) or `"hook_embed"`;
            or a sequence of them, ablated together.
        values: replacement values: None (zero ablation), `[layer, pos, *tail]` (mean
            ablation, e.g. from `means.mean_cache`), or `[prompt, layer, pos, *tail]`
            (resample ablation, e.g. `means.stacked_activations` of other prompts); no
            `layer` axis for a top-level tap. With several taps, one entry per tap (None
            or shared `[layer, pos, *tail]` values).
        positions: `"last"` (each prompt's answer position), `"all"`, or a bool `[pos]`
            mask of the edited positions.
        masks_per_prompt: every mask has a leading `prompt` axis (`[prompt, set, layer,
            *unit]`): each prompt runs its own sets (all prompts the same number).
        attention_mask: `[prompt, pos]`, 1 = token, 0 = padding.
        answer_pos: `[prompt]` positions the metric reads (default: last real token).
        read: `"answer"`: the metric reads the logits `[d_vocab]` at the answer
            position; `"all"`: the logits of every position, `[pos, d_vocab]` (e.g. a
            loss over a whole text; padded positions hold finite, meaningless values,
            so pass the mask in `metric_args` to drop them). Every position is then
            unembedded and nothing before the first edited position is shared.
        n_layer_groups: sets are split by the first layer they edit into this many
            layer ranges, each run from its own first layer (see `sweep.start_groups`):
            with many sets that start at different depths (one head or neuron each),
            later groups skip the layers below them; each group compiles one program.
        batch_size: prompts per device call (each runs every set).
        progress_bar: tqdm over prompt batches.
        mesh: split the prompts over this mesh's `data` axis (see `jaxinterp.sharding`).
        stacked: `model` is several models of one architecture stacked on a leading
            axis of every array (e.g. training checkpoints); all run the same prompts and
            sets in one program, vmapped over that axis.
        stacked_inputs: with `stacked`, each model runs its own prompts: `tokens`,
            `attention_mask`, `answer_pos`, every `metric_args` array and, with
            `masks_per_prompt`, the masks have a leading `checkpoint` axis (every model
            equally many prompts); `values` must then be None or shared `[layer, pos,
            *tail]`.

    Returns:
        The metric's output with leading axes `[prompt, set]` (`[checkpoint, prompt,
        set]` with `stacked`).
    """
    cfg = model.cfg
    if stacked_inputs:  # [checkpoint, prompt, ...] folded to [checkpoint * prompt, ...]
        n_models = stack_size(model) if stacked else None
        fold = functools.partial(_fold, n_models)
        tokens, attention_mask, answer_pos = (
            None if x is None else fold(x, name)
            for x, name in zip(
                (tokens, attention_mask, answer_pos),
                ("tokens", "attention_mask", "answer_pos"),
                strict=True,
            )
        )
        metric_args = tuple(
            jax.tree.map(lambda a: fold(a, "metric_args"), tuple(metric_args))
        )
        if masks_per_prompt:
            masks = (
                [fold(m, "masks") for m in masks]
                if not isinstance(tap, str)
                else fold(masks, "masks")
            )
    batch = {"prompt": prompts(cfg, tokens, attention_mask, answer_pos)}
    n_prompt, n_pos = batch["prompt"].tokens.shape
    several = not isinstance(tap, str)
    taps = tuple(tap) if several else (tap,)
    masks = tuple(masks) if several else (masks,)
    values = tuple(values) if several and values is not None else (values,) * len(taps)
    if not taps or len(masks) != len(taps) or len(values) != len(taps):
        raise ValueError(
            f"ablation of {len(taps)} taps needs one mask and one values entry per tap, "
            f"got {len(masks)} masks and {len(values)} values"
        )
    sites = tuple(site(t, cfg) for t in taps)
    lead = 1 + masks_per_prompt
    checked, starts, n_sets = [], [], set()
    for where, m in zip(sites, masks, strict=True):
        m = np.asarray(m)
        want = f"[{'prompt, ' * masks_per_prompt}set, {', '.join(map(str, where.lead))}"
        if m.dtype != np.bool_ or m.shape[lead : lead + len(where.lead)] != where.lead:
            raise ValueError(
                f"masks of {where.key} must be bool {want}{', ' if where.lead else ''}"
                f"*unit], got {m.dtype}{list(m.shape)}"
            )
        if masks_per_prompt and m.shape[0] != n_prompt:
            raise ValueError(f"masks have {m.shape[0]} prompts, tokens {n_prompt}")
        n_sets.add(m.shape[lead - 1])
        if where.stacked:
            starts.append(first_layers(m, lead - 1, lead))
        else:
            starts.append(np.full(m.shape[lead - 1], EMBED))
        checked.append(m)
    if len(n_sets) != 1:
        raise ValueError(f"every tap's masks must list the same sets: {sorted(n_sets)}")
    first = np.min(starts, axis=0)  # [set]
    if read not in ("answer", "all"):
        raise ValueError(f"read must be 'answer' or 'all': {read!r}")
    read_all = read == "all"
    if read_all and answer_pos is not None:
        raise ValueError("answer_pos has no meaning with read='all'")
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
    p0 = 0 if read_all else p0
    per_prompt = None
    sliced = []
    for where, v in zip(sites, values, strict=True):
        shape = (*where.lead, n_pos, *where.tail)
        if v is None:
            v = np.zeros(shape, model.embed.W_E.dtype)
        v = jnp.asarray(v)
        if v.shape not in (shape, (n_prompt, *shape)) or (several and v.shape != shape):
            allowed = f" or [prompt, {str(list(shape))[1:-1]}]" * (not several)
            raise ValueError(
                f"values of {where.key} must be {list(shape)}{allowed}, got "
                f"{list(v.shape)}"
            )
        per_prompt = v.ndim > len(shape)
        if per_prompt and stacked_inputs:
            raise ValueError(
                "with stacked_inputs, values must be None or shared [layer, pos, *tail]"
            )
        axis = len(where.lead) + per_prompt
        sliced.append(jax.lax.slice_in_dim(v, p0, n_pos, axis=axis))
    if per_prompt:
        batch["values"] = tuple(sliced)
    batch["margs"] = jax.tree.map(np.asarray, tuple(metric_args))
    pos_mask = None if pos_mask is None else jnp.asarray(pos_mask[p0:])
    shared = None if per_prompt else tuple(sliced)
    if stacked:
        stack_size(model)  # a clear error for a single model
    # with stacked_inputs, every per-prompt leaf goes [prompt, checkpoint, ...], so that
    # batches stream over prompts and the models vmap over axis 1
    unfold = functools.partial(_unfold, stack_size(model) if stacked_inputs else None)
    batch = unfold(batch)
    groups = start_groups(first, cfg.n_layers, n_layer_groups)
    parts = []
    for idx in groups:
        group = tuple(np.take(m, idx, axis=lead - 1) for m in checked)
        if masks_per_prompt:
            batch["masks"] = unfold(group)
        shared_masks = None if masks_per_prompt else tuple(map(jnp.asarray, group))
        L = min(int(first[idx].min()), cfg.n_layers - 1)

        def chunk(batch, shared_masks=shared_masks, L=L):
            args = (
                batch,
                shared_masks,
                shared,
                pos_mask,
                sites,
                L,
                p0,
                metric,
                read_all,
            )
            if stacked:
                return _ablate_stacked(model, *args, own_inputs=stacked_inputs)
            return _ablate(model, *args)

        parts.append(
            stream(
                chunk,
                batch,
                batch_size=batch_size,
                desc="ablate",
                progress_bar=progress_bar,
                mesh=mesh,
                axis=int(stacked),
            )
        )
    return in_set_order(parts, groups, axis=1 + int(stacked))


@eqx.filter_jit
def _ablate_stacked(models, batch, *args, own_inputs: bool):
    """`_ablate` of every model of a stack: `[checkpoint, prompt, set, ...]`; with
    `own_inputs`, model `c` runs `batch[:, c]`."""
    return eqx.filter_vmap(
        lambda m, b: _ablate(m, b, *args), in_axes=(0, 1 if own_inputs else None)
    )(models, batch)


def _fold(n_models: int | None, x, what: str) -> np.ndarray:
    """`[checkpoint, prompt, ...]` as `[checkpoint * prompt, ...]`."""
    if n_models is None:
        raise ValueError("stacked_inputs needs stacked=True")
    a = np.asarray(x)
    if a.ndim < 2 or a.shape[0] != n_models:
        raise ValueError(
            f"with stacked_inputs, {what} needs a leading checkpoint axis of "
            f"{n_models} and a prompt axis, got shape {list(a.shape)}"
        )
    return a.reshape(-1, *a.shape[2:])


def _unfold(n_models: int | None, tree):
    """Every leaf `[checkpoint * prompt, ...]` as `[prompt, checkpoint, ...]` (unchanged
    without `n_models`)."""
    if n_models is None:
        return tree
    return jax.tree.map(
        lambda a: np.swapaxes(np.asarray(a).reshape(n_models, -1, *a.shape[1:]), 0, 1),
        tree,
    )

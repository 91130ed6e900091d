"""Activation patching and path patching sweeps, each one compiled program.

Terminology: the *base* run is the one being edited and the *source* run supplies the patched
values. Noising (corrupt activations into the clean run) is `base=clean, source=corrupt`;
denoising is the reverse. Base and source prompts are aligned position by position (pad them
to one length with `attention_mask` / `source_mask` when ragged).

`activation_patching` patches one cell at a time: `(layer, pos, head)` for head taps such as
`attn.hook_z`, `(layer, pos)` for `mlp.hook_post` / residual taps, `(pos,)` for `hook_embed`.
A patch at `(l, p)` cannot change layers below `l` or positions before `p`, so each prompt's
base run is done once (keeping the residual at the start of each layer group and every
layer's keys/values), and each cell runs only layers `>= start of its group` on positions
`>= p` (see `sweep`). Positions are a static loop inside the program (one sub-program per
position and layer group; more groups save FLOPs but add compile time).

`patch_cells` patches an arbitrary list of cells (the exact reference for attribution
patching), recomputing only layers and positions at or after the earliest listed cell.
`path_patching` patches senders' outputs into receivers' inputs only (IOI-style).
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._typing import Array, ArrayLike, Bool, Int, PyTree, Shaped
from ..edits import Replace
from ..inputs import check_indices, prompts
from ..model import Transformer
from ..taps import Taps, every_layer
from .batching import stream
from .run import run_cached
from .sweep import (
    EMBED,
    State,
    activations,
    first_layers,
    in_set_order,
    layer_groups,
    site,
    start_at,
    start_groups,
    sweep,
    unit_mask,
)

__all__ = ["activation_patching", "patch_cells", "path_patching", "layer_groups"]


def _pairs(model, base, source, margs, attention_mask, source_mask, answer_pos):
    """The batched inputs of a base/source sweep: validated prompts (same shape) and the
    metric's arguments."""
    base = prompts(model.cfg, base, attention_mask, answer_pos)
    source_mask = attention_mask if source_mask is None else source_mask
    source = prompts(model.cfg, source, source_mask)
    if base.tokens.shape != source.tokens.shape:
        raise ValueError(
            f"base and source must have one shape [prompt, pos]: {base.tokens.shape} vs "
            f"{source.tokens.shape}"
        )
    margs = jax.tree.map(np.asarray, tuple(margs))
    return {"base": base, "source": source, "margs": margs}


def _cells_of(where, per_head: bool, group: tuple[int, int], n_layers: int):
    """One-hot `[cell, *lead, *unit]` masks of the cells of a layer group, layer-major."""
    s, e = group
    if s == EMBED:
        return np.ones((1,), bool)  # the whole tap at one position
    layers = np.eye(n_layers, dtype=bool)[s:e]
    if not per_head:
        return layers
    units = np.eye(where.tail[0], dtype=bool)
    return (layers[:, None, :, None] & units[None, :, None, :]).reshape(
        -1, n_layers, where.tail[0]
    )


@eqx.filter_jit
def _patch(model, batch, where, per_head, positions, groups, p_max, metric):
    cfg = model.cfg
    unit_axes = (where.tail[0],) if per_head else ()
    starts = frozenset(f"blocks.{s}.hook_resid_pre" for s, _ in groups if s >= 0)

    def per_prompt(item):
        base, margs = item["base"], item["margs"]
        src = activations(model, item["source"], frozenset({where.key}))[1][where.key]
        span = model.span(base.tokens.shape[0], attention_mask=base.mask)
        x0 = model.embed_tokens(base.tokens, span, Taps(cfg))
        _, (K, V), rec = run_cached(model, x0, span, capture=starts)
        by_pos = []
        for p in positions:
            q = min(p, p_max)  # the run starts at or before every answer position
            hot = jnp.arange(base.tokens.shape[0] - q) == p - q
            hot = hot.reshape(*(1,) * len(where.lead), -1, *(1,) * len(where.tail))
            value = jax.lax.slice_in_dim(src, q, None, axis=len(where.lead))
            by_group = []
            for s, e in groups:
                x = x0 if s == EMBED else rec[f"blocks.{s}.hook_resid_pre"]
                kv = None if q == 0 else (K[max(s, 0) :, :q], V[max(s, 0) :, :q])
                state = State(x[q:], base.tokens[q:], span.split(q)[1], kv)
                cells = jnp.asarray(_cells_of(where, per_head, (s, e), cfg.n_layers))

                def edits(cell, value=value, hot=hot):
                    return {where.key: Replace(value, unit_mask(cell, where) & hot)}

                out = sweep(
                    model, state, s, cells, edits, metric, margs, base.answer - q
                )
                rows = 1 if s == EMBED else e - s
                by_group.append(
                    jax.tree.map(
                        lambda a, r=rows: a.reshape(r, *unit_axes, *a.shape[1:]), out
                    )
                )
            by_pos.append(jax.tree.map(lambda *a: jnp.concatenate(a), *by_group))
        out = jax.tree.map(
            lambda *a: jnp.stack(a, axis=1), *by_pos
        )  # [layer, pos, ...]
        return out if where.stacked else jax.tree.map(lambda a: a[0], out)

    return jax.vmap(per_prompt)(batch)


def activation_patching(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "attn.hook_z",
    per_head: bool | None = None,
    positions: Sequence[int] | None = None,
    n_layer_groups: int = 2,
    attention_mask: ArrayLike | None = None,
    source_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 8,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> PyTree[Shaped[Array, "prompt ..."]]:
    """Metric after patching each single cell of `tap` from the source run into the base run.

    Arguments:
        model: the transformer.
        base_tokens, source_tokens: `[prompt, pos]` pairs (same length).
        metric: `metric(logits, *args)` at each prompt's answer position; `metric_args`
            have a leading `prompt` axis.
        tap: block tap suffix (`"attn.hook_z"`, `"mlp.hook_post"`, `"hook_resid_pre"`, ...)
            or `"hook_embed"` / `"hook_pos_embed"` (cells are then positions).
        per_head: split cells along the tap's first per-position axis (heads); default True
            for `attn.hook_z` / `hook_q` / `hook_result`, False otherwise.
        positions: positions to patch (default all), static.
        n_layer_groups: layer groups sharing one start layer (see the module docstring).
        attention_mask, source_mask: `[prompt, pos]` padding masks of base and source
            (`source_mask` defaults to `attention_mask`).
        answer_pos: `[prompt]` positions the metric reads (default: last real token).
        batch_size: prompts per device call (each runs every cell).
        progress_bar: tqdm over prompt batches.
        mesh: split the prompts over this mesh's `data` axis (see `jaxinterp.sharding`).

    Returns:
        The metric's output with leading axes `[prompt, layer, pos, head]` (no `head` axis
        when `per_head` is False, no `layer` axis for a top-level tap), `pos` running over
        `positions`.
    """
    padding = (attention_mask, source_mask, answer_pos)
    batch = _pairs(model, base_tokens, source_tokens, metric_args, *padding)
    n_pos = batch["base"].tokens.shape[1]
    where = site(tap, model.cfg)
    if per_head is None:
        heads = ("attn.hook_z", "attn.hook_q", "attn.hook_result")
        per_head = where.key in tuple(every_layer(h) for h in heads)
    if per_head and not where.stacked:
        raise ValueError(f"per_head cells need a head tap, not {tap!r}")
    positions = range(n_pos) if positions is None else positions
    positions = tuple(
        sorted(set(check_indices(positions, n_pos, "positions").tolist()))
    )
    if where.stacked:
        groups = layer_groups(model.cfg.n_layers, n_layer_groups)
    else:
        groups = ((EMBED, 0),)
    p_max = int(batch["base"].answer.min())

    def chunk(batch):
        return _patch(model, batch, where, per_head, positions, groups, p_max, metric)

    return stream(
        chunk,
        batch,
        batch_size=batch_size,
        desc="patch",
        progress_bar=progress_bar,
        mesh=mesh,
    )


def _cell_mask(cell, where, n_pos):
    """Boolean `[*lead, pos, *tail]` mask of one cell `(layer, pos[, unit])` (`(pos[,
    unit])` for a top-level site), positions counted from the run's start."""
    n_lead = len(where.lead)
    mask = jnp.arange(n_pos) == cell[n_lead]
    if n_lead:
        mask = (jnp.arange(where.lead[0]) == cell[0])[:, None] & mask[None]
    mask = mask.reshape(*mask.shape, *(1,) * len(where.tail))
    if cell.shape[0] == n_lead + 2:
        unit_hot = jnp.arange(where.tail[0]) == cell[-1]
        mask = mask & unit_hot.reshape(
            *(1,) * (n_lead + 1), -1, *(1,) * (len(where.tail) - 1)
        )
    return mask


@eqx.filter_jit
def _cells(model, batch, cells, where, L, p0, metric):
    n_lead = len(where.lead)
    offset = jnp.zeros(cells.shape[1], cells.dtype).at[n_lead].set(p0)

    def per_prompt(item):
        base, margs = item["base"], item["margs"]
        src = activations(model, item["source"], frozenset({where.key}))[1][where.key]
        src = jax.lax.slice_in_dim(src, p0, None, axis=n_lead)
        state = start_at(model, base, L, p0)
        n_run = base.tokens.shape[0] - p0

        def edits(cell):
            return {where.key: Replace(src, _cell_mask(cell - offset, where, n_run))}

        return sweep(model, state, L, cells, edits, metric, margs, base.answer - p0)

    return jax.vmap(per_prompt)(batch)


def patch_cells(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    cells: Int[ArrayLike, "cell index"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "mlp.hook_post",
    attention_mask: ArrayLike | None = None,
    source_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 64,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> PyTree[Shaped[Array, "prompt cell ..."]]:
    """Metric after patching each listed cell from source into base.

    Arguments:
        cells: `[cell, 2]` rows `(layer, pos)` or `[cell, 3]` rows `(layer, pos, unit)`
            (unit = index into the tap's first per-position axis: neuron, head); for a
            top-level tap (`hook_embed`) `(pos,)` or `(pos, unit)`.
        batch_size: cells per device call, over all prompts at once.
        mesh: split the cells (not the prompts) over this mesh's `data` axis.
        Other arguments as in `activation_patching`.

    Layers below the lowest listed layer and positions before the earliest listed position
    (or answer position) run once per prompt; each cell recomputes only the rest.

    Returns:
        The metric's output with leading axes `[prompt, cell]`.
    """
    padding = (attention_mask, source_mask, answer_pos)
    batch = _pairs(model, base_tokens, source_tokens, metric_args, *padding)
    n_pos = batch["base"].tokens.shape[1]
    where = site(tap, model.cfg)
    n_lead = len(where.lead)
    cells = np.asarray(cells)
    if (
        cells.ndim != 2
        or len(cells) == 0
        or cells.shape[1] not in (n_lead + 1, n_lead + 2)
    ):
        raise ValueError(
            f"cells for {tap!r} must be [cell, {n_lead + 1}] or [cell, {n_lead + 2}] "
            f"indices, got shape {cells.shape}"
        )
    limits = [*where.lead, n_pos, *where.tail[:1]][: cells.shape[1]]
    cells = np.stack(
        [
            check_indices(c, n, f"cells column {i}")
            for i, (c, n) in enumerate(zip(cells.T, limits, strict=True))
        ],
        1,
    )
    L = int(cells[:, 0].min()) if n_lead else EMBED
    p0 = min(int(cells[:, n_lead].min()), int(batch["base"].answer.min()))
    batch = jax.tree.map(jnp.asarray, batch)

    def chunk(cells):
        return _cells(model, batch, cells, where, L, p0, metric)

    return stream(
        chunk,
        cells,
        batch_size=batch_size,
        desc="cells",
        progress_bar=progress_bar,
        mesh=mesh,
        axis=1,
    )


@eqx.filter_jit
def _path(
    model, batch, senders, receivers, where_r, L_s, L_r, stop_r, freeze_mlps, metric
):
    cfg = model.cfg
    z_key = every_layer("attn.hook_z")
    mlp_key = every_layer("mlp.hook_post")
    frozen = frozenset({z_key, mlp_key} if freeze_mlps else {z_key})
    receive = unit_mask(receivers, where_r)

    def per_prompt(item):
        base, margs = item["base"], item["margs"]
        # one clean run gives the frozen values, the receivers' clean inputs, the input of
        # run (1) (no sender below L_s: the layers below are clean) and the start of (2)
        starts = {f"blocks.{L_s}.hook_resid_pre", f"blocks.{L_r}.hook_resid_pre"}
        clean = activations(model, base, frozen | starts | {where_r.key})[1]
        corrupt = activations(model, item["source"], frozenset({z_key}))[1][z_key]
        span = model.span(base.tokens.shape[0], attention_mask=base.mask)
        x_s = clean[f"blocks.{L_s}.hook_resid_pre"]
        state = State(clean[f"blocks.{L_r}.hook_resid_pre"], base.tokens, span, None)

        def edits(sender):
            # (1) senders from the source, every other head (and MLP) frozen to the base
            z = jnp.where(sender[:, None, :, None], corrupt, clean[z_key])
            frozen_edits = {z_key: Replace(z)}
            if freeze_mlps:
                frozen_edits[mlp_key] = Replace(clean[mlp_key])
            taps = Taps(cfg, frozenset({where_r.key}), frozen_edits)
            model.run_blocks(x_s, span, taps, L_s, stop_r)
            value = taps.records[where_r.key]  # [stop_r - L_s, pos, *tail]
            below = clean[where_r.key][:L_s]
            pad = jnp.zeros((cfg.n_layers - stop_r, *value.shape[1:]), value.dtype)
            # (2) only the receivers take those values; everything after them recomputes
            value = jnp.concatenate([below, value, pad])
            return {where_r.key: Replace(value, receive)}

        return sweep(model, state, L_r, senders, edits, metric, margs, base.answer)

    return jax.vmap(per_prompt)(batch)


def path_patching(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    senders: Bool[ArrayLike, "set layer head_index"],
    receivers: Bool[ArrayLike, " layer *unit"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    receiver_tap: str = "attn.hook_q",
    freeze_mlps: bool = True,
    n_layer_groups: int = 1,
    attention_mask: ArrayLike | None = None,
    source_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 8,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> PyTree[Shaped[Array, "prompt set ..."]]:
    """Path patching from sender heads to receiver inputs, for many sender sets at once.

    For each sender set (a `[layer, head_index]` mask): (1) run the base prompt with the
    senders' `attn.hook_z` taken from the source run and every other head's `hook_z` (and,
    with `freeze_mlps`, every `mlp.hook_post`) frozen to its base value, recording
    `receiver_tap`; (2) run the base prompt again with only the receivers' units of
    `receiver_tap` replaced by the values recorded in (1), everything downstream recomputed;
    the metric is read there. The sender effect thus reaches the receivers only directly
    (through the residual stream), never through other heads or MLPs.

    Arguments:
        senders: `[set, layer, head_index]`, True = sender.
        receivers: `[layer, *unit]` mask over `receiver_tap` (`[layer, head_index]` for
            `attn.hook_q`, `[layer, kv_head_index]` for `attn.hook_k` / `hook_v`, `[layer]`
            for residual taps such as `hook_resid_pre`); all positions.
        receiver_tap: the receivers' input tap suffix.
        freeze_mlps: also freeze MLP activations to the base run.
        n_layer_groups: sender sets are split by their first sender layer into this many
            layer ranges, and run (1) of each group starts at its first sender layer
            (exact: nothing below it differs from the base run); more groups save FLOPs
            but compile one program each.
        Other arguments as in `activation_patching`.

    Returns:
        The metric's output with leading axes `[prompt, set]`.
    """
    cfg = model.cfg
    padding = (attention_mask, source_mask, answer_pos)
    batch = _pairs(model, base_tokens, source_tokens, metric_args, *padding)
    where_r = site(receiver_tap, cfg)
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    if senders.shape[1:] != (cfg.n_layers, cfg.n_heads) or senders.dtype != np.bool_:
        raise ValueError(
            f"senders must be bool [set, {cfg.n_layers}, {cfg.n_heads}]: {senders.shape}"
        )
    if not where_r.stacked or receivers.dtype != np.bool_ or not receivers.any():
        raise ValueError(
            "receivers must be a non-empty bool [layer, *unit] block-tap mask"
        )
    hit = receivers.reshape(cfg.n_layers, -1).any(1)
    L_r, stop_r = int(np.argmax(hit)), cfg.n_layers - int(np.argmax(hit[::-1]))
    first = first_layers(senders, 0, 1)
    groups = start_groups(first, cfg.n_layers, n_layer_groups)
    parts = []
    for idx in groups:
        # a group whose senders all sit at or above the receivers still runs one layer
        L_s = min(int(first[idx].min()), stop_r - 1)

        def chunk(batch, idx=idx, L_s=L_s):
            return _path(
                model,
                batch,
                jnp.asarray(senders[idx]),
                jnp.asarray(receivers),
                where_r,
                L_s,
                L_r,
                stop_r,
                freeze_mlps,
                metric,
            )

        parts.append(
            stream(
                chunk,
                batch,
                batch_size=batch_size,
                desc="path",
                progress_bar=progress_bar,
                mesh=mesh,
            )
        )
    return in_set_order(parts, groups, axis=1)

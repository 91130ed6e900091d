"""Activation patching and path patching sweeps, each one compiled program.

Terminology: the *base* run is the one being edited and the *source* run supplies the patched
values. Noising (the paper's §3: corrupt activations into the clean run) is
`base=clean, source=corrupt`; denoising is the reverse.

`activation_patching` patches one cell at a time: `(layer, pos, head)` for head taps such as
`attn.hook_z`, `(layer, pos)` for `mlp.hook_post` / residual taps. Cells are one-hot masks of a
stacked `Replace` edit, `vmap`ped in one program. A patch at `(l, p)` cannot change layers
below `l` or positions before `p`, so the program runs the base prompt once (capturing the
residual at the start of each layer group and every layer's keys/values), and each cell runs
only layers `>= start of its group` on positions `>= p`, continuing the base cache of positions
`< p`. Positions are a static loop inside the program (one sub-program per position and layer
group; more groups save FLOPs but add compile time).

`patch_cells` patches an arbitrary list of cells (the exact reference for attribution
patching on a sample of neurons), recomputing only layers and positions at or after the
earliest listed cell. `path_patching` patches senders' outputs into
receivers' inputs only (IOI-style).
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import ArrayLike, Bool, Int
from ..edits import Replace
from ..model import Transformer
from ..taps import every_layer
from ._stream import (
    chunks,
    head_rows,
    pad_rows,
    padded_slice,
    progress,
    stacked_names,
    tail_shape,
)
from .ablate import unit_mask
from .layers import clean_prefix, embed, forward_layers, unembed
from .run import check_tokens, kv_names

__all__ = ["activation_patching", "patch_cells", "path_patching", "layer_groups"]


def layer_groups(n_layers: int, n_groups: int) -> tuple[tuple[int, int], ...]:
    """Splits `range(n_layers)` into `n_groups` contiguous `(start, stop)` ranges."""
    n_groups = max(1, min(n_groups, n_layers))
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return tuple((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _stacked(model, tokens, suffixes, extra=frozenset()):
    """One full-depth pass (no unembedding): stacked `[layer, pos, ...]` taps + extras."""
    n = model.cfg.n_layers
    names = frozenset(m for s in suffixes for m in stacked_names(s, range(n))) | extra
    x, rec = forward_layers(model, embed(model, tokens), 0, capture=names, logits=False)
    stacked = {
        s: jnp.stack([rec[m] for m in stacked_names(s, range(n))]) for s in suffixes
    }
    return x, stacked, rec


def _check_pair(model, base_tokens, source_tokens):
    check_tokens(base_tokens, model.cfg.d_vocab)
    check_tokens(source_tokens, model.cfg.d_vocab)
    base, source = np.asarray(base_tokens), np.asarray(source_tokens)
    if base.shape != source.shape or base.ndim != 2:
        raise ValueError(
            f"base/source must both be [prompt, pos]: {base.shape} {source.shape}"
        )
    return base, source


@eqx.filter_jit
def _patch_chunk(model, base, source, margs, tap, per_head, positions, groups, metric):
    cfg = model.cfg
    tail = tail_shape(tap, cfg)
    n_unit = tail[0] if per_head else 1
    k_names, v_names = kv_names(cfg)
    starts = frozenset(f"blocks.{s}.hook_resid_pre" for s, _ in groups)

    def per_prompt(base, source, margs):
        _, src, _ = _stacked(model, source, (tap,))
        src = src[tap]
        _, _, rec = _stacked(model, base, (), starts | frozenset(k_names + v_names))
        K = jnp.stack([rec[n] for n in k_names])
        V = jnp.stack([rec[n] for n in v_names])
        by_pos = []
        for p in positions:
            by_group = []
            for s, e in groups:
                x = rec[f"blocks.{s}.hook_resid_pre"][p:]
                kv = None if p == 0 else (K[s:, :p], V[s:, :p])
                layer_hot = np.eye(cfg.n_layers - s, dtype=bool)[: e - s]  # [g, n - s]
                unit_hot = np.eye(n_unit, dtype=bool)
                cells_l = np.repeat(layer_hot, n_unit, axis=0)
                cells_u = np.tile(unit_hot, (e - s, 1))
                pos_hot = np.arange(base.shape[0] - p) == 0

                def per_cell(lh, uh, x=x, kv=kv, s=s, p=p, pos_hot=pos_hot):
                    unit = lh[:, None] & uh[None, :] if per_head else lh
                    where = unit_mask(unit, tail) & pos_hot.reshape(
                        1, -1, *(1,) * len(tail)
                    )
                    edit = Replace(src[s:, p:], where)
                    h, _ = forward_layers(
                        model,
                        x,
                        s,
                        edits={every_layer(tap): edit},
                        past_kv=kv,
                        logits=False,
                    )
                    return metric(unembed(model, h[-1]), *margs)

                out = jax.vmap(per_cell)(jnp.asarray(cells_l), jnp.asarray(cells_u))
                by_group.append(
                    jax.tree.map(lambda a, e=e, s=s: a.reshape(e - s, n_unit), out)
                )
            by_pos.append(jax.tree.map(lambda *a: jnp.concatenate(a), *by_group))
        out = jax.tree.map(
            lambda *a: jnp.stack(a, axis=1), *by_pos
        )  # [layer, pos, unit]
        return out if per_head else jax.tree.map(lambda a: a[..., 0], out)

    out = jax.vmap(per_prompt)(base, source, margs)
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), out)


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
    batch_size: int = 8,
    progress_bar: bool = True,
):
    """Metric after patching each single cell of `tap` from the source run into the base run.

    Arguments:
        model: the transformer.
        base_tokens, source_tokens: `[prompt, pos]` pairs (same length).
        metric: `metric(last_logits, *args)`; `metric_args` have a leading `prompt` axis.
        tap: block tap suffix (`"attn.hook_z"`, `"mlp.hook_post"`, `"hook_resid_pre"`, ...).
        per_head: split cells along the tap's first per-position axis (heads); default True
            for `attn.hook_z` / `hook_q` / `hook_result`, False otherwise.
        positions: positions to patch (default all), static.
        n_layer_groups: layer groups sharing one start layer (see the module docstring).
        batch_size: prompts per device call (each runs every cell).
        progress_bar: tqdm over prompt batches.

    Returns:
        The metric's output with leading axes `[layer, pos, head, prompt]` (no `head` axis
        when `per_head` is False), `pos` running over `positions`.
    """
    base, source = _check_pair(model, base_tokens, source_tokens)
    n_prompt, n_pos = base.shape
    if per_head is None:
        per_head = tap in ("attn.hook_z", "attn.hook_q", "attn.hook_result")
    positions = tuple(
        range(n_pos) if positions is None else (p % n_pos for p in positions)
    )
    groups = layer_groups(model.cfg.n_layers, n_layer_groups)
    margs = jax.tree.map(np.asarray, tuple(metric_args))
    batch_size = min(batch_size, n_prompt)
    outs = []
    for start, stop in progress(
        chunks(n_prompt, batch_size), -(-n_prompt // batch_size), "patch", progress_bar
    ):
        sl = slice(start, stop)
        out = _patch_chunk(
            model,
            jnp.asarray(pad_rows(base[sl], batch_size)),
            jnp.asarray(pad_rows(source[sl], batch_size)),
            padded_slice(margs, start, stop, batch_size),
            tap,
            per_head,
            positions,
            groups,
            metric,
        )
        outs.append(head_rows(out, stop - start, axis=-1))
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=-1), *outs)


def _cell_mask(cell, n_layers, n_pos, tail):
    """Boolean `[layer, pos, *tail]` mask of one cell `(layer, pos[, unit])`."""
    layer_hot = jnp.arange(n_layers) == cell[0]
    pos_hot = jnp.arange(n_pos) == cell[1]
    mask = layer_hot[:, None] & pos_hot[None, :]
    mask = mask.reshape(n_layers, n_pos, *(1,) * len(tail))
    if cell.shape[0] == 3:
        unit_hot = jnp.arange(tail[0]) == cell[2]
        mask = mask & unit_hot.reshape(1, 1, tail[0], *(1,) * (len(tail) - 1))
    return mask


@eqx.filter_jit
def _cells_chunk(model, base, source, cells, margs, tap, L, p0, metric):
    cfg = model.cfg
    tail = tail_shape(tap, cfg)
    n_pos = base.shape[1] - p0
    # cells relative to the block (layers >= L, positions >= p0) that is recomputed
    offset = jnp.asarray([L, p0] + [0] * (cells.shape[1] - 2), cells.dtype)

    def per_prompt(base, source, margs):
        _, src, _ = _stacked(model, source, (tap,))
        src = src[tap][L:, p0:]
        x, kv = clean_prefix(model, base, L, p0)

        def per_cell(cell):
            where = _cell_mask(cell - offset, cfg.n_layers - L, n_pos, tail)
            h, _ = forward_layers(
                model,
                x,
                L,
                edits={every_layer(tap): Replace(src, where)},
                past_kv=kv,
                logits=False,
            )
            return metric(unembed(model, h[-1]), *margs)

        return jax.vmap(per_cell)(cells)

    out = jax.vmap(per_prompt)(base, source, margs)
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)


def patch_cells(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    cells: Int[ArrayLike, "cell 2"] | Int[ArrayLike, "cell 3"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "mlp.hook_post",
    batch_size: int = 64,
    progress_bar: bool = True,
):
    """Metric after patching each listed cell `(layer, pos)` or `(layer, pos, unit)` (unit =
    index into the tap's first per-position axis: neuron, head) from source into base.

    `batch_size` cells per device call over all prompts at once. As in `ablate`, layers
    below the lowest listed layer `L` and positions before the earliest listed position
    `p0` run once per prompt (clean base run and its keys/values); each cell recomputes
    layers `>= L` at positions `>= p0` only (one token for last-position cells).

    Returns the metric's output with leading axes `[cell, prompt]`.
    """
    base, source = _check_pair(model, base_tokens, source_tokens)
    cells = np.asarray(cells)
    n_cell = cells.shape[0]
    if cells.ndim != 2 or cells.shape[1] not in (2, 3) or n_cell == 0:
        raise ValueError(f"cells must be [cell, 2] or [cell, 3] indices: {cells.shape}")
    cells = cells.copy()
    cells[:, 1] %= base.shape[1]
    L, p0 = int(cells[:, 0].min()), int(cells[:, 1].min())
    margs = tuple(jnp.asarray(a) for a in metric_args)
    batch_size = min(batch_size, n_cell)
    outs = []
    for start, stop in progress(
        chunks(n_cell, batch_size), -(-n_cell // batch_size), "cells", progress_bar
    ):
        chunk = jnp.asarray(pad_rows(cells[start:stop], batch_size))
        out = _cells_chunk(
            model,
            jnp.asarray(base),
            jnp.asarray(source),
            chunk,
            margs,
            tap,
            L,
            p0,
            metric,
        )
        outs.append(head_rows(out, stop - start))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


@eqx.filter_jit
def _path_chunk(
    model, base, source, senders, receivers, margs, receiver_tap, freeze_mlps, metric
):
    cfg = model.cfg
    r_tail = tail_shape(receiver_tap, cfg)
    frozen = ("attn.hook_z",) + (("mlp.hook_post",) if freeze_mlps else ())

    def per_prompt(base, source, margs):
        _, clean, _ = _stacked(model, base, frozen)
        _, corrupt, _ = _stacked(model, source, ("attn.hook_z",))
        x0 = embed(model, base)
        where_r = unit_mask(receivers, r_tail)

        def per_set(sender):
            z = jnp.where(
                sender[:, None, :, None], corrupt["attn.hook_z"], clean["attn.hook_z"]
            )
            edits = {every_layer("attn.hook_z"): Replace(z)}
            if freeze_mlps:
                edits[every_layer("mlp.hook_post")] = Replace(clean["mlp.hook_post"])
            names = frozenset(stacked_names(receiver_tap, range(cfg.n_layers)))
            _, rec = forward_layers(
                model, x0, 0, capture=names, edits=edits, logits=False
            )
            value = jnp.stack(
                [rec[n] for n in stacked_names(receiver_tap, range(cfg.n_layers))]
            )
            edit = Replace(value, where_r)
            h, _ = forward_layers(
                model, x0, 0, edits={every_layer(receiver_tap): edit}, logits=False
            )
            return metric(unembed(model, h[-1]), *margs)

        return jax.vmap(per_set)(senders)

    out = jax.vmap(per_prompt)(base, source, margs)
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)


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
    batch_size: int = 8,
    progress_bar: bool = True,
):
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

    Returns:
        The metric's output with leading axes `[set, prompt]`.
    """
    base, source = _check_pair(model, base_tokens, source_tokens)
    n_prompt = base.shape[0]
    senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
    margs = jax.tree.map(np.asarray, tuple(metric_args))
    batch_size = min(batch_size, n_prompt)
    outs = []
    for start, stop in progress(
        chunks(n_prompt, batch_size), -(-n_prompt // batch_size), "path", progress_bar
    ):
        sl = slice(start, stop)
        out = _path_chunk(
            model,
            jnp.asarray(pad_rows(base[sl], batch_size)),
            jnp.asarray(pad_rows(source[sl], batch_size)),
            senders,
            receivers,
            padded_slice(margs, start, stop, batch_size),
            receiver_tap,
            freeze_mlps,
            metric,
        )
        outs.append(head_rows(out, stop - start, axis=1))
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs)

"""Activation grids over operand pairs (the paper's "K maps"), reusing shared structure.

Prompts follow a template `prefix + [a] + middle + [b] + suffix` (e.g. `prefix=[BOS]`,
`middle=[op]`, `suffix=[=]`; a few-shot prefix goes into `prefix`); an operand is one token
or, for tokenizers that split numbers into digits, a fixed number of tokens. The kernel computes
the chosen taps at positions of the `[b] + suffix` part for every `(a, b)` of the grid:

1. the prefix runs once and its keys/values are cached;
2. `[a] + middle` runs once per `a`, continuing the prefix cache;
3. only `[b] + suffix` runs per pair, continuing the cache of its `a` — for the 5-token
   `[BOS, a, op, b, =]` template, 2 of 5 positions per pair;
4. only layers up to the deepest requested one run, and nothing is unembedded.

Pairs stream through one compiled program in fixed-size sub-grids (whole rows of `a` when
they fit; the last ones padded), sized by `batch_size` or a memory budget. Inside a row the
`a` cache is shared, not copied per pair. Results are either materialized
(`[a, b, layer, unit]`), reduced on the device block by block (`reduce="mean"`, accumulated in
float64 on the host, or `"topk"`: the top-k pairs of every unit), or written to disk as
they come (`out=`: a `.npy` memmap, or a zarr directory written by every process of a
multi-process run), resumable after a kill.
"""

import os
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._typing import ArrayLike, Int
from ..inputs import check_indices, check_tokens
from ..model import Transformer
from ..results import ShardedResult, open_resumable
from ..sharding import DATA, gather, rows_multiple, shard_rows
from ..store import model_digest
from ..taps import Taps, every_layer
from .batching import pad_rows, progress
from .run import run_cached
from .sweep import site, stack_size

__all__ = ["operand_grid", "GridSpec"]


class GridSpec(eqx.Module):
    """Static description of what `operand_grid` records per pair (internal)."""

    tap: str = eqx.field(static=True)
    layers: tuple[int, ...] = eqx.field(static=True)
    positions: tuple[int, ...] = eqx.field(static=True)  # within the [b] + suffix part
    stop: int = eqx.field(static=True)


def _continue(model, tokens, stop, past):
    """Embeds `tokens` after `past`'s positions and runs layers `[0, stop)`, returning
    the cache extended by them."""
    n_slots = 0 if past is None else past[0].shape[1]
    span = model.span(tokens.shape[0], n_slots=n_slots)
    x = model.embed_tokens(tokens, span, Taps(model.cfg))
    return run_cached(model, x, span, 0, stop, past=past)[1]


@eqx.filter_jit
def _shared_kv(model, prefix, a_segments, stop):
    """Cache of `prefix + [a] + middle` for every a: each `[a, stop, n_shared, kv, d_head]`."""
    prefix_kv = _continue(model, prefix, stop, None) if prefix.shape[0] else None
    return jax.vmap(lambda seg: _continue(model, seg, stop, prefix_kv))(a_segments)


@eqx.filter_jit
def _grid_chunk(model, kv, a_idx, b_segments, units, spec: GridSpec, squeeze: bool):
    """Taps of the sub-grid `a_idx x b_segments`: `[row, col, (pos,) layer, *unit]`.

    The cache of each `a` is taken once per row and stays unbatched inside the vmap over
    `b`, so attention reads it in place (a matmul over the row's pairs) instead of copying
    it for every pair."""
    n_slots = kv[0].shape[2]
    all_layers = spec.layers == tuple(range(spec.stop))
    names = (
        frozenset({every_layer(spec.tap)})
        if all_layers
        else frozenset(f"blocks.{l}.{spec.tap}" for l in spec.layers)
    )

    def row(a):
        past = (kv[0][a], kv[1][a])

        def one(seg):
            taps = Taps(model.cfg, names)
            span = model.span(seg.shape[0], n_slots=n_slots)
            x = model.embed_tokens(seg, span, taps)
            model.run_blocks(x, span, taps, 0, spec.stop, past)
            rec = taps.records
            if all_layers:
                acts = rec[every_layer(spec.tap)]
            else:
                acts = jnp.stack([rec[f"blocks.{l}.{spec.tap}"] for l in spec.layers])
            acts = acts[:, jnp.asarray(spec.positions)]  # [layer, pos, *tail]
            if units is not None:
                acts = acts[..., units]
            return acts[:, 0] if squeeze else jnp.swapaxes(acts, 0, 1)

        return jax.vmap(one)(b_segments)

    return jax.vmap(row)(a_idx)


def _blocks(n_a: int, n_b: int, batch_size: int, multiple: int):
    """Sub-grids of about `batch_size` pairs: whole rows of `a` when a row fits, else
    row pieces of a multiple of `multiple` columns; each block is a contiguous range of the
    row-major flat pair index.

    Returns `(rows, width, blocks)`: blocks `(a0, a1, b0, b1)` of at most `rows` rows, each
    computed `width` columns wide (padded up to a multiple of `multiple`), so that every
    block's columns split into equal parts of `width // multiple` that start at multiples
    of it."""
    cols = min(n_b, batch_size)
    if cols < n_b:
        cols = min(n_b, -(-cols // multiple) * multiple)
    rows = max(1, min(n_a, batch_size // cols))
    blocks = [
        (a0, min(a0 + rows, n_a), b0, min(b0 + cols, n_b))
        for a0 in range(0, n_a, rows)
        for b0 in range(0, n_b, cols)
    ]
    return rows, -(-cols // multiple) * multiple, blocks


@eqx.filter_jit
def _shared_kv_stacked(models, prefix, a_segments, stop):
    """`_shared_kv` of every model of a stack: a leading checkpoint axis on each leaf."""
    return eqx.filter_vmap(lambda m: _shared_kv(m, prefix, a_segments, stop))(models)


@eqx.filter_jit
def _grid_chunk_stacked(models, kv, a_idx, b_segments, units, spec, squeeze, own_units):
    """`_grid_chunk` of every model of a stack, `[row, col, checkpoint, ...]`; `units`
    is shared, or per model (`own_units`, `[checkpoint, unit]`)."""
    acts = eqx.filter_vmap(
        lambda m, kv_m, u: _grid_chunk(m, kv_m, a_idx, b_segments, u, spec, squeeze),
        in_axes=(0, 0, 0 if own_units else None),
    )(models, kv, units)
    return jnp.moveaxis(acts, 0, 2)


@eqx.filter_jit
@jax.jit
def _block_sum(acts, valid):
    """Sum over the valid `[rows, cols]` pairs of a block, in float32 on the device."""
    valid = valid.reshape(*valid.shape, *(1,) * (acts.ndim - 2))
    return jnp.sum(jnp.where(valid, acts.astype(jnp.float32), 0.0), axis=(0, 1))


def _merge_topk(top_v, top_i, vals, idx, valid, k):
    flat = vals.reshape(vals.shape[0], -1)
    flat = jnp.where(valid[:, None], flat, -jnp.inf)
    all_v = jnp.concatenate([top_v, flat])  # [k + B, F]
    all_i = jnp.concatenate([top_i, jnp.broadcast_to(idx[:, None], flat.shape)])
    v, order = jax.lax.top_k(all_v.T, k)  # [F, k]
    return v.T, jnp.take_along_axis(all_i.T, order, axis=1).T


def _flat(block, n_b: int) -> tuple[int, int]:
    """Row-major flat pair range `[start, stop)` of a block from `_blocks`."""
    a0, a1, b0, b1 = block
    return a0 * n_b + b0, (a1 - 1) * n_b + b1


def _checkpoint_first(result, stacked: bool):
    """A full grid `[a, b, checkpoint, ...]` of stacked models as `[checkpoint, a, b, ...]`
    (a numpy array or a tensorstore)."""
    if not stacked:
        return result
    if isinstance(result, np.ndarray):
        return np.moveaxis(result, 2, 0)
    import tensorstore as ts

    return result[ts.d[2].transpose[0]]


def _bytes_per_pair(cfg, seg_len: int, n_out: int) -> int:
    width = 3 * cfg.d_mlp + 8 * cfg.d_model + cfg.n_heads * seg_len * 2
    return 4 * (seg_len * width + n_out)


def operand_grid(
    model: Transformer,
    a_tokens: Int[ArrayLike, " a *a_len"],
    b_tokens: Int[ArrayLike, " b *b_len"],
    *,
    prefix: Int[ArrayLike, " n_prefix"] | Sequence[int] = (),
    middle: Int[ArrayLike, " n_middle"] | Sequence[int] = (),
    suffix: Int[ArrayLike, " n_suffix"] | Sequence[int] = (),
    tap: str = "mlp.hook_post",
    layers: Sequence[int] | None = None,
    units: Int[ArrayLike, "*checkpoint unit"] | Sequence[int] | None = None,
    positions: int | Sequence[int] = -1,
    reduce: Literal["full", "mean", "topk"] = "full",
    k: int = 16,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    memory_budget: int = 1 << 30,
    progress_bar: bool = True,
    stacked: bool = False,
    mesh: Mesh | None = None,
):
    """Taps of every prompt `prefix + [a] + middle + [b] + suffix` over the `a x b` grid.

    Arguments:
        model: the transformer.
        a_tokens, b_tokens: operand token ids, `[a]` and `[b]` (one token per operand) or
            `[a, a_len]` and `[b, b_len]` (every operand of an axis spans as many tokens,
            e.g. one per digit).
        prefix, middle, suffix: the fixed template tokens (BOS and any few-shot examples go
            in `prefix`).
        tap: block tap suffix (default `"mlp.hook_post"`).
        layers: layers recorded (default all); only layers up to the deepest one run.
        units: indices into the tap's last axis (neurons), default all; with `stacked`,
            also `[checkpoint, unit]` (each model its own units, equally many).
        positions: prompt positions recorded (negative from the end); they must lie in the
            `[b] + suffix` part. An int drops the position axis from the result.
        reduce: `"full"` (every pair), `"mean"` (over pairs) or `"topk"` (the `k` largest
            pairs of every unit).
        k: for `"topk"`.
        out: with `reduce="full"`, where the grid goes as it is computed, never
            half-written, resumed after a kill by the same call, and returned without
            recomputing when complete; its fingerprint (model weights, tokens, tap,
            layers, units, positions) is recorded, and resuming or reusing it for another
            computation is an error. A path ending in `.npy`: one process writes a
            memmap (`jaxinterp.results.open_resumable`). Any other path: a zarr directory
            that every process of a multi-process run fills with the columns its own
            devices computed (`jaxinterp.results.ShardedResult`).
        batch_size: pairs per device call; default from `memory_budget` (bytes).
        progress_bar: tqdm over pair batches.
        stacked: `model` is several models of one architecture stacked on a leading
            axis of every array (e.g. training checkpoints); all run in one program,
            vmapped over that axis, and every result gets a leading `checkpoint` axis.
        mesh: split each block's `b` operands over this mesh's `data` axis (the block
            width is rounded up to a multiple of it; see `jaxinterp.sharding`).

    Returns:
        `"full"`: array `[a, b, (pos,) layer, *unit]` (with `out`: a numpy memmap, or a
            read-only `tensorstore.TensorStore` for a zarr directory).
        `"mean"`: `[(pos,) layer, *unit]`.
        `"topk"`: dict of `values [k, (pos,) layer, *unit]` (descending) and `a`, `b`
            (operand indices of those pairs, same shape).
    """
    cfg = model.cfg
    a_tokens, b_tokens = np.asarray(a_tokens, np.int32), np.asarray(b_tokens, np.int32)
    prefix, middle, suffix = (
        np.asarray(t, np.int32).reshape(-1) for t in (prefix, middle, suffix)
    )
    for t in (a_tokens, b_tokens, prefix, middle, suffix):
        check_tokens(t, cfg.d_vocab)
    if a_tokens.ndim not in (1, 2) or b_tokens.ndim not in (1, 2):
        raise ValueError(
            f"a_tokens and b_tokens must be [a] / [b] ids or [a, a_len] / [b, b_len] "
            f"token rows, got shapes {a_tokens.shape} and {b_tokens.shape}"
        )
    if not a_tokens.size * b_tokens.size:
        raise ValueError(
            f"a_tokens and b_tokens must be non-empty, got shapes {a_tokens.shape} and "
            f"{b_tokens.shape}"
        )
    operands = [t.tolist() for t in (a_tokens, b_tokens)]  # the fingerprint's
    a_tokens = a_tokens.reshape(len(a_tokens), -1)
    b_tokens = b_tokens.reshape(len(b_tokens), -1)
    n_shared = prefix.size + a_tokens.shape[1] + middle.size
    n_total = n_shared + b_tokens.shape[1] + suffix.size
    squeeze = isinstance(positions, int | np.integer)
    pos = check_indices(positions, n_total, "positions").reshape(-1).tolist()
    if min(pos) < n_shared:
        raise ValueError(
            f"positions {pos} must lie in the [b] + suffix part (>= {n_shared}); taps of "
            "earlier positions do not depend on b"
        )
    if layers is not None:
        layers = check_indices(layers, cfg.n_layers, "layers").reshape(-1).tolist()
    layers = tuple(range(cfg.n_layers) if layers is None else sorted(set(layers)))
    spec = GridSpec(tap, layers, tuple(p - n_shared for p in pos), max(layers) + 1)
    where = site(tap, cfg)
    if not where.stacked:
        raise ValueError(f"operand grids record block taps, not {tap!r}")
    tap, tail = where.key.split(".", 2)[2], where.tail
    n_models = stack_size(model) if stacked else None
    units_arr, own_units = None, False
    if units is not None:
        units_arr = check_indices(units, tail[-1], "units")
        own_units = units_arr.ndim == 2
        if units_arr.ndim > 2 or (own_units and units_arr.shape[0] != n_models):
            raise ValueError(
                f"units must be [unit] or, for a stack of {n_models} models, "
                f"[{n_models}, unit]; got shape {units_arr.shape}"
            )
        units_arr = jnp.asarray(
            units_arr.reshape(units_arr.shape[0], -1)
            if own_units
            else units_arr.reshape(-1)
        )
    unit_shape = tail[:-1] + (
        (tail[-1],) if units is None else (int(units_arr.shape[-1]),)
    )
    item_shape = ((len(pos),) if not squeeze else ()) + (len(layers), *unit_shape)
    if stacked:
        item_shape = (n_models, *item_shape)
    n_a, n_b = len(a_tokens), len(b_tokens)
    n_items = n_a * n_b
    if batch_size is None:
        per = _bytes_per_pair(
            cfg, b_tokens.shape[1] + suffix.size, int(np.prod(item_shape))
        ) * (n_models or 1)
        batch_size = int(max(1, min(4096, memory_budget // per)))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = min(batch_size, n_items)

    a_segments = np.concatenate(
        [a_tokens, np.broadcast_to(middle, (n_a, middle.size))], axis=1
    )
    b_segments = np.concatenate(
        [b_tokens, np.broadcast_to(suffix, (n_b, suffix.size))], axis=1
    )

    if out is not None and reduce != "full":
        raise ValueError("out= writes the full grid: it needs reduce='full'")
    sharded_out = out is not None and not os.fspath(out).endswith(".npy")
    if out is not None and not sharded_out and jax.process_count() > 1:
        raise ValueError(
            f"out={os.fspath(out)!r}: a multi-process run writes a sharded zarr "
            "directory; give a path that does not end in .npy"
        )
    # padded columns are dropped like a short block's
    rows, cols, blocks = _blocks(n_a, n_b, batch_size, rows_multiple(1, mesh))
    done, total, top_v, top_i, store = 0, None, None, None, None
    if reduce == "full":
        shape = (n_a, n_b, *item_shape)
        if out is not None:
            what = dict(
                kernel="operand_grid",
                model=model_digest(model),
                tokens=operands + [t.tolist() for t in (prefix, middle, suffix)],
                spec=[
                    tap,
                    list(layers),
                    pos,
                    None if units is None else units_arr.tolist(),
                ],
            )
        if sharded_out:
            store = ShardedResult(
                out, shape, what, (rows, cols // rows_multiple(1, mesh))
            )
            if store.complete:
                return _checkpoint_first(store.result(), stacked)
            done = store.done
        elif out is not None:
            result, done, finish = open_resumable(out, shape, what)
            if finish is None:  # already complete
                return _checkpoint_first(result, stacked)
        else:
            result, finish = np.empty(shape, np.float32), None
        if store is None:
            flat = result.reshape(n_items, *item_shape)
    elif reduce == "mean":
        total = np.zeros(item_shape, np.float64)
    elif reduce == "topk":
        if not 1 <= k <= n_items:
            raise ValueError(f"k={k} must be in [1, {n_items}] (the number of pairs)")
        n_feat = int(np.prod(item_shape))
        top_v = jnp.full((k, n_feat), -jnp.inf, jnp.float32)
        top_i = jnp.zeros((k, n_feat), jnp.int32)
    else:
        raise ValueError(f"reduce must be 'full', 'mean' or 'topk', not {reduce!r}")

    shared_kv = _shared_kv_stacked if stacked else _shared_kv
    kv = shared_kv(model, jnp.asarray(prefix), jnp.asarray(a_segments), spec.stop)

    def consume(block, a_idx, b_idx, acts):
        nonlocal total, top_v, top_i
        a0, a1, b0, b1 = block
        start, stop = _flat(block, n_b)
        if store is not None:  # each process writes the columns of its devices
            if mesh is not None:
                acts = jax.device_put(acts, NamedSharding(mesh, P(None, DATA)))
            store.write_block(block, acts)
            store.commit(stop)
        elif reduce == "full":
            flat[start:stop] = gather(acts)[: a1 - a0, : b1 - b0].reshape(
                -1, *item_shape
            )
            if finish is not None:
                finish(stop)
        elif reduce == "mean":  # summed on device per block, accumulated in float64
            valid = (np.arange(rows) < a1 - a0)[:, None] & (np.arange(cols) < b1 - b0)
            total += gather(_block_sum(acts, jnp.asarray(valid))).astype(np.float64)
        else:
            valid = (np.arange(rows) < a1 - a0)[:, None] & (np.arange(cols) < b1 - b0)
            top_v, top_i = _merge_topk(
                top_v,
                top_i,
                acts.reshape(rows * cols, *item_shape).astype(jnp.float32),
                jnp.asarray((a_idx[:, None] * n_b + b_idx).reshape(-1), jnp.int32),
                jnp.asarray(valid.reshape(-1)),
                k,
            )

    # Block i + 1 is dispatched before block i is copied to the host, so that where
    # dispatch is asynchronous (GPUs) the copy overlaps the next block's compute.
    todo = [blk for blk in blocks if _flat(blk, n_b)[1] > done]  # resume
    pending = None
    for block in progress(todo, len(todo), "operand grid", progress_bar):
        a0, a1, b0, b1 = block
        a_idx = pad_rows(np.arange(a0, a1), rows)
        b_idx = pad_rows(np.arange(b0, b1), cols)
        args = (model, kv, jnp.asarray(a_idx), shard_rows(b_segments[b_idx], mesh))
        if stacked:
            acts = _grid_chunk_stacked(*args, units_arr, spec, squeeze, own_units)
        else:
            acts = _grid_chunk(*args, units_arr, spec, squeeze)
        if pending is not None:
            consume(*pending)
        pending = (block, a_idx, b_idx, acts)
    if pending is not None:
        consume(*pending)
    if store is not None:
        return _checkpoint_first(store.result(), stacked)
    if reduce == "full":
        return _checkpoint_first(result, stacked)
    if reduce == "mean":
        return total / n_items
    top_i = gather(top_i).reshape(k, *item_shape)
    top = dict(
        values=gather(top_v).reshape(k, *item_shape),
        a=top_i // n_b,
        b=top_i % n_b,
    )
    return {key: np.moveaxis(v, 1, 0) for key, v in top.items()} if stacked else top

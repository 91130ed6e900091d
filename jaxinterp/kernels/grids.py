"""Activation grids over operand pairs ("K maps", paper-spec §7.1), reusing shared structure.

Prompts follow a template `prefix + [a] + middle + [b] + suffix` (e.g. `prefix=[BOS]`,
`middle=[op]`, `suffix=[=]`; a few-shot prefix goes into `prefix`). The kernel computes
the chosen taps at positions of the `[b] + suffix` part for every `(a, b)` of the grid:

1. the prefix runs once and its keys/values are cached;
2. `[a] + middle` runs once per `a`, continuing the prefix cache;
3. only `[b] + suffix` runs per pair, continuing the cache of its `a` — for the 5-token
   `[BOS, a, op, b, =]` template, 2 of 5 positions per pair;
4. only layers up to the deepest requested one run, and nothing is unembedded.

Pairs stream through one compiled program in fixed-size batches (the last one padded),
sized by `batch_size` or a memory budget. Results are either materialized
(`[a, b, layer, unit]`), reduced on the fly (`reduce="mean"` or `"topk"`: the top-k pairs of
every unit), or written to a `.npy` memmap that a later call resumes (`out=`).
"""

import json
import os
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import ArrayLike, Int
from ..model import Transformer
from ._stream import chunks, pad_rows, progress, stacked_names, tail_shape
from .layers import embed, forward_layers
from .run import check_tokens, kv_names

__all__ = ["operand_grid", "GridSpec"]


class GridSpec(eqx.Module):
    """Static description of what `operand_grid` records per pair (internal)."""

    tap: str = eqx.field(static=True)
    layers: tuple[int, ...] = eqx.field(static=True)
    positions: tuple[int, ...] = eqx.field(static=True)  # within the [b] + suffix part
    stop: int = eqx.field(static=True)


def _kv(model, x, stop, past_kv):
    k_names, v_names = kv_names(model.cfg)
    names = frozenset(k_names[:stop] + v_names[:stop])
    _, rec = forward_layers(
        model, x, 0, stop, capture=names, past_kv=past_kv, logits=False
    )
    K = jnp.stack([rec[n] for n in k_names[:stop]])
    V = jnp.stack([rec[n] for n in v_names[:stop]])
    if past_kv is not None:
        K = jnp.concatenate([past_kv[0], K], axis=1)
        V = jnp.concatenate([past_kv[1], V], axis=1)
    return K, V


@eqx.filter_jit
def _shared_kv(model, prefix, a_segments, stop):
    """Cache of `prefix + [a] + middle` for every a: each `[a, stop, n_shared, kv, d_head]`."""
    prefix_kv = None
    if prefix.shape[0] > 0:
        prefix_kv = _kv(model, embed(model, prefix), stop, None)
    n_past = prefix.shape[0]
    return jax.vmap(lambda seg: _kv(model, embed(model, seg, n_past), stop, prefix_kv))(
        a_segments
    )


@eqx.filter_jit
def _grid_chunk(model, kv, a_idx, b_segments, units, spec: GridSpec):
    n_past = kv[0].shape[2]
    names = frozenset(stacked_names(spec.tap, spec.layers))

    def one(a, seg):
        past = (kv[0][a], kv[1][a])
        x = embed(model, seg, n_past)
        _, rec = forward_layers(
            model, x, 0, spec.stop, capture=names, past_kv=past, logits=False
        )
        acts = jnp.stack([rec[n] for n in stacked_names(spec.tap, spec.layers)])
        acts = acts[:, jnp.asarray(spec.positions)]  # [layer, pos, *tail]
        if units is not None:
            acts = acts[..., units]
        return jnp.swapaxes(acts, 0, 1)  # [pos, layer, *unit]

    return jax.vmap(one)(a_idx, b_segments)


@eqx.filter_jit
def _merge_topk(top_v, top_i, vals, idx, valid, k):
    flat = vals.reshape(vals.shape[0], -1)
    flat = jnp.where(valid[:, None], flat, -jnp.inf)
    all_v = jnp.concatenate([top_v, flat])  # [k + B, F]
    all_i = jnp.concatenate([top_i, jnp.broadcast_to(idx[:, None], flat.shape)])
    v, order = jax.lax.top_k(all_v.T, k)  # [F, k]
    return v.T, jnp.take_along_axis(all_i.T, order, axis=1).T


def _bytes_per_pair(cfg, seg_len: int, n_out: int) -> int:
    width = 3 * cfg.d_mlp + 8 * cfg.d_model + cfg.n_heads * seg_len * 2
    return 4 * (seg_len * width + n_out)


def operand_grid(
    model: Transformer,
    a_tokens: Int[ArrayLike, " a"],
    b_tokens: Int[ArrayLike, " b"],
    *,
    prefix: Int[ArrayLike, " n_prefix"] | Sequence[int] = (),
    middle: Int[ArrayLike, " n_middle"] | Sequence[int] = (),
    suffix: Int[ArrayLike, " n_suffix"] | Sequence[int] = (),
    tap: str = "mlp.hook_post",
    layers: Sequence[int] | None = None,
    units: Int[ArrayLike, " unit"] | None = None,
    positions: int | Sequence[int] = -1,
    reduce: Literal["full", "mean", "topk"] = "full",
    k: int = 16,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    memory_budget: int = 1 << 30,
    progress_bar: bool = True,
):
    """Taps of every prompt `prefix + [a] + middle + [b] + suffix` over the `a x b` grid.

    Arguments:
        model: the transformer.
        a_tokens, b_tokens: operand token ids, `[a]` and `[b]`.
        prefix, middle, suffix: the fixed template tokens (BOS and any few-shot examples go
            in `prefix`).
        tap: block tap suffix (default `"mlp.hook_post"`).
        layers: layers recorded (default all); only layers up to the deepest one run.
        units: indices into the tap's last axis (neurons), default all.
        positions: prompt positions recorded (negative from the end); they must lie in the
            `[b] + suffix` part. An int drops the position axis from the result.
        reduce: `"full"` (every pair), `"mean"` (over pairs) or `"topk"` (the `k` largest
            pairs of every unit).
        k: for `"topk"`.
        out: with `reduce="full"`, a `.npy` path written as a memmap; an existing file of
            the same shape with a `<out>.done` marker is resumed from where it stopped.
        batch_size: pairs per device call; default from `memory_budget` (bytes).
        progress_bar: tqdm over pair batches.

    Returns:
        `"full"`: array `[a, b, (pos,) layer, *unit]` (a numpy memmap when `out` is given).
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
    n_shared = prefix.size + 1 + middle.size
    n_total = n_shared + 1 + suffix.size
    squeeze = isinstance(positions, int | np.integer)
    pos = [int(p) % n_total for p in ([positions] if squeeze else positions)]
    if min(pos) < n_shared:
        raise ValueError(
            f"positions {pos} must lie in the [b] + suffix part (>= {n_shared}); taps of "
            "earlier positions do not depend on b"
        )
    layers = tuple(range(cfg.n_layers) if layers is None else sorted(layers))
    spec = GridSpec(tap, layers, tuple(p - n_shared for p in pos), max(layers) + 1)
    units_arr = None if units is None else jnp.asarray(units)
    tail = tail_shape(tap, cfg)
    unit_shape = tail[:-1] + ((tail[-1],) if units is None else (int(units_arr.size),))
    item_shape = ((len(pos),) if not squeeze else ()) + (len(layers), *unit_shape)
    n_a, n_b = a_tokens.size, b_tokens.size
    n_items = n_a * n_b
    if batch_size is None:
        per = _bytes_per_pair(cfg, 1 + suffix.size, int(np.prod(item_shape)))
        batch_size = int(max(1, min(4096, memory_budget // per)))
    batch_size = min(batch_size, n_items)

    a_segments = np.concatenate(
        [a_tokens[:, None], np.broadcast_to(middle, (n_a, middle.size))], axis=1
    )
    kv = _shared_kv(model, jnp.asarray(prefix), jnp.asarray(a_segments), spec.stop)
    b_segments = np.concatenate(
        [b_tokens[:, None], np.broadcast_to(suffix, (n_b, suffix.size))], axis=1
    )
    a_of, b_of = np.divmod(np.arange(n_items), n_b)

    done = 0
    if reduce == "full":
        shape = (n_a, n_b, *item_shape)
        if out is not None:
            out = os.fspath(out)
            marker = out + ".done"
            if os.path.exists(out) and os.path.exists(marker):
                result = np.load(out, mmap_mode="r+")
                if result.shape != shape:
                    raise ValueError(
                        f"{out} has shape {result.shape}, expected {shape}"
                    )
                with open(marker) as f:
                    done = json.load(f)["done"]
            else:
                result = np.lib.format.open_memmap(out, "w+", np.float32, shape)
        else:
            result = np.empty(shape, np.float32)
        flat = result.reshape(n_items, *item_shape)
    elif reduce == "mean":
        total = np.zeros(item_shape, np.float64)
    elif reduce == "topk":
        n_feat = int(np.prod(item_shape))
        top_v = jnp.full((k, n_feat), -jnp.inf, jnp.float32)
        top_i = jnp.zeros((k, n_feat), jnp.int32)
    else:
        raise ValueError(f"reduce must be 'full', 'mean' or 'topk', not {reduce!r}")

    starts = list(chunks(n_items, batch_size))
    todo = [(s, e) for s, e in starts if s >= done]
    for start, stop in progress(todo, len(todo), "operand grid", progress_bar):
        idx = pad_rows(np.arange(start, stop), batch_size)
        acts = _grid_chunk(
            model,
            kv,
            jnp.asarray(a_of[idx]),
            jnp.asarray(b_segments[b_of[idx]]),
            units_arr,
            spec,
        )
        if squeeze:
            acts = acts[:, 0]
        valid = np.arange(batch_size) < stop - start
        if reduce == "full":
            flat[start:stop] = np.asarray(acts)[: stop - start]
            if out is not None:
                result.flush()
                with open(marker, "w") as f:
                    json.dump({"done": stop}, f)
        elif reduce == "mean":
            total += np.asarray(acts, np.float64)[valid].sum(0)
        else:
            top_v, top_i = _merge_topk(
                top_v,
                top_i,
                acts.astype(jnp.float32),
                jnp.asarray(idx, jnp.int32),
                jnp.asarray(valid),
                k,
            )
    if reduce == "full":
        return result
    if reduce == "mean":
        return total / n_items
    top_i = np.asarray(top_i).reshape(k, *item_shape)
    return dict(
        values=np.asarray(top_v).reshape(k, *item_shape),
        a=top_i // n_b,
        b=top_i % n_b,
    )

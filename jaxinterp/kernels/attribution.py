"""Attribution patching (gradient x activation difference) and its exact-patching validator.

`attribution_patching` approximates the effect of patching every element of one or more taps
from a source run into a base run by the first-order term
`(a_source - a_base) * d metric / d a` at the base point. The gradient is taken with respect
to zero-valued stacked `Add` edits (`blocks.*.<tap>`), so one forward + backward per prompt
gives the scores of every layer, position and unit at once (paper-spec §6.1: per element, no
sum; with `metric=indirect_effect` this is exactly the paper's node attribution).

`attribution_vs_exact` runs exact single-cell patching (`patch.patch_cells`) on a sample of
cells and reports the Pearson correlation with the attribution scores of the same cells.
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Float, Int
from ..edits import Add
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
from .layers import embed, forward_layers, unembed
from .patch import _check_pair, _stacked, patch_cells

__all__ = ["attribution_patching", "attribution_vs_exact", "pearson"]


@eqx.filter_jit
def _attr_chunk(model, base, source, margs, suffixes, metric):
    cfg = model.cfg
    n = cfg.n_layers

    def per_prompt(base, source, margs):
        _, src, _ = _stacked(model, source, suffixes)
        names = frozenset(m for s in suffixes for m in stacked_names(s, range(n)))
        x0 = embed(model, base)

        def f(deltas):
            edits = {every_layer(s): Add(d) for s, d in deltas.items()}
            h, rec = forward_layers(
                model, x0, 0, capture=names, edits=edits, logits=False
            )
            acts = {
                s: jnp.stack([rec[m] for m in stacked_names(s, range(n))])
                for s in suffixes
            }
            return metric(unembed(model, h[-1]), *margs), acts

        zeros = {
            s: jnp.zeros((n, base.shape[0], *tail_shape(s, cfg)), x0.dtype)
            for s in suffixes
        }
        grads, acts = jax.grad(f, has_aux=True)(zeros)
        return {s: (src[s] - acts[s]) * grads[s] for s in suffixes}

    return jax.vmap(per_prompt)(base, source, margs)


def attribution_patching(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    taps: Sequence[str] = ("mlp.hook_post",),
    batch_size: int = 8,
    progress_bar: bool = True,
) -> dict[str, Float[Array, "prompt layer pos ..."]]:
    """Per-element attribution scores `(a_source - a_base) * grad` of every layer of `taps`.

    Arguments:
        model: the transformer.
        base_tokens, source_tokens: `[prompt, pos]` pairs.
        metric: scalar `metric(last_logits, *args)`, differentiated at the base run.
        metric_args: arrays with a leading `prompt` axis.
        taps: block tap suffixes.
        batch_size: prompts per device call.
        progress_bar: tqdm over prompt batches.

    Returns:
        suffix -> scores `[prompt, layer, pos, *tap_tail]`.
    """
    base, source = _check_pair(model, base_tokens, source_tokens)
    n_prompt = base.shape[0]
    suffixes = tuple(taps)
    margs = jax.tree.map(np.asarray, tuple(metric_args))
    batch_size = min(batch_size, n_prompt)
    outs = []
    for start, stop in progress(
        chunks(n_prompt, batch_size),
        -(-n_prompt // batch_size),
        "attribution",
        progress_bar,
    ):
        sl = slice(start, stop)
        out = _attr_chunk(
            model,
            jnp.asarray(pad_rows(base[sl], batch_size)),
            jnp.asarray(pad_rows(source[sl], batch_size)),
            padded_slice(margs, start, stop, batch_size),
            suffixes,
            metric,
        )
        outs.append(head_rows(out, stop - start))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of two flat samples (float64 on the host)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / np.sqrt((x @ x) * (y @ y)))


def _cell_scores(scores: Array, cells: np.ndarray) -> Array:
    """Sum of `[prompt, layer, pos, *tail]` scores over each cell's elements -> `[cell,
    prompt]`."""
    out = []
    for cell in cells:
        s = scores[:, cell[0], cell[1]]
        if len(cell) == 3:
            s = s[:, cell[2]]
        out.append(s.reshape(s.shape[0], -1).sum(-1))
    return jnp.stack(out)


def attribution_vs_exact(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    cells: Int[ArrayLike, "cell 2"] | Int[ArrayLike, "cell 3"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "mlp.hook_post",
    scores: Float[Array, "prompt layer pos ..."] | None = None,
    batch_size: int = 64,
    progress_bar: bool = False,
) -> dict:
    """Compares attribution patching with exact patching on the same cells.

    Arguments:
        cells: `(layer, pos)` or `(layer, pos, unit)` rows (e.g. a sample of neurons).
        scores: precomputed `attribution_patching(...)[tap]`; computed if None.
        Other arguments as in `attribution_patching` / `patch.patch_cells`.

    Returns:
        dict with `attribution` and `exact` (`[cell, prompt]`: linear estimate and exact
        change of the metric), and `pearson` (correlation over cells x prompts) and
        `pearson_mean` (over cells of the prompt-mean effects).
    """
    base, source = _check_pair(model, base_tokens, source_tokens)
    cells = np.asarray(cells)
    if scores is None:
        scores = attribution_patching(
            model,
            base,
            source,
            metric=metric,
            metric_args=metric_args,
            taps=(tap,),
            progress_bar=progress_bar,
        )[tap]
    attr = _cell_scores(scores, cells)
    patched = patch_cells(
        model,
        base,
        source,
        cells,
        metric=metric,
        metric_args=metric_args,
        tap=tap,
        batch_size=batch_size,
        progress_bar=progress_bar,
    )
    clean = _base_metric(model, base, metric, metric_args)
    exact = patched - clean[None]
    return dict(
        attribution=attr,
        exact=exact,
        pearson=pearson(attr, exact),
        pearson_mean=pearson(attr.mean(1), exact.mean(1)),
    )


@eqx.filter_jit
def _base_metric_jit(model, base, margs, metric):
    def one(tokens, margs):
        h, _ = forward_layers(model, embed(model, tokens), 0, logits=False)
        return metric(unembed(model, h[-1]), *margs)

    return jax.vmap(one)(base, margs)


def _base_metric(model, base, metric, metric_args):
    margs = tuple(jnp.asarray(a) for a in metric_args)
    return _base_metric_jit(model, jnp.asarray(base), margs, metric)

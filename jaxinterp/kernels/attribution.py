"""Attribution patching (gradient x activation difference) and its exact-patching validator.

`attribution_patching` approximates the effect of patching every element of one or more taps
from a source run into a base run by the first-order term
`(a_source - a_base) * d metric / d a` at the base point. The gradient is taken with respect
to zero-valued stacked `Add` edits (`blocks.*.<tap>`), so one forward + backward per prompt
gives the scores of every layer, position and unit at once (per element, no sum; with
`metric=indirect_effect` this is the node attribution of Nikankin et al., 2024).

`attribution_vs_exact` runs exact single-cell patching (`patch.patch_cells`) on a sample of
cells and reports the Pearson correlation with the attribution scores of the same cells.
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._typing import Array, ArrayLike, Float, Int
from ..edits import Add
from ..model import Transformer
from .batching import stream
from .means import answer_logits
from .patch import _pairs, patch_cells
from .sweep import EMBED, activations, read, site, start_at

__all__ = ["attribution_patching", "attribution_vs_exact", "pearson"]


@eqx.filter_jit
def _attribute(model, batch, sites, metric):
    keys = frozenset(w.key for w in sites)
    L = EMBED if any(not w.stacked for w in sites) else 0

    def per_prompt(item):
        base, margs = item["base"], item["margs"]
        src = activations(model, item["source"], keys)[1]
        state = start_at(model, base, L, 0)
        n_pos = base.tokens.shape[0]

        def f(deltas):
            edits = {key: Add(d) for key, d in deltas.items()}
            return read(model, state, L, edits, metric, margs, base.answer, keys)

        zeros = {
            w.key: jnp.zeros((*w.lead, n_pos, *w.tail), state.x.dtype) for w in sites
        }
        grads, acts = jax.grad(f, has_aux=True)(zeros)
        return {w.key: (src[w.key] - acts[w.key]) * grads[w.key] for w in sites}

    return jax.vmap(per_prompt)(batch)


def attribution_patching(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    taps: Sequence[str] = ("mlp.hook_post",),
    attention_mask: ArrayLike | None = None,
    source_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 8,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> dict[str, Float[Array, "prompt ..."]]:
    """Per-element attribution scores `(a_source - a_base) * grad` of every layer of `taps`.

    Arguments:
        model: the transformer.
        base_tokens, source_tokens: `[prompt, pos]` pairs.
        metric: scalar `metric(logits, *args)` at each prompt's answer position,
            differentiated at the base run.
        metric_args: arrays with a leading `prompt` axis.
        taps: block tap suffixes (every layer) and/or `"hook_embed"` / `"hook_pos_embed"`.
        attention_mask, source_mask, answer_pos: padding and answer positions, as in
            `patch.activation_patching`.
        batch_size: prompts per device call.
        progress_bar: tqdm over prompt batches.
        mesh: split the prompts over this mesh's `data` axis (see `jaxinterp.sharding`).

    Returns:
        tap (as given) -> scores `[prompt, layer, pos, *tap_tail]` (`[prompt, pos,
        *tap_tail]` for a top-level tap).
    """
    padding = (attention_mask, source_mask, answer_pos)
    batch = _pairs(model, base_tokens, source_tokens, metric_args, *padding)
    taps = tuple(taps)
    sites = tuple(site(t, model.cfg) for t in taps)

    def chunk(batch):
        return _attribute(model, batch, sites, metric)

    scores = stream(
        chunk,
        batch,
        batch_size=batch_size,
        desc="attribution",
        progress_bar=progress_bar,
        mesh=mesh,
    )
    return {t: scores[w.key] for t, w in zip(taps, sites, strict=True)}


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of two flat samples (float64 on the host)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / np.sqrt((x @ x) * (y @ y)))


def _cell_scores(scores: Array, cells: np.ndarray) -> Array:
    """Sum of `[prompt, *layer, pos, *tail]` scores over each cell's elements -> `[prompt,
    cell]`."""
    out = []
    for cell in cells:
        s = scores[(slice(None), *cell)]
        out.append(s.reshape(s.shape[0], -1).sum(-1))
    return jnp.stack(out, axis=1)


def attribution_vs_exact(
    model: Transformer,
    base_tokens: Int[ArrayLike, "prompt pos"],
    source_tokens: Int[ArrayLike, "prompt pos"],
    cells: Int[ArrayLike, "cell index"],
    *,
    metric: Callable,
    metric_args: tuple = (),
    tap: str = "mlp.hook_post",
    scores: Float[Array, "prompt ..."] | None = None,
    attention_mask: ArrayLike | None = None,
    source_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
    batch_size: int = 64,
    progress_bar: bool = False,
    mesh: Mesh | None = None,
) -> dict:
    """Compares attribution patching with exact patching on the same cells.

    Arguments:
        cells: `(layer, pos)` or `(layer, pos, unit)` rows (e.g. a sample of neurons).
        scores: precomputed `attribution_patching(...)[tap]`; computed if None.
        Other arguments as in `attribution_patching` / `patch.patch_cells`.

    Returns:
        dict with `attribution` and `exact` (`[prompt, cell]`: linear estimate and exact
        change of the metric), and `pearson` (correlation over prompts x cells) and
        `pearson_mean` (over cells of the prompt-mean effects).
    """
    pairs = dict(
        attention_mask=attention_mask, source_mask=source_mask, answer_pos=answer_pos
    )
    common = dict(
        metric=metric, metric_args=metric_args, progress_bar=progress_bar, mesh=mesh
    )
    cells = np.asarray(cells)
    if scores is None:
        scores = attribution_patching(
            model, base_tokens, source_tokens, taps=(tap,), **pairs, **common
        )[tap]
    attr = _cell_scores(scores, cells)
    patched = patch_cells(
        model,
        base_tokens,
        source_tokens,
        cells,
        tap=tap,
        batch_size=batch_size,
        **pairs,
        **common,
    )
    logits = answer_logits(
        model, base_tokens, attention_mask=attention_mask, answer_pos=answer_pos
    )
    margs = tuple(jnp.asarray(a) for a in metric_args)
    clean = jax.vmap(metric)(logits, *margs)
    exact = patched - clean[:, None]
    return dict(
        attribution=attr,
        exact=exact,
        pearson=pearson(attr, exact),
        pearson_mean=pearson(attr.mean(0), exact.mean(0)),
    )

"""The masked sweep that ablation, patching, path patching and attribution share.

A sweep edits one *site* (a block tap in every layer, `blocks.*.<suffix>`, or a top-level tap
such as `hook_embed`) and reads a metric at each prompt's answer position. Every edit in a
sweep touches nothing below a first layer `L` and nothing before a first position `p0`, so
the clean run up to there is shared (exact, not an approximation):

1. `start_at`: embed, run layers `< L` on every position, and layers `>= L` on positions
   `< p0` only to keep their keys and values; what is left is the residual entering `L` at
   positions `>= p0` (`L = EMBED` starts before the embedding, for top-level sites);
2. `read`: from that state, run layers `>= L` on positions `>= p0` with the edits,
   continuing the cache, and unembed only the answer position;
3. `sweep`: `vmap` of `read` over many edits built from data (masks, cells, sender sets).

Prompts may be padded (`Prompt.mask`, HF semantics) and each reads its own answer position.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Bool, Float, Int
from ..config import TransformerConfig
from ..edits import AbstractEdit
from ..inputs import Prompt
from ..model import Span, Transformer
from ..taps import TOP_TAPS, Taps, every_layer, parse, tap_dims, tap_shape
from .run import run_cached

EMBED = -1  # start layer of sweeps that edit the embedding taps


class Site(NamedTuple):
    """Where a sweep edits: `key` of the edit, per-edit `lead` axes (`(n_layers,)` for a
    block tap, `()` for a top-level one) and the tap's per-position `tail` shape."""

    key: str
    lead: tuple[int, ...]
    tail: tuple[int, ...]

    @property
    def stacked(self) -> bool:
        return bool(self.lead)


def site(tap: str, cfg: TransformerConfig) -> Site:
    """The site of `tap`: a block tap suffix (`"mlp.hook_post"`), its stacked name
    (`"blocks.*.mlp.hook_post"`) or a top-level tap before the blocks (`"hook_embed"`,
    `"hook_pos_embed"`)."""
    if tap in TOP_TAPS:
        if tap.startswith("ln_final"):
            raise ValueError(f"{tap!r} comes after every block: nothing to sweep there")
        parse(tap, cfg)
        return Site(tap, (), tap_shape(tap, cfg, 1)[1:])
    name = tap if tap.startswith("blocks.") else every_layer(tap)
    layer, suffix = parse(name, cfg)
    if layer != "*":
        raise ValueError(f"sweeps take a block tap suffix or blocks.*.X, not {tap!r}")
    if tap_dims(name, cfg)[1] != "pos":  # attention scores / patterns: [head, q, k]
        raise ValueError(f"sweeps edit per-position taps; {tap!r} is not one")
    return Site(name, (cfg.n_layers,), tap_shape(f"blocks.0.{suffix}", cfg, 1)[1:])


def unit_mask(mask: Bool[Array, "..."], site: Site) -> Array:
    """Reshapes a `[*lead, *unit]` mask (unit: a leading part of the tap's per-position
    shape) to broadcast against the site's values `[*lead, pos, *tail]`."""
    n_lead = len(site.lead)
    unit = mask.shape[n_lead:]
    if tuple(site.tail[: len(unit)]) != tuple(unit):
        raise ValueError(
            f"mask unit shape {unit} must be a leading part of the tap's per-position "
            f"shape {site.tail}"
        )
    ones = (1,) * (len(site.tail) - len(unit))
    return mask.reshape(*mask.shape[:n_lead], 1, *unit, *ones)


def layer_groups(n_layers: int, n_groups: int) -> tuple[tuple[int, int], ...]:
    """Splits `range(n_layers)` into `n_groups` contiguous `(start, stop)` ranges."""
    n_groups = max(1, min(n_groups, n_layers))
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return tuple((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def first_layers(masks: np.ndarray, set_axis: int, layer_axis: int) -> np.ndarray:
    """The first layer each set edits, `[set]` (`n_layers` for a set that edits none)."""
    masks = np.asarray(masks)
    other = tuple(i for i in range(masks.ndim) if i not in (set_axis, layer_axis))
    hit = masks.any(axis=other)  # [set, layer] or [layer, set]
    if set_axis > layer_axis:
        hit = hit.T
    return np.where(hit.any(1), np.argmax(hit, 1), hit.shape[1])


def start_groups(first: np.ndarray, n_layers: int, n_groups: int) -> list[np.ndarray]:
    """Sets split by their first edited layer (`first [set]`; `EMBED` counts as layer 0)
    into at most `n_groups` contiguous layer ranges: the set indices of each non-empty
    group. A sweep runs each group from its own first layer, so sets that start late skip
    the layers below them; more groups save FLOPs but compile one program each."""
    layer = np.clip(first, 0, n_layers - 1)  # editing nothing: the last group
    groups = [
        np.flatnonzero((layer >= s) & (layer < e))
        for s, e in layer_groups(n_layers, n_groups)
    ]
    return [idx for idx in groups if len(idx)]


def in_set_order(parts: list, groups: list[np.ndarray], axis: int):
    """Per-group results concatenated along the `set` axis, back in the sets' order."""
    order = np.argsort(np.concatenate(groups), kind="stable")
    if len(parts) == 1:
        joined = parts[0]
    else:
        joined = jax.tree.map(lambda *a: jnp.concatenate(a, axis=axis), *parts)
    if np.array_equal(order, np.arange(len(order))):
        return joined
    return jax.tree.map(lambda a: jnp.take(a, order, axis=axis), joined)


def first_edited(masks: np.ndarray, axis: int) -> int:
    """Index of the first entry along `axis` that any mask sets (0 if none)."""
    masks = np.asarray(masks)
    hit = masks.any(axis=tuple(i for i in range(masks.ndim) if i != axis))
    return int(np.argmax(hit)) if hit.any() else 0


class State(eqx.Module):
    """A clean run stopped before layer `L` (or before the embedding) at positions `>= p0`.

    Attributes:
        x: residual entering `L` at positions `>= p0` (unused when starting at `EMBED`).
        tokens: the tokens at positions `>= p0`.
        span: their positions and attention.
        kv: keys/values of layers `>= max(L, 0)` at positions `< p0`, or None if `p0 == 0`.
    """

    x: Float[Array, "pos d_model"]
    tokens: Int[Array, " pos"]
    span: Span
    kv: tuple[Array, Array] | None


def stack_size(model: Transformer) -> int:
    """Number of models in a stack (`stacked=True` of the kernels: every array with a
    leading checkpoint axis); a ValueError for a single model."""
    shape = model.embed.W_E.shape
    if len(shape) != 3:
        raise ValueError(
            f"stacked=True needs models stacked on a leading axis; the embedding has "
            f"shape {shape}"
        )
    return shape[0]


def start_at(model: Transformer, prompt: Prompt, L: int, p0: int) -> State:
    """The shared start of every edit that touches nothing below layer `L` (`EMBED`: the
    embedding taps are edited) and nothing before position `p0`."""
    clean = Taps(model.cfg)
    span = model.span(prompt.tokens.shape[0], attention_mask=prompt.mask)
    x = model.embed_tokens(prompt.tokens, span, clean)
    first = max(L, 0)
    x = model.run_blocks(x, span, clean, 0, first)
    if p0 == 0:
        return State(x, prompt.tokens, span, None)
    head, tail = span.split(p0)
    _, kv, _ = run_cached(model, x[:p0], head, first)
    return State(x[p0:], prompt.tokens[p0:], tail, kv)


def activations(
    model: Transformer, prompt: Prompt, capture: frozenset[str], stop: int | None = None
) -> tuple[Float[Array, "pos d_model"], dict[str, Array]]:
    """A clean run of layers `[0, stop)` (default all) on every position: the residual it
    leaves and the captured taps (`blocks.*.X` stacked `[layer, pos, ...]`)."""
    taps = Taps(model.cfg, capture)
    span = model.span(prompt.tokens.shape[0], attention_mask=prompt.mask)
    x = model.embed_tokens(prompt.tokens, span, taps)
    x = model.run_blocks(x, span, taps, 0, stop)
    return x, taps.records


def read(
    model: Transformer,
    state: State,
    L: int,
    edits: dict[str, AbstractEdit],
    metric: Callable,
    metric_args: tuple,
    index: Int[ArrayLike, ""] | None,
    capture: frozenset[str] = frozenset(),
):
    """Runs from `state` (layers `>= L`, or from the embedding when `L == EMBED`) with
    `edits`; returns `(metric(logits at position index of the state, *metric_args),
    records)` with the `capture`d taps of that run. With `index=None` the metric reads
    the logits of every position of the state, `[pos, d_vocab]`."""
    taps = Taps(model.cfg, capture, edits)
    x = state.x
    if L == EMBED:
        x = model.embed_tokens(state.tokens, state.span, taps)
    x = model.run_blocks(x, state.span, taps, max(L, 0), None, state.kv)
    if index is None:
        return metric(model.unembed_resid(x, taps), *metric_args), taps.records
    h = jax.lax.dynamic_index_in_dim(x, index, keepdims=True)
    return metric(model.unembed_resid(h, taps)[0], *metric_args), taps.records


def sweep(
    model: Transformer,
    state: State,
    L: int,
    variants,
    make_edits: Callable[..., dict[str, AbstractEdit]],
    metric: Callable,
    metric_args: tuple,
    index: Int[ArrayLike, ""] | None,
):
    """`read` for every variant (a pytree with a leading axis), vmapped: the metric of
    each edit `make_edits(variant)`, with a leading `variant` axis."""
    return jax.vmap(
        lambda v: read(model, state, L, make_edits(v), metric, metric_args, index)[0]
    )(variants)

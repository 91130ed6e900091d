"""Attention-head detectors: how much of each head's attention follows a token pattern.

A *detection pattern* marks, for every query position, the key positions a head of some
kind attends to (TransformerLens's `head_detector` patterns, computed from the tokens):

* `previous_token`: the key just before the query (`k = q - 1`);
* `duplicate_token`: earlier keys holding the query's token (`k < q`, `t[k] = t[q]`);
* `induction`: keys just after an earlier occurrence of the query's token (`k - 1 < q`,
  `t[k - 1] = t[q]`), the token an induction head copies.

A head's score on one prompt is the attention mass its pattern puts on the marked keys,
averaged over the query positions that have at least one marked key (queries without one,
such as the first half of a repeated sequence for `induction`, say nothing about the head
and are left out; TransformerLens's `detect_head` averages over every query instead, so its
score is ours times the share of such queries). Scores lie in [0, 1]; a prompt without any
marked query gives NaN.
"""

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._typing import Array, ArrayLike, Bool, Float, Int, Shaped
from ..inputs import prompts
from ..model import Transformer
from .batching import stream
from .sweep import activations

__all__ = ["DETECTORS", "detection_pattern", "head_detector"]

DETECTORS = ("previous_token", "duplicate_token", "induction")


def detection_pattern(
    tokens: Int[ArrayLike, " pos"],
    kind: str,
    mask: Shaped[ArrayLike, " pos"] | None = None,
) -> Bool[np.ndarray, "query_pos key_pos"]:
    """The keys each query of a head of `kind` attends to (see the module docstring), over
    real tokens only (`mask`: 1 or True for tokens, 0 for padding)."""
    tokens = np.asarray(tokens)
    n = tokens.shape[0]
    real = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    # position of each real token among the real ones (padding may sit on either side)
    rank = np.cumsum(real) - 1
    same = tokens[:, None] == tokens[None, :]
    if kind == "previous_token":
        hit = rank[None, :] == rank[:, None] - 1
    elif kind == "duplicate_token":
        hit = same & (k < q)
    elif kind == "induction":
        # key k follows the real token before it, which must match the query's token
        prev = np.full(n, -1)
        idx = np.flatnonzero(real)
        prev[idx[1:]] = idx[:-1]
        before = np.where(prev >= 0, prev, 0)
        hit = (prev[None, :] >= 0) & (tokens[before][None, :] == tokens[:, None])
        hit &= prev[None, :] < q
    else:
        raise ValueError(f"unknown detector {kind!r}; choose from {DETECTORS}")
    return hit & real[:, None] & real[None, :] & (k <= q)


@eqx.filter_jit
def _scores(model, batch, targets):
    key = "blocks.*.attn.hook_pattern"

    def one(prompt, target):  # target [kind, query_pos, key_pos]
        pattern = activations(model, prompt, frozenset({key}))[1][key]
        mass = jnp.einsum("lhqk,tqk->tlhq", pattern.astype(jnp.float32), target)
        asked = target.any(-1)  # [kind, query_pos]
        total = jnp.where(asked[:, None, None], mass, 0.0).sum(-1)
        return total / asked.sum(-1).astype(total.dtype)[:, None, None]

    return jax.vmap(one)(batch, targets)


def head_detector(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    kinds: Sequence[str] = DETECTORS,
    *,
    patterns: Mapping[str, Bool[ArrayLike, "prompt query_pos key_pos"]] | None = None,
    attention_mask: ArrayLike | None = None,
    batch_size: int = 16,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> dict[str, Float[Array, "prompt layer head_index"]]:
    """Per-prompt scores of every head for each detector (see the module docstring).

    Arguments:
        model: the transformer.
        tokens: `[prompt, pos]`, padded with `attention_mask` when ragged.
        kinds: detectors by name (`DETECTORS`).
        patterns: custom detection patterns, `name -> [prompt, query_pos, key_pos]`
            (e.g. from the last position to a name's position), scored under `name`.
        attention_mask: `[prompt, pos]`, 1 = token, 0 = padding.
        batch_size: prompts per device call.
        progress_bar: tqdm over prompt batches.
        mesh: split the prompts over this mesh's `data` axis (see `jaxinterp.sharding`).

    Returns:
        `{kind: [prompt, layer, head_index]}` (average over prompts with `nanmean(0)`).
    """
    batch = prompts(model.cfg, tokens, attention_mask)
    names = list(kinds)
    targets = [
        np.stack(
            [
                detection_pattern(t, kind, m)
                for t, m in zip(batch.tokens, batch.mask, strict=True)
            ]
        )
        for kind in names
    ]
    for name, custom in (patterns or {}).items():
        custom = np.asarray(custom)
        n, n_pos = batch.tokens.shape
        if custom.shape != (n, n_pos, n_pos) or custom.dtype != np.bool_:
            raise ValueError(
                f"pattern {name!r} must be bool [{n}, {n_pos}, {n_pos}], got "
                f"{custom.dtype}{list(custom.shape)}"
            )
        if name in names:
            raise ValueError(f"pattern name {name!r} is also a detector")
        real = np.asarray(batch.mask, bool)
        targets.append(custom & real[:, :, None] & real[:, None, :])
        names.append(name)
    if not names:
        raise ValueError("head_detector needs at least one detector or patterns")
    items = {"prompt": batch, "target": np.stack(targets, 1).astype(np.float32)}
    out = stream(
        lambda b: _scores(model, b["prompt"], b["target"]),
        items,
        batch_size=batch_size,
        desc="heads",
        progress_bar=progress_bar,
        mesh=mesh,
    )
    return {name: out[:, i] for i, name in enumerate(names)}

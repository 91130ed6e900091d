"""`run`: the single jitted forward with capture and edits, and the KV-cache builder.

One compile per (model structure, token shape, capture set, edit structure): `capture` is a
static frozenset and the edits dict's keys and classes are its treedef, while edit arrays are
traced (edit fields are always arrays, so a new value never recompiles). Sweeps therefore
`vmap` over edit values inside one program.
"""

from collections.abc import Callable, Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from .._typing import Array, ArrayLike, Float, Int
from ..config import TransformerConfig
from ..edits import AbstractEdit
from ..inputs import check_mask, check_tokens
from ..model import Span, Transformer
from ..sharding import shard_rows
from ..taps import Taps, resolve_capture

__all__ = ["run", "forward", "kv_names", "kv_cache", "run_cached"]


@eqx.debug.assert_max_traces(max_traces=None)
def forward(
    model: Transformer,
    tokens: Int[Array, " pos"],
    capture: frozenset[str] = frozenset(),
    edits: Mapping[str, AbstractEdit] | None = None,
    past_kv: tuple[Array, Array] | None = None,
    past_len: Int[Array, ""] | None = None,
    attention_mask: Array | None = None,
) -> tuple[Float[Array, "pos d_vocab"], dict[str, Array]]:
    """Unjitted, unbatched forward returning `(logits, records)`: what `run` jits and
    vmaps. Arguments as in `Transformer.__call__` and `run`."""
    taps = Taps(model.cfg, capture, edits)
    logits = model(tokens, taps, past_kv, past_len, attention_mask)
    return logits, taps.records


def kv_names(cfg: TransformerConfig) -> tuple[str, str]:
    """The stacked taps that form the KV cache: rotated keys (plain keys for learned
    positions) and values, `[layer, pos, kv_head_index, d_head]` each."""
    k = "attn.hook_rot_k" if cfg.positional == "rotary" else "attn.hook_k"
    return f"blocks.*.{k}", "blocks.*.attn.hook_v"


def run_cached(
    model: Transformer,
    x: Float[Array, "pos d_model"],
    span: Span,
    start: int = 0,
    stop: int | None = None,
    *,
    past: tuple[Array, Array] | None = None,
    capture: Iterable[str] = frozenset(),
) -> tuple[Array, tuple[Array, Array], dict[str, Array]]:
    """Blocks `[start, stop)` on `x`, also returning their KV cache: the one place a cache
    is built (prefix reuse in sweeps and grids, generation).

    Returns:
        `(x_out, (K, V), records)`: the residual leaving block `stop - 1`, the keys and
        values of layers `[start, stop)` at `past`'s positions followed by `x`'s, each
        `[stop - start, n_slots + pos, kv_head_index, d_head]`, and any other captures.
    """
    k, v = kv_names(model.cfg)
    taps = Taps(model.cfg, frozenset(capture) | {k, v})
    x = model.run_blocks(x, span, taps, start, stop, past)
    records = taps.records
    K, V = records[k], records[v]
    if past is not None:
        K = jnp.concatenate([past[0], K], axis=1)
        V = jnp.concatenate([past[1], V], axis=1)
    return x, (K, V), records


def kv_cache(
    model: Transformer, tokens: Int[Array, " pos"]
) -> tuple[Float[Array, "pos d_vocab"], tuple[Array, Array]]:
    """Unbatched prefix forward: `(logits, past_kv)` to continue with `run(...,
    past_kv=past_kv)` or `forward(..., past_kv=past_kv)`."""
    check_tokens(tokens, model.cfg.d_vocab)
    span = model.span(tokens.shape[0])
    x = model.embed_tokens(tokens, span, Taps(model.cfg))
    x, kv, _ = run_cached(model, x, span)
    return model.unembed_resid(x, Taps(model.cfg)), kv


@eqx.filter_jit
def _run(model, tokens, capture, edits, past_kv, attention_mask):
    if tokens.ndim == 1:
        return forward(model, tokens, capture, edits, past_kv, None, attention_mask)
    kv_axis = None if past_kv is None or past_kv[0].ndim == 4 else 1
    mask_axis = None if attention_mask is None else 0
    return jax.vmap(
        lambda t, kv, m: forward(model, t, capture, edits, kv, None, m),
        in_axes=(0, kv_axis, mask_axis),
    )(tokens, past_kv, attention_mask)


def run(
    model: Transformer,
    tokens: Int[ArrayLike, "*batch pos"],
    *,
    capture: Iterable[str] | Callable[[str], bool] = (),
    edits: Mapping[str, AbstractEdit] | None = None,
    past_kv: tuple[Array, Array] | None = None,
    attention_mask: ArrayLike | None = None,
    mesh: Mesh | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Runs the model, capturing and editing taps.

    Arguments:
        model: the transformer.
        tokens: `[pos]` or `[batch, pos]` token ids (edits are shared across the batch;
            `vmap` yourself for per-example edits).
        capture: TL tap names to record (`blocks.3.mlp.hook_post`, ...); `blocks.*.X`
            records `[layer, ...]` in one array; or a TransformerLens-style `names_filter`
            callable `name -> bool` over the per-layer names.
        edits: TL tap name -> edit; a `blocks.*.<suffix>` key takes a stacked edit with a
            leading layer axis (see `jaxinterp.edits`).
        past_kv: optional cached prefix `(K, V)`, each `[layer, (batch,) n_past,
            kv_head_index, d_head]` (from `kv_cache`); a cache without the batch axis is
            shared by every sequence of the batch.
        attention_mask: `[(batch,) pos]`, 1 for real tokens and 0 for padding (HF
            semantics, left or right padding); position ids count real tokens only.
            Values at padded positions are finite but meaningless.
        mesh: split the batch over this mesh's `data` axis (its size must divide the
            batch; see `jaxinterp.sharding`).

    Returns:
        `(logits, cache)`: logits `[(batch,) pos, d_vocab]` and a plain dict from each
        captured name to its value `[(batch,) *tap_shape]` (`[(batch,) layer, ...]` for
        stacked names).
    """
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = jnp.asarray(tokens)
    if tokens.ndim not in (1, 2):
        raise ValueError(
            f"tokens must be [pos] or [batch, pos], got shape {tokens.shape}"
        )
    if attention_mask is not None and past_kv is not None:
        raise ValueError("attention_mask with past_kv is not supported")
    mask = check_mask(attention_mask, tokens.shape)
    if mesh is not None and tokens.ndim != 2:
        raise ValueError("mesh splits a batch: tokens must be [batch, pos]")
    tokens, mask = shard_rows((tokens, mask), mesh)
    capture = resolve_capture(capture, model.cfg)
    edits = dict(edits) if edits is not None else None
    return _run(model, tokens, capture, edits, past_kv, mask)

"""`run`: the single jitted forward with capture and edits, and KV-cache helpers.

One compile per (model structure, token shape, capture set, edit structure): `capture` is a
static frozenset and the edits dict's keys and classes are its treedef, while edit arrays are
traced. Sweeps therefore `vmap` over edit values inside one program.
"""

from collections.abc import Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike
from ..config import TransformerConfig
from ..edits import AbstractEdit
from ..model import Transformer
from ..taps import Taps

__all__ = ["run", "forward", "kv_cache", "kv_names", "stack_kv", "check_tokens"]


@eqx.debug.assert_max_traces(max_traces=None)
def forward(
    model: Transformer,
    tokens: Array,
    capture: frozenset[str] = frozenset(),
    edits: Mapping[str, AbstractEdit] | None = None,
    past_kv: tuple[Array, Array] | None = None,
    past_len: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Unjitted, unbatched forward returning `(logits, records)`: the building block that
    kernels vmap, grad and jit themselves. `past_kv` continues a cached prefix (`past_len`
    valid slots of a preallocated cache, see `Transformer.__call__`)."""
    taps = Taps(model.cfg, capture, edits)
    logits = model(tokens, taps, past_kv, past_len)
    return logits, taps.records


def kv_names(cfg: TransformerConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Tap names whose values form the KV cache: rotated keys (plain keys for learned
    positions) and values, for every layer."""
    k = "attn.hook_rot_k" if cfg.positional == "rotary" else "attn.hook_k"
    layers = range(cfg.n_layers)
    return (
        tuple(f"blocks.{l}.{k}" for l in layers),
        tuple(f"blocks.{l}.attn.hook_v" for l in layers),
    )


def stack_kv(cfg: TransformerConfig, cache: Mapping[str, Array]) -> tuple[Array, Array]:
    """`(K, V)`, each `[layer, (batch,) pos, kv_head_index, d_head]`, from captured taps."""
    k_names, v_names = kv_names(cfg)
    return jnp.stack([cache[n] for n in k_names]), jnp.stack(
        [cache[n] for n in v_names]
    )


def kv_cache(model: Transformer, tokens: Array) -> tuple[Array, tuple[Array, Array]]:
    """Unbatched prefix forward: `(logits, past_kv)` to continue with `forward(...,
    past_kv=past_kv)` or `run(..., past_kv=past_kv)`."""
    k_names, v_names = kv_names(model.cfg)
    logits, cache = forward(model, tokens, frozenset(k_names + v_names))
    return logits, stack_kv(model.cfg, cache)


@eqx.filter_jit
def _run(model, tokens, capture, edits, past_kv):
    if tokens.ndim == 1:
        return forward(model, tokens, capture, edits, past_kv)
    kv_axis = None if past_kv is None or past_kv[0].ndim == 4 else 1
    return jax.vmap(forward, in_axes=(None, 0, None, None, kv_axis))(
        model, tokens, capture, edits, past_kv
    )


def check_tokens(tokens: ArrayLike, d_vocab: int) -> None:
    """Raises ValueError naming the first out-of-vocabulary id (concrete inputs only)."""
    if isinstance(tokens, jax.core.Tracer):
        return
    arr = np.asarray(tokens)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= d_vocab)
    if bad.any():
        raise ValueError(
            f"token id {int(arr[bad].flat[0])} is out of vocabulary (d_vocab={d_vocab})"
        )


def run(
    model: Transformer,
    tokens: ArrayLike,
    *,
    capture: Iterable[str] = (),
    edits: Mapping[str, AbstractEdit] | None = None,
    past_kv: tuple[Array, Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Runs the model, capturing and editing taps.

    Arguments:
        model: the transformer.
        tokens: `[pos]` or `[batch, pos]` token ids (edits are shared across the batch;
            `vmap` yourself for per-example edits).
        capture: TL tap names to record (`blocks.3.mlp.hook_post`, ...).
        edits: TL tap name -> edit; a `blocks.*.<suffix>` key takes a stacked edit with a
            leading layer axis (see `jaxinterp.edits`).
        past_kv: optional cached prefix `(K, V)`, each `[layer, (batch,) n_past,
            kv_head_index, d_head]` (from `kv_cache` / `stack_kv`); a cache without the batch
            axis is shared by every sequence of the batch.

    Returns:
        `(logits, cache)`: logits `[(batch,) pos, d_vocab]` and a plain dict from each
        captured name to its value `[(batch,) *tap_shape]`.
    """
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = jnp.asarray(tokens)
    if tokens.ndim not in (1, 2):
        raise ValueError(
            f"tokens must be [pos] or [batch, pos], got shape {tokens.shape}"
        )
    if isinstance(capture, str):
        raise TypeError("capture takes a collection of names, not a single string")
    edits = dict(edits) if edits is not None else None
    return _run(model, tokens, frozenset(capture), edits, past_kv)

"""Greedy decoding with a preallocated KV cache: one compiled program per (prompt length,
number of new tokens), a `lax.scan` over decode steps, each step one position."""

from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._typing import ArrayLike
from .inputs import check_tokens
from .kernels.run import forward, kv_names
from .model import Transformer

__all__ = ["greedy"]


@eqx.filter_jit
def _greedy(model: Transformer, tokens, max_new_tokens: int):
    cfg = model.cfg
    n = tokens.shape[0]
    names = frozenset(kv_names(cfg))
    logits, cache = forward(model, tokens, names)
    k, v = (cache[name] for name in kv_names(cfg))  # [layer, n, kv_head_index, d_head]
    slots = (cfg.n_layers, n + max_new_tokens, cfg.n_kv_heads, cfg.d_head)
    k_buf = jnp.zeros(slots, k.dtype).at[:, :n].set(k)
    v_buf = jnp.zeros(slots, v.dtype).at[:, :n].set(v)
    first = jnp.argmax(logits[-1]).astype(tokens.dtype)

    def step(carry, i):
        k_buf, v_buf, token = carry
        length = n + i  # cache slots filled so far; `token` sits at position `length`
        logits, cache = forward(model, token[None], names, None, (k_buf, v_buf), length)
        k, v = (cache[name] for name in kv_names(cfg))  # [layer, 1, ...]
        k_buf = jax.lax.dynamic_update_slice_in_dim(k_buf, k, length, axis=1)
        v_buf = jax.lax.dynamic_update_slice_in_dim(v_buf, v, length, axis=1)
        nxt = jnp.argmax(logits[-1]).astype(tokens.dtype)
        return (k_buf, v_buf, nxt), token

    (_, _, last), emitted = jax.lax.scan(
        step, (k_buf, v_buf, first), jnp.arange(max_new_tokens - 1)
    )
    return jnp.concatenate([emitted, last[None]])


def greedy(
    model: Transformer,
    tokens: ArrayLike,
    max_new_tokens: int,
    *,
    stop_ids: Iterable[int] = (),
) -> np.ndarray:
    """Greedy continuation of one prompt.

    Arguments:
        model: the transformer.
        tokens: prompt ids `[pos]` (BOS handling is the caller's, see the tokenizer).
        max_new_tokens: number of tokens to generate (at least 1).
        stop_ids: ids that end the continuation early (the stop id is not returned).

    Returns:
        The generated ids (not including the prompt), as a numpy array.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(f"greedy takes one non-empty prompt [pos], got {tokens.shape}")
    if (
        model.cfg.positional == "learned"
        and tokens.shape[0] + max_new_tokens > model.cfg.n_ctx
    ):
        raise ValueError(f"prompt + new tokens exceed n_ctx={model.cfg.n_ctx}")
    out = np.asarray(_greedy(model, tokens, max_new_tokens))
    stops = set(stop_ids)
    for i, t in enumerate(out):
        if int(t) in stops:
            return out[:i]
    return out

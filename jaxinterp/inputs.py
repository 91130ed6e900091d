"""Validated inputs of the forward and the kernels: token ids, attention masks and prompt
sets with their answer positions. Each check runs on concrete (host) values at the public
boundary and raises a ValueError that names the problem."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._typing import Array, ArrayLike, Bool, Int
from .config import TransformerConfig

__all__ = ["check_tokens", "check_mask", "check_indices", "Prompt", "prompts"]


def check_indices(indices, size: int, what: str) -> np.ndarray:
    """Integer indices into an axis of `size` (negatives count from the end, as in numpy),
    as a non-empty int array in `[0, size)`; raises ValueError naming `what` for anything
    else. A JAX gather would silently clamp an out-of-range index to another entry."""
    arr = np.asarray(indices)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be non-empty integer indices, got {indices!r}")
    if ((arr < -size) | (arr >= size)).any():
        raise ValueError(f"{what} {arr.tolist()} outside [{-size}, {size})")
    return np.asarray(arr % size, np.int32)


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


def check_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> Array | None:
    """An HF attention mask (1 = real token, 0 = padding) of the tokens' `shape` as a bool
    array, or None; raises ValueError for another shape, values other than 0/1, or a row
    without any real token."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(f"attention_mask has shape {arr.shape}, tokens {tuple(shape)}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        arr = arr.astype(bool)
    if not arr.any(-1).all():
        raise ValueError("attention_mask has a sequence without any real token")
    return jnp.asarray(arr)


class Prompt(eqx.Module):
    """One prompt inside a kernel (a leading `prompt` axis on the host, `*batch`).

    Attributes:
        tokens: `[pos]` ids.
        mask: `[pos]` bool, True for real tokens (all True without padding).
        answer: the position whose logits the metric reads.
    """

    tokens: Int[ArrayLike, "*batch pos"]
    mask: Bool[ArrayLike, "*batch pos"]
    answer: Int[ArrayLike, "*batch"]


def prompts(
    cfg: TransformerConfig,
    tokens: Int[ArrayLike, "prompt pos"],
    attention_mask: ArrayLike | None = None,
    answer_pos: Int[ArrayLike, " prompt"] | None = None,
) -> Prompt:
    """Validated prompts, batched `[prompt, ...]` on the host.

    Arguments:
        cfg: the model's config.
        tokens: `[prompt, pos]`, padded to one length.
        attention_mask: `[prompt, pos]`, 1 for real tokens, 0 for padding (default: none).
        answer_pos: `[prompt]` position each metric reads (negative counts from the end);
            default the last real token of each prompt.
    """
    check_tokens(tokens, cfg.d_vocab)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be [prompt, pos], got shape {tokens.shape}")
    n, n_pos = tokens.shape
    mask = check_mask(attention_mask, tokens.shape)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask)
    if answer_pos is None:
        answer = n_pos - 1 - np.argmax(mask[:, ::-1], axis=1)
    else:
        answer = check_indices(answer_pos, n_pos, "answer_pos")
        if answer.shape != (n,):
            raise ValueError(f"answer_pos must be [{n}], got shape {answer.shape}")
        if not mask[np.arange(n), answer].all():
            raise ValueError("answer_pos points at a padded position")
    return Prompt(tokens.astype(np.int32), mask, answer.astype(np.int32))

"""Host-side streaming helpers shared by the sweep kernels: fixed-size padded chunks (so a
whole sweep is one compile), progress bars, and stacked-tap naming."""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..config import TransformerConfig
from ..taps import tap_shape

__all__ = [
    "chunks",
    "pad_rows",
    "head_rows",
    "padded_slice",
    "stacked_names",
    "tail_shape",
    "progress",
]


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """`(start, stop)` of consecutive chunks of at most `size` out of `n` items."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def pad_rows(x, size: int):
    """Pads axis 0 of every leaf to `size` rows by repeating the last row (values stay
    valid token ids / activations; padded results are dropped by the caller)."""

    def pad(a):
        n = a.shape[0]
        return a if n == size else a[np.minimum(np.arange(size), n - 1)]

    return jax.tree.map(pad, x)


def head_rows(tree, n: int, axis: int = 0):
    """The first `n` entries along `axis` of every leaf (drops padded rows)."""
    return jax.tree.map(
        lambda a: jax.lax.slice_in_dim(a, 0, n, axis=axis % a.ndim), tree
    )


def padded_slice(tree, start: int, stop: int, size: int):
    """Rows `[start, stop)` of every leaf, padded to `size` rows, as device arrays."""
    return jax.tree.map(lambda a: jnp.asarray(pad_rows(a[start:stop], size)), tree)


def stacked_names(suffix: str, layers) -> tuple[str, ...]:
    return tuple(f"blocks.{l}.{suffix}" for l in layers)


def tail_shape(suffix: str, cfg: TransformerConfig) -> tuple[int, ...]:
    """A block tap's per-position shape (its shape without the leading `pos`)."""
    return tap_shape(f"blocks.0.{suffix}", cfg, 1)[1:]


def progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)

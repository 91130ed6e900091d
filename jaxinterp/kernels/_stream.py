"""Host-side streaming helpers shared by the sweep kernels: fixed-size padded chunks (so a
whole sweep is one compile), progress bars, and stacked-tap naming."""

from collections.abc import Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from ..config import TransformerConfig
from ..taps import tap_shape

__all__ = ["chunks", "pad_rows", "stacked_names", "tail_shape", "progress"]


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


def stacked_names(suffix: str, layers) -> tuple[str, ...]:
    return tuple(f"blocks.{l}.{suffix}" for l in layers)


def tail_shape(suffix: str, cfg: TransformerConfig) -> tuple[int, ...]:
    """A block tap's per-position shape (its shape without the leading `pos`)."""
    return tap_shape(f"blocks.0.{suffix}", cfg, 1)[1:]


def progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)

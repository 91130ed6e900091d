"""The one host-side batching loop of the kernels: fixed-size chunks of a leading axis (the
last one padded, so a whole sweep is one compile), a tqdm bar, padding dropped from the
results."""

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ..sharding import gather, rows_multiple, shard_rows

__all__ = ["stream", "pad_rows", "progress", "NonFiniteWarning", "warn_nonfinite"]


class NonFiniteWarning(RuntimeWarning):
    """A kernel's result holds NaN or Inf (a broken input, model or metric)."""


def warn_nonfinite(result, desc: str) -> None:
    """Warns, naming the kernel and where, when a floating leaf of `result` holds NaN or
    Inf (they stay in the result: nothing is averaged away). The check is a reduction where
    the result lives; the leaf is copied to the host only to describe a bad one."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(result):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            continue
        if not bool(jnp.isfinite(leaf).all()):
            bad = ~np.isfinite(np.asarray(leaf))
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            warnings.warn(
                f"{desc}: {int(bad.sum())} of {bad.size} values of result"
                f"{jax.tree_util.keystr(path)} are NaN or Inf (first at index {first})",
                NonFiniteWarning,
                stacklevel=3,
            )


def pad_rows(x, size: int):
    """Pads axis 0 of every leaf to `size` rows by repeating the last row (values stay
    valid token ids / activations; padded results are dropped by the caller)."""

    def pad(a):
        n = a.shape[0]
        return a if n == size else a[np.minimum(np.arange(size), n - 1)]

    return jax.tree.map(pad, x)


def progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


def stream(
    fn: Callable,
    batched,
    *,
    batch_size: int,
    desc: str,
    progress_bar: bool = True,
    axis: int = 0,
    weighted_sum: bool = False,
    mesh: Mesh | None = None,
):
    """Runs `fn` over fixed-size chunks of the leading axis of every leaf of `batched`.

    Arguments:
        fn: `fn(chunk) -> pytree` whose leaves have the chunk's rows along `axis`; with
            `weighted_sum`, `fn(chunk, weight)` returns sums over the chunk weighted by
            `weight` (`[batch]`, 0.0 on padded rows).
        batched: a pytree of arrays sharing their leading size `n`.
        batch_size: rows per call (the last chunk is padded to it).
        desc, progress_bar: the tqdm bar.
        axis: the axis of `fn`'s outputs that holds the rows.
        weighted_sum: add the outputs up over chunks (in float64 on the host, each chunk's
            sums read while the next chunk computes) instead of concatenating them.
        mesh: split every chunk over the mesh's `data` axis (`batch_size` is rounded up
            to a multiple of its size); see `jaxinterp.sharding`.

    Returns:
        `fn`'s outputs concatenated along `axis` (`n` rows, padding dropped), or their sum.
    """
    leaves = jax.tree.leaves(batched)
    if any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError(
            f"{desc}: every per-prompt input (metric_args included) needs a leading "
            "prompt axis; got a scalar"
        )
    sizes = {np.shape(leaf)[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"batched inputs disagree on their leading size: {sizes}")
    (n,) = sizes
    if n == 0:
        raise ValueError(f"{desc}: nothing to run (0 items)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = rows_multiple(min(batch_size, n), mesh)
    starts = range(0, n, batch_size)
    outs, total, pending = [], None, None

    def add(sums):  # on the host in float64, while the next chunk computes
        nonlocal total
        sums = jax.tree.map(lambda a: gather(a).astype(np.float64), sums)
        total = sums if total is None else jax.tree.map(np.add, total, sums)

    for start in progress(starts, len(starts), desc, progress_bar):
        rows = slice(start, min(start + batch_size, n))
        n_valid = rows.stop - rows.start
        chunk = jax.tree.map(
            lambda a, rows=rows: shard_rows(pad_rows(a[rows], batch_size), mesh),
            batched,
        )
        if weighted_sum:
            weight = jnp.asarray(np.arange(batch_size) < n_valid, jnp.float32)
            # dispatched; the previous chunk's sums are read while it computes
            sums = fn(chunk, weight)
            if pending is not None:
                add(pending)
            pending = sums
        else:
            outs.append(
                jax.tree.map(
                    lambda a, n=n_valid: jax.lax.slice_in_dim(a, 0, n, axis=axis),
                    fn(chunk),
                )
            )
    if weighted_sum:
        add(pending)
        result = total
    elif len(outs) == 1:
        result = outs[0]
    else:
        result = jax.tree.map(lambda *a: jnp.concatenate(a, axis=axis), *outs)
    warn_nonfinite(result, desc)
    return result

"""`run`: the single jitted forward with capture and edits.

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
from ..edits import AbstractEdit
from ..model import Transformer
from ..taps import Taps

__all__ = ["run", "forward"]


@eqx.debug.assert_max_traces(max_traces=None)
def forward(
    model: Transformer,
    tokens: Array,
    capture: frozenset[str],
    edits: Mapping[str, AbstractEdit] | None,
) -> tuple[Array, dict[str, Array]]:
    """Unjitted, unbatched forward returning `(logits, records)`; the building block that
    kernels vmap, grad and jit themselves."""
    taps = Taps(model.cfg, capture, edits)
    logits = model(tokens, taps)
    return logits, taps.records


@eqx.filter_jit
def _run(model, tokens, capture, edits):
    if tokens.ndim == 1:
        return forward(model, tokens, capture, edits)
    return jax.vmap(forward, in_axes=(None, 0, None, None))(
        model, tokens, capture, edits
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
) -> tuple[Array, dict[str, Array]]:
    """Runs the model, capturing and editing taps.

    Arguments:
        model: the transformer.
        tokens: `[pos]` or `[batch, pos]` token ids (edits are shared across the batch;
            `vmap` yourself for per-example edits).
        capture: TL tap names to record (`blocks.3.mlp.hook_post`, ...).
        edits: TL tap name -> edit; a `blocks.*.<suffix>` key takes a stacked edit with a
            leading layer axis (see `jaxinterp.edits`).

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
    return _run(model, tokens, frozenset(capture), edits)

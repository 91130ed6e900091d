"""Activation statistics over a prompt set, streamed in fixed-size batches.

`mean_cache` gives the per-position mean of whole stacked taps (`[layer, pos, ...]`), the
values that mean ablation writes (paper-spec §4: per position, over every prompt);
`stacked_activations` gives per-prompt stacked activations (resample ablation, patching
sources); `last_logits` the last-position logits (clean runs for metrics such as Eq. 1).
Each is one compile for the whole prompt set: the last batch is padded and masked.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, ArrayLike, Float, Int
from ..model import Transformer
from ._stream import chunks, pad_rows, progress, stacked_names
from .layers import embed, forward_layers, unembed
from .run import check_tokens

__all__ = ["mean_cache", "stacked_activations", "last_logits"]


def _stacked_forward(model, tokens, suffixes, logits):
    """One prompt: every layer of each suffix, stacked `[layer, pos, ...]`."""
    n = model.cfg.n_layers
    capture = frozenset(name for s in suffixes for name in stacked_names(s, range(n)))
    x, rec = forward_layers(
        model, embed(model, tokens), 0, capture=capture, logits=False
    )
    stacked = {
        s: jnp.stack([rec[m] for m in stacked_names(s, range(n))]) for s in suffixes
    }
    return (unembed(model, x[-1]) if logits else None), stacked


@eqx.filter_jit
def _sum_chunk(model, tokens, weight, suffixes):
    _, acts = jax.vmap(lambda t: _stacked_forward(model, t, suffixes, False))(tokens)
    return {s: jnp.einsum("b,b...->...", weight, a) for s, a in acts.items()}


def mean_cache(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    suffixes: Sequence[str] = ("attn.hook_z", "mlp.hook_post"),
    *,
    batch_size: int = 64,
    progress_bar: bool = True,
) -> dict[str, Float[Array, "layer pos ..."]]:
    """Per-position mean of each block tap over all prompts.

    Arguments:
        model: the transformer.
        tokens: `[prompt, pos]`, all prompts of one length.
        suffixes: block tap suffixes (`"mlp.hook_post"`, `"attn.hook_z"`, ...).
        batch_size: prompts per device call.
        progress_bar: show a tqdm bar over batches.

    Returns:
        suffix -> mean `[layer, pos, *tap_tail]` (e.g. `[layer, pos, head_index, d_head]`
        for `attn.hook_z`), summed in float64 on the host.
    """
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = np.asarray(tokens)
    n = tokens.shape[0]
    batch_size = min(batch_size, n)
    suffixes = tuple(suffixes)
    total = None
    for start, stop in progress(
        chunks(n, batch_size), -(-n // batch_size), "mean cache", progress_bar
    ):
        chunk = pad_rows(tokens[start:stop], batch_size)
        weight = (np.arange(batch_size) < stop - start).astype(np.float32)
        sums = _sum_chunk(model, jnp.asarray(chunk), jnp.asarray(weight), suffixes)
        sums = {s: np.asarray(v, np.float64) for s, v in sums.items()}
        total = sums if total is None else {s: total[s] + sums[s] for s in suffixes}
    dtype = model.embed.W_E.dtype
    return {s: jnp.asarray(v / n, dtype) for s, v in total.items()}


@eqx.filter_jit
def _acts_chunk(model, tokens, suffixes, logits):
    return jax.vmap(lambda t: _stacked_forward(model, t, suffixes, logits))(tokens)


def stacked_activations(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    suffix: str,
    *,
    batch_size: int = 64,
    progress_bar: bool = False,
) -> Float[Array, "prompt layer pos ..."]:
    """Every layer of one block tap for every prompt, `[prompt, layer, pos, *tap_tail]`
    (resample-ablation values, patching sources)."""
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = np.asarray(tokens)
    n = tokens.shape[0]
    batch_size = min(batch_size, n)
    out = []
    for start, stop in progress(
        chunks(n, batch_size), -(-n // batch_size), suffix, progress_bar
    ):
        chunk = jnp.asarray(pad_rows(tokens[start:stop], batch_size))
        _, acts = _acts_chunk(model, chunk, (suffix,), False)
        out.append(acts[suffix][: stop - start])
    return jnp.concatenate(out)


def last_logits(
    model: Transformer,
    tokens: Int[ArrayLike, "prompt pos"],
    *,
    batch_size: int = 64,
    progress_bar: bool = False,
) -> Float[Array, "prompt d_vocab"]:
    """Last-position logits of every prompt (no other position is unembedded)."""
    check_tokens(tokens, model.cfg.d_vocab)
    tokens = np.asarray(tokens)
    n = tokens.shape[0]
    batch_size = min(batch_size, n)
    out = []
    for start, stop in progress(
        chunks(n, batch_size), -(-n // batch_size), "logits", progress_bar
    ):
        chunk = jnp.asarray(pad_rows(tokens[start:stop], batch_size))
        logits, _ = _acts_chunk(model, chunk, (), True)
        out.append(logits[: stop - start])
    return jnp.concatenate(out)

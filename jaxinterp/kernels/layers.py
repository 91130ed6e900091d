"""Running a slice of the model: embed, a range of blocks, or the unembedding on their own.

Sweeps share computation by running the clean model once up to the first edited layer and
then only the layers above it for every edit (and, with a KV cache, only the positions at or
after the first edited one). `forward_layers` runs blocks `[start, stop)` of the stacked model
on a residual stream, with captures and edits named exactly as in a full forward; it slices the
stacked block parameters (no copy of the model is edited) and scans over them as
`Transformer.__call__` does.

Shapes (unbatched, as everywhere): `x` is `[pos, d_model]`; a cache `past_kv` of the layers
being run is `([stop - start, n_past, kv_head_index, d_head],) * 2`.
"""

import dataclasses
from collections.abc import Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp

from .._typing import Array, Float, Int
from ..edits import AbstractEdit
from ..model import Transformer
from ..taps import Taps, parse
from .run import kv_names

__all__ = ["embed", "forward_layers", "unembed", "slice_kv", "clean_prefix"]


def embed(
    model: Transformer, tokens: Int[Array, " pos"], n_past: int = 0
) -> Float[Array, "pos d_model"]:
    """The residual stream entering block 0 (`blocks.0.hook_resid_pre`) for `tokens` that
    continue `n_past` cached positions."""
    x = model.embed.W_E[tokens]
    if model.pos_embed is not None:
        x = x + jax.lax.dynamic_slice_in_dim(
            model.pos_embed.W_pos, n_past, tokens.shape[0]
        )
    return x


def unembed(
    model: Transformer, x: Float[Array, "*pos d_model"]
) -> Float[Array, "*pos d_vocab"]:
    """Final norm and unembedding of residual vectors (the last part of the forward)."""
    shape = x.shape
    h = model.ln_final(x.reshape(-1, shape[-1]), Taps(model.cfg).scope("ln_final"))
    logits = h @ model.unembed.W_U + model.unembed.b_U[None]
    return logits.reshape(*shape[:-1], -1)


def slice_kv(
    past_kv: tuple[Array, Array], start: int, stop: int
) -> tuple[Array, Array]:
    """Layers `[start, stop)` of a cache `(K, V)`, each `[layer, ...]`."""
    return past_kv[0][start:stop], past_kv[1][start:stop]


def _rename(name: str, start: int, stop: int, cfg) -> str:
    layer, suffix = parse(name, cfg)
    if layer is None or layer == "*":
        return name
    if not start <= layer < stop:
        raise ValueError(f"tap {name!r} is outside the layers [{start}, {stop}) run")
    return f"blocks.{layer - start}.{suffix}"


def forward_layers(
    model: Transformer,
    x: Float[Array, "pos d_model"],
    start: int,
    stop: int | None = None,
    *,
    capture: Iterable[str] = frozenset(),
    edits: Mapping[str, AbstractEdit] | None = None,
    past_kv: tuple[Array, Array] | None = None,
    logits: bool | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Runs blocks `[start, stop)` on the residual stream `x` entering block `start`.

    Arguments:
        model: the transformer.
        x: `blocks.{start}.hook_resid_pre`, `[pos, d_model]`.
        start, stop: the layers to run (`stop` defaults to `n_layers`); both static.
        capture: global tap names (`blocks.{l}.X` with `start <= l < stop`, or
            `ln_final.*` when the logits are computed).
        edits: global tap name -> edit; a stacked key `blocks.*.X` takes arrays whose leading
            axis has size `stop - start` (one entry per layer run).
        past_kv: cache of earlier positions for the layers run, each
            `[stop - start, n_past, kv_head_index, d_head]`; `x` then continues them.
        logits: apply the final norm and unembedding (default: when `stop == n_layers`).

    Returns:
        `(out, records)`: logits `[pos, d_vocab]` (or the residual stream leaving block
        `stop - 1`, `[pos, d_model]`), and the captured taps under their global names.
    """
    cfg = model.cfg
    stop = cfg.n_layers if stop is None else stop
    logits = stop == cfg.n_layers if logits is None else logits
    if not 0 <= start < stop <= cfg.n_layers:
        raise ValueError(f"bad layer range [{start}, {stop}) for {cfg.n_layers} layers")
    if logits and stop != cfg.n_layers:
        raise ValueError("logits need every layer up to the last")
    sub = dataclasses.replace(cfg, n_layers=stop - start)
    capture = frozenset(capture)
    local_capture = frozenset(_rename(n, start, stop, cfg) for n in capture)
    local_edits = {_rename(n, start, stop, cfg): e for n, e in (edits or {}).items()}
    taps = Taps(sub, local_capture, local_edits)
    n_pos = x.shape[0]
    n_past = 0 if past_kv is None else past_kv[0].shape[1]
    plan = taps.layers(n_pos, x.dtype, n_past)
    params, static = eqx.partition(model.blocks, eqx.is_array)
    params = jax.tree.map(lambda a: a[start:stop], params)

    def body(carry, xs):
        x, buffers = carry
        block_params, layer, stacked_edits, past = xs
        block_taps = plan.enter(layer, stacked_edits, buffers)
        x = eqx.combine(block_params, static)(x, block_taps, past)
        return (x, block_taps.buffers), None

    xs = (params, jnp.arange(stop - start), plan.stacked_edits, past_kv)
    (x, buffers), _ = jax.lax.scan(body, (x, plan.buffers), xs)
    plan.finish(buffers)
    if logits:
        x = model.ln_final(x, taps.scope("ln_final"))
        x = x @ model.unembed.W_U + model.unembed.b_U[None]
    records = {}
    for name, value in taps.records.items():
        layer, suffix = parse(name, sub)
        records[name if layer is None else f"blocks.{layer + start}.{suffix}"] = value
    return x, records


def clean_prefix(model: Transformer, tokens: Int[Array, " pos"], L: int, p0: int):
    """The clean run's residual entering layer `L` at positions `>= p0`, and its cache of
    layers `>= L` at positions `< p0` (None when `p0 == 0`): the shared start of sweeps
    that edit nothing below layer `L` or before position `p0`."""
    x = embed(model, tokens)
    if L > 0:
        x, _ = forward_layers(model, x, 0, L, logits=False)
    if p0 == 0:
        return x, None
    k_names, v_names = kv_names(model.cfg)
    names = frozenset(k_names[L:] + v_names[L:])
    _, rec = forward_layers(model, x[:p0], L, capture=names, logits=False)
    kv = (
        jnp.stack([rec[n] for n in k_names[L:]]),
        jnp.stack([rec[n] for n in v_names[L:]]),
    )
    return x[p0:], kv

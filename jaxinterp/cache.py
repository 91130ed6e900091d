"""Analyses over a captured cache (a plain `dict[str, Array]` from `run`), as free functions.

TransformerLens's `ActivationCache` methods, without holding the model: where weights are
needed (per-head results, the final norm) the model is an argument. Batched caches work too:
every function keeps the leading axes of the captured arrays.
"""

from collections.abc import Mapping

import jax.numpy as jnp

from ._typing import Array
from .model import Transformer
from .taps import Taps

__all__ = [
    "stack_layers",
    "accumulated_resid_names",
    "accumulated_resid",
    "decompose_resid_names",
    "decompose_resid",
    "head_results",
    "apply_ln_final",
]


def stack_layers(cache: Mapping[str, Array], suffix: str, n_layers: int) -> Array:
    """`[layer, ...]` stack of one block tap (`stack_layers(c, "mlp.hook_post", L)`)."""
    names = [f"blocks.{l}.{suffix}" for l in range(n_layers)]
    missing = [n for n in names if n not in cache]
    if missing:
        raise KeyError(
            f"cache lacks {missing[:3]}; capture all_layers({suffix!r}, {n_layers})"
        )
    return jnp.stack([cache[n] for n in names])


def accumulated_resid_names(n_layers: int, layer: int | None = None) -> tuple[str, ...]:
    """Names `accumulated_resid` needs: resid_pre of layers < `layer` (default: all, plus
    the final resid_post)."""
    layer = n_layers if layer is None else layer
    names = tuple(f"blocks.{l}.hook_resid_pre" for l in range(min(layer, n_layers)))
    if layer > n_layers - 1:
        names += (f"blocks.{n_layers - 1}.hook_resid_post",)
    return names


def accumulated_resid(
    cache: Mapping[str, Array], n_layers: int, layer: int | None = None
):
    """The residual stream after 0, 1, ... layers: `[n, ..., d_model]` (TL semantics)."""
    return jnp.stack([cache[n] for n in accumulated_resid_names(n_layers, layer)])


def decompose_resid_names(cfg, layer: int) -> tuple[str, ...]:
    """Names of the components that sum to `blocks.{layer}.hook_resid_pre`."""
    names = ("hook_embed",) + (
        ("hook_pos_embed",) if cfg.positional == "learned" else ()
    )
    for l in range(layer):
        names += (f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out")
    return names


def decompose_resid(cache: Mapping[str, Array], cfg, layer: int) -> Array:
    """`[component, ..., d_model]`: embed (+ pos_embed), then each layer's attn_out and
    mlp_out below `layer`; they sum to `blocks.{layer}.hook_resid_pre`."""
    return jnp.stack([cache[n] for n in decompose_resid_names(cfg, layer)])


def head_results(model: Transformer, cache: Mapping[str, Array], layer: int) -> Array:
    """Per-head writes to the residual stream `[..., pos, head_index, d_model]` from the
    captured `attn.hook_z` (equal to capturing `attn.hook_result`, without recomputing)."""
    z = cache[f"blocks.{layer}.attn.hook_z"]
    return jnp.einsum("...phd,hdm->...phm", z, model.blocks.attn.W_O[layer])


def apply_ln_final(model: Transformer, resid: Array) -> Array:
    """Applies the final norm to any residual-stream vectors `[..., d_model]` (each vector
    normalised on its own, as the model does for one position)."""
    flat = resid.reshape(-1, resid.shape[-1])
    out = model.ln_final(flat, Taps(model.cfg))
    return out.reshape(resid.shape)

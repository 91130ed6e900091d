"""Test helpers: tiny configs, tiny random HF models written to disk (no network)."""

import numpy as np

from jaxinterp import TransformerConfig


def tiny_config(**overrides) -> TransformerConfig:
    base = dict(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_head=16,
        d_mlp=96,
        d_vocab=97,
        n_ctx=32,
        act_fn="silu",
        norm="rms",
        eps=1e-5,
        positional="rotary",
        rotary_dim=16,
        gated_mlp=True,
    )
    if overrides.get("positional") == "learned":
        base["rotary_dim"] = 0
    base.update(overrides)
    return TransformerConfig(**base)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def randomize_hf(model, seed: int = 0):
    """Re-draws every HF parameter so that no weight or bias is trivially zero or one (HF
    initialises biases to zero and norm weights to one, which would hide mapping bugs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if (
                p.ndim == 1
                and ("norm" in name or "ln" in name)
                and name.endswith("weight")
            ):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / np.sqrt(min(p.shape)) * 0.8)
    return model

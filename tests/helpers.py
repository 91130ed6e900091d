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


def write_tiny_llama(path, texts, *, vocab_size: int = 400, seed: int = 0, **config):
    """A tiny random Llama checkpoint in an HF directory at `path`, with a byte-level BPE
    tokenizer trained on `texts` (so any text encodes, names and accents included) and
    `<s>` / `</s>` as BOS / EOS. Returns the directory."""
    import json
    import pathlib

    import jax
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from converters import save_pretrained
    from jaxinterp import init_transformer

    path = pathlib.Path(path)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    cfg = tiny_config(d_vocab=tokenizer.get_vocab_size(), n_ctx=256, **config)
    save_pretrained(
        init_transformer(cfg, jax.random.key(seed)),
        path,
        architecture="LlamaForCausalLM",
    )
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False})
    )
    return path

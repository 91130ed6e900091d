"""GPT2LMHeadModel: learned positions, LayerNorm, fused `c_attn`, Conv1D weights.

HF's Conv1D stores weights as `[in, out]` (the transpose of `nn.Linear`), so `c_fc` and
`c_proj` are already in our `[d_model, d_mlp]` / `[d_mlp, d_model]` layouts. The fused
`c_attn` output is `[q | k | v]`, each `(head d_head)`.
"""

from jaxinterp.config import TransformerConfig
from jaxinterp.model import Transformer

from ._common import (
    Entry,
    activation,
    check_config,
    config_bool,
    config_float,
    config_int,
    config_str,
    head_dim,
    hf_activation,
    require_equal,
    tie_unembed,
)

ARCHITECTURES = ("GPT2LMHeadModel",)


def _table(cfg: TransformerConfig) -> list[Entry]:
    t = "transformer.h.{l}."
    table = [
        Entry("embed.W_E", "transformer.wte.weight"),
        Entry("pos_embed.W_pos", "transformer.wpe.weight"),
        Entry("blocks.ln1.w", t + "ln_1.weight"),
        Entry("blocks.ln1.b", t + "ln_1.bias"),
        Entry(
            ("blocks.attn.W_Q", "blocks.attn.W_K", "blocks.attn.W_V"),
            t + "attn.c_attn.weight",
            "m (three h d) -> three h m d",
        ),
        Entry(
            ("blocks.attn.b_Q", "blocks.attn.b_K", "blocks.attn.b_V"),
            t + "attn.c_attn.bias",
            "(three h d) -> three h d",
        ),
        Entry("blocks.attn.W_O", t + "attn.c_proj.weight", "(h d) m -> h d m"),
        Entry("blocks.attn.b_O", t + "attn.c_proj.bias"),
        Entry("blocks.ln2.w", t + "ln_2.weight"),
        Entry("blocks.ln2.b", t + "ln_2.bias"),
        Entry("blocks.mlp.W_in", t + "mlp.c_fc.weight"),
        Entry("blocks.mlp.b_in", t + "mlp.c_fc.bias"),
        Entry("blocks.mlp.W_out", t + "mlp.c_proj.weight"),
        Entry("blocks.mlp.b_out", t + "mlp.c_proj.bias"),
        Entry("ln_final.w", "transformer.ln_f.weight"),
        Entry("ln_final.b", "transformer.ln_f.bias"),
    ]
    if not cfg.tied_embeddings:
        table.append(Entry("unembed.W_U", "lm_head.weight", "v m -> m v"))
    return table


def normalize_keys(tensors: dict) -> dict:
    """Accepts the original GPT-2 checkpoints too: they lack the `transformer.` prefix and
    store the causal-mask buffers `attn.bias` / `attn.masked_bias`, which are not weights."""
    out = {}
    for key, value in tensors.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key
        out[key] = value
    return out


def from_hf(hf: dict):
    check_config(
        hf,
        handled=(
            "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx", "vocab_size",
            "activation_function", "layer_norm_epsilon", "tie_word_embeddings",
        ),
        fixed={
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "add_cross_attention": False,
        },
    )  # fmt: skip
    d = config_int(hf, "n_embd")
    cfg = TransformerConfig(
        d_model=d,
        n_layers=config_int(hf, "n_layer"),
        n_heads=config_int(hf, "n_head"),
        d_head=head_dim(hf, "n_embd", "n_head"),
        d_mlp=config_int(hf, "n_inner", 4 * d, nullable=True),
        d_vocab=config_int(hf, "vocab_size"),
        n_ctx=config_int(hf, "n_positions"),
        act_fn=activation(config_str(hf, "activation_function", "gelu_new")),
        norm="ln",
        eps=config_float(hf, "layer_norm_epsilon", 1e-5),
        positional="learned",
        tied_embeddings=config_bool(hf, "tie_word_embeddings", True),
    )
    return cfg, _table(cfg), tie_unembed if cfg.tied_embeddings else None


def to_hf(model: Transformer, architecture: str):
    cfg = model.cfg
    hf = {
        "architectures": [architecture],
        "model_type": "gpt2",
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "n_positions": cfg.n_ctx,
        "vocab_size": cfg.d_vocab,
        "activation_function": hf_activation(cfg.act_fn),
        "layer_norm_epsilon": cfg.eps,
        "tie_word_embeddings": cfg.tied_embeddings,
    }
    derived = ()
    if cfg.tied_embeddings:
        require_equal(model.unembed.W_U, model.embed.W_E.T, "W_U is not W_E.T but tied")
        derived = ("unembed.W_U",)
    return hf, _table(cfg), derived

"""GPTJForCausalLM: interleaved (adjacent-pair) partial rotary, tanh GELU, parallel residual
with ONE LayerNorm feeding both attention and MLP, no attention biases, biased `lm_head`.

We keep TransformerLens's block shape (`ln1` for attention, `ln2` for the MLP) and fill `ln2`
with a copy of `ln_1`, so `blocks.{l}.ln2.*` taps exist as in TransformerLens. Export checks
that the two are still equal.
"""

from jaxinterp.config import TransformerConfig
from jaxinterp.model import Transformer

from ._common import (
    ConversionError,
    Entry,
    activation,
    check_config,
    config_float,
    config_int,
    config_str,
    head_dim,
    hf_activation,
    require_equal,
)

ARCHITECTURES = ("GPTJForCausalLM",)


def _table(cfg: TransformerConfig) -> list[Entry]:
    t = "transformer.h.{l}."
    return [
        Entry("embed.W_E", "transformer.wte.weight"),
        Entry("blocks.ln1.w", t + "ln_1.weight"),
        Entry("blocks.ln1.b", t + "ln_1.bias"),
        Entry("blocks.attn.W_Q", t + "attn.q_proj.weight", "(h d) m -> h m d"),
        Entry("blocks.attn.W_K", t + "attn.k_proj.weight", "(h d) m -> h m d"),
        Entry("blocks.attn.W_V", t + "attn.v_proj.weight", "(h d) m -> h m d"),
        Entry("blocks.attn.W_O", t + "attn.out_proj.weight", "m (h d) -> h d m"),
        Entry("blocks.mlp.W_in", t + "mlp.fc_in.weight", "f m -> m f"),
        Entry("blocks.mlp.b_in", t + "mlp.fc_in.bias"),
        Entry("blocks.mlp.W_out", t + "mlp.fc_out.weight", "m f -> f m"),
        Entry("blocks.mlp.b_out", t + "mlp.fc_out.bias"),
        Entry("ln_final.w", "transformer.ln_f.weight"),
        Entry("ln_final.b", "transformer.ln_f.bias"),
        Entry("unembed.W_U", "lm_head.weight", "v m -> m v"),
        Entry("unembed.b_U", "lm_head.bias"),
    ]


def _share_norm(values: dict) -> None:
    values["blocks.ln2.w"] = values["blocks.ln1.w"].copy()
    values["blocks.ln2.b"] = values["blocks.ln1.b"].copy()


def from_hf(hf: dict):
    check_config(
        hf,
        handled=(
            "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "vocab_size",
            "rotary_dim", "activation_function", "layer_norm_epsilon",
        ),
        fixed={"tie_word_embeddings": False},
    )  # fmt: skip
    d, h = config_int(hf, "n_embd"), config_int(hf, "n_head")
    d_head = head_dim(hf, "n_embd", "n_head")
    cfg = TransformerConfig(
        d_model=d,
        n_layers=config_int(hf, "n_layer"),
        n_heads=h,
        d_head=d_head,
        d_mlp=config_int(hf, "n_inner", 4 * d, nullable=True),
        d_vocab=config_int(hf, "vocab_size"),
        n_ctx=config_int(hf, "n_positions"),
        act_fn=activation(config_str(hf, "activation_function", "gelu_new")),
        norm="ln",
        eps=config_float(hf, "layer_norm_epsilon", 1e-5),
        positional="rotary",
        # HF: null rotates whole heads; 0 would rotate nothing, which we refuse.
        rotary_dim=config_int(hf, "rotary_dim", d_head, nullable=True),
        rotary_interleaved=True,
        parallel_residual=True,
    )
    return cfg, _table(cfg), _share_norm


def to_hf(model: Transformer, architecture: str):
    cfg = model.cfg
    if not (cfg.rotary_interleaved and cfg.parallel_residual) or cfg.gated_mlp:
        raise ConversionError(
            "GPT-J export needs interleaved rotary and parallel residual"
        )
    if cfg.rotary_base != 10000.0 or cfg.tied_embeddings:
        raise ConversionError(
            "GPT-J has a fixed rotary base of 10000 and untied embeddings"
        )
    require_equal(model.blocks.ln1.w, model.blocks.ln2.w, "GPT-J needs ln2 == ln1")
    require_equal(model.blocks.ln1.b, model.blocks.ln2.b, "GPT-J needs ln2 == ln1")
    hf = {
        "architectures": [architecture],
        "model_type": "gptj",
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "n_positions": cfg.n_ctx,
        "vocab_size": cfg.d_vocab,
        "rotary_dim": cfg.rotary_dim,
        "activation_function": hf_activation(cfg.act_fn),
        "layer_norm_epsilon": cfg.eps,
        "tie_word_embeddings": False,
    }
    return hf, _table(cfg), ("blocks.ln2.w", "blocks.ln2.b")

"""GPTNeoXForCausalLM (Pythia): rotary (rotate-half, partial), exact GELU, LayerNorm,
parallel residual by default, fused QKV interleaved per head.

`query_key_value` rows are laid out `(head, [q|k|v], d_head)`, i.e. the q/k/v split happens
*inside* each head, unlike GPT-2's `[q|k|v]` split of the whole width.
"""

from jaxinterp.config import TransformerConfig
from jaxinterp.model import Transformer

from ._common import (
    ConversionError,
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
    rope_parameters,
    tie_unembed,
)

ARCHITECTURES = ("GPTNeoXForCausalLM",)


def _table(cfg: TransformerConfig, bias: bool) -> list[Entry]:
    t = "gpt_neox.layers.{l}."
    qkv = ("blocks.attn.W_Q", "blocks.attn.W_K", "blocks.attn.W_V")
    table = [
        Entry("embed.W_E", "gpt_neox.embed_in.weight"),
        Entry("blocks.ln1.w", t + "input_layernorm.weight"),
        Entry("blocks.ln1.b", t + "input_layernorm.bias"),
        Entry(
            qkv, t + "attention.query_key_value.weight", "(h three d) m -> three h m d"
        ),
        Entry("blocks.attn.W_O", t + "attention.dense.weight", "m (h d) -> h d m"),
        Entry("blocks.ln2.w", t + "post_attention_layernorm.weight"),
        Entry("blocks.ln2.b", t + "post_attention_layernorm.bias"),
        Entry("blocks.mlp.W_in", t + "mlp.dense_h_to_4h.weight", "f m -> m f"),
        Entry("blocks.mlp.b_in", t + "mlp.dense_h_to_4h.bias"),
        Entry("blocks.mlp.W_out", t + "mlp.dense_4h_to_h.weight", "m f -> f m"),
        Entry("blocks.mlp.b_out", t + "mlp.dense_4h_to_h.bias"),
        Entry("ln_final.w", "gpt_neox.final_layer_norm.weight"),
        Entry("ln_final.b", "gpt_neox.final_layer_norm.bias"),
    ]
    if bias:
        biases = ("blocks.attn.b_Q", "blocks.attn.b_K", "blocks.attn.b_V")
        table += [
            Entry(
                biases, t + "attention.query_key_value.bias", "(h three d) -> three h d"
            ),
            Entry("blocks.attn.b_O", t + "attention.dense.bias"),
        ]
    if not cfg.tied_embeddings:
        table.append(Entry("unembed.W_U", "embed_out.weight", "v m -> m v"))
    return table


def from_hf(hf: dict):
    check_config(
        hf,
        handled=(
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings", "hidden_act", "layer_norm_eps",
            "use_parallel_residual", "tie_word_embeddings", "attention_bias",
            "rope_parameters", "rope_scaling", "rope_theta", "rotary_pct",
            "rotary_emb_base", "partial_rotary_factor",
        ),
        ignored=("is_decoder",),
    )  # fmt: skip
    rope = rope_parameters(hf)
    if rope["rope_type"] != "default":
        raise ConversionError(
            f"unsupported rope_type {rope['rope_type']!r} for GPT-NeoX"
        )
    d_head = head_dim(hf, "hidden_size", "num_attention_heads")
    cfg = TransformerConfig(
        d_model=config_int(hf, "hidden_size"),
        n_layers=config_int(hf, "num_hidden_layers"),
        n_heads=config_int(hf, "num_attention_heads"),
        d_head=d_head,
        d_mlp=config_int(hf, "intermediate_size"),
        d_vocab=config_int(hf, "vocab_size"),
        n_ctx=config_int(hf, "max_position_embeddings"),
        act_fn=activation(config_str(hf, "hidden_act", "gelu")),
        norm="ln",
        eps=config_float(hf, "layer_norm_eps", 1e-5),
        positional="rotary",
        rotary_dim=int(d_head * rope.number("partial_rotary_factor", 0.25)),
        rotary_base=rope.number("rope_theta", 10000.0),
        parallel_residual=config_bool(hf, "use_parallel_residual", True),
        tied_embeddings=config_bool(hf, "tie_word_embeddings", False),
    )
    table = _table(cfg, bias=config_bool(hf, "attention_bias", True))
    return cfg, table, tie_unembed if cfg.tied_embeddings else None


def to_hf(model: Transformer, architecture: str):
    cfg = model.cfg
    if cfg.positional != "rotary" or cfg.rotary_interleaved or cfg.gated_mlp:
        raise ConversionError(
            "GPT-NeoX export needs rotate-half rotary and a plain MLP"
        )
    hf = {
        "architectures": [architecture],
        "model_type": "gpt_neox",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_mlp,
        "vocab_size": cfg.d_vocab,
        "max_position_embeddings": cfg.n_ctx,
        "hidden_act": hf_activation(cfg.act_fn),
        "layer_norm_eps": cfg.eps,
        "use_parallel_residual": cfg.parallel_residual,
        "tie_word_embeddings": cfg.tied_embeddings,
        "attention_bias": True,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rotary_base,
            "partial_rotary_factor": cfg.rotary_dim / cfg.d_head,
        },
    }
    derived = ()
    if cfg.tied_embeddings:
        require_equal(model.unembed.W_U, model.embed.W_E.T, "W_U is not W_E.T but tied")
        derived = ("unembed.W_U",)
    return hf, _table(cfg, bias=True), derived

"""LlamaForCausalLM and Qwen2ForCausalLM: RMSNorm, rotate-half RoPE (with Llama-3 scaling),
SwiGLU MLP, GQA; Qwen2 adds q/k/v biases.

`gate_proj` is `W_gate` and `up_proj` is `W_in`, so `mlp.hook_pre` is the gate
pre-activation and `mlp.hook_post = silu(gate) * up` is the input of `down_proj`, as in
TransformerLens.
"""

import numpy as np

from jaxinterp.config import Llama3RopeScaling, TransformerConfig
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
    hf_activation,
    require_equal,
    rope_parameters,
    tie_unembed,
)

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def _table(cfg: TransformerConfig, qkv_bias: bool, o_bias: bool) -> list[Entry]:
    t = "model.layers.{l}."
    table = [
        Entry("embed.W_E", "model.embed_tokens.weight"),
        Entry("blocks.ln1.w", t + "input_layernorm.weight"),
        Entry("blocks.attn.W_Q", t + "self_attn.q_proj.weight", "(h d) m -> h m d"),
        Entry("blocks.attn.W_K", t + "self_attn.k_proj.weight", "(k d) m -> k m d"),
        Entry("blocks.attn.W_V", t + "self_attn.v_proj.weight", "(k d) m -> k m d"),
        Entry("blocks.attn.W_O", t + "self_attn.o_proj.weight", "m (h d) -> h d m"),
        Entry("blocks.ln2.w", t + "post_attention_layernorm.weight"),
        Entry("blocks.mlp.W_gate", t + "mlp.gate_proj.weight", "f m -> m f"),
        Entry("blocks.mlp.W_in", t + "mlp.up_proj.weight", "f m -> m f"),
        Entry("blocks.mlp.W_out", t + "mlp.down_proj.weight", "m f -> f m"),
        Entry("ln_final.w", "model.norm.weight"),
    ]
    if qkv_bias:
        table += [
            Entry("blocks.attn.b_Q", t + "self_attn.q_proj.bias", "(h d) -> h d"),
            Entry("blocks.attn.b_K", t + "self_attn.k_proj.bias", "(k d) -> k d"),
            Entry("blocks.attn.b_V", t + "self_attn.v_proj.bias", "(k d) -> k d"),
        ]
    if o_bias:
        table.append(Entry("blocks.attn.b_O", t + "self_attn.o_proj.bias"))
    if not cfg.tied_embeddings:
        table.append(Entry("unembed.W_U", "lm_head.weight", "v m -> m v"))
    return table


_HANDLED = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "hidden_act",
    "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling", "tie_word_embeddings",
)  # fmt: skip


def from_hf(hf: dict):
    qwen = hf["architectures"][0] == "Qwen2ForCausalLM"
    if qwen:
        check_config(
            hf,
            handled=_HANDLED + ("layer_types",),
            # sliding_window / max_window_layers only matter when use_sliding_window is on
            ignored=("sliding_window", "max_window_layers"),
            fixed={"use_sliding_window": False},
        )
        layer_types = hf.get("layer_types") or []
        if not isinstance(layer_types, list) or any(
            t != "full_attention" for t in layer_types
        ):
            raise ConversionError(f"unsupported layer_types {hf['layer_types']!r}")
    else:
        check_config(
            hf,
            handled=_HANDLED + ("attention_bias",),
            fixed={"mlp_bias": False, "pretraining_tp": 1},
        )
    rope = rope_parameters(hf)
    n_ctx = config_int(hf, "max_position_embeddings")
    scaling = None
    if rope["rope_type"] == "llama3":
        factors = {
            "factor": rope.number("factor"),
            "low_freq_factor": rope.number("low_freq_factor"),
            "high_freq_factor": rope.number("high_freq_factor"),
            # transformers' default when the field is absent
            "original_max_position": rope.integer(
                "original_max_position_embeddings", n_ctx
            ),
        }
        try:
            scaling = Llama3RopeScaling(**factors)
        except ValueError as e:  # e.g. high_freq_factor <= low_freq_factor
            raise ConversionError(f"config field {rope.field!r}: {e}") from None
    elif rope["rope_type"] != "default":
        raise ConversionError(f"unsupported rope_type {rope['rope_type']!r}")
    if rope.number("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(
            "partial_rotary_factor != 1 is not supported for Llama/Qwen2"
        )
    h = config_int(hf, "num_attention_heads")
    # As in HF's LlamaAttention: head_dim, else hidden_size // heads (floored).
    d_head = config_int(
        hf, "head_dim", config_int(hf, "hidden_size") // h, nullable=True
    )
    cfg = TransformerConfig(
        d_model=config_int(hf, "hidden_size"),
        n_layers=config_int(hf, "num_hidden_layers"),
        n_heads=h,
        n_kv_heads=config_int(hf, "num_key_value_heads", h, nullable=True),
        d_head=d_head,
        d_mlp=config_int(hf, "intermediate_size"),
        d_vocab=config_int(hf, "vocab_size"),
        n_ctx=n_ctx,
        act_fn=activation(config_str(hf, "hidden_act", "silu")),
        norm="rms",
        eps=config_float(hf, "rms_norm_eps", 1e-6),
        positional="rotary",
        rotary_dim=d_head,
        rotary_base=rope.number("rope_theta", 10000.0),
        rope_scaling=scaling,
        gated_mlp=True,
        tied_embeddings=config_bool(hf, "tie_word_embeddings", False),
    )
    bias = qwen or config_bool(hf, "attention_bias", False)
    table = _table(cfg, qkv_bias=bias, o_bias=bias and not qwen)
    return cfg, table, tie_unembed if cfg.tied_embeddings else None


def to_hf(model: Transformer, architecture: str):
    cfg = model.cfg
    if not cfg.gated_mlp or cfg.norm != "rms" or cfg.rotary_interleaved:
        raise ConversionError(
            "Llama/Qwen2 export needs RMSNorm, a gated MLP, rotate-half RoPE"
        )
    if cfg.rotary_dim != cfg.d_head:
        raise ConversionError(
            "Llama/Qwen2 export needs full rotary (rotary_dim == d_head)"
        )
    qwen = architecture == "Qwen2ForCausalLM"
    attn = model.blocks.attn
    has_bias = any(
        bool(np.any(np.asarray(b) != 0)) for b in (attn.b_Q, attn.b_K, attn.b_V)
    )
    rope = {"rope_type": "default", "rope_theta": cfg.rotary_base}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(
            rope_type="llama3",
            factor=s.factor,
            low_freq_factor=s.low_freq_factor,
            high_freq_factor=s.high_freq_factor,
            original_max_position_embeddings=s.original_max_position,
        )
    hf = {
        "architectures": [architecture],
        "model_type": "qwen2" if qwen else "llama",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "intermediate_size": cfg.d_mlp,
        "vocab_size": cfg.d_vocab,
        "max_position_embeddings": cfg.n_ctx,
        "hidden_act": hf_activation(cfg.act_fn),
        "rms_norm_eps": cfg.eps,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tied_embeddings,
    }
    if qwen:
        if cfg.rope_scaling is not None:
            raise ConversionError("Qwen2 export does not support llama3 rope scaling")
        o_bias = False
    else:
        hf["attention_bias"] = has_bias
        o_bias = has_bias
    derived = ()
    if cfg.tied_embeddings:
        require_equal(model.unembed.W_U, model.embed.W_E.T, "W_U is not W_E.T but tied")
        derived = ("unembed.W_U",)
    return hf, _table(cfg, qkv_bias=qwen or has_bias, o_bias=o_bias), derived

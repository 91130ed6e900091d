"""A bridge to TransformerLens: `to_transformer_lens` builds a `HookedTransformer` holding a
model's exact weights, and `from_transformer_lens` converts one back.

Our parameter names and layouts are TransformerLens's, so the key table below maps every
parameter to the same name with an identity pattern; only the per-layer index, GQA's
`_W_K`/`_W_V`/`_b_K`/`_b_V` names and the norm parameters depend on the family. The table runs
through the same `load_params` / `export_params` as the HF converters, so every key is used
exactly once and every shape is checked.

Choices (torch and transformer_lens are imported inside the functions; `converters` imports
without them):
* No weight processing. The `HookedTransformer` is built with `init_weights=False` and filled
  with `load_state_dict`: fold_ln, centring and value-bias folding are off, so its logits equal
  ours. To compare with `HookedTransformer.from_pretrained` numbers, apply
  `jaxinterp.process.tl_default` first, or TransformerLens's `process_weights_` afterwards.
* `default_prepend_bos=False`. jaxinterp never prepends BOS: prompts and tokenizers decide.
  The bridged model has no tokenizer and is fed token ids; with this default a tokenizer
  attached later (`set_tokenizer`) does not add a BOS behind the caller's back either.
* GQA stays grouped (`ungroup_grouped_query_attention=False`): TransformerLens's
  `attn.hook_k` / `hook_v` are then `[batch, pos, kv_head_index, d_head]`, as ours.
* Llama-3 RoPE scaling maps to TransformerLens's `use_NTK_by_parts_rope` settings.
* `tied_embeddings` travels as TransformerLens's `tie_word_embeddings` (which a
  `HookedTransformer` does not read), so that the round trip keeps the config.
* `HookedTransformer` is deprecated in TransformerLens 3.x in favour of `TransformerBridge`;
  the bridge silences that one warning, because the hooked model is what it is asked for.

Hook semantics: every tap of ours is a TransformerLens hook of the same name, shape and value,
except `ln1/ln2/ln_final.hook_normalized`: TransformerLens records the normalised input
before the norm's weight and bias, we record the norm's output (after them, as HF's module
output). `attn.hook_result` exists in TransformerLens only after `set_use_attn_result(True)`.
"""

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
from jaxtyping import Shaped

from jaxinterp.config import Llama3RopeScaling, TransformerConfig
from jaxinterp.model import Transformer

from . import gpt2, gptj, llama, neox
from ._common import (
    ConversionError,
    Entry,
    activation,
    export_params,
    load_params,
)

if TYPE_CHECKING:  # optional dependencies, imported inside the functions
    import torch
    import transformer_lens

__all__ = [
    "to_transformer_lens",
    "from_transformer_lens",
    "tl_config",
    "config_from_tl",
]

_DEPRECATED = "HookedTransformer is deprecated"


def _table(cfg: TransformerConfig, *, grouped: bool, norm_weights: bool) -> list[Entry]:
    """Our parameter path -> TransformerLens state-dict key (same layout everywhere).

    Arguments:
        cfg: the architecture.
        grouped: TransformerLens uses `GroupedQueryAttention` (`_W_K`, `_W_V`, `_b_K`, `_b_V`).
        norm_weights: the norms carry weights (False for weight-processed `LNPre`/`RMSPre`).
    """
    kv = "_" if grouped else ""
    norm = ["w", "b"] if cfg.norm == "ln" else ["w"]
    table = [Entry("embed.W_E", "embed.W_E")]
    if cfg.positional == "learned":
        table.append(Entry("pos_embed.W_pos", "pos_embed.W_pos"))
    for ln in ("ln1", "ln2") if norm_weights else ():
        table += [Entry(f"blocks.{ln}.{p}", f"blocks.{{l}}.{ln}.{p}") for p in norm]
    attn = {"W_Q": "W_Q", "W_O": "W_O", "b_Q": "b_Q", "b_O": "b_O"}
    attn |= {p: kv + p for p in ("W_K", "W_V", "b_K", "b_V")}
    table += [
        Entry(f"blocks.attn.{p}", f"blocks.{{l}}.attn.{k}") for p, k in attn.items()
    ]
    mlp = ["W_in", "b_in", "W_out", "b_out"] + (["W_gate"] if cfg.gated_mlp else [])
    table += [Entry(f"blocks.mlp.{p}", f"blocks.{{l}}.mlp.{p}") for p in mlp]
    if norm_weights:
        table += [Entry(f"ln_final.{p}", f"ln_final.{p}") for p in norm]
    return table + [
        Entry("unembed.W_U", "unembed.W_U"),
        Entry("unembed.b_U", "unembed.b_U"),
    ]


# ---------------------------------------------------------------------------------------------
# jaxinterp -> TransformerLens


def _torch_dtype(dtype: Any) -> "torch.dtype":
    """A torch dtype from a torch, numpy or jax dtype (or its name)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = np.dtype(dtype).name
    if not hasattr(torch, name):
        raise ConversionError(f"no torch dtype for {name!r}")
    return getattr(torch, name)


def _to_torch(arr: Shaped[np.ndarray, "*shape"]) -> "torch.Tensor":
    """A CPU tensor with the same bits as `arr` (bfloat16 included), in its own memory."""
    import torch

    arr = np.array(arr, order="C")  # a writable copy: torch refuses read-only buffers
    if arr.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def tl_config(
    model: Transformer, *, device: str = "cpu", dtype: Any = None
) -> "transformer_lens.HookedTransformerConfig":
    """The `HookedTransformerConfig` of `model` (see the module docstring for the choices).

    Arguments:
        model: the model whose `cfg` is translated.
        device: torch device of the hooked model.
        dtype: torch dtype of the hooked model; default: the dtype of `model`'s parameters.

    Returns:
        A `transformer_lens.HookedTransformerConfig`.
    """
    from transformer_lens import HookedTransformerConfig

    c = model.cfg
    rotary = c.positional == "rotary"
    s = c.rope_scaling
    scaling = {}
    if s is not None:
        scaling = dict(
            use_NTK_by_parts_rope=True, NTK_by_parts_factor=s.factor,
            NTK_by_parts_low_freq_factor=s.low_freq_factor,
            NTK_by_parts_high_freq_factor=s.high_freq_factor,
            NTK_original_ctx_len=s.original_max_position,
        )  # fmt: skip
    return HookedTransformerConfig(
        d_model=c.d_model, d_head=c.d_head, n_layers=c.n_layers, n_ctx=c.n_ctx,
        n_heads=c.n_heads, d_mlp=c.d_mlp, d_vocab=c.d_vocab, d_vocab_out=c.d_vocab,
        act_fn=c.act_fn, eps=c.eps,
        normalization_type="LN" if c.norm == "ln" else "RMS", final_rms=c.norm == "rms",
        positional_embedding_type="rotary" if rotary else "standard",
        rotary_dim=c.rotary_dim if rotary else None, rotary_base=c.rotary_base,
        rotary_adjacent_pairs=c.rotary_interleaved,
        n_key_value_heads=c.n_kv_heads if c.n_kv_heads != c.n_heads else None,
        parallel_attn_mlp=c.parallel_residual, gated_mlp=c.gated_mlp,
        tie_word_embeddings=c.tied_embeddings, default_prepend_bos=False,
        init_weights=False, device=device,
        dtype=_torch_dtype(model.embed.W_E.dtype if dtype is None else dtype),
        **scaling,
    )  # fmt: skip


def to_transformer_lens(
    model: Transformer, *, device: str = "cpu", dtype: Any = None
) -> "transformer_lens.HookedTransformer":
    """A TransformerLens `HookedTransformer` computing exactly what `model` computes.

    No TransformerLens weight processing is applied, `default_prepend_bos` is False, and the
    model has no tokenizer: feed it token ids. Tap names, shapes and values agree with
    `jaxinterp.run` except `ln*.hook_normalized` (TransformerLens's is before the norm's
    weight and bias); see the module docstring.

    Arguments:
        model: the model (any family: GPT-2, NeoX, GPT-J, Llama, Qwen2).
        device: torch device to put the hooked model on.
        dtype: torch (or numpy) dtype of the hooked model's parameters; default: keep the
            model's dtype (bfloat16 stays bfloat16, bit for bit).

    Returns:
        A `transformer_lens.HookedTransformer` in eval mode.

    Raises:
        ConversionError: a parameter TransformerLens cannot hold (a nonzero RMSNorm bias).
    """
    from transformer_lens import HookedTransformer

    cfg = model.cfg
    if cfg.norm == "rms":
        for name, b in [
            ("blocks.ln1.b", model.blocks.ln1.b),
            ("blocks.ln2.b", model.blocks.ln2.b),
            ("ln_final.b", model.ln_final.b),
        ]:
            if np.any(np.asarray(b) != 0):
                raise ConversionError(
                    f"{name} is nonzero, but RMSNorm has no bias (ours ignores it in the "
                    "forward; TransformerLens has no such parameter)"
                )
    tcfg = tl_config(model, device=device, dtype=dtype)
    table = _table(cfg, grouped=tcfg.n_key_value_heads is not None, norm_weights=True)
    state = {
        k: _to_torch(v).to(tcfg.dtype) for k, v in export_params(model, table).items()
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _DEPRECATED, DeprecationWarning)
        hooked = HookedTransformer(tcfg, move_to_device=True)
    missing, unexpected = hooked.load_state_dict(state, strict=False)
    buffers = {name for name, _ in hooked.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise ConversionError(
            f"TransformerLens parameters not filled: {sorted(set(missing) - buffers)}; "
            f"unexpected: {sorted(unexpected)}"
        )
    return hooked.eval()


# ---------------------------------------------------------------------------------------------
# TransformerLens -> jaxinterp

# Fields read by `config_from_tl` (`dtype`: the parameters keep their own).
_HANDLED = frozenset(
    {
        "d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab",
        "d_vocab_out", "act_fn", "eps", "normalization_type", "final_rms",
        "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_adjacent_pairs",
        "use_NTK_by_parts_rope", "NTK_by_parts_factor", "NTK_by_parts_low_freq_factor",
        "NTK_by_parts_high_freq_factor", "NTK_original_ctx_len", "n_key_value_heads",
        "parallel_attn_mlp", "gated_mlp", "tie_word_embeddings", "dtype", "use_attn_scale",
        "attn_scale", "original_architecture",
    }
)  # fmt: skip
# Fields that do not change the forward numerics of a HookedTransformer: names, devices,
# initialisation, tokenizer settings, which hooks exist, GQA grouping of hook_k/hook_v, and
# settings that are read only when a feature fixed off below is on (train_seq_length: logn
# attention and dynamic NTK; yarn_*: YaRN; norm_topk_prob: MoE).
_IGNORED = frozenset(
    {
        "model_name", "device", "n_devices", "seed", "init_mode", "initializer_range",
        "init_weights", "n_params", "tokenizer_name", "tokenizer_prepends_bos",
        "default_prepend_bos", "trust_remote_code", "from_checkpoint", "checkpoint_index",
        "checkpoint_label_type", "checkpoint_value", "use_attn_result", "use_split_qkv_input",
        "use_attn_in", "use_hook_mlp_in", "use_hook_tokens", "ungroup_grouped_query_attention",
        "uses_rms_norm", "layer_norm_folding", "decoder_start_token_id", "train_seq_length",
        "norm_topk_prob", "yarn_factor", "yarn_attention_factor", "yarn_beta_fast",
        "yarn_beta_slow", "yarn_original_max_position_embeddings", "yarn_truncate",
        "yarn_global_attn_only",
    }
)  # fmt: skip
# `original_architecture` switches TransformerLens components for some families (OLMo's
# QK-norm and post-norm, GPT-OSS's MoE); only the families we convert are accepted.
_ARCHITECTURES = frozenset(
    {None} | {a for f in (gpt2, neox, gptj, llama) for a in f.ARCHITECTURES}
)
# TransformerLens normalization_type -> (our norm, whether the norms carry weights).
_NORMS = {"LN": ("ln", True), "LNPre": ("ln", False), "RMS": ("rms", True),
          "RMSPre": ("rms", False)}  # fmt: skip


def _check_tl_config(tcfg: "transformer_lens.HookedTransformerConfig") -> None:
    """Raises ConversionError for any TransformerLens setting we do not implement: every field
    that is neither handled nor ignored must keep its default."""
    for f in dataclasses.fields(tcfg):
        if f.name in _HANDLED or f.name in _IGNORED:
            continue
        value = getattr(tcfg, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            raise ConversionError(
                f"unsupported TransformerLens config: {f.name}={value!r} "
                f"(only {f.default!r} is implemented)"
            )
    if tcfg.original_architecture not in _ARCHITECTURES:
        raise ConversionError(
            f"unsupported original_architecture {tcfg.original_architecture!r}; supported: "
            f"{sorted(a for a in _ARCHITECTURES if a)} or None"
        )
    if tcfg.normalization_type not in _NORMS:
        raise ConversionError(
            f"unsupported normalization_type {tcfg.normalization_type!r}"
        )
    if tcfg.normalization_type.startswith("LN") and tcfg.final_rms:
        raise ConversionError(
            "final_rms with LayerNorm blocks (mixed norms) is unsupported"
        )
    if tcfg.positional_embedding_type not in ("standard", "rotary"):
        raise ConversionError(
            f"unsupported positional_embedding_type {tcfg.positional_embedding_type!r}"
        )
    if not tcfg.use_attn_scale or tcfg.attn_scale != math.sqrt(tcfg.d_head):
        raise ConversionError(
            f"attention scale {tcfg.attn_scale if tcfg.use_attn_scale else 1.0} is not "
            f"sqrt(d_head) = {math.sqrt(tcfg.d_head)}"
        )
    if tcfg.d_vocab_out != tcfg.d_vocab:
        raise ConversionError(
            f"d_vocab_out={tcfg.d_vocab_out} != d_vocab={tcfg.d_vocab}"
        )


def config_from_tl(
    tcfg: "transformer_lens.HookedTransformerConfig",
) -> TransformerConfig:
    """Our `TransformerConfig` for a `HookedTransformerConfig`.

    Raises:
        ConversionError: a TransformerLens setting we do not implement.
    """
    _check_tl_config(tcfg)
    rotary = tcfg.positional_embedding_type == "rotary"
    scaling = None
    if rotary and tcfg.use_NTK_by_parts_rope:
        scaling = Llama3RopeScaling(
            factor=tcfg.NTK_by_parts_factor,
            low_freq_factor=tcfg.NTK_by_parts_low_freq_factor,
            high_freq_factor=tcfg.NTK_by_parts_high_freq_factor,
            original_max_position=tcfg.NTK_original_ctx_len,
        )
    return TransformerConfig(
        d_model=tcfg.d_model, n_layers=tcfg.n_layers, n_heads=tcfg.n_heads,
        d_head=tcfg.d_head, d_mlp=tcfg.d_mlp, d_vocab=tcfg.d_vocab, n_ctx=tcfg.n_ctx,
        act_fn=activation(tcfg.act_fn), norm=_NORMS[tcfg.normalization_type][0],
        eps=tcfg.eps, positional="rotary" if rotary else "learned",
        n_kv_heads=tcfg.n_key_value_heads or tcfg.n_heads,
        rotary_dim=tcfg.rotary_dim if rotary else 0, rotary_base=float(tcfg.rotary_base),
        rotary_interleaved=rotary and tcfg.rotary_adjacent_pairs, rope_scaling=scaling,
        parallel_residual=tcfg.parallel_attn_mlp, gated_mlp=tcfg.gated_mlp,
        tied_embeddings=tcfg.tie_word_embeddings,
    )  # fmt: skip


def _to_numpy(tensor: "torch.Tensor") -> Shaped[np.ndarray, "*shape"]:
    """A numpy array with the same bits as a torch tensor (bfloat16 via `ml_dtypes`)."""
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _unit_norms(cfg: TransformerConfig, dtype: np.dtype):
    """`load_params` post hook: unit weights (and zero biases) for weight-processed norms."""

    def post(values: dict) -> None:
        d, n = cfg.d_model, cfg.n_layers
        for ln in ("blocks.ln1", "blocks.ln2"):
            values[f"{ln}.w"] = np.ones((n, d), dtype)
        values["ln_final.w"] = np.ones((d,), dtype)

    return post


def from_transformer_lens(hooked: "transformer_lens.HookedTransformer") -> Transformer:
    """Converts a TransformerLens `HookedTransformer` to a `jaxinterp.Transformer`.

    Reads `hooked.cfg` (strictly: any setting we do not implement raises) and the parameters
    of `hooked.state_dict()` (buffers such as rotary tables and masks are skipped). Weight-
    processed models are accepted: `LNPre` / `RMSPre` norms become norms with unit weight and
    zero bias, which compute the same. Inverse of `to_transformer_lens`, bit for bit.

    Arguments:
        hooked: a `transformer_lens.HookedTransformer`.

    Returns:
        The model, with parameters in `hooked`'s dtype.

    Raises:
        ConversionError: an unsupported TransformerLens setting or a missing / unexpected
            parameter.
    """
    tcfg = hooked.cfg
    cfg = config_from_tl(tcfg)
    norm_weights = _NORMS[tcfg.normalization_type][1]
    table = _table(
        cfg, grouped=tcfg.n_key_value_heads is not None, norm_weights=norm_weights
    )
    buffers = {name for name, _ in hooked.named_buffers()}
    tensors = {
        k: _to_numpy(v) for k, v in hooked.state_dict().items() if k not in buffers
    }
    dtype = tensors["embed.W_E"].dtype
    post = None if norm_weights else _unit_norms(cfg, dtype)
    return load_params(tensors, cfg, table, dtype=dtype, post=post)

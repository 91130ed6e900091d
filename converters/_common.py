"""Converter machinery shared by every family: reading checkpoints, strict config checks, and
the key table that maps Hugging Face tensors to our parameters and back.

A family module (`gpt2.py`, `neox.py`, ...) provides
* `config_from_hf(hf: dict) -> TransformerConfig`, checking every HF field against its
  allowlist (`check_config`);
* `table(cfg) -> list[Entry]`: one row per parameter, `our path <- (HF key, einops pattern)`;
* `config_to_hf(cfg) -> dict` for export.
`load_params` / `export_params` run a table in either direction; every checkpoint key must be
consumed exactly once and every shape must match, or a `ConversionError` names the key.
"""

import dataclasses
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxinterp.config import TransformerConfig
from jaxinterp.model import Transformer, init_transformer


class ConversionError(ValueError):
    """A checkpoint or config that this converter cannot translate faithfully."""


# ---------------------------------------------------------------------------------------------
# safetensors, read with numpy memory maps (the numpy API of `safetensors` has no bfloat16)

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-maps every tensor of a `.safetensors` file (read-only, nothing loaded yet).

    Raises:
        ConversionError: the file is truncated, its header is corrupt, or a dtype is unknown.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ConversionError(
                f"{path}: truncated: header claims {n} bytes but the file has {size}"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data_start = 8 + n
    out = {}
    for key, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(
                f"{path}: bad header entry for {key!r}: {info}"
            ) from None
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ConversionError(
                f"{path}: {key!r} has {end - begin} bytes for {shape} {dtype}"
            )
        if data_start + end > size:
            raise ConversionError(
                f"{path}: truncated: tensor {key!r} ends at byte {data_start + end} but the "
                f"file has {size} bytes"
            )
        out[key] = np.memmap(path, dtype, "r", data_start + begin, shape, order="C")
    return out


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray]
) -> None:
    """Writes tensors as a `.safetensors` file atomically (temp file, then rename)."""
    header, offset, arrays = {}, 0, []
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        if arr.dtype not in _CODES:
            raise ConversionError(f"cannot write {key!r}: dtype {arr.dtype}")
        header[key] = {
            "dtype": _CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for arr in arrays:
                f.write(arr.tobytes())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_checkpoint(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory, memory-mapped where possible.

    Reads `model.safetensors`, or the shards listed in `model.safetensors.index.json`; falls
    back to `pytorch_model.bin` only through `torch.load(weights_only=True)` when torch is
    installed (never a plain unpickle).
    """
    d = Path(directory)
    if (d / "model.safetensors").exists():
        return read_safetensors(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        out = {}
        for shard in sorted(set(weight_map.values())):
            tensors = read_safetensors(d / shard)
            for key, arr in tensors.items():
                if weight_map.get(key) != shard:
                    raise ConversionError(
                        f"{shard}: {key!r} is not listed for it in {index}"
                    )
                out[key] = arr
        missing = set(weight_map) - set(out)
        if missing:
            raise ConversionError(
                f"{index}: keys missing from shards: {sorted(missing)[:5]}"
            )
        return out
    if (d / "pytorch_model.bin").exists():
        return _read_torch_bin(d / "pytorch_model.bin")
    raise ConversionError(
        f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: a pytorch_model.bin needs torch to read safely; install torch or "
            "convert the checkpoint to safetensors"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, t in state.items():
        if t.dtype == torch.bfloat16:
            out[key] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[key] = t.numpy()
    return out


# ---------------------------------------------------------------------------------------------
# config allowlists

# Fields that never change the forward computation of a causal LM in eval mode.
COMMON_IGNORED = frozenset(
    {
        "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
        "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
        "decoder_start_token_id", "use_cache", "initializer_range", "output_attentions",
        "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
        "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class", "prefix",
        "task_specific_params", "finetuning_task", "tie_encoder_decoder", "use_return_dict",
        "num_labels", "_attn_implementation_autoset", "generation_config",
    }
)  # fmt: skip


def check_config(
    hf: Mapping[str, Any],
    *,
    handled: Iterable[str],
    ignored: Iterable[str] = (),
    fixed: Mapping[str, Any] | None = None,
) -> None:
    """Raises ConversionError for any HF config field we do not implement.

    Arguments:
        hf: the parsed `config.json`.
        handled: fields the family converter reads.
        ignored: family fields that cannot change eval-mode numerics (e.g. dropout rates).
        fixed: fields we accept only at one value (typically the HF class default), e.g.
            `{"scale_attn_by_inverse_layer_idx": False}`.
    """
    fixed = dict(fixed or {})
    known = set(handled) | set(ignored) | COMMON_IGNORED
    for key, value in hf.items():
        if key in known:
            continue
        if key in fixed:
            if value != fixed[key]:
                raise ConversionError(
                    f"unsupported config: {key}={value!r} (only {fixed[key]!r} is implemented)"
                )
            continue
        if key.endswith(("dropout", "pdrop")) or key.startswith("summary_"):
            continue  # dropout is off in eval; summary_* configure the double-heads model
        raise ConversionError(f"unsupported config field {key!r} = {value!r}")


def rope_parameters(hf: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE settings from either transformers 5 (`rope_parameters`) or 4 (`rope_theta` plus
    `rope_scaling`) configs."""
    if "rope_parameters" in hf and hf["rope_parameters"] is not None:
        params = dict(hf["rope_parameters"])
    else:
        params = dict(hf.get("rope_scaling") or {})
        if "type" in params:
            params["rope_type"] = params.pop("type")
        if "rope_theta" in hf:
            params["rope_theta"] = hf["rope_theta"]
        if "partial_rotary_factor" in hf:
            params["partial_rotary_factor"] = hf["partial_rotary_factor"]
        if "rotary_pct" in hf:
            params["partial_rotary_factor"] = hf["rotary_pct"]
        if "rotary_emb_base" in hf:
            params["rope_theta"] = hf["rotary_emb_base"]
    params.setdefault("rope_type", "default")
    return params


# ---------------------------------------------------------------------------------------------
# key tables


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of a key table.

    Attributes:
        ours: our parameter path (`"blocks.attn.W_Q"`), or several paths filled from one
            fused HF tensor whose pattern's output starts with a `three`/`two` axis.
        hf: HF key; `{l}` marks a per-layer key (our parameter then has a leading layer axis).
        pattern: einops pattern from the HF layout to ours (`"(h d) m -> h m d"`); export
            runs it backwards.
    """

    ours: str | tuple[str, ...]
    hf: str
    pattern: str = "... -> ..."

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.ours,) if isinstance(self.ours, str) else self.ours

    @property
    def per_layer(self) -> bool:
        return "{l}" in self.hf


def _leaf_paths(tree) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {".".join(k.name for k in path): leaf for path, leaf in flat}


def axis_sizes(cfg: TransformerConfig) -> dict[str, int]:
    """Sizes of the letters used in table patterns."""
    return {"h": cfg.n_heads, "k": cfg.n_kv_heads, "d": cfg.d_head}


def _hf_to_ours(
    arr: np.ndarray, entry: Entry, sizes: dict[str, int]
) -> list[np.ndarray]:
    out = einops.rearrange(
        np.asarray(arr), entry.pattern, **_used(entry.pattern, sizes)
    )
    return [out] if isinstance(entry.ours, str) else list(out)


def _used(pattern: str, sizes: dict[str, int]) -> dict[str, int]:
    names = set(re.findall(r"\w+", pattern.split("->")[0]))
    return {k: v for k, v in sizes.items() if k in names}


def load_params(
    tensors: Mapping[str, np.ndarray],
    cfg: TransformerConfig,
    table: list[Entry],
    *,
    dtype=None,
    post=None,
) -> Transformer:
    """Builds a `Transformer` from HF tensors through a key table.

    The skeleton comes from `eqx.filter_eval_shape`, so no random weights are allocated; each
    stacked parameter is filled layer by layer from the (memory-mapped) checkpoint.

    Arguments:
        tensors: HF key -> array (memory-mapped or lazily dequantized is fine).
        cfg: the converted config.
        table: the family's key table.
        dtype: parameter dtype; default: the dtype of the first table tensor (the embedding).
        post: optional `dict[path, array] -> None` hook that fills parameters the table
            cannot express (GPT-J's shared norm, tied unembedding).

    Raises:
        ConversionError: missing or unexpected keys, shape mismatches.
    """
    expected = set()
    for e in table:
        keys = (
            [e.hf.format(l=l) for l in range(cfg.n_layers)] if e.per_layer else [e.hf]
        )
        expected.update(keys)
    missing = sorted(expected - set(tensors))
    if missing:
        raise ConversionError(f"checkpoint is missing keys: {missing[:8]}")
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise ConversionError(f"checkpoint has unexpected keys: {unexpected[:8]}")

    if dtype is None:
        dtype = np.asarray(tensors[table[0].hf.format(l=0)]).dtype
    dtype = np.dtype(dtype)
    skeleton = eqx.filter_eval_shape(
        init_transformer, cfg, jax.random.key(0), dtype=dtype
    )
    shapes = {k: v.shape for k, v in _leaf_paths(skeleton).items()}
    sizes = axis_sizes(cfg)
    values: dict[str, np.ndarray] = {}
    for e in table:
        layers = range(cfg.n_layers) if e.per_layer else [None]
        for layer in layers:
            key = e.hf.format(l=layer)
            parts = _hf_to_ours(tensors[key], e, sizes)
            for path, part in zip(e.paths, parts, strict=True):
                want = shapes[path][1:] if e.per_layer else shapes[path]
                if part.shape != want:
                    raise ConversionError(
                        f"{key}: shape {tuple(np.shape(tensors[key]))} gives {part.shape} for "
                        f"{path}, expected {want}"
                    )
                if layer is None:
                    values[path] = part.astype(dtype)
                else:
                    if layer == 0:
                        values[path] = np.empty(shapes[path], dtype)
                    values[path][layer] = part
    if post is not None:
        post(values)
    leaves = []
    flat, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    for path, leaf in flat:
        name = ".".join(k.name for k in path)
        if name in values:
            leaves.append(jnp.asarray(values.pop(name)))
        elif name.split(".")[-1].startswith("b"):  # biases the checkpoint does not have
            leaves.append(jnp.zeros(leaf.shape, dtype))
        else:
            raise ConversionError(f"converter table leaves {name} unset")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def export_params(
    model: Transformer, table: list[Entry], *, derived: Iterable[str] = (), dtype=None
) -> dict[str, np.ndarray]:
    """Inverse of `load_params`: HF key -> numpy array.

    Parameters that the table does not export must be zero (biases the HF family lacks) or
    listed in `derived` (filled by the family's `post` on load and checked by its `to_hf`);
    otherwise a ConversionError says which parameter cannot be represented.
    """
    cfg = model.cfg
    params = {k: np.asarray(v) for k, v in _leaf_paths(model).items()}
    sizes = axis_sizes(cfg)
    out: dict[str, np.ndarray] = {}
    used = set(derived)
    for e in table:
        lhs, rhs = e.pattern.split("->")
        inverse = f"{rhs.strip()} -> {lhs.strip()}"
        layers = range(cfg.n_layers) if e.per_layer else [None]
        for layer in layers:
            parts = [params[p] if layer is None else params[p][layer] for p in e.paths]
            value = parts[0] if isinstance(e.ours, str) else np.stack(parts)
            arr = einops.rearrange(value, inverse, **_used(inverse, sizes))
            out[e.hf.format(l=layer)] = arr if dtype is None else arr.astype(dtype)
        used.update(e.paths)
    for path, value in params.items():
        if path not in used and np.any(value != 0):
            raise ConversionError(
                f"cannot export: {path} is nonzero but this HF architecture has no such "
                "parameter (was the model weight-processed?)"
            )
    return out


# HF activation names -> ours. The tanh approximations are the same function.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ConversionError(f"unsupported activation function {name!r}")
    return ACTIVATIONS[name]


def hf_activation(act_fn: str) -> str:
    """Our activation name -> the HF name used on export."""
    return {"gelu": "gelu", "gelu_new": "gelu_new", "silu": "silu", "relu": "relu"}[
        act_fn
    ]


def tie_unembed(values: dict) -> None:
    """`post` hook for tied checkpoints: W_U is W_E transposed."""
    values["unembed.W_U"] = np.ascontiguousarray(values["embed.W_E"].T)


def require_equal(a, b, message: str) -> None:
    """Export-time check that a parameter the HF format stores once is really shared."""
    if not np.array_equal(np.asarray(a), np.asarray(b)):
        raise ConversionError(f"cannot export: {message}")

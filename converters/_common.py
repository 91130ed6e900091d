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
from jax.sharding import Mesh

from jaxinterp.config import TransformerConfig
from jaxinterp.model import Transformer, init_transformer
from jaxinterp.sharding import model_shardings, place


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

# The parameter dtypes a model may be loaded in, and checkpoint tensors may hold.
FLOAT_DTYPES = tuple(
    np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64)
)


def float_dtype(dtype: Any) -> np.dtype:
    """`dtype` as a numpy dtype, if it is one a model can be loaded in.

    Arguments:
        dtype: e.g. `"bfloat16"`, `jnp.float32`, `np.dtype("float16")`.

    Raises:
        ConversionError: not a dtype, or not float16 / bfloat16 / float32 / float64 (an
            integer model would silently compute garbage).
    """
    try:
        out = jnp.dtype(dtype)
    except TypeError:
        raise ConversionError(f"requested dtype {dtype!r} is not a dtype") from None
    if out not in FLOAT_DTYPES:
        raise ConversionError(
            f"requested dtype {out} is not a floating dtype; use one of "
            f"{', '.join(map(str, FLOAT_DTYPES))}"
        )
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-maps every tensor of a `.safetensors` file (read-only, nothing loaded yet).

    The header is checked as the format specifies: a JSON object of entries
    `{"dtype", "shape", "data_offsets"}` with non-negative integer shapes and offsets whose
    byte ranges tile the data section exactly (no gaps, overlaps or bytes outside it).

    Raises:
        ConversionError: the file is truncated, its header is corrupt, or a dtype is unknown;
            the message names the file (and the tensor).
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
    if not isinstance(header, dict):
        raise ConversionError(
            f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an "
            "object)"
        )
    header.pop("__metadata__", None)
    data_start, data_size = 8 + n, size - 8 - n
    entries = []
    for key, info in header.items():
        entries.append((key, *_header_entry(path, key, info)))
    # The data section must be tiled exactly, in offset order: otherwise two tensors share
    # bytes, or a tensor reads bytes that belong to none.
    end_of_previous = 0
    for key, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != end_of_previous:
            raise ConversionError(
                f"{path}: bad data_offsets for {key!r}: [{begin}, {end}] "
                + (
                    f"overlaps the previous tensor (which ends at {end_of_previous})"
                    if begin < end_of_previous
                    else f"leaves a gap after byte {end_of_previous}"
                )
            )
        end_of_previous = end
    if end_of_previous > data_size:
        raise ConversionError(
            f"{path}: truncated: tensors end at byte {data_start + end_of_previous} but the "
            f"file has {size} bytes"
        )
    if end_of_previous < data_size:
        raise ConversionError(
            f"{path}: corrupt: {data_size - end_of_previous} bytes after the last tensor"
        )
    out = {}
    for key, dtype, shape, begin, _ in entries:
        if math.prod(shape) == 0:  # np.memmap cannot map zero bytes
            out[key] = np.zeros(shape, dtype)
        else:
            out[key] = np.memmap(path, dtype, "r", data_start + begin, shape, order="C")
    return out


def _header_entry(path: Path, key: str, info: Any) -> tuple[np.dtype, tuple, int, int]:
    """(dtype, shape, begin, end) of one safetensors header entry, strictly checked."""

    def bad(why: str) -> ConversionError:
        return ConversionError(
            f"{path}: bad header entry for {key!r} ({why}): {info!r}"
        )

    if not isinstance(info, dict):
        raise bad("not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            raise bad(f"no {field!r}")
    if info["dtype"] not in _DTYPES:
        raise bad(f"unknown dtype {info['dtype']!r}; known: {', '.join(_DTYPES)}")
    dtype = _DTYPES[info["dtype"]]
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
        raise bad("shape must be a list of non-negative integers")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_index, offsets))
    ):
        raise bad("data_offsets must be two non-negative integers")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise bad(
            f"{end - begin} bytes for shape {tuple(shape)} of {info['dtype']} "
            f"({math.prod(shape) * dtype.itemsize} bytes)"
        )
    return dtype, tuple(shape), begin, end


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


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


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold an object (`config.json`, an index, ...).

    Raises:
        ConversionError: the file is not UTF-8 JSON, or holds something other than an
            object; the message names the file.
    """
    try:
        value = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConversionError(
            f"{path}: expected a JSON object, got a {type(value).__name__}"
        )
    return value


def read_checkpoint(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory, memory-mapped where possible.

    Reads `model.safetensors`, or the shards listed in `model.safetensors.index.json`; falls
    back to `pytorch_model.bin` only through `torch.load(weights_only=True)` when torch is
    installed (never a plain unpickle).

    Raises:
        ConversionError: no weights, or a malformed file (named in the message).
    """
    d = Path(directory)
    if (d / "model.safetensors").exists():
        return read_safetensors(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise ConversionError(
                f"{index}: 'weight_map' must be an object mapping tensor names to shard "
                f"files, got {type(weight_map).__name__}"
            )
        out = {}
        for shard in sorted(set(weight_map.values())):
            if not (d / shard).is_file():
                raise ConversionError(f"{index}: shard {shard!r} is missing from {d}")
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # a corrupt or truncated file, a refused (unsafe) pickle, ...
    except Exception as e:
        raise ConversionError(
            f"{path}: cannot be read with torch.load(weights_only=True): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(state, dict):
        raise ConversionError(
            f"{path}: expected a state dict (tensor name -> tensor), got a "
            f"{type(state).__name__}"
        )
    out = {}
    for key, t in state.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise ConversionError(
                f"{path}: not a state dict: entry {key!r} is a {type(t).__name__}, not a "
                "tensor"
            )
        if t.dtype == torch.bfloat16:
            out[key] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            try:
                out[key] = t.numpy()
            except (TypeError, RuntimeError) as e:  # e.g. float8, or a sparse tensor
                raise ConversionError(
                    f"{path}: tensor {key!r} ({t.dtype}) has no numpy equivalent: {e}"
                ) from None
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


_REQUIRED = object()


def _config_value(
    hf: Mapping[str, Any], key: str, default: Any, nullable: bool, name: str | None
) -> tuple[bool, Any]:
    """`(True, value)` for a given field, `(False, default)` for an absent one."""
    if key not in hf or (nullable and hf[key] is None):
        if default is _REQUIRED:
            raise ConversionError(f"required config field {name or key!r} is missing")
        return False, default
    if hf[key] is None:
        raise ConversionError(f"config field {name or key!r} is null")
    return True, hf[key]


def checked_int(value: Any, label: str, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`; bools and floats are refused. Raises
    ConversionError starting with `label` (which names the file and field)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConversionError(f"{label} must be an integer, got {value!r}")
    if value < minimum:
        raise ConversionError(f"{label} must be >= {minimum}, got {value}")
    return int(value)


def checked_positive(value: Any, label: str) -> float:
    """`value` as a finite float > 0 (epsilons, RoPE bases, factors); bools are refused.
    Raises ConversionError starting with `label`."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ConversionError(f"{label} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConversionError(f"{label} must be finite and positive, got {value!r}")
    return float(value)


def config_int(
    hf: Mapping[str, Any],
    key: str,
    default: Any = _REQUIRED,
    *,
    nullable: bool = False,
    minimum: int = 1,
    name: str | None = None,
) -> Any:
    """An integer field of an HF config, checked: `hf[key]` must be an int >= `minimum`.

    Arguments:
        hf: the parsed `config.json`.
        key: the field.
        default: returned when the field is absent (or null, if `nullable`); without one,
            an absent field is an error.
        nullable: null means "use the default" (as in HF, e.g. `n_inner`, `head_dim`);
            otherwise a null value is an error.
        minimum: smallest valid value (sizes must be positive).
        name: how messages name the field (default: `key`).

    Raises:
        ConversionError: naming the field.
    """
    given, value = _config_value(hf, key, default, nullable, name)
    if not given:
        return value
    return checked_int(value, f"config field {name or key!r}", minimum)


def config_float(
    hf: Mapping[str, Any],
    key: str,
    default: Any = _REQUIRED,
    *,
    nullable: bool = False,
    name: str | None = None,
) -> Any:
    """A finite, positive number field of an HF config (epsilons, RoPE bases, factors).

    Raises:
        ConversionError: naming the field.
    """
    given, value = _config_value(hf, key, default, nullable, name)
    if not given:
        return value
    return checked_positive(value, f"config field {name or key!r}")


def config_bool(hf: Mapping[str, Any], key: str, default: bool) -> bool:
    """A true/false field of an HF config (a string such as "false" is an error)."""
    _, value = _config_value(hf, key, default, False, None)
    if not isinstance(value, bool):
        raise ConversionError(
            f"config field {key!r} must be true or false, got {value!r}"
        )
    return value


def config_str(hf: Mapping[str, Any], key: str, default: str) -> str:
    """A string field of an HF config (e.g. an activation name)."""
    _, value = _config_value(hf, key, default, False, None)
    if not isinstance(value, str):
        raise ConversionError(f"config field {key!r} must be a string, got {value!r}")
    return value


def head_dim(hf: Mapping[str, Any], hidden_key: str, heads_key: str) -> int:
    """`hidden // heads`, refusing a width that the heads do not divide (HF refuses it too)."""
    d, h = config_int(hf, hidden_key), config_int(hf, heads_key)
    if d % h:
        raise ConversionError(
            f"config field {hidden_key!r} = {d} is not a multiple of {heads_key!r} = {h}"
        )
    return d // h


class RopeParameters(dict):
    """RoPE settings (`rope_type`, `rope_theta`, ...) that remember which config field each
    came from, so that an error names it (`rope_parameters.factor`, `rotary_pct`, ...)."""

    def __init__(self, values: Mapping[str, Any], field: str):
        super().__init__(values)
        self.field = field
        self.names: dict[str, str] = {}

    def name(self, key: str) -> str:
        return self.names.get(key, f"{self.field}.{key}")

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        """A finite positive number of the RoPE settings; an error names its field."""
        return config_float(self, key, default, name=self.name(key))

    def integer(self, key: str, default: Any = _REQUIRED) -> int:
        """A positive integer of the RoPE settings; an error names its field."""
        return config_int(self, key, default, name=self.name(key))


def rope_parameters(hf: Mapping[str, Any]) -> RopeParameters:
    """RoPE settings from either transformers 5 (`rope_parameters`) or 4 (`rope_theta` plus
    `rope_scaling`) configs.

    As transformers does, the dict's own values win and the top-level legacy fields
    (`rotary_emb_base`, `rope_theta`, `rotary_pct`, `partial_rotary_factor`) fill in what it
    lacks; `rope_type` wins over the legacy `type`.

    Raises:
        ConversionError: `rope_parameters` / `rope_scaling` is not an object, both are given
            and differ, or `rope_type` is not a string.
    """
    given = {
        k: hf[k] for k in ("rope_parameters", "rope_scaling") if hf.get(k) is not None
    }
    for key, value in given.items():
        if not isinstance(value, dict):
            raise ConversionError(
                f"config field {key!r} must be an object, got {value!r}"
            )
    if len(given) == 2 and given["rope_parameters"] != given["rope_scaling"]:
        raise ConversionError(
            "config fields 'rope_parameters' and 'rope_scaling' are both given and differ"
        )
    field = next(iter(given), "rope_parameters")
    params = RopeParameters(given.get(field, {}), field)
    legacy_type = params.pop("type", None)
    params.setdefault("rope_type", legacy_type or "default")
    if not isinstance(params["rope_type"], str):
        raise ConversionError(
            f"config field {params.name('rope_type')!r} must be a string, got "
            f"{params['rope_type']!r}"
        )
    for target, legacy in (
        ("rope_theta", ("rotary_emb_base", "rope_theta")),
        ("partial_rotary_factor", ("rotary_pct", "partial_rotary_factor")),
    ):
        for key in legacy:
            if target not in params and hf.get(key) is not None:
                params[target] = hf[key]
                params.names[target] = key
    if "rope_theta" in params:
        params.number("rope_theta")
    if "partial_rotary_factor" in params:
        factor = params.number("partial_rotary_factor")
        if factor > 1:
            raise ConversionError(
                f"config field {params.name('partial_rotary_factor')!r} must be in (0, 1], "
                f"got {factor}"
            )
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


def _hf_shape(entry: Entry, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF-layout shape that `entry`'s pattern turns into `ours` (one part's shape).

    Computed from the pattern, so a wrongly shaped tensor is reported (naming its key)
    before einops ever sees it.
    """
    lhs, rhs = (side.strip() for side in entry.pattern.split("->"))
    if rhs == "...":
        return ours
    axes = rhs.split()
    if "(" in rhs or len(axes) != len(ours) + (not isinstance(entry.ours, str)):
        raise AssertionError(f"unsupported table pattern {entry.pattern!r}")
    full = ours if isinstance(entry.ours, str) else (len(entry.paths), *ours)
    size = dict(zip(axes, full, strict=True))
    groups = re.findall(r"\(([^)]*)\)|(\w+)", lhs)
    return tuple(math.prod(size[a] for a in (g or n).split()) for g, n in groups)


def _nonfinite(key: str, arr: Any, dtype: np.dtype) -> str:
    """Why `key` is refused, for the error message (only runs on the error path)."""
    src = np.asarray(arr)
    n_nan, n_inf = int(np.isnan(src).sum()), int(np.isinf(src).sum())
    if n_nan or n_inf:
        return f"{key} ({n_nan} NaN, {n_inf} Inf of {src.size})"
    return f"{key} (finite, but overflows {dtype}: max |w| = {np.abs(src).max()})"


def load_params(
    tensors: Mapping[str, np.ndarray],
    cfg: TransformerConfig,
    table: list[Entry],
    *,
    dtype=None,
    post=None,
    mesh: Mesh | None = None,
) -> Transformer:
    """Builds a `Transformer` from HF tensors through a key table.

    The skeleton comes from `eqx.filter_eval_shape`, so no random weights are allocated; each
    stacked parameter is filled layer by layer from the (memory-mapped) checkpoint. Every
    tensor is checked as it is read (once, one at a time): a floating dtype, the shape the
    config implies (before any reshape), and finite values after the cast to `dtype`.

    Arguments:
        tensors: HF key -> array (memory-mapped or lazily dequantized is fine).
        cfg: the converted config.
        table: the family's key table.
        dtype: parameter dtype (a floating dtype); default: the dtype of the first table
            tensor (the embedding).
        post: optional `dict[path, array] -> None` hook that fills parameters the table
            cannot express (GPT-J's shared norm, tied unembedding).
        mesh: place each parameter on this mesh as `jaxinterp.sharding.model_specs` says,
            straight from the host (each device receives only its part); default: the
            default device.

    Raises:
        ConversionError: missing or unexpected keys, a non-float tensor or requested dtype,
            shape mismatches, non-finite weights; each names the key(s).
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
        first = table[0].hf.format(l=0)
        dtype = _checked_dtype(first, np.asarray(tensors[first]))
    dtype = float_dtype(dtype)
    skeleton = eqx.filter_eval_shape(
        init_transformer, cfg, jax.random.key(0), dtype=dtype
    )
    shapes = {k: v.shape for k, v in _leaf_paths(skeleton).items()}
    sizes = axis_sizes(cfg)
    values: dict[str, np.ndarray] = {}
    bad: list[str] = []  # keys with non-finite values
    for e in table:
        layers = range(cfg.n_layers) if e.per_layer else [None]
        want = shapes[e.paths[0]][1:] if e.per_layer else shapes[e.paths[0]]
        hf_want = _hf_shape(e, want)
        for layer in layers:
            key = e.hf.format(l=layer)
            arr = tensors[key]
            _checked_dtype(key, arr)
            if tuple(np.shape(arr)) != hf_want:
                raise ConversionError(
                    f"{key}: shape {tuple(np.shape(arr))}, expected {hf_want} (for "
                    f"{', '.join(e.paths)} of this config)"
                )
            parts = _hf_to_ours(arr, e, sizes)
            finite = True
            for path, part in zip(e.paths, parts, strict=True):
                want = shapes[path][1:] if e.per_layer else shapes[path]
                if part.shape != want:  # a table bug, not a bad file
                    raise ConversionError(
                        f"{key}: shape {tuple(np.shape(arr))} gives {part.shape} for "
                        f"{path}, expected {want}"
                    )
                # an overflowing cast (1e5 -> float16) is reported below, not warned about
                with np.errstate(over="ignore"):
                    if layer is None:
                        values[path] = out = part.astype(dtype)
                    else:
                        if layer == 0:
                            values[path] = np.empty(shapes[path], dtype)
                        values[path][layer] = part
                        out = values[path][layer]
                finite = finite and bool(np.isfinite(out).all())
            if not finite:
                bad.append(_nonfinite(key, arr, dtype))
    if bad:
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise ConversionError(
            f"checkpoint has non-finite weights (NaN/Inf): {'; '.join(bad[:8])}{more}"
        )
    if post is not None:
        post(values)
    leaves = []
    flat, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    where = (
        jax.tree.leaves(model_shardings(skeleton, mesh)) if mesh else [None] * len(flat)
    )
    for (path, leaf), sharding in zip(flat, where, strict=True):
        name = ".".join(k.name for k in path)
        if name in values:
            value = values.pop(name)
        elif name.split(".")[-1].startswith("b"):  # biases the checkpoint does not have
            value = np.zeros(leaf.shape, dtype)
        else:
            raise ConversionError(f"converter table leaves {name} unset")
        leaves.append(place(value, sharding) if mesh else jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _checked_dtype(key: str, arr: Any) -> np.dtype:
    """The dtype of checkpoint tensor `key`, which must be floating (an integer tensor
    would be cast to float silently and compute garbage)."""
    dtype = getattr(arr, "dtype", None)
    dtype = np.dtype(np.asarray(arr).dtype if dtype is None else dtype)
    if dtype not in FLOAT_DTYPES:
        raise ConversionError(
            f"{key}: dtype {dtype} is not a floating dtype (expected one of "
            f"{', '.join(map(str, FLOAT_DTYPES))})"
        )
    return dtype


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

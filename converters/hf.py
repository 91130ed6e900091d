"""HF checkpoints <-> `jaxinterp.Transformer`: import and export by architecture.

Dispatch is on `config.json["architectures"]`, never on a model name. Each family module
(`gpt2`, `neox`, `gptj`, `llama`) holds a strict config allowlist and one key table; this
module only picks the family and runs its table (`_common.load_params` / `export_params`).
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxinterp.config import TransformerConfig
from jaxinterp.model import Transformer
from jaxinterp.store import atomic_directory

from . import gpt2, gptj, llama, neox
from ._common import (
    ConversionError,
    export_params,
    float_dtype,
    load_params,
    read_checkpoint,
    read_json_object,
    write_safetensors,
)

__all__ = [
    "FAMILIES",
    "from_hf_dict",
    "from_pretrained",
    "to_hf_dict",
    "save_pretrained",
]

FAMILIES = {
    arch: fam for fam in (gpt2, neox, gptj, llama) for arch in fam.ARCHITECTURES
}


def from_hf_dict(
    hf_config: Mapping,
    tensors: Mapping[str, np.ndarray],
    *,
    dtype=None,
    source: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
) -> Transformer:
    """Converts an HF config dict and its tensors (HF key -> array) to a `Transformer`.

    Arguments:
        hf_config: the parsed `config.json`.
        tensors: HF-named tensors (memory-mapped or lazily produced arrays are fine).
        dtype: parameter dtype (float16, bfloat16, float32 or float64); default: the
            checkpoint's embedding dtype.
        source: what the config came from (e.g. the `config.json` path), for messages.
        mesh: place the parameters on this mesh as `jaxinterp.sharding.model_specs` says
            (each device receives only its part); default: the default device.

    Returns:
        The converted model.

    Raises:
        ConversionError: unsupported architecture, a config field outside the family's
            allowlist, missing or impossible (e.g. zero) sizes, or a missing, unused,
            misshapen, non-float or non-finite tensor. Config errors name `source` and the
            field; tensor errors name the key.
    """
    cfg, table, post, family = hf_config_to_ours(hf_config, source=source)
    if family is gpt2:
        tensors = gpt2.normalize_keys(dict(tensors))
    return load_params(tensors, cfg, table, dtype=dtype, post=post, mesh=mesh)


def hf_config_to_ours(
    hf_config: Any, *, source: str | os.PathLike | None = None
) -> tuple[Any, list, Any, Any]:
    """`(TransformerConfig, key table, post hook, family module)` for an HF config dict.

    The one place where every config problem (a missing, null, mistyped or impossible
    field, a partial `rope_scaling`, an unsupported architecture) becomes one
    `ConversionError` whose message starts with `source` and names the field.
    """
    where = source if source is not None else "HF config"
    if not isinstance(hf_config, Mapping):
        raise ConversionError(
            f"{where}: expected a JSON object, got a {type(hf_config).__name__}"
        )
    try:
        family = _family(hf_config.get("architectures"))
        cfg, table, post = family.from_hf(dict(hf_config))
    except ValueError as e:  # ConversionError, or TransformerConfig's own checks
        raise ConversionError(f"{where}: {e}") from e
    return cfg, table, post, family


def from_pretrained(
    path: str | os.PathLike, *, dtype=None, mesh: Mesh | None = None
) -> Transformer:
    """Loads a local HF checkpoint directory (`config.json` + safetensors).

    Arguments:
        path: directory with `config.json` and `model.safetensors` (or a sharded index, or
            `pytorch_model.bin` when torch is installed).
        dtype: parameter dtype; default: keep the checkpoint's.
        mesh: see `from_hf_dict`.

    Returns:
        The converted model (see `from_hf_dict`).

    Raises:
        ConversionError: see `from_hf_dict`; also a `config.json` that is not a JSON object
            or a malformed weights file (each named).
    """
    d = Path(path)
    if not (d / "config.json").exists():
        raise ConversionError(f"{d}: no config.json (is this an HF model directory?)")
    hf = read_json_object(d / "config.json")
    # Check the config before touching the weights: its errors are the clearer ones.
    hf_config_to_ours(hf, source=d / "config.json")
    tensors = read_checkpoint(d)
    return from_hf_dict(hf, tensors, dtype=dtype, source=d / "config.json", mesh=mesh)


def to_hf_dict(model: Transformer, architecture: str, *, dtype=None):
    """Inverse of `from_hf_dict`.

    The export must describe the same model: the exported config, read back through the
    family's own import (`from_hf`), must give exactly `model.cfg`. So a model cannot be
    exported as an architecture that cannot express it (a Llama model as GPT-2 would lose
    its RMSNorm, gated MLP and rotary embeddings); the error lists the fields that differ.

    Arguments:
        model: the model to export.
        architecture: HF class name to export as, e.g. `"LlamaForCausalLM"`.
        dtype: tensor dtype (a floating dtype); default: the model's.

    Returns:
        `(config dict, HF key -> numpy array)`.

    Raises:
        ConversionError: an unsupported architecture, one that cannot express this model,
            a parameter the format cannot hold, or a non-float `dtype`.
    """
    family = _family([architecture])
    if dtype is not None:
        dtype = float_dtype(dtype)
    hf, table, derived = family.to_hf(model, architecture)
    _check_reads_back(hf, model.cfg, architecture)
    tensors = export_params(model, table, derived=derived, dtype=dtype)
    hf["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
    return hf, tensors


def save_pretrained(
    model: Transformer,
    path: str | os.PathLike,
    *,
    architecture: str,
    dtype=None,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `config.json` and `model.safetensors` that transformers loads directly.

    The directory is written atomically (`jaxinterp.store.atomic_directory`): everything
    goes into a hidden sibling that is renamed to `path` at the end, so a failed or killed
    export never leaves a partial directory, and an overwrite replaces `path` as a whole
    (no files of what was there before, e.g. an orbax store or other shards, survive).

    Arguments:
        model: the model to export.
        path: output directory (its parent is created if needed; an existing empty
            directory is replaced).
        architecture: HF class name to export as, e.g. `"LlamaForCausalLM"`.
        dtype: tensor dtype; default: the model's.
        extra_files: `{file name: bytes}` written into the directory in the same atomic
            step (e.g. the tokenizer files); plain names only.
        overwrite: replace whatever is at `path`.

    Returns:
        The directory.

    Raises:
        FileExistsError: `path` exists (and is not an empty directory), `overwrite` False.
        ConversionError: see `to_hf_dict`. ValueError: a bad extra file name.
    """
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (
            "config.json", "model.safetensors", "", ".", "..",
        ):  # fmt: skip
            raise ValueError(f"bad extra file name {name!r}")
    hf, tensors = to_hf_dict(model, architecture, dtype=dtype)
    config_text = json.dumps(hf, indent=2) + "\n"
    with atomic_directory(path, overwrite=overwrite) as tmp:
        write_safetensors(tmp / "model.safetensors", tensors)
        (tmp / "config.json").write_text(config_text)
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
    return Path(path).expanduser().absolute()


def check_architecture(model: Transformer, architecture: str) -> None:
    """Raises ConversionError unless `model` can be exported as `architecture` (the checks
    of `to_hf_dict` on the config, without exporting any tensor)."""
    hf, _, _ = _family([architecture]).to_hf(model, architecture)
    _check_reads_back(hf, model.cfg, architecture)


def _check_reads_back(hf: dict, cfg: TransformerConfig, architecture: str) -> None:
    """Raises ConversionError unless `hf` (as written to config.json) imports as `cfg`."""
    try:
        back, _, _, _ = hf_config_to_ours(json.loads(json.dumps(hf)))
    except ConversionError as e:
        raise ConversionError(
            f"cannot export as {architecture}: its config would not load back ({e})"
        ) from None
    if back != cfg:
        diff = [
            f"{f.name}={getattr(cfg, f.name)!r} (would read back as "
            f"{getattr(back, f.name)!r})"
            for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(back, f.name)
        ]
        raise ConversionError(
            f"cannot export as {architecture}: it cannot express this model's "
            f"{'; '.join(diff)}"
        )


def _family(architectures):
    if not architectures:
        raise ConversionError("config.json has no 'architectures' entry")
    if not isinstance(architectures, list) or not isinstance(architectures[0], str):
        raise ConversionError(
            f"config field 'architectures' must be a list of class names, got "
            f"{architectures!r}"
        )
    arch = architectures[0]
    if arch not in FAMILIES:
        raise ConversionError(
            f"unsupported architecture {arch!r}; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[arch]

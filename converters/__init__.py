"""Converters from Hugging Face checkpoints (and GGUF files) to `jaxinterp.Transformer`.

Dispatch is on `config.json["architectures"]`, never on a model name. Each family module
(`gpt2`, `neox`, `gptj`, `llama`) holds a strict config allowlist and one key table.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jaxinterp.model import Transformer

from . import gpt2, gptj, llama, neox
from ._common import ConversionError as ConversionError
from ._common import export_params, load_params, read_checkpoint, write_safetensors

FAMILIES = {
    arch: fam for fam in (gpt2, neox, gptj, llama) for arch in fam.ARCHITECTURES
}


def _family(architectures):
    if not architectures:
        raise ConversionError("config.json has no 'architectures' entry")
    arch = architectures[0]
    if arch not in FAMILIES:
        raise ConversionError(
            f"unsupported architecture {arch!r}; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[arch]


def from_hf_dict(
    hf_config: Mapping, tensors: Mapping[str, np.ndarray], *, dtype=None
) -> Transformer:
    """Converts an HF config dict and its tensors (HF key -> array) to a `Transformer`.

    Arguments:
        hf_config: the parsed `config.json`.
        tensors: HF-named tensors (memory-mapped or lazily produced arrays are fine).
        dtype: parameter dtype; default: the checkpoint's embedding dtype.
    """
    family = _family(hf_config.get("architectures"))
    cfg, table, post = family.from_hf(dict(hf_config))
    if family is gpt2:
        tensors = gpt2.normalize_keys(dict(tensors))
    return load_params(tensors, cfg, table, dtype=dtype, post=post)


def from_pretrained(path: str | os.PathLike, *, dtype=None) -> Transformer:
    """Loads a local HF checkpoint directory (`config.json` + safetensors).

    Arguments:
        path: directory with `config.json` and `model.safetensors` (or a sharded index, or
            `pytorch_model.bin` when torch is installed).
        dtype: parameter dtype; default: keep the checkpoint's.
    """
    d = Path(path)
    if not (d / "config.json").exists():
        raise ConversionError(f"{d}: no config.json (is this an HF model directory?)")
    hf = json.loads((d / "config.json").read_text())
    return from_hf_dict(hf, read_checkpoint(d), dtype=dtype)


def to_hf_dict(model: Transformer, architecture: str, *, dtype=None):
    """Inverse of `from_hf_dict`: returns `(config dict, HF key -> numpy array)`."""
    family = _family([architecture])
    hf, table, derived = family.to_hf(model, architecture)
    tensors = export_params(model, table, derived=derived, dtype=dtype)
    hf["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
    return hf, tensors


def save_pretrained(
    model: Transformer, path: str | os.PathLike, *, architecture: str, dtype=None
) -> None:
    """Writes `config.json` and `model.safetensors` that transformers loads directly."""
    hf, tensors = to_hf_dict(model, architecture, dtype=dtype)
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    write_safetensors(d / "model.safetensors", tensors)
    tmp = d / "config.json.tmp"
    tmp.write_text(json.dumps(hf, indent=2) + "\n")
    os.replace(tmp, d / "config.json")


from .loading import load as load  # noqa: E402  (loading.py uses the functions above)
from .loading import load_tokenizer as load_tokenizer  # noqa: E402

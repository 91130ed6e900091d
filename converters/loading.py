"""One entry point for every local model source: `load` and `load_tokenizer`.

`name_or_path` may be

* a registry name (`converters.registry.list_models()`, e.g. `"smollm2-135m"`),
* a `.gguf` file (llama / qwen2),
* an HF model directory (`config.json` + safetensors), or
* an orbax store written by `jaxinterp.store.save_model` (e.g. by `jaxinterp convert
  --format orbax`).

GGUF files go through `converters.gguf.read_gguf` (lazy, one tensor dequantized at a time)
and the ordinary HF converters (`converters.hf.from_hf_dict`), so the GGUF path shares every
strict check of the HF path.

Cache (`cache=True`): dequantizing and converting SmolLM2 takes seconds, restoring the
converted arrays does not. The converted model is stored with `jaxinterp.store` under

    $JAXINTERP_CACHE/models/<name>-<dtype>-<hash>      (default ~/.cache/jaxinterp)

where `<hash>` covers the source (the pinned SHA-256 for registry files; path, size and
mtime of the files otherwise), the converter code (the bytes of the converter modules,
so a fixed converter never serves stale weights) and the store format version. Entries are
written atomically and every leaf is verified against its SHA-256 when read
(`jaxinterp.store`); a damaged entry (flipped bytes, a truncated file, a broken header) is
reconverted and rewritten, with a `RuntimeWarning`. The tokenizer is cached the same way under
`$JAXINTERP_CACHE/tokenizers/` (reading a GGUF vocabulary takes seconds too). Delete the
directory to clear the cache.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from jaxinterp import store
from jaxinterp.model import Transformer

from . import registry
from ._common import ConversionError, float_dtype, read_json_object
from .gguf import read_gguf
from .hf import from_hf_dict, from_pretrained
from .tokenizer import TextTokenizer

__all__ = [
    "load",
    "load_tokenizer",
    "source_info",
    "source_architecture",
    "tokenizer_files",
]

# Modules whose code decides the converted weights; part of every cache key.
_CONVERTER_MODULES = (
    "_common.py",
    "gguf.py",
    "gpt2.py",
    "gptj.py",
    "hf.py",
    "llama.py",
    "neox.py",
)
_TOKENIZER_MODULES = ("gguf.py", "tokenizer.py")


def source_info(name_or_path: str | os.PathLike[str]) -> tuple[str, Path]:
    """What `load` would read, without reading any weights.

    Arguments:
        name_or_path: as for `load`.

    Returns:
        `(kind, path)` with kind `"gguf"`, `"hf"` or `"orbax"`; registry names are located
        and verified against their SHA-256 pins.

    Raises:
        ValueError: not a registry name, `.gguf` file, HF directory or store.
        converters.registry.ModelNotInstalled: a registry model whose files are missing.
    """
    if not (isinstance(name_or_path, str) and name_or_path in registry.MODELS):
        path = Path(name_or_path).expanduser()
        if store.is_store(path):
            return "orbax", path
        if isinstance(name_or_path, str) and not path.exists():
            if os.sep not in name_or_path and not name_or_path.endswith(".gguf"):
                # Looks like a model name: say which names exist.
                raise ValueError(
                    f"unknown model {name_or_path!r}; registry models: "
                    f"{', '.join(registry.MODELS)} (or give a .gguf file, an HF directory "
                    "or an orbax store)"
                )
            raise FileNotFoundError(f"{name_or_path}: no such file or directory")
    return registry.resolve(name_or_path)


def source_architecture(kind: str, path: Path) -> str | None:
    """The HF architecture (`architectures[0]`) of a source, if it records one.

    Arguments:
        kind, path: as returned by `source_info`.

    Returns:
        E.g. `"LlamaForCausalLM"`; None for a store saved without that metadata.
    """
    if kind == "gguf":
        return read_gguf(path)[0]["architectures"][0]
    if kind == "hf":
        file = path / "config.json"
        archs = read_json_object(file).get("architectures")
        if archs is None or archs == []:
            return None
        if not (isinstance(archs, list) and isinstance(archs[0], str)):
            raise ConversionError(
                f"{file}: config field 'architectures' must be a list of class names, "
                f"got {archs!r}"
            )
        return archs[0]
    architecture = store.read_metadata(path).get("architecture")
    if architecture is not None and not isinstance(architecture, str):
        raise store.StoreError(
            f"{path}: corrupt store metadata: 'architecture' is {architecture!r}"
        )
    return architecture


def load(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: Any = None,
    cache: bool = False,
    mesh: Mesh | None = None,
) -> Transformer:
    """Loads a model from a registry name, a `.gguf` file, an HF directory or a store.

    Arguments:
        name_or_path: see the module docstring.
        dtype: parameter dtype, a floating one (e.g. `"float32"`, `jnp.bfloat16`).
            Default: float32 for GGUF (dequantized), the checkpoint's dtype for HF
            directories and stores.
        cache: keep the converted model in `$JAXINTERP_CACHE/models/` and reuse it on the
            next call (skipping dequantization and conversion). Ignored for stores.
        mesh: place the parameters on this mesh (`jaxinterp.sharding.model_specs`: heads,
            neurons and vocabulary split over its `model` axis), each leaf straight from
            the host to its devices; default: the default device.

    Returns:
        The `Transformer`, numerically identical to what the converter produces.

    Raises:
        ValueError / FileNotFoundError: bad name or path. ConversionError (a ValueError):
            the checkpoint cannot be converted faithfully, or `dtype` is not a floating
            dtype. jaxinterp.store.StoreError (a ValueError): a damaged store (with
            `cache=True`, a damaged cache entry is reconverted instead, with a
            `RuntimeWarning`). converters.registry.ModelNotInstalled: a registry model is
            not installed.
    """
    kind, path = source_info(name_or_path)
    dtype = None if dtype is None else float_dtype(dtype)
    if kind == "orbax":
        if dtype is not None:
            return _cast(store.load_model(path, mesh=mesh), dtype)
        return store.load_model(path, mesh=mesh)
    if not cache:
        return _convert(kind, path, dtype, mesh)
    if mesh is not None and jax.process_count() > 1:
        raise ValueError(
            "cache=True on a multi-process run: convert once (`jaxinterp convert SOURCE "
            "STORE --format orbax`) and load the store in every process"
        )

    entry = _cache_path(name_or_path, kind, path, dtype)
    if entry.exists():
        try:
            return store.load_model(entry, mesh=mesh)
        except ValueError as e:
            warnings.warn(
                f"damaged model cache entry {entry} ({e}); converting again",
                RuntimeWarning,
                stacklevel=2,
            )
    model = _convert(kind, path, dtype, mesh)
    metadata = {"source": str(path), "kind": kind}
    architecture = source_architecture(kind, path)
    if architecture is not None:
        metadata["architecture"] = architecture
    try:
        store.save_model(model, entry, metadata=metadata, overwrite=entry.exists())
    except FileExistsError:
        pass  # another process cached it meanwhile; ours is identical
    return model


def load_tokenizer(
    name_or_path: str | os.PathLike[str], *, cache: bool = False
) -> TextTokenizer:
    """The tokenizer of a registry model, `.gguf` file, HF directory or store.

    Arguments:
        name_or_path: as for `load`. A store has a tokenizer only if it was saved with one
            (`jaxinterp convert --format orbax` does this).
        cache: keep a GGUF tokenizer as `tokenizer.json` under `$JAXINTERP_CACHE/tokenizers/`
            and reuse it (skips parsing the GGUF vocabulary).

    Returns:
        A `TextTokenizer` (explicit BOS/EOS policy; see `converters.tokenizer`).

    Raises:
        ValueError / FileNotFoundError: as `load`, or a store without a tokenizer.
    """
    kind, path = source_info(name_or_path)
    if kind == "orbax":
        if not (path / "tokenizer.json").is_file():
            raise ValueError(
                f"{path}: this model store has no tokenizer.json; load the tokenizer from "
                "the model it was converted from"
            )
        return TextTokenizer.from_hf(path)
    if kind == "hf":
        return TextTokenizer.from_hf(path)
    if not cache:
        return TextTokenizer.from_gguf(path)
    key = _digest(
        [_source_fingerprint(name_or_path, kind, path), _code(_TOKENIZER_MODULES)]
    )
    entry = registry.cache_dir() / "tokenizers" / f"{_label(name_or_path, path)}-{key}"
    if (entry / "tokenizer.json").is_file():
        try:
            return TextTokenizer.from_hf(entry)
        except Exception as e:  # a damaged file: rebuild it below
            warnings.warn(
                f"damaged tokenizer cache entry {entry} ({e}); rebuilding",
                RuntimeWarning,
                stacklevel=2,
            )
            shutil.rmtree(entry, ignore_errors=True)
    tokenizer = TextTokenizer.from_gguf(path)
    _write_dir_atomically(entry, tokenizer_files(tokenizer))
    return tokenizer


def tokenizer_files(tokenizer: TextTokenizer) -> dict[str, bytes]:
    """`tokenizer.json` and `tokenizer_config.json` from which `TextTokenizer.from_hf`
    rebuilds `tokenizer` with the same ids and the same BOS/EOS policy.

    Arguments:
        tokenizer: the tokenizer to write.

    Returns:
        `{file name: contents}`, to write into an HF directory or a store.
    """
    cfg: dict[str, Any] = {"add_bos_token": tokenizer.add_bos}
    for name, token_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id)):
        if token_id is not None:
            cfg[f"{name}_token"] = tokenizer.tokenizer.id_to_token(token_id)
    return {
        "tokenizer.json": tokenizer.tokenizer.to_str().encode(),
        "tokenizer_config.json": (json.dumps(cfg, indent=2) + "\n").encode(),
    }


# --- internals ---------------------------------------------------------------------------


def _convert(kind: str, path: Path, dtype, mesh) -> Transformer:
    if kind == "gguf":
        # read_gguf casts each tensor right after dequantizing it, so a bfloat16 load never
        # holds a float32 copy of the whole model.
        config, tensors = read_gguf(path, dtype=dtype)
        return from_hf_dict(config, tensors, dtype=dtype, mesh=mesh)
    return from_pretrained(path, dtype=dtype, mesh=mesh)


def _cast(model: Transformer, dtype) -> Transformer:
    return jax.tree.map(lambda x: x.astype(dtype), model)


def _label(name_or_path, path: Path) -> str:
    if isinstance(name_or_path, str) and name_or_path in registry.MODELS:
        return name_or_path
    stem = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", stem) or "model"


def _cache_path(name_or_path, kind: str, path: Path, dtype) -> Path:
    if dtype is not None:
        label = str(dtype)
    else:
        label = "float32" if kind == "gguf" else "auto"  # HF: the checkpoint's own
    key = _digest(
        [
            _source_fingerprint(name_or_path, kind, path),
            _code(_CONVERTER_MODULES),
            store.VERSION,
        ]
    )
    return (
        registry.cache_dir() / "models" / f"{_label(name_or_path, path)}-{label}-{key}"
    )


def _source_fingerprint(name_or_path, kind: str, path: Path) -> Any:
    if isinstance(name_or_path, str) and name_or_path in registry.MODELS:
        source = registry.MODELS[name_or_path].source
        if isinstance(source, registry.PackageFile | registry.JoinedParts):
            return ["sha256", source.sha256]  # `locate` verified the file against it
    files = (
        [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    )
    return [
        str(path.resolve()),
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files],
    ]


def _code(modules: tuple[str, ...]) -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return h.hexdigest()


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _write_dir_atomically(target: Path, files: dict[str, bytes]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise

"""Saving and loading converted models with orbax-checkpoint, atomically.

A store is one directory:

    <path>/
      jaxinterp_model.json   # {"format", "version", "config": TransformerConfig.to_dict(),
                             #  "leaves": {"blocks.attn.W_Q": [dtype, shape], ...},
                             #  "metadata": free-form JSON (e.g. where the weights came from)}
      params/                # orbax StandardCheckpointer: nested dict of the array leaves
      <extra files>          # optional, e.g. tokenizer.json written by the caller

Why this layout:

* **Arrays through orbax, the config as JSON.** The config decides the module structure
  (and holds static fields), so it cannot travel inside the array checkpoint. The arrays are
  saved as a nested dict keyed by attribute names (`{"blocks": {"attn": {"W_Q": ...}}}`), which
  orbax handles natively and which does not depend on how Equinox registers its pytrees.
* **Restore into the abstract skeleton.** `load_model` builds the module structure with
  `eqx.filter_eval_shape(init_transformer, ...)` (no random weights are allocated) and asks
  orbax for exactly those leaves, with the shapes of the skeleton and the dtypes recorded in
  the JSON. A model saved with mixed dtypes comes back with the same mixed dtypes.
* **Atomic.** Everything is written into a hidden temporary directory next to `path`
  (`.<name>.tmp-XXXX`) and renamed into place as the last step. A save that is killed or
  fails leaves no directory at `path`, so nothing half-written ever loads. A killed process
  can leave the hidden temporary directory behind; it is never read and can be deleted.
* The JSON file is deliberately not called `config.json`, so that a store is never mistaken
  for a Hugging Face checkpoint directory.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .config import TransformerConfig
from .model import Transformer, init_transformer

__all__ = ["save_model", "load_model", "read_metadata", "is_store", "STORE_FILE"]

STORE_FILE = "jaxinterp_model.json"
PARAMS_DIR = "params"
FORMAT = "jaxinterp.store"
VERSION = 1


def save_model(
    model: Transformer,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves `model` as an orbax store directory at `path`, atomically.

    Arguments:
        model: the model; every array leaf is saved bit-exactly in its own dtype.
        path: the store directory to create (its parent is created if needed).
        metadata: JSON-serialisable information kept next to the config (see
            `read_metadata`), e.g. `{"source": ..., "architecture": "LlamaForCausalLM"}`.
        extra_files: `{file name: bytes}` written into the store before it is committed
            (e.g. a `tokenizer.json`); plain names only, no subdirectories.
        overwrite: replace an existing store at `path`. The old one is moved aside first
            and deleted after the new one is in place.

    Returns:
        The store directory.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        ValueError: a bad extra file name, or metadata that is not JSON-serialisable.
    """
    import orbax.checkpoint as ocp

    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace)")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (STORE_FILE, PARAMS_DIR):
            raise ValueError(f"bad extra file name {name!r}")
    leaves = _named_leaves(model)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.cfg.to_dict(),
        "leaves": {k: [str(v.dtype), list(v.shape)] for k, v in leaves.items()},
        "metadata": dict(metadata or {}),
    }
    try:
        header_text = json.dumps(header, indent=2) + "\n"
    except TypeError as e:
        raise ValueError(f"store metadata is not JSON-serialisable: {e}") from None

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / PARAMS_DIR, _nest(leaves))
            checkpointer.wait_until_finished()
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
        # Written last inside the temporary directory: the header names every leaf, so it
        # only describes a complete parameter checkpoint.
        (tmp / STORE_FILE).write_text(header_text)
        _commit(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Renames the finished temporary directory to `path` (the only step that publishes)."""
    old = None
    if overwrite and path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rename(path, old / "store")
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:  # put the previous store back
            os.rename(old / "store", path)
            shutil.rmtree(old, ignore_errors=True)
        elif path.exists():  # lost a race with another writer
            raise FileExistsError(f"{path} already exists") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory holding a store header (does not validate it)."""
    return (Path(path).expanduser() / STORE_FILE).is_file()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The `metadata` dict given to `save_model` (without loading any arrays).

    Raises:
        FileNotFoundError: no directory at `path`. ValueError: not a valid store.
    """
    return dict(_read_header(Path(path).expanduser())["metadata"])


def load_model(path: str | os.PathLike[str]) -> Transformer:
    """Loads a store written by `save_model`.

    The module structure comes from the stored config via `eqx.filter_eval_shape` (nothing
    is randomly initialised); orbax restores each leaf into it with its saved dtype.

    Arguments:
        path: the store directory.

    Returns:
        The model, bit-identical to the one saved.

    Raises:
        FileNotFoundError: no directory at `path`.
        ValueError: `path` is not a store, or it is incomplete or corrupt (the message says
            what is wrong).
    """
    import orbax.checkpoint as ocp

    path = Path(path).expanduser()
    header = _read_header(path)
    try:
        cfg = TransformerConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid model config in {STORE_FILE}: {e}") from None
    skeleton = eqx.filter_eval_shape(init_transformer, cfg, jax.random.key(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    names = [_path_name(p) for p, _ in flat]
    stored = header["leaves"]
    if set(names) != set(stored):
        raise ValueError(
            f"{path}: stored leaves do not match the model structure of its config "
            f"(missing {sorted(set(names) - set(stored))[:5]}, unexpected "
            f"{sorted(set(stored) - set(names))[:5]})"
        )
    target = {}
    for name, (_, leaf) in zip(names, flat, strict=True):
        dtype, shape = stored[name]
        if tuple(shape) != leaf.shape:
            raise ValueError(
                f"{path}: leaf {name} is stored with shape {tuple(shape)}, but the config "
                f"implies {leaf.shape}"
            )
        target[name] = jax.ShapeDtypeStruct(leaf.shape, np.dtype(dtype))
    params = path / PARAMS_DIR
    if not params.is_dir():
        raise ValueError(f"{path}: incomplete store: no {PARAMS_DIR}/ checkpoint")
    leaves = []
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        for name in names:
            want = target[name]
            # One leaf per restore: as fast as one concurrent restore here, and a damaged
            # leaf then fails alone. (When one read of a concurrent restore fails, orbax
            # closes its event loop with the other reads still in flight, and they report
            # "Event loop is closed" errors later, outside any try block.)
            item = _nest({name: want})
            args = ocp.args.PyTreeRestore(
                item=item,
                restore_args=_nest(
                    {name: ocp.ArrayRestoreArgs(dtype=want.dtype, sharding=device)}
                ),
                partial_restore=True,
            )
            try:
                value = _flatten_nested(checkpointer.restore(params, args=args))[name]
            except Exception as e:  # orbax/tensorstore raise assorted types
                raise ValueError(
                    f"{path}: corrupt store: cannot restore {name} "
                    f"({type(e).__name__}: {_first_line(e)})"
                ) from e
            if value.shape != want.shape or value.dtype != want.dtype:
                raise ValueError(
                    f"{path}: leaf {name} restored as {value.dtype}{list(value.shape)}, "
                    f"expected {want.dtype}{list(want.shape)}"
                )
            leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


# --- internals ---------------------------------------------------------------------------


def _read_header(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model store")
    if not path.is_dir():
        raise ValueError(f"{path}: not a model store (not a directory)")
    file = path / STORE_FILE
    if not file.is_file():
        raise ValueError(
            f"{path}: not a model store (no {STORE_FILE}; an interrupted save leaves no "
            "directory, so this is something else or was damaged)"
        )
    try:
        header = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: corrupt store header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{file}: not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{file}: store version {header.get('version')!r}, this code reads {VERSION}"
        )
    for key in ("config", "leaves", "metadata"):
        if not isinstance(header.get(key), dict):
            raise ValueError(f"{file}: corrupt store header (bad {key!r})")
    return header


def _path_name(path) -> str:
    return ".".join(k.name for k in path)


def _named_leaves(model: Transformer) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(model)
    out = {}
    for path, leaf in flat:
        if not eqx.is_array(leaf):
            raise ValueError(f"cannot save {_path_name(path)}: not an array ({leaf!r})")
        out[_path_name(path)] = leaf
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a.b": x}` -> `{"a": {"b": x}}`."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, last = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _flatten_nested(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_nested(value, name + "."))
        else:
            out[name] = value
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""

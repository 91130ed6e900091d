"""Saving and loading converted models with orbax-checkpoint, atomically and verified.

A store is one directory:

    <path>/
      jaxinterp_model.json   # {"format", "version", "config": TransformerConfig.to_dict(),
                             #  "leaves": {"blocks.attn.W_Q":
                             #      {"dtype": "float32", "shape": [...], "sha256": "..."}, ...},
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
* **Verified.** The header records the SHA-256 of every leaf (its bytes in C order,
  little-endian, in its own dtype), and `load_model` checks each restored leaf against it. Orbax
  itself notices only some damage (a truncated file); flipped bytes inside a data file, or a
  `params/` directory copied from another store, restore without complaint, so without the
  checksums a damaged store would silently return different weights. A mismatch raises
  `StoreError` naming the store and the leaf.
* **Validated header.** Every leaf entry must have a floating dtype, a shape of
  non-negative integers and a checksum, and the leaves must be exactly those of the config's
  model structure; anything else is a `StoreError` naming the store and the entry.
* **Atomic.** Everything is written into a hidden temporary directory next to `path`
  (`.<name>.tmp-XXXX`) and renamed into place as the last step (`atomic_directory`, which
  `converters.save_pretrained` uses too). A save that is killed or fails leaves no directory
  at `path`, so nothing half-written ever loads. Overwriting replaces the whole directory:
  the old one is renamed aside, the new one renamed into place, then the old one deleted, so
  `path` only ever holds the complete old or the complete new directory, never a mix (a kill
  between the two renames leaves no directory at `path` and the old one under a hidden
  `.<name>.old-XXXX/`). A killed process can leave hidden directories behind; they are never
  read and can be deleted.
* The JSON file is deliberately not called `config.json`, so that a store is never mistaken
  for a Hugging Face checkpoint directory.

Version 1 stores (written before checksums were recorded: leaf entries `[dtype, shape]`)
still load, with an `UnverifiedStoreWarning` on every load saying that their arrays cannot be
verified; saving the model again (`jaxinterp convert STORE NEW --format orbax`) adds the
checksums. The warning is deliberate: such a store can be damaged without any error.
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .config import TransformerConfig
from .model import Transformer, init_transformer
from .sharding import model_shardings, place

__all__ = [
    "save_model",
    "load_model",
    "read_metadata",
    "is_store",
    "model_digest",
    "atomic_directory",
    "StoreError",
    "UnverifiedStoreWarning",
    "STORE_FILE",
]

STORE_FILE = "jaxinterp_model.json"
PARAMS_DIR = "params"
FORMAT = "jaxinterp.store"
VERSION = 2  # 2: leaf entries carry a SHA-256; 1: [dtype, shape] only (still read)
READABLE_VERSIONS = (1, 2)


class StoreError(ValueError):
    """`path` is not a valid store: not a store at all, or an incomplete, damaged or
    inconsistent one. The message names the store and, where one is at fault, the leaf."""


class UnverifiedStoreWarning(UserWarning):
    """A store written before checksums were recorded (version 1) was loaded unverified."""


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
        model: the model; every array leaf is saved bit-exactly in its own dtype, and its
            SHA-256 is recorded in the header.
        path: the store directory to create (its parent is created if needed; an existing
            empty directory is replaced).
        metadata: JSON-serialisable information kept next to the config (see
            `read_metadata`), e.g. `{"source": ..., "architecture": "LlamaForCausalLM"}`.
        extra_files: `{file name: bytes}` written into the store before it is committed
            (e.g. a `tokenizer.json`); plain names only, no subdirectories.
        overwrite: replace whatever is at `path` (an older store, an HF directory, ...):
            afterwards `path` holds only the new store (see `atomic_directory`).

    Returns:
        The store directory.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        ValueError: a bad extra file name, or metadata that is not JSON-serialisable.
    """
    import orbax.checkpoint as ocp

    path = Path(path).expanduser().absolute()
    _check_free(path, overwrite)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (STORE_FILE, PARAMS_DIR, "", ".", ".."):
            raise ValueError(f"bad extra file name {name!r}")
    leaves = _named_leaves(model)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.cfg.to_dict(),
        "leaves": {
            k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": _digest(v)}
            for k, v in leaves.items()
        },
        "metadata": dict(metadata or {}),
    }
    try:
        header_text = json.dumps(header, indent=2) + "\n"
    except TypeError as e:
        raise ValueError(f"store metadata is not JSON-serialisable: {e}") from None

    with atomic_directory(path, overwrite=overwrite) as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / PARAMS_DIR, _nest(leaves))
            checkpointer.wait_until_finished()
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
        # Written last inside the temporary directory: the header names every leaf, so it
        # only describes a complete parameter checkpoint.
        (tmp / STORE_FILE).write_text(header_text)
    return path


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], *, overwrite: bool = False
) -> Iterator[Path]:
    """Creates (or replaces) the directory `path` atomically.

    Yields a new empty hidden sibling directory (`.<name>.tmp-XXXX`) to fill. When the
    `with` block ends normally, that directory is renamed to `path`; if the block raises
    (or the process is killed), `path` is untouched and the temporary directory is removed
    (a killed process leaves it behind, hidden, never read).

    With `overwrite`, whatever is at `path` is replaced as a whole, never merged: the old
    entry is renamed aside, the new directory renamed into place, the old one deleted. So
    `path` holds either the complete old or the complete new directory (or, if the process
    is killed between the two renames, nothing; the old one is then under
    `.<name>.old-XXXX/`).

    Arguments:
        path: the directory to create. An existing empty directory counts as free.
        overwrite: replace an existing `path`.

    Raises:
        FileExistsError: `path` exists (and is not an empty directory), `overwrite` False.
    """
    path = Path(path).expanduser().absolute()
    _check_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_hidden_dir(path)
    try:
        yield tmp
        _commit(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_free(path: Path, overwrite: bool) -> None:
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return  # an empty directory: nothing would be lost
    raise FileExistsError(f"{path} already exists (pass overwrite=True to replace)")


def _make_hidden_dir(path: Path) -> Path:
    # Not tempfile.mkdtemp: that creates mode 0700, and this directory becomes `path`, which
    # should get the permissions any new directory gets (the umask's).
    while True:
        tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Renames the finished temporary directory to `path` (the only step that publishes)."""
    old = None
    if overwrite and (path.exists() or path.is_symlink()):
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rename(path, old / "store")
    try:
        os.rename(tmp, path)  # also replaces an empty directory
    except OSError:
        if old is not None:  # put the previous one back
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
        FileNotFoundError: no directory at `path`. StoreError (a ValueError): not a valid
            store.
    """
    return dict(_read_header(Path(path).expanduser())["metadata"])


def load_model(
    path: str | os.PathLike[str], *, mesh: Mesh | None = None
) -> Transformer:
    """Loads a store written by `save_model`, verifying every leaf against its checksum.

    The module structure comes from the stored config via `eqx.filter_eval_shape` (nothing
    is randomly initialised); orbax restores each leaf into it with its saved dtype.

    Arguments:
        path: the store directory.
        mesh: place the parameters on this mesh as `jaxinterp.sharding.model_specs` says;
            each leaf goes from the host straight to its devices, each receiving only its
            part. Default: the default device.

    Returns:
        The model, bit-identical to the one saved.

    Raises:
        FileNotFoundError: no directory at `path`.
        StoreError (a ValueError): `path` is not a store, or it is incomplete, corrupt or
            fails a checksum (the message names the store and the leaf).

    Warns:
        UnverifiedStoreWarning: a version 1 store, which has no checksums to verify.
    """
    import orbax.checkpoint as ocp

    path = Path(path).expanduser()
    header = _read_header(path)
    try:
        cfg = TransformerConfig.from_dict(header["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise StoreError(
            f"{path}: invalid model config in {STORE_FILE}: {_first_line(e)}"
        ) from None
    stored = _leaf_specs(path, header)
    skeleton = eqx.filter_eval_shape(init_transformer, cfg, jax.random.key(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    names = [_path_name(p) for p, _ in flat]
    if set(names) != set(stored):
        raise StoreError(
            f"{path}: the leaves in {STORE_FILE} do not match the model structure of its "
            f"config (missing {sorted(set(names) - set(stored))[:5]}, unexpected "
            f"{sorted(set(stored) - set(names))[:5]})"
        )
    for name, (_, leaf) in zip(names, flat, strict=True):
        if stored[name].shape != leaf.shape:
            raise StoreError(
                f"{path}: leaf {name} is stored with shape {stored[name].shape}, but the "
                f"config implies {leaf.shape}"
            )
    params = path / PARAMS_DIR
    if not params.is_dir():
        raise StoreError(f"{path}: incomplete store: no {PARAMS_DIR}/ checkpoint")
    if header["version"] == 1:
        warnings.warn(
            f"{path}: a version 1 store, written without checksums, so its arrays cannot "
            "be verified; save it again (e.g. `jaxinterp convert STORE NEW --format "
            "orbax`) to add them",
            UnverifiedStoreWarning,
            stacklevel=2,
        )
    # Restored onto the host first (no copy to read the bytes for the checksum), then put
    # on the default device or the mesh, one leaf at a time.
    try:
        host = jax.devices("cpu")[0]
    except RuntimeError:  # no CPU backend (e.g. JAX_PLATFORMS=cuda)
        host = jax.devices()[0]
    host_sharding = jax.sharding.SingleDeviceSharding(host)
    if mesh is None:
        where = [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(flat)
    else:
        where = jax.tree.leaves(model_shardings(skeleton, mesh))
    leaves = []
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        for name, sharding in zip(names, where, strict=True):
            spec = stored[name]
            want = jax.ShapeDtypeStruct(spec.shape, spec.dtype)
            # One leaf per restore: as fast as one concurrent restore here, and a damaged
            # leaf then fails alone. (When one read of a concurrent restore fails, orbax
            # closes its event loop with the other reads still in flight, and they report
            # "Event loop is closed" errors later, outside any try block.)
            args = ocp.args.PyTreeRestore(
                item=_nest({name: want}),
                restore_args=_nest(
                    {
                        name: ocp.ArrayRestoreArgs(
                            dtype=want.dtype, sharding=host_sharding
                        )
                    }
                ),
                partial_restore=True,
            )
            try:
                value = _flatten_nested(checkpointer.restore(params, args=args))[name]
            except Exception as e:  # orbax/tensorstore raise assorted types
                raise StoreError(
                    f"{path}: corrupt store: cannot restore {name} "
                    f"({type(e).__name__}: {_first_line(e)})"
                ) from e
            if value.shape != want.shape or value.dtype != want.dtype:
                raise StoreError(
                    f"{path}: corrupt store: leaf {name} restored as "
                    f"{value.dtype}{list(value.shape)}, expected "
                    f"{want.dtype}{list(want.shape)}"
                )
            if spec.sha256 is not None and _digest(value) != spec.sha256:
                raise StoreError(
                    f"{path}: corrupt store: leaf {name} does not match its checksum (its "
                    "stored data was changed or damaged after it was saved)"
                )
            leaves.append(place(value, sharding))
    return jax.tree_util.tree_unflatten(treedef, leaves)


# --- internals ---------------------------------------------------------------------------


class _Leaf(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    sha256: str | None  # None in version 1 stores


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_header(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model store")
    if not path.is_dir():
        raise StoreError(f"{path}: not a model store (not a directory)")
    file = path / STORE_FILE
    if not file.is_file():
        raise StoreError(
            f"{path}: not a model store (no {STORE_FILE}; an interrupted save leaves no "
            "directory, so this is something else or was damaged)"
        )
    try:
        header = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{file}: corrupt store header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StoreError(f"{file}: not a {FORMAT} header")
    version = header.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise StoreError(
            f"{file}: store version {version!r}, this code reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key in ("config", "leaves", "metadata"):
        if not isinstance(header.get(key), dict):
            raise StoreError(f"{file}: corrupt store header (bad {key!r})")
    return header


def _leaf_specs(path: Path, header: dict[str, Any]) -> dict[str, _Leaf]:
    """The validated `leaves` entries of a header; a StoreError names the first bad one."""
    file = path / STORE_FILE
    specs = {}
    for name, entry in header["leaves"].items():
        try:
            specs[name] = _leaf_spec(entry, header["version"])
        except ValueError as e:
            raise StoreError(
                f"{file}: bad entry for leaf {name!r}: {e} (entry: {_short(entry)})"
            ) from None
    return specs


def _leaf_spec(entry: Any, version: int) -> _Leaf:
    if version == 1:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ValueError("expected [dtype, shape]")
        dtype, shape, sha = entry[0], entry[1], None
    else:
        if not isinstance(entry, dict):
            raise ValueError('expected {"dtype", "shape", "sha256"}')
        missing = [k for k in ("dtype", "shape", "sha256") if k not in entry]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        extra = sorted(set(entry) - {"dtype", "shape", "sha256"})
        if extra:
            raise ValueError(f"unexpected fields {extra}")
        dtype, shape, sha = entry["dtype"], entry["shape"], entry["sha256"]
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise ValueError(f"sha256 {sha!r} is not 64 lowercase hex digits")
    return _Leaf(_parse_dtype(dtype), _parse_shape(shape), sha)


def _parse_dtype(text: Any) -> np.dtype:
    try:
        dtype = jnp.dtype(text) if isinstance(text, str) else None
    except TypeError:
        dtype = None
    # Only the canonical name (what `save_model` writes).
    if dtype is None or str(dtype) != text:
        raise ValueError(f"unknown dtype {text!r}")
    # Every parameter of a Transformer is floating; restoring one as an integer would
    # silently cast the stored floats.
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype {text!r} is not a floating dtype")
    return dtype


def _parse_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"shape {shape!r} is not a list of non-negative integers")
    return tuple(shape)


def model_digest(model: Transformer) -> str:
    """SHA-256 of a model's config and of every leaf's name, dtype, shape and checksum (the
    identity a store records), e.g. to fingerprint results computed with it."""
    leaves = {
        k: [str(v.dtype), list(v.shape), _digest(v)]
        for k, v in _named_leaves(model).items()
    }
    text = json.dumps({"config": model.cfg.to_dict(), "leaves": leaves}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(array) -> str:
    """SHA-256 of an array's bytes: C order, little-endian, in its own dtype."""
    a = np.ascontiguousarray(np.asarray(array))
    if a.dtype.byteorder == ">" or (
        a.dtype.byteorder == "=" and sys.byteorder == "big"
    ):
        a = a.byteswap()
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


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

"""Result files that are never half-written, resume after a kill, and know what made them.

A long sweep writes its result `out` (a float32 `.npy` array) block by block into
`<out>.partial` (a memory map) and records how many items are done in `<out>.partial.json`
after each block; the file is renamed to `out` only when complete. So `out` either holds a
whole result or does not exist, and a killed run continues from its last finished block.

Each result carries a fingerprint of the computation that produced it (`<out>.json`, also
kept in the progress marker): the kernel, a digest of the model's weights and config
(`store.model_digest`), the inputs, the spec, the dtype and the library version. Resuming a
partial file or reusing a finished one for a different computation raises instead of mixing
two results.
"""

import hashlib
import json
import os
from importlib import metadata

import numpy as np

__all__ = ["open_resumable", "fingerprint"]


def _version() -> str:
    try:
        return metadata.version("jaxinterp")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "source"


def fingerprint(what: dict, shape: tuple[int, ...]) -> dict:
    """The identity of a result: `what` made it (JSON-serialisable), plus its shape, dtype
    and the library version, and a digest of all of that."""
    ident = dict(what, shape=list(shape), dtype="float32", version=_version())
    text = json.dumps(ident, sort_keys=True)
    return dict(ident, digest=hashlib.sha256(text.encode()).hexdigest())


def _write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is unreadable ({e}): remove it to recompute"
        ) from None


def _same(path: str, found: dict | None, want: dict) -> None:
    if found is None or found.get("digest") != want["digest"]:
        changed = sorted(
            k for k in want if k != "digest" and (found or {}).get(k) != want[k]
        )
        raise ValueError(
            f"{path} was produced by a different computation (differs in: "
            f"{', '.join(changed) or 'fingerprint'}): remove it or choose another path"
        )


def open_resumable(out: str | os.PathLike, shape: tuple[int, ...], what: dict):
    """`(array, done, finish)` for a float32 `.npy` result at `out`, filled block by
    block in row-major order of its first two axes, never half-written.

    Arguments:
        out: the result's path.
        shape: its shape.
        what: JSON-serialisable description of the computation (kernel, model digest,
            inputs, spec); see `fingerprint`.

    Returns:
        A finished `out` of this computation: `(read-only memmap, n_items, None)`.
        Otherwise `(memmap of <out>.partial, items already done, finish)`, where
        `finish(stop)` flushes and records progress after each block and publishes the
        file as `out` after the last one.
    """
    out = os.fspath(out)
    n_items = shape[0] * shape[1]
    ident = fingerprint(what, shape)
    partial, marker, meta = out + ".partial", out + ".partial.json", out + ".json"

    def opened(path, mode):
        array = np.load(path, mmap_mode=mode)
        if array.shape != shape or array.dtype != np.float32:
            raise ValueError(
                f"{path} holds {array.dtype}{list(array.shape)}, this result is "
                f"float32{list(shape)}: remove it or choose another path"
            )
        return array

    def publish():  # a kill at any point leaves either `out` or a marker-less partial
        _write_json(meta, ident)
        os.remove(marker)
        os.replace(partial, out)

    if os.path.exists(out):
        _same(out, _read_json(meta) if os.path.exists(meta) else None, ident)
        return opened(out, "r"), n_items, None
    done = 0
    if os.path.exists(partial) and os.path.exists(marker):
        progress = _read_json(marker)
        _same(partial, progress.get("fingerprint"), ident)
        result = opened(partial, "r+")
        done = int(progress["done"])
        if done == n_items:  # killed between the last marker and the rename
            publish()
            return opened(out, "r"), n_items, None
    else:
        if os.path.exists(marker):  # a stale marker must never vouch for a new file
            os.remove(marker)
        result = np.lib.format.open_memmap(partial, "w+", np.float32, shape)
        _write_json(marker, {"done": 0, "fingerprint": ident})

    def finish(stop: int) -> None:
        result.flush()
        _write_json(marker, {"done": stop, "fingerprint": ident})
        if stop == n_items:
            publish()

    return result, done, finish

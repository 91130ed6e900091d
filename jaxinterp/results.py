"""Result files that are never half-written, resume after a kill, and know what made them.

Two formats, one contract: `out` either holds a whole result or does not exist, and a killed
run continues from its last finished block.

* `open_resumable` (a float32 `.npy` file, one process): the result is written block by
  block into `<out>.partial` (a memory map), the number of items done is recorded in
  `<out>.partial.json` after each block, and the file is renamed to `out` when complete.
* `ShardedResult` (a zarr array through tensorstore, any number of processes): every
  process writes only the parts of each block that its own devices computed, into chunks
  no other process writes, and records its own progress; a resumed run continues from the
  first block that some process had not finished. The directory `<out>.partial/` is renamed
  to `out` when every process is done.

Each result carries a fingerprint of the computation that produced it (`<out>.json`, also
kept in the progress marker): the kernel, a digest of the model's weights and config
(`store.model_digest`), the inputs, the spec, the dtype and the library version. Resuming a
partial file or reusing a finished one for a different computation raises instead of mixing
two results.
"""

import hashlib
import json
import os
import shutil
from importlib import metadata

import jax
import numpy as np

from .sharding import barrier

__all__ = ["open_resumable", "fingerprint", "ShardedResult"]


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


class ShardedResult:
    """A float32 result at `out` (a zarr directory read and written with tensorstore),
    filled block by block by every process of a run.

    The first two axes hold the items (e.g. `[a, b]` operand pairs); blocks are taken in
    row-major order of them. Each process writes the parts of a block that its devices
    computed (`write_block`: one writer per part, as the sharding of the block says) into
    chunks of `chunks` items that no other process writes, then records its progress in
    `<out>.partial/progress/<process>-of-<count>.json`. On a resumed run every process
    reads the others' progress and continues from the first item that some process had not
    written (`done`); a process skips writing what it had written already, so the resumed
    file is bitwise the one an uninterrupted run writes. After the last block, all
    processes meet and process 0 renames `<out>.partial` to `out` (the fingerprint is in
    `out/fingerprint.json`).

    Arguments:
        out: the result's directory (it must not end in `.npy`).
        shape: the result's shape.
        what: JSON-serialisable description of the computation; see `fingerprint`.
        chunks: the chunk shape of the first two axes: the extent of one process's part
            of a block (blocks must be aligned to it).

    Attributes:
        done: items of the row-major first two axes that every process has written.
        complete: the result was already finished (`result()` is all there is to do).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        shape: tuple[int, ...],
        what: dict,
        chunks: tuple[int, int],
    ):
        import tensorstore as ts

        self.out = os.fspath(out)
        if self.out.endswith(".npy"):
            raise ValueError(f"{self.out}: a sharded result is a directory, not a .npy")
        self.shape, self.n_items = tuple(shape), shape[0] * shape[1]
        self.ident = fingerprint(what, shape)
        self.partial = self.out + ".partial"
        self.process, self.count = jax.process_index(), jax.process_count()
        self._pending, self._written = [], 0
        self.complete = os.path.exists(self.out)
        if self.complete:
            meta = os.path.join(self.out, "fingerprint.json")
            _same(
                self.out, _read_json(meta) if os.path.exists(meta) else None, self.ident
            )
            return
        if self.process == 0:
            self._prepare(chunks)
        barrier("jaxinterp.results.open")
        _same(self.partial, _read_json(self._meta()), self.ident)
        self._array = ts.open(self._spec(), open=True, read=True, write=True).result()
        found = tuple(self._array.chunk_layout.write_chunk.shape[:2])
        if found != tuple(chunks):  # processes would share chunks: concurrent writes
            raise ValueError(
                f"{self.partial} was started in blocks of {found[0]} x {found[1]} items "
                f"per device, this run uses {chunks[0]} x {chunks[1]}: resume it with the "
                "same batch size and mesh, or remove it"
            )
        marks = [self._progress(p) for p in range(self.count)]
        self._written, self.done = marks[self.process], min(marks)
        if self.done == self.n_items:  # killed after the last block, before publishing
            self.commit(self.n_items)

    def _meta(self) -> str:
        return os.path.join(self.partial, "fingerprint.json")

    def _spec(self, path: str | None = None) -> dict:
        path = os.path.join(path or self.partial, "array")
        return {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}

    def _marker(self, process: int) -> str:
        name = f"{process}-of-{self.count}.json"
        return os.path.join(self.partial, "progress", name)

    def _progress(self, process: int) -> int:
        marker = self._marker(process)
        if not os.path.exists(marker):
            return 0
        found = _read_json(marker)
        _same(marker, found.get("fingerprint"), self.ident)
        return int(found["done"])

    def _prepare(self, chunks: tuple[int, int]) -> None:
        """Process 0: a new `<out>.partial` unless one of this computation exists."""
        import tensorstore as ts

        if os.path.exists(self._meta()):
            return  # resumed; a different computation is refused after the barrier
        if os.path.exists(self.partial):  # killed while being created
            shutil.rmtree(self.partial)
        os.makedirs(os.path.join(self.partial, "progress"))
        layout = ts.ChunkLayout(write_chunk_shape=[*chunks, *self.shape[2:]])
        ts.open(
            self._spec(),
            create=True,
            dtype=ts.float32,
            shape=self.shape,
            chunk_layout=layout,
        ).result()
        _write_json(self._meta(), self.ident)

    def write_block(self, block, acts: jax.Array) -> None:
        """Writes this process's parts of one block.

        Arguments:
            block: `(a0, a1, b0, b1)`, the block's item ranges along the first two axes.
            acts: the block's values `[rows, cols, ...]` (rows and columns past the
                ranges are padding), a JAX array whose sharding says which device holds
                which part; each part is written by the process of its first replica."""
        a0, a1, b0, b1 = block
        if (a1 - 1) * self.shape[1] + b1 <= self._written:
            return  # this process had written its parts before a resume
        for shard in acts.addressable_shards:
            if shard.replica_id:
                continue
            rows, cols = shard.index[:2]
            r0, r1, _ = rows.indices(acts.shape[0])
            c0, c1, _ = cols.indices(acts.shape[1])
            r1, c1 = min(r1, a1 - a0), min(c1, b1 - b0)
            if r1 <= r0 or c1 <= c0:
                continue  # padding only
            values = np.asarray(shard.data)[: r1 - r0, : c1 - c0]
            target = self._array[a0 + r0 : a0 + r1, b0 + c0 : b0 + c1]
            self._pending.append(target.write(values))

    def commit(self, stop: int) -> None:
        """Records that this process has written every item before `stop` (once its
        writes are on disk); after the last item, publishes the result."""
        for future in self._pending:
            future.result()
        self._pending = []
        if stop > self._written:
            _write_json(
                self._marker(self.process), {"done": stop, "fingerprint": self.ident}
            )
            self._written = stop
        if stop == self.n_items:
            barrier("jaxinterp.results.written")
            if self.process == 0:
                os.replace(self.partial, self.out)
            barrier("jaxinterp.results.published")
            self.complete = True

    def result(self):
        """The finished result, a read-only `tensorstore.TensorStore` (`np.asarray` reads
        it whole; indexing reads only a part)."""
        import tensorstore as ts

        if not self.complete:
            raise RuntimeError(f"{self.out} is not complete yet")
        return ts.open(self._spec(self.out), open=True, read=True, write=False).result()

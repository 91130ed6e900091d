"""jaxinterp.store: orbax round trips are bit-exact, saves are atomic, bad stores fail clearly."""

import itertools
import json
import os
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import init_transformer, run, store
from jaxinterp.store import STORE_FILE, is_store, load_model, read_metadata, save_model

from .helpers import tiny_config

CONFIGS = {
    "llama_gqa": tiny_config(),
    "llama_tied": tiny_config(tied_embeddings=True),
    "gpt2_learned": tiny_config(
        positional="learned",
        norm="ln",
        act_fn="gelu_new",
        gated_mlp=False,
        n_kv_heads=4,
    ),
    "neox_parallel": tiny_config(
        norm="ln", act_fn="gelu", gated_mlp=False, parallel_residual=True, rotary_dim=8
    ),
}


def assert_bit_identical(a, b) -> None:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb  # same structure and the same static config
    for (path, x), (_, y) in zip(la, lb, strict=True):
        assert x.dtype == y.dtype, path
        assert x.shape == y.shape, path
        # Compare bytes, so that -0.0 / NaN payloads would also have to survive.
        xb = np.asarray(x).view(np.uint8)
        yb = np.asarray(y).view(np.uint8)
        assert np.array_equal(xb, yb), path


SEEDS = itertools.count(100)


def randomized(cfg, seed, dtype):
    """A model whose biases and norm weights are random too (nothing trivially 0 or 1)."""
    skeleton = eqx.filter_eval_shape(init_transformer, cfg, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(skeleton)
    rng = np.random.default_rng(seed)
    leaves = [
        jnp.asarray(rng.standard_normal(x.shape, np.float32)).astype(dtype)
        for x in leaves
    ]
    return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_round_trip_is_bit_exact(tmp_path, arch, dtype):
    model = randomized(CONFIGS[arch], 0, dtype)
    path = save_model(model, tmp_path / "m")
    assert path == (tmp_path / "m").absolute()
    assert is_store(path)
    loaded = load_model(path)
    assert_bit_identical(model, loaded)
    assert loaded.cfg == model.cfg


def test_loaded_model_runs_identically(tmp_path):
    model = randomized(tiny_config(), 1, jnp.float32)
    loaded = load_model(save_model(model, tmp_path / "m"))
    tokens = jnp.arange(5)
    np.testing.assert_array_equal(run(model, tokens)[0], run(loaded, tokens)[0])


def test_mixed_dtypes_survive(tmp_path):
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    model = eqx.tree_at(
        lambda m: m.unembed.W_U, model, model.unembed.W_U.astype(jnp.bfloat16)
    )
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.unembed.W_U.dtype == jnp.bfloat16
    assert loaded.embed.W_E.dtype == jnp.float32
    assert_bit_identical(model, loaded)


def test_load_restores_into_an_abstract_skeleton(tmp_path, monkeypatch):
    """Loading never runs `init_transformer` on concrete values (no random init)."""
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    save_model(model, tmp_path / "m")
    calls = []
    real = store.init_transformer

    def spy(cfg, key, **kwargs):
        calls.append(isinstance(key, jax.core.Tracer))
        return real(cfg, key, **kwargs)

    monkeypatch.setattr(store, "init_transformer", spy)
    assert_bit_identical(model, load_model(tmp_path / "m"))
    assert calls == [True]


def test_metadata_and_extra_files(tmp_path):
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    save_model(
        model,
        tmp_path / "m",
        metadata={"source": "x.gguf", "architecture": "LlamaForCausalLM"},
        extra_files={"tokenizer.json": b"{}"},
    )
    assert read_metadata(tmp_path / "m") == {
        "source": "x.gguf",
        "architecture": "LlamaForCausalLM",
    }
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == b"{}"
    # A store is never mistaken for an HF directory.
    assert not (tmp_path / "m" / "config.json").exists()
    with pytest.raises(ValueError, match="extra file name"):
        save_model(model, tmp_path / "n", extra_files={"../x": b""})
    with pytest.raises(ValueError, match="JSON"):
        save_model(model, tmp_path / "n", metadata={"x": object()})
    assert not (tmp_path / "n").exists()


def test_existing_path_needs_overwrite(tmp_path):
    a = randomized(tiny_config(), next(SEEDS), jnp.float32)
    b = randomized(tiny_config(), next(SEEDS), jnp.float32)
    save_model(a, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model(b, tmp_path / "m")
    assert_bit_identical(a, load_model(tmp_path / "m"))
    save_model(b, tmp_path / "m", overwrite=True)
    assert_bit_identical(b, load_model(tmp_path / "m"))
    assert os.listdir(tmp_path) == ["m"]  # no temporary or old directories left


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    """A failure after orbax has written the arrays but before the rename publishes nothing."""
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    seen = []

    def crash(tmp, path, overwrite):
        seen.append(sorted(os.listdir(tmp)))  # the orbax write did happen
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(store, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path / "m")
    assert seen == [[STORE_FILE, "params"]]
    assert not (tmp_path / "m").exists()
    assert os.listdir(tmp_path) == []  # the temporary directory was removed
    with pytest.raises(FileNotFoundError, match="no such model store"):
        load_model(tmp_path / "m")


def test_killed_save_is_invisible(tmp_path, monkeypatch):
    """A process killed before the rename (no cleanup runs) leaves only a hidden directory."""
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)

    def killed(tmp, path, overwrite):
        raise SystemExit(137)

    with monkeypatch.context() as m:
        m.setattr(store, "_commit", killed)
        m.setattr(store.shutil, "rmtree", lambda *a, **k: None)  # no cleanup
        with pytest.raises(SystemExit):
            save_model(model, tmp_path / "m")
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.tmp-")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "m")
    # The next save is not disturbed by the leftover.
    save_model(model, tmp_path / "m")
    assert_bit_identical(model, load_model(tmp_path / "m"))


def test_failed_overwrite_keeps_the_old_store(tmp_path, monkeypatch):
    old = randomized(tiny_config(), next(SEEDS), jnp.float32)
    new = randomized(tiny_config(), next(SEEDS), jnp.float32)
    save_model(old, tmp_path / "m")
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".m.tmp-"):
            raise OSError("disk full")
        return real_rename(src, dst)

    with monkeypatch.context() as m:
        m.setattr(store.os, "rename", rename)
        with pytest.raises(OSError, match="disk full"):
            save_model(new, tmp_path / "m", overwrite=True)
    assert_bit_identical(old, load_model(tmp_path / "m"))
    assert os.listdir(tmp_path) == ["m"]


@pytest.fixture
def saved(tmp_path):
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    return save_model(model, tmp_path / "m")


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model store"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "nope")


def test_not_a_store(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_model(tmp_path / "file")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="not a model store"):
        load_model(tmp_path / "dir")
    assert not is_store(tmp_path / "dir")


def test_corrupt_header(saved):
    header = saved / STORE_FILE
    header.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt store header"):
        load_model(saved)
    header.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a jaxinterp.store header"):
        load_model(saved)


def test_header_from_a_newer_version(saved):
    header = json.loads((saved / STORE_FILE).read_text())
    header["version"] = 99
    (saved / STORE_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="version 99"):
        load_model(saved)


def test_config_that_does_not_match_the_arrays(saved):
    header = json.loads((saved / STORE_FILE).read_text())
    header["config"]["d_mlp"] = 128
    (saved / STORE_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="shape"):
        load_model(saved)
    header["config"]["act_fn"] = "nope"
    (saved / STORE_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="invalid model config"):
        load_model(saved)


def test_missing_leaf_in_header(saved):
    header = json.loads((saved / STORE_FILE).read_text())
    del header["leaves"]["embed.W_E"]
    (saved / STORE_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="missing.*embed.W_E"):
        load_model(saved)


def test_missing_params(saved):
    shutil.rmtree(saved / "params")
    with pytest.raises(ValueError, match="incomplete store"):
        load_model(saved)


def test_damaged_array_data(saved):
    data = [
        os.path.join(root, f)
        for root, _, files in os.walk(saved / "params")
        for f in files
        if "ocdbt.process" in root and os.sep + "d" in root
    ]
    assert data, "no orbax data files found"
    for f in data:
        with open(f, "r+b") as fh:
            fh.truncate(3)
    with pytest.raises(ValueError, match="corrupt store: cannot restore"):
        load_model(saved)

"""jaxinterp.store: orbax round trips are bit-exact, saves are atomic, bad stores fail clearly."""

import hashlib
import itertools
import json
import os
import re
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


# --- checksums: damaged data never loads as different weights ----------------------------


def _data_files(store_dir):
    return [
        os.path.join(root, f)
        for root, _, files in os.walk(store_dir / "params")
        for f in files
        if "ocdbt.process" in root and os.sep + "d" in root
    ]


def _edit_header(store_dir, edit):
    header = json.loads((store_dir / STORE_FILE).read_text())
    edit(header)
    (store_dir / STORE_FILE).write_text(json.dumps(header))


def test_header_records_a_checksum_per_leaf(saved):
    header = json.loads((saved / STORE_FILE).read_text())
    assert header["version"] == store.VERSION == 2
    model = load_model(saved)
    flat, _ = jax.tree_util.tree_flatten_with_path(model)
    assert len(header["leaves"]) == len(flat)
    for path, leaf in flat:
        entry = header["leaves"][".".join(k.name for k in path)]
        assert set(entry) == {"dtype", "shape", "sha256"}
        data = np.ascontiguousarray(np.asarray(leaf)).tobytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_flipped_bytes_in_a_data_file_are_detected(saved):
    """Before checksums, flipping bytes inside an orbax data file loaded without error."""
    files = _data_files(saved)
    assert files, "no orbax data files found"
    for f in files:
        with open(f, "r+b") as fh:
            data = bytearray(fh.read())
            middle = len(data) // 2
            for i in range(middle, min(middle + 64, len(data))):
                data[i] ^= 0xFF
            fh.seek(0)
            fh.write(data)
    with pytest.raises(
        store.StoreError, match=r"corrupt store: (cannot restore|leaf) "
    ):
        load_model(saved)


def test_params_of_another_model_fail_their_checksums(tmp_path):
    """A params/ directory swapped in from a store of the same shape restores cleanly in
    orbax; only the checksums notice."""
    a = save_model(randomized(tiny_config(), next(SEEDS), jnp.float32), tmp_path / "a")
    b = save_model(randomized(tiny_config(), next(SEEDS), jnp.float32), tmp_path / "b")
    shutil.rmtree(a / "params")
    shutil.copytree(b / "params", a / "params")
    with pytest.raises(store.StoreError) as info:
        load_model(a)
    message = str(info.value)
    assert message.startswith(str(a)), message
    assert re.search(r"leaf [\w.]+ does not match its checksum", message), message


def test_a_changed_checksum_names_its_leaf(saved):
    _edit_header(
        saved, lambda h: h["leaves"]["blocks.mlp.W_out"].update(sha256="0" * 64)
    )
    with pytest.raises(
        store.StoreError, match=r"leaf blocks\.mlp\.W_out does not match its checksum"
    ):
        load_model(saved)


def test_damage_is_a_value_error_for_callers(saved):
    _edit_header(saved, lambda h: h["leaves"]["embed.W_E"].update(sha256="1" * 64))
    with pytest.raises(ValueError, match="embed.W_E"):
        load_model(saved)


def _as_version_1(header):
    header["version"] = 1
    header["leaves"] = {
        k: [v["dtype"], v["shape"]] for k, v in header["leaves"].items()
    }


def test_version_1_store_loads_with_a_warning(tmp_path):
    """Stores written before checksums still load, bit-exactly, but say they are unverified."""
    model = randomized(tiny_config(), next(SEEDS), jnp.bfloat16)
    path = save_model(model, tmp_path / "m")
    _edit_header(path, _as_version_1)
    with pytest.warns(store.UnverifiedStoreWarning, match="without checksums"):
        loaded = load_model(path)
    assert_bit_identical(model, loaded)
    _edit_header(path, lambda h: h["leaves"].update({"embed.W_E": ["float32"]}))
    with pytest.raises(
        store.StoreError, match=r"'embed.W_E': expected \[dtype, shape\]"
    ):
        load_model(path)


BAD_ENTRIES = {
    "missing dtype": (lambda e: e.pop("dtype"), "missing dtype"),
    "missing shape": (lambda e: e.pop("shape"), "missing shape"),
    "missing checksum": (lambda e: e.pop("sha256"), "missing sha256"),
    "unknown dtype": (lambda e: e.update(dtype="float13"), "unknown dtype 'float13'"),
    "object dtype": (lambda e: e.update(dtype="object"), "'object' is not a floating"),
    "integer dtype": (lambda e: e.update(dtype="int32"), "'int32' is not a floating"),
    "dtype not a string": (lambda e: e.update(dtype=4), "unknown dtype 4"),
    "negative shape": (lambda e: e.update(shape=[-97, 64]), "non-negative integers"),
    "float shape": (lambda e: e.update(shape=[97.0, 64]), "non-negative integers"),
    "bool in shape": (lambda e: e.update(shape=[True, 64]), "non-negative integers"),
    "shape not a list": (lambda e: e.update(shape="97x64"), "non-negative integers"),
    "bad checksum": (lambda e: e.update(sha256="abc"), "64 lowercase hex"),
    "extra field": (lambda e: e.update(crc=1), "unexpected fields"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_leaf_entry_names_the_store_and_the_entry(saved, case):
    edit, why = BAD_ENTRIES[case]
    _edit_header(saved, lambda h: edit(h["leaves"]["embed.W_E"]))
    with pytest.raises(store.StoreError) as info:
        load_model(saved)
    message = str(info.value)
    assert message.startswith(str(saved / STORE_FILE)), message
    assert "bad entry for leaf 'embed.W_E'" in message and why in message, message


@pytest.mark.parametrize("entry", ["float32", None, [1, 2], 7])
def test_leaf_entry_of_the_wrong_type(saved, entry):
    _edit_header(saved, lambda h: h["leaves"].update({"ln_final.w": entry}))
    with pytest.raises(store.StoreError, match="bad entry for leaf 'ln_final.w'"):
        load_model(saved)


def test_leaves_that_do_not_match_the_skeleton(saved):
    header = json.loads((saved / STORE_FILE).read_text())
    extra = dict(header["leaves"]["ln_final.w"])
    _edit_header(saved, lambda h: h["leaves"].update({"blocks.attn.W_X": extra}))
    with pytest.raises(store.StoreError, match=r"unexpected \['blocks.attn.W_X'\]"):
        load_model(saved)


@pytest.mark.parametrize("version", ["2", True, None, 2.0])
def test_version_of_the_wrong_type(saved, version):
    _edit_header(saved, lambda h: h.update(version=version))
    with pytest.raises(store.StoreError, match="store version"):
        load_model(saved)


# --- overwrite replaces the whole directory ----------------------------------------------


def test_overwrite_replaces_other_contents(tmp_path):
    """Overwriting an HF directory (or anything) leaves only the store's own files."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"old")
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    with pytest.raises(FileExistsError):
        save_model(model, d)
    save_model(model, d, overwrite=True)
    assert sorted(os.listdir(d)) == [STORE_FILE, "params"]
    assert_bit_identical(model, load_model(d))
    assert os.listdir(tmp_path) == ["m"]


def test_an_empty_directory_is_free(tmp_path):
    (tmp_path / "m").mkdir()
    model = randomized(tiny_config(), next(SEEDS), jnp.float32)
    save_model(model, tmp_path / "m")
    assert_bit_identical(model, load_model(tmp_path / "m"))


def test_atomic_directory_publishes_only_complete_contents(tmp_path):
    target = tmp_path / "out"
    with store.atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert os.listdir(target) == ["a"]
    with pytest.raises(RuntimeError, match="failed"):
        with store.atomic_directory(target, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("failed half way")
    assert os.listdir(target) == ["a"]  # untouched, no mix
    with store.atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert os.listdir(target) == ["b"]  # replaced, not merged
    assert os.listdir(tmp_path) == ["out"]
    mode = (tmp_path / "out").stat().st_mode & 0o777
    (tmp_path / "plain").mkdir()
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777  # not mkdtemp's 0700

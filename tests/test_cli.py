"""The `jaxinterp` command and `converters.load`, on tiny random models written to disk.

Every command runs in-process through `jaxinterp_cli.main` (with `--no-compile-cache`, so the
tests never turn on JAX's persistent cache for the whole session). User mistakes must exit
with status 2 and exactly one line on stderr; bugs must keep their traceback.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models

import experiments.arith_model  # noqa: F401  (registers arith-neox)
from converters import (
    ConversionError,
    from_hf_dict,
    from_pretrained,
    registry,
    save_pretrained,
    to_hf_dict,
)
from converters import loading as load_module
from converters._common import write_safetensors
from converters.gguf import read_gguf
from converters.loading import load, load_tokenizer, tokenizer_files
from converters.tokenizer import TextTokenizer
from jaxinterp import init_transformer, run, store
from jaxinterp.generate import greedy
from jaxinterp_cli import commands
from jaxinterp_cli import main as cli

from .helpers import tiny_config
from .test_gguf import write_tiny_gguf
from .test_tokenizer import write_tokenizer_gguf

# A character-level vocabulary: two special tokens, newline and printable ASCII.
VOCAB = ["<s>", "</s>", "\n"] + [chr(c) for c in range(32, 127)]
CFG = tiny_config(d_vocab=len(VOCAB))


def assert_bit_identical(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(
            np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8)
        )


def char_tokenizer() -> Tokenizer:
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(VOCAB)}, merges=[]))
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True) for t in VOCAB[:2]])
    return tk


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama checkpoint with a tokenizer, as an HF directory."""
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model = init_transformer(CFG, jax.random.key(0))
    save_pretrained(model, d, architecture="LlamaForCausalLM")
    char_tokenizer().save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False})
    )
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private $JAXINTERP_CACHE per test."""
    path = tmp_path / "cache"
    monkeypatch.setenv(registry.CACHE_ENV, str(path))
    return path


def cli_run(capsys, *argv):
    code = cli.main(["--no-compile-cache", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, match: str, *argv) -> str:
    code, out, err = cli_run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("jaxinterp: error: "), err
    assert "Traceback" not in err
    assert match in err, err
    return err


# --- converters.load ---------------------------------------------------------------------


def test_load_hf_directory(model_dir):
    assert_bit_identical(load(model_dir), from_pretrained(model_dir))
    assert {x.dtype for x in jax.tree.leaves(load(model_dir, dtype="bfloat16"))} == {
        jnp.dtype(jnp.bfloat16)
    }


def test_load_gguf_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "llama")
    model = load(path)
    config, tensors = read_gguf(path)
    assert_bit_identical(model, from_hf_dict(config, tensors))
    assert model.embed.W_E.dtype == jnp.float32
    assert load(str(path), dtype=jnp.bfloat16).embed.W_E.dtype == jnp.bfloat16


def test_load_store(model_dir, tmp_path):
    model = load(model_dir)
    store.save_model(model, tmp_path / "s")
    assert_bit_identical(load(tmp_path / "s"), model)
    assert load(tmp_path / "s", dtype="bfloat16").embed.W_E.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "s")


def test_load_rejects_unknown_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gpt5'"):
        load("gpt5")
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError):
        load(f"{tmp_path}/nothing/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load(tmp_path / "empty")


def test_cache_skips_conversion_the_second_time(model_dir, cache, monkeypatch):
    assert str(cache) == os.environ[registry.CACHE_ENV]
    first = load(model_dir, cache=True)
    entries = os.listdir(cache / "models")
    assert len(entries) == 1 and entries[0].startswith("tiny-llama-auto-")
    assert store.read_metadata(cache / "models" / entries[0])["architecture"] == (
        "LlamaForCausalLM"
    )

    def no_conversion(*args):
        raise AssertionError("converted although the cache holds this model")

    with monkeypatch.context() as m:
        m.setattr(load_module, "_convert", no_conversion)
        assert_bit_identical(load(model_dir, cache=True), first)
    # A dtype is part of the key.
    load(model_dir, cache=True, dtype="bfloat16")
    assert len(os.listdir(cache / "models")) == 2


def test_cache_key_follows_the_source(tmp_path, cache):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "llama", seed=0)
    a = load(path, cache=True)
    write_tiny_gguf(path, "llama", seed=1)  # same name, new content
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = load(path, cache=True)
    assert not np.array_equal(np.asarray(a.embed.W_E), np.asarray(b.embed.W_E))
    assert_bit_identical(b, load(path))
    names = sorted(os.listdir(cache / "models"))
    assert len(names) == 2 and all(n.startswith("tiny-float32-") for n in names)


def test_damaged_cache_entry_is_rebuilt(model_dir, cache):
    model = load(model_dir, cache=True)
    (entry,) = (cache / "models").iterdir()
    (entry / store.STORE_FILE).write_text("garbage")
    with pytest.warns(RuntimeWarning, match="damaged model cache entry"):
        assert_bit_identical(load(model_dir, cache=True), model)
    assert_bit_identical(store.load_model(entry), model)


def test_tokenizer_cache(tmp_path, cache):
    path = tmp_path / "tok.gguf"
    write_tokenizer_gguf(path)
    direct = load_tokenizer(path)
    cached = load_tokenizer(path, cache=True)
    (entry,) = (cache / "tokenizers").iterdir()
    again = load_tokenizer(path, cache=True)  # now read from the cache entry
    text = "226-68=<|im_start|> hi"
    for tok in (cached, again):
        assert tok.encode(text) == direct.encode(text)
        assert (tok.bos_id, tok.eos_id, tok.add_bos) == (
            direct.bos_id,
            direct.eos_id,
            direct.add_bos,
        )
    assert (entry / "tokenizer.json").is_file()


def test_tokenizer_files_round_trip(model_dir, tmp_path):
    tok = load_tokenizer(model_dir)
    for name, data in tokenizer_files(tok).items():
        (tmp_path / name).write_bytes(data)
    again = TextTokenizer.from_hf(tmp_path)
    assert again.encode("Hi there\n") == tok.encode("Hi there\n")
    assert (again.bos_id, again.eos_id, again.add_bos) == (0, 1, False)


# --- the command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [[], ["models"], ["info"], ["generate"], ["convert"], ["taps"], ["demo"]]
)
def test_help(capsys, argv):
    code, out, _ = cli_run(capsys, *argv, "--help")
    assert code == 0
    assert out.startswith("usage: jaxinterp")


def test_no_command_is_a_usage_error(capsys):
    code, _, err = cli_run(capsys)
    assert code == 2 and "usage:" in err


def test_models(capsys):
    code, out, _ = cli_run(capsys, "models")
    assert code == 0
    for entry in registry.list_models():
        assert entry.name in out
        assert entry.install in out
    assert "Apache-2.0" in out
    installed = registry.is_installed("smollm2-135m")
    row = next(line for line in out.splitlines() if line.startswith("smollm2-135m"))
    assert row.split()[1] == ("yes" if installed else "no")
    assert "94 MiB" in row


def test_info(capsys, model_dir):
    code, out, _ = cli_run(capsys, "info", model_dir)
    assert code == 0
    assert f"source:      hf {model_dir}" in out
    n = sum(x.size for x in jax.tree.leaves(load(model_dir)))
    assert f"{n:,} stored" in out
    assert "float32" in out
    assert "d_model            64" in out


def test_generate(capsys, model_dir):
    code, out, _ = cli_run(
        capsys, "generate", model_dir, "Hello", "--max-new-tokens", 6
    )
    assert code == 0
    tok = load_tokenizer(model_dir)
    ids = np.asarray(tok.encode("Hello"), np.int32)
    new = greedy(load(model_dir), ids, 6, stop_ids=(tok.eos_id,))
    assert out == tok.decode(new.tolist()) + "\n"


def test_taps(capsys, model_dir):
    names = [
        "blocks.1.mlp.hook_post",
        "blocks.0.attn.hook_pattern",
        "ln_final.hook_scale",
    ]
    argv = ["taps", model_dir, "Hi!"] + [a for n in names for a in ("--tap", n)]
    code, out, _ = cli_run(capsys, *argv)
    assert code == 0
    ids = np.asarray(load_tokenizer(model_dir).encode("Hi!"), np.int32)
    _, cache = run(load(model_dir), ids, capture=names)
    post = np.asarray(cache["blocks.1.mlp.hook_post"], np.float64)
    assert "blocks.1.mlp.hook_post  [pos d_mlp] (3, 96) float32" in out
    assert f"mean {post.mean():.4g}  std {post.std():.4g}" in out
    top = int(np.argmax(post[-1]))
    assert f"top 5 at pos 2: [d_mlp={top}] {post[-1, top]:.4g}" in out
    assert "[head_index query_pos key_pos] (4, 3, 3)" in out
    assert "top 5 at query_pos 2: [head_index=" in out
    assert "ln_final.hook_scale  [pos 1] (3, 1)" in out
    assert "value at pos 2:" in out


def test_taps_list(capsys, model_dir):
    code, out, _ = cli_run(capsys, "taps", model_dir, "--list")
    assert code == 0
    assert "hook_embed" in out and "attn.hook_rot_q" in out and "L = 0..1" in out


def test_convert_to_orbax_and_back_to_hf(capsys, model_dir, tmp_path):
    original = from_pretrained(model_dir)
    code, out, _ = cli_run(
        capsys, "convert", model_dir, tmp_path / "s", "--format", "orbax"
    )
    assert code == 0 and out.startswith("wrote orbax")
    assert_bit_identical(store.load_model(tmp_path / "s"), original)
    assert load_tokenizer(tmp_path / "s").encode("ab c") == load_tokenizer(
        model_dir
    ).encode("ab c")
    # Store -> HF directory; the architecture comes from the store's metadata.
    code, out, _ = cli_run(capsys, "convert", tmp_path / "s", tmp_path / "hf")
    assert code == 0 and "LlamaForCausalLM" in out
    assert_bit_identical(from_pretrained(tmp_path / "hf"), original)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    # And once more with a dtype, over an existing directory.
    code, _, _ = cli_run(
        capsys, "convert", model_dir, tmp_path / "s", "--format", "orbax", "--dtype",
        "bfloat16", "--force",
    )  # fmt: skip
    assert code == 0
    assert store.load_model(tmp_path / "s").embed.W_E.dtype == jnp.bfloat16


def test_convert_gguf_to_hf_matches_the_gguf(capsys, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "qwen2", tied=False)
    code, _, _ = cli_run(capsys, "convert", path, tmp_path / "hf")
    assert code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())[
        "architectures"
    ] == ["Qwen2ForCausalLM"]
    assert_bit_identical(from_pretrained(tmp_path / "hf"), load(path))


def test_demo_runs_on_a_tiny_model(capsys, model_dir):
    code, out, _ = cli_run(capsys, "demo", model_dir, "--max-new-tokens", 3)
    assert code == 0
    for heading in ("next-token predictions", "greedy continuation", "logit lens"):
        assert heading in out
    assert "blocks.0.attn.hook_pattern   (3, 4," in out
    assert "total" in out


# --- errors ------------------------------------------------------------------------------


def test_unknown_model(capsys):
    err = assert_user_error(capsys, "unknown model 'nosuch'", "info", "nosuch")
    assert "smollm2-135m" in err


def test_model_not_installed(capsys, monkeypatch):
    entry = registry.MODELS["qwen2.5-coder-0.5b"]
    source = registry.PackageFile("no_such_package_xyz", "m.gguf", "0" * 64, 1)
    monkeypatch.setitem(
        registry.MODELS, entry.name, dataclasses.replace(entry, source=source)
    )
    err = assert_user_error(capsys, "is not installed", "generate", entry.name, "hi")
    assert entry.install in err


def test_unknown_tap(capsys, model_dir):
    assert_user_error(
        capsys, "did you mean 'blocks.1.mlp.hook_post'", "taps", model_dir, "x",
        "--tap", "blocks.1.mlp.hook_pots",
    )  # fmt: skip
    assert_user_error(
        capsys,
        "out of range",
        "taps",
        model_dir,
        "x",
        "--tap",
        "blocks.7.hook_resid_post",
    )
    assert_user_error(capsys, "--tap", "taps", model_dir, "x")


def test_bad_paths(capsys, tmp_path):
    assert_user_error(capsys, "no such file", "info", tmp_path / "missing.gguf")
    (tmp_path / "empty").mkdir()
    assert_user_error(capsys, "config.json", "info", tmp_path / "empty")


def test_conversion_error(capsys, tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    write_safetensors(d / "model.safetensors", {"w": np.zeros(2, np.float32)})
    assert_user_error(capsys, "unsupported architecture 'BertModel'", "info", d)
    assert issubclass(ConversionError, ValueError)


def test_existing_destination(capsys, model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    assert_user_error(capsys, "already exists", "convert", model_dir, tmp_path / "out")


def test_corrupt_store(capsys, model_dir, tmp_path):
    store.save_model(load(model_dir), tmp_path / "s")
    (tmp_path / "s" / store.STORE_FILE).write_text("{")
    assert_user_error(capsys, "corrupt store header", "info", tmp_path / "s")


def test_empty_prompt(capsys, model_dir):
    assert_user_error(capsys, "empty", "generate", model_dir, "")


def test_bad_number_is_a_usage_error(capsys, model_dir):
    code, _, err = cli_run(capsys, "generate", model_dir, "x", "--max-new-tokens", 0)
    assert code == 2 and "at least 1" in err


def test_bugs_keep_their_traceback(monkeypatch):
    def broken(*, long):
        raise KeyError("a bug")

    monkeypatch.setattr(commands, "models", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["--no-compile-cache", "models"])


def test_debug_shows_user_errors_as_tracebacks():
    with pytest.raises(ValueError, match="unknown model"):
        cli.main(["--no-compile-cache", "--debug", "info", "nosuch"])
    with pytest.raises(ValueError, match="unknown model"):
        cli.main(["info", "nosuch", "--debug", "--no-compile-cache"])


# --- the compile cache -------------------------------------------------------------------


def test_compile_cache_is_on_by_default(capsys, cache, monkeypatch):
    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: updates.__setitem__(k, v))
    assert cli.main(["models"]) == 0
    assert updates["jax_compilation_cache_dir"] == str(cache / "xla")
    assert updates["jax_persistent_cache_min_compile_time_secs"] == 0
    updates.clear()
    assert cli.main(["models", "--no-compile-cache"]) == 0
    assert cli.main(["--no-compile-cache", "models"]) == 0
    assert updates == {}
    capsys.readouterr()


def test_the_parser_module_only_parses_and_dispatches():
    """`--help` imports neither jax nor the library; every command is a function."""
    code = (
        "import sys; from jaxinterp_cli.main import main; main(['demo', '--help']); "
        "assert not {'jax', 'converters', 'jaxinterp'} & set(sys.modules), sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: jaxinterp demo")
    parsers = cli.build_parser()._subparsers._group_actions[0].choices
    for name, parser in parsers.items():
        if name != "demo":  # lens, induction, ioi, probing share `commands.circuit`
            assert callable(getattr(commands, parser.get_default("command")))


# --- bad input never yields a wrong answer -----------------------------------------------


def other_model():
    """A tiny Llama of the same shapes as `model_dir`'s, with different weights."""
    return init_transformer(CFG, jax.random.key(1))


def swap_params(store_dir) -> None:
    """Swaps in the params of a same-shaped store: orbax restores it without complaint."""
    donor = store_dir.parent / (store_dir.name + "-donor")
    store.save_model(other_model(), donor)
    shutil.rmtree(store_dir / "params")
    shutil.copytree(donor / "params", store_dir / "params")
    shutil.rmtree(donor)


def test_damaged_cache_data_is_reconverted(model_dir, cache):
    model = load(model_dir, cache=True)
    (entry,) = (cache / "models").iterdir()
    swap_params(entry)
    with pytest.warns(RuntimeWarning, match="damaged model cache entry.*checksum"):
        assert_bit_identical(load(model_dir, cache=True), model)
    assert_bit_identical(store.load_model(entry), model)  # rewritten, verified again


def test_damaged_store_is_a_user_error(capsys, model_dir, tmp_path):
    store.save_model(load(model_dir), tmp_path / "s")
    swap_params(tmp_path / "s")
    err = assert_user_error(
        capsys, "does not match its checksum", "info", tmp_path / "s"
    )
    assert str(tmp_path / "s") in err and "leaf " in err
    header = json.loads((tmp_path / "s" / store.STORE_FILE).read_text())
    del header["leaves"]["embed.W_E"]["shape"]
    (tmp_path / "s" / store.STORE_FILE).write_text(json.dumps(header))
    assert_user_error(capsys, "bad entry for leaf 'embed.W_E'", "info", tmp_path / "s")


def test_hf_export_with_force_replaces_a_store(capsys, model_dir, tmp_path):
    """Before: config.json and model.safetensors were added next to the old store's files,
    and loading the path still returned the old model."""
    dst = tmp_path / "dst"
    store.save_model(other_model(), dst)
    code, _, err = cli_run(capsys, "convert", model_dir, dst, "--force")
    assert code == 0, err
    assert not store.is_store(dst)
    assert sorted(os.listdir(dst)) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert_bit_identical(load(dst), from_pretrained(model_dir))
    assert os.listdir(tmp_path) == ["dst"]  # no temporary or old directories


def test_store_with_force_replaces_an_hf_directory(capsys, model_dir, tmp_path):
    dst = tmp_path / "dst"
    save_pretrained(other_model(), dst, architecture="LlamaForCausalLM")
    (dst / "pytorch_model.bin").write_bytes(b"stale")
    (dst / "tokenizer.json").write_text("stale")
    code, _, err = cli_run(
        capsys, "convert", model_dir, dst, "--format", "orbax", "--force"
    )
    assert code == 0, err
    assert sorted(os.listdir(dst)) == [
        "jaxinterp_model.json", "params", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert_bit_identical(load(dst), from_pretrained(model_dir))
    assert load_tokenizer(dst).encode("ab c") == load_tokenizer(model_dir).encode(
        "ab c"
    )


def test_hf_export_with_force_drops_stale_files(capsys, model_dir, tmp_path):
    """An export of a source without a tokenizer over an HF directory with one: the old
    tokenizer (and old shards) must not survive next to the new weights."""
    src = tmp_path / "src"
    store.save_model(other_model(), src, metadata={"architecture": "LlamaForCausalLM"})
    dst = tmp_path / "dst"
    code, _, _ = cli_run(capsys, "convert", model_dir, dst)
    assert code == 0
    (dst / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    code, _, err = cli_run(capsys, "convert", src, dst, "--force")
    assert code == 0, err
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]
    assert_bit_identical(load(dst), other_model())


def test_killed_export_leaves_the_old_directory(model_dir, tmp_path, monkeypatch):
    dst = tmp_path / "dst"
    store.save_model(other_model(), dst)

    def killed(tmp, path, overwrite):
        assert sorted(os.listdir(tmp)) == ["config.json", "model.safetensors"]
        raise SystemExit(137)

    with monkeypatch.context() as m:
        m.setattr(store, "_commit", killed)
        m.setattr(store.shutil, "rmtree", lambda *a, **k: None)  # killed: no cleanup
        with pytest.raises(SystemExit):
            save_pretrained(
                load(model_dir), dst, architecture="LlamaForCausalLM", overwrite=True
            )
    assert sorted(os.listdir(dst)) == [store.STORE_FILE, "params"]  # no mix
    assert_bit_identical(load(dst), other_model())
    hidden = [n for n in os.listdir(tmp_path) if n != "dst"]
    assert len(hidden) == 1 and hidden[0].startswith(".dst.tmp-")


def test_export_needs_overwrite_for_a_nonempty_directory(model_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pretrained(load(model_dir), tmp_path, architecture="LlamaForCausalLM")
    assert os.listdir(tmp_path) == ["keep.txt"]
    with pytest.raises(ValueError, match="extra file name"):
        save_pretrained(
            load(model_dir),
            tmp_path / "x",
            architecture="LlamaForCausalLM",
            extra_files={"../evil": b""},
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "arch, match",
    [
        ("GPT2LMHeadModel", "cannot export as GPT2LMHeadModel"),
        ("GPTNeoXForCausalLM", "GPT-NeoX export needs"),
        ("GPTJForCausalLM", "GPT-J export needs"),
        ("BertModel", "unsupported architecture 'BertModel'"),
    ],
)
def test_export_to_an_impossible_architecture(capsys, model_dir, tmp_path, arch, match):
    """Before: a Llama model exported as GPT2LMHeadModel died with a KeyError traceback."""
    dst = tmp_path / "dst"
    err = assert_user_error(
        capsys, match, "convert", model_dir, dst, "--architecture", arch
    )
    if arch == "GPT2LMHeadModel":
        for field in ("norm='rms'", "positional='rotary'", "gated_mlp=True"):
            assert field in err, err
    assert not dst.exists()
    assert_user_error(
        capsys, match, "convert", model_dir, dst, "--format", "orbax",
        "--architecture", arch,
    )  # fmt: skip
    assert not dst.exists()


def test_export_cannot_change_the_config():
    """Every field of the config must survive the export: a GQA model cannot be GPT-2."""
    gpt2ish = tiny_config(
        positional="learned", norm="ln", act_fn="gelu_new", gated_mlp=False
    )  # n_kv_heads=2 < n_heads: GPT-2 has no GQA
    model = init_transformer(gpt2ish, jax.random.key(0))
    with pytest.raises(ConversionError, match="n_kv_heads=2 .would read back as 4."):
        to_hf_dict(model, "GPT2LMHeadModel")


def test_non_float_dtypes_are_refused(capsys, model_dir, tmp_path):
    for dtype in ("int8", "int32", "bool", "nonsense"):
        with pytest.raises(ValueError, match="dtype"):
            load(model_dir, dtype=dtype)
    with pytest.raises(ConversionError, match="not a floating dtype"):
        to_hf_dict(load(model_dir), "LlamaForCausalLM", dtype="int16")
    code, _, err = cli_run(capsys, "info", model_dir, "--dtype", "int8")
    assert code == 2 and "invalid choice: 'int8'" in err and "Traceback" not in err
    code, _, err = cli_run(
        capsys, "convert", model_dir, tmp_path / "o", "--dtype", "int8"
    )
    assert code == 2 and "invalid choice" in err
    assert not (tmp_path / "o").exists()


def _torch_bin_dir(model_dir, tmp_path, state):
    torch = pytest.importorskip("torch")
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    if isinstance(state, bytes):
        (d / "pytorch_model.bin").write_bytes(state)
    else:
        torch.save(state, d / "pytorch_model.bin")
    return d


class NotATensor:
    """Pickled by reference, so `weights_only` loading must refuse it."""


@pytest.mark.parametrize(
    "kind", ["unsafe global", "garbage bytes", "not a dict", "non-tensor entry"]
)
def test_unreadable_pytorch_bin_is_a_user_error(capsys, model_dir, tmp_path, kind):
    """Before: the unpickler's exceptions (not ValueErrors) ended in tracebacks."""
    torch = pytest.importorskip("torch")
    state = {
        "unsafe global": {"model.embed_tokens.weight": NotATensor()},
        "garbage bytes": b"PK\x03\x04 this is not a zip archive",
        "not a dict": [torch.zeros(2)],
        "non-tensor entry": {"model.embed_tokens.weight": 3},
    }[kind]
    d = _torch_bin_dir(model_dir, tmp_path, state)
    err = assert_user_error(capsys, "pytorch_model.bin", "info", d)
    assert str(d) in err


def test_config_json_that_is_not_an_object(capsys, model_dir, tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "model.safetensors").write_bytes(
        (model_dir / "model.safetensors").read_bytes()
    )
    (d / "config.json").write_text("[1, 2]")
    assert_user_error(capsys, "config.json", "convert", d, tmp_path / "o")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = "LlamaForCausalLM"  # a string, not a list
    (d / "config.json").write_text(json.dumps(config))
    assert_user_error(capsys, "must be a list", "convert", d, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_store_metadata_with_a_bad_architecture(capsys, model_dir, tmp_path):
    store.save_model(load(model_dir), tmp_path / "s", metadata={"architecture": 7})
    assert_user_error(
        capsys, "corrupt store metadata", "convert", tmp_path / "s", tmp_path / "o"
    )


def test_os_errors_are_user_errors(capsys, model_dir, tmp_path):
    """Before: only four OSError subclasses were; a name too long for the file system
    (ENAMETOOLONG) ended in a traceback."""
    assert_user_error(
        capsys, "File name too long", "convert", model_dir, tmp_path / ("x" * 300)
    )
    (tmp_path / "file").write_text("x")
    assert_user_error(capsys, "file", "convert", model_dir, tmp_path / "file" / "out")


@pytest.mark.parametrize(
    "error, user",
    [
        (ValueError("x"), True),
        (ConversionError("x"), True),
        (store.StoreError("x"), True),
        (json.JSONDecodeError("x", "", 0), True),
        (PermissionError(13, "denied"), True),
        (OSError(28, "No space left on device"), True),
        (registry.ModelNotInstalled("x"), True),
        (commands.UserError("x"), True),
        (KeyError("x"), False),
        (TypeError("x"), False),
        (AttributeError("x"), False),
        (RuntimeError("x"), False),
    ],
)
def test_which_errors_are_user_mistakes(error, user):
    assert cli._is_user_error(error) is user

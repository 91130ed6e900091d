"""Text tokenizers for the models we load, built with the `tokenizers` library only.

A GGUF file carries its whole byte-level BPE tokenizer in metadata (`tokenizer.ggml.*`);
`tokenizer_from_gguf` rebuilds it as a `tokenizers.Tokenizer`. An HF directory carries a
`tokenizer.json`, which `load_tokenizer` reads. `TextTokenizer` wraps either with an explicit
BOS/EOS policy, so that prompt construction never depends on hidden post-processors.

Pre-tokenizer (`tokenizer.ggml.pre`), which decides how digits are split:

* `smollm` (SmolLM2): split every digit on its own, then GPT-2's byte-level regex.
* `qwen2` (Qwen2.5): NFC, then Qwen's regex, in which `\\p{N}` takes one digit at a time.

Both split digits into one token each ("226-68=" -> `2 2 6 - 6 8 =`). Anything else raises:
guessing wrong would silently change how numbers are tokenized.

BOS / EOS policy:

* `TextTokenizer.encode` never adds special tokens implicitly: it prepends `bos_id` only when
  `add_bos` (or `prepend_bos=True`) says so, and never appends EOS. Special-token *text* in
  the input (e.g. `"<|im_start|>"`) is still matched as that single token.
* Neither GGUF model adds BOS (`tokenizer.ggml.add_bos_token = False`), so `add_bos` is False.
* SmolLM2-135M-Instruct: `<|endoftext|>` = 0 (document separator in pretraining),
  `<|im_start|>` = 1, `<|im_end|>` = 2. The file declares bos 1 and eos 2 (chat turns), and
  `TextTokenizer.from_gguf` reports exactly that. For a document-start token on a raw
  prompt use `dataclasses.replace(tok, bos_id=0)`.
* Qwen2.5-Coder-0.5B-Instruct: bos (and pad) `<|endoftext|>` = 151643, eos `<|im_end|>` =
  151645.
"""

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
)

from converters._common import read_json_object
from converters.gguf import gguf_array, gguf_metadata

# Qwen2's pre-tokenizer regex (from its tokenizer.json): like GPT-4's, but one digit per match.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE_TOKENIZERS = ("qwen2", "smollm")

# llama.cpp token types (gguf.TokenType): 3 = control (special), 4 = user-defined.
_CONTROL, _USER_DEFINED = 3, 4


def _set_pre_tokenizer(tokenizer: Tokenizer, pre: str, path: Path) -> None:
    if pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(
            f"{path}: GGUF pre-tokenizer {pre!r} is not supported; supported: "
            f"{list(SUPPORTED_PRE_TOKENIZERS)}"
        )


def tokenizer_from_gguf(path: str | os.PathLike[str]) -> Tokenizer:
    """Rebuild the byte-level BPE tokenizer stored in a GGUF file's metadata.

    Arguments:
        path: the `.gguf` file (`tokenizer.ggml.model` must be `gpt2`, i.e. byte-level BPE).

    Returns:
        A `tokenizers.Tokenizer` with the file's vocabulary and merges, the pre-tokenizer
        named by `tokenizer.ggml.pre`, control tokens added as special tokens, user-defined
        tokens added as plain added tokens, and a ByteLevel decoder. No post-processor: it
        adds no BOS/EOS (see `TextTokenizer`).

    Raises:
        ValueError: another tokenizer model or pre-tokenizer, or an unreadable file.
    """
    path = Path(path)
    meta = gguf_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise ValueError(f"{path}: the GGUF file has no tokenizer metadata")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: GGUF tokenizer model {kind!r} is not supported; only byte-level "
            "BPE ('gpt2') is"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    try:
        tokens: list[str] = gguf_array(path, "tokenizer.ggml.tokens")
        merges = [
            tuple(m.split(" ", 1)) for m in gguf_array(path, "tokenizer.ggml.merges")
        ]
    except KeyError as e:
        raise ValueError(f"{path}: incomplete tokenizer metadata ({e})") from e
    try:
        token_types = gguf_array(path, "tokenizer.ggml.token_type")
    except KeyError:
        token_types = [1] * len(tokens)

    # A duplicated string maps to its last id, as in llama.cpp's token_to_id.
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    _set_pre_tokenizer(tokenizer, pre, path)
    tokenizer.decoder = decoders.ByteLevel()
    # Added tokens match whole in raw text; they already are in the vocabulary, so their ids
    # do not change and the vocabulary does not grow.
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, token_types, strict=True)
            if kind == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, token_types, strict=True)
            if kind == _USER_DEFINED
        ]
    )
    return tokenizer


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """Load the `tokenizer.json` of an HF model directory.

    Arguments:
        directory: a local HF model directory.

    Returns:
        The `tokenizers.Tokenizer` as saved, post-processor included (`TextTokenizer`
        bypasses it).

    Raises:
        FileNotFoundError: the directory has no `tokenizer.json`. ValueError: it is not a
            valid one (truncated, not JSON, not a tokenizer); the message names the file.
    """
    file = Path(directory) / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{directory}: no tokenizer.json")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # `tokenizers` raises a bare Exception for a bad file
        raise ValueError(f"{file}: not a valid tokenizer.json ({e})") from None


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    """A `tokenizers.Tokenizer` plus an explicit BOS/EOS policy.

    Attributes:
        tokenizer: the underlying tokenizer; its post-processor is never applied.
        bos_id: id prepended when BOS is requested, or None if the model has none.
        eos_id: the model's end-of-sequence id (for stopping generation), or None.
        add_bos: whether `encode` prepends `bos_id` by default.
    """

    tokenizer: Tokenizer
    bos_id: int | None
    eos_id: int | None
    add_bos: bool = False

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows (added tokens included)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, prepend_bos: bool | None = None) -> list[int]:
        """Token ids of `text`.

        Arguments:
            text: the string; special-token text in it becomes that special token.
            prepend_bos: prepend `bos_id`; None means `self.add_bos`.

        Returns:
            The ids, with no EOS appended.
        """
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.add_bos if prepend_bos is None else prepend_bos:
            if self.bos_id is None:
                raise ValueError("BOS requested, but this tokenizer has no bos_id")
            ids = [self.bos_id, *ids]
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        prepend_bos: bool | None = None,
        padding_side: str = "right",
        pad_id: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of several texts padded to one length, and the attention mask.

        Arguments:
            texts: the strings (at least one; each must encode to at least one token).
            prepend_bos: as in `encode`.
            padding_side: `"right"` (tokens first) or `"left"` (padding first).
            pad_id: id written at padded positions (never read by the model: the mask
                hides it); default `eos_id`, else 0.

        Returns:
            `(tokens, attention_mask)`, both int32 `[text, pos]`; the mask is 1 for real
            tokens and 0 for padding (what `jaxinterp.run` and every kernel take).
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("encode_batch takes a non-empty list of strings")
        if padding_side not in ("left", "right"):
            raise ValueError(
                f"padding_side must be 'left' or 'right': {padding_side!r}"
            )
        encoded = [self.encode(t, prepend_bos=prepend_bos) for t in texts]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"texts {empty} encode to no token at all")
        pad = (self.eos_id or 0) if pad_id is None else pad_id
        if not 0 <= pad < self.vocab_size:
            raise ValueError(f"pad_id {pad} is out of vocabulary ({self.vocab_size})")
        n_pos = max(map(len, encoded))
        tokens = np.full((len(texts), n_pos), pad, np.int32)
        mask = np.zeros((len(texts), n_pos), np.int32)
        for i, ids in enumerate(encoded):
            at = (
                slice(0, len(ids))
                if padding_side == "right"
                else slice(n_pos - len(ids), n_pos)
            )
            tokens[i, at], mask[i, at] = ids, 1
        return tokens, mask

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of `ids`, special tokens included verbatim.

        Arguments:
            ids: token ids (ints, or any integer array).

        Returns:
            The decoded string.

        Raises:
            ValueError: an id is negative or not below `vocab_size`.
        """
        ids = [int(i) for i in ids]
        bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
        if bad:
            raise ValueError(
                f"token ids out of vocabulary (size {self.vocab_size}): {bad[:10]}"
            )
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> "TextTokenizer":
        """Tokenizer and BOS/EOS ids/policy from a GGUF file's metadata.

        `add_bos` is `tokenizer.ggml.add_bos_token`, False when absent (as for both models).
        """
        meta = gguf_metadata(path)
        return cls(
            tokenizer_from_gguf(path),
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        )

    @classmethod
    def from_hf(cls, directory: str | os.PathLike[str]) -> "TextTokenizer":
        """Tokenizer and BOS/EOS ids/policy from an HF model directory.

        Ids come from `tokenizer_config.json` (`bos_token` / `eos_token`), else from
        `config.json` (`bos_token_id` / `eos_token_id`). `add_bos` is `add_bos_token` from
        `tokenizer_config.json` when present, else whether `tokenizer.json`'s post-processor
        prepends BOS (as Llama-3's does).
        """
        directory = Path(directory)
        tokenizer = load_tokenizer(directory)
        tok_cfg = _read_json(directory / "tokenizer_config.json")
        cfg = _read_json(directory / "config.json")

        def token_id(name: str) -> int | None:
            token = tok_cfg.get(f"{name}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
                return tokenizer.token_to_id(token)
            value = cfg.get(f"{name}_token_id")
            return value if isinstance(value, int) else None

        bos_id, eos_id = token_id("bos"), token_id("eos")
        add_bos = tok_cfg.get("add_bos_token")
        if add_bos is None:
            first = tokenizer.encode("", add_special_tokens=True).ids[:1]
            add_bos = bos_id is not None and first == [bos_id]
        return cls(tokenizer, bos_id=bos_id, eos_id=eos_id, add_bos=bool(add_bos))

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str]) -> "TextTokenizer":
        """Tokenizer for a registry name, a `.gguf` file or an HF directory.

        See `converters.registry.resolve` for what is accepted.
        """
        from converters.registry import resolve

        kind, path = resolve(name_or_path)
        return cls.from_gguf(path) if kind == "gguf" else cls.from_hf(path)


def _read_json(file: Path) -> dict[str, Any]:
    """An optional JSON-object file (`{}` when absent); a bad one is a ValueError naming it."""
    return read_json_object(file) if file.is_file() else {}

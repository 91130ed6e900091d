"""How arithmetic prompts become tokens for one model: the pipeline's only tokenizer-aware
code.

Two kinds of model:

* `SingleTokenTask` (arith-neox): every number 0..999 is one token, so a prompt is
  `[BOS, a, op, b, =]` and the answer is the single token predicted at `=`.
* `DigitTask` (SmolLM2, Qwen2.5): numbers split into one token per digit, and an answer is
  several tokens. A run fixes the digit count of each operand (`op_digits`), so every
  prompt of the run has the same token layout
  `[few-shot prefix][a digits][middle][b digits][suffix]` and positions mean the same thing
  in every prompt (patching, mean ablation and probes index positions). Whitespace that
  the tokenizer puts before the answer's first digit (`"226 - 68 ="` is answered
  `" 158"`, with `" "` a token of its own) is moved into the prompt, so the last prompt
  position is the one that predicts the first answer digit; with `answer_digit = j`, the
  first `j` answer digits are appended as well (teacher forcing) and the analysed position
  predicts digit `j` (from the left).

Correctness is the whole answer under greedy decoding: the argmax at every position from
the first predicted answer token on must reproduce the answer's tokens (any forced
whitespace included), and the argmax after the last digit must not be another digit. That
is exactly "greedy decoding emits the answer and the number ends there", computed in one
teacher-forced forward instead of a decoding loop.
"""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.kernels.batching import stream
from jaxinterp.model import Transformer
from jaxinterp.taps import Taps

from . import arith_tokenizer as tok
from .prompts import OPERATORS, Prompt

TEMPLATES = {"compact": "{a}{op}{b}=", "spaced": "{a} {op} {b} ="}


class SingleTokenTask:
    """arith-neox: `[BOS, a, op, b, =]`, one answer token (every number 0..999 is one)."""

    max_answer = tok.MAX_NUMBER
    positions = (1, 2, 3, 4)
    position_names = ("op1", "op", "op2", "=")

    def admits(self, prompt: Prompt) -> bool:
        return True

    def tokens(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt, 5]` token ids."""
        return tok.encode_prompts(prompts)

    def answers(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt]` ids of the token the last position must predict."""
        return tok.answer_tokens(prompts)

    def operand_tokens(self, values: np.ndarray) -> np.ndarray:
        """`[value, 1]` token ids of operands."""
        return (tok.NUMBER_OFFSET + np.asarray(values))[:, None]

    def grid_template(self, op: str) -> dict[str, list[int]] | None:
        return tok.grid_template(op)

    def is_number(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= tok.NUMBER_OFFSET) & (ids <= tok.NUMBER_OFFSET + tok.MAX_NUMBER)

    def correctness(
        self, model: Transformer, prompts: list[Prompt], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(predicted token [prompt], correct [prompt])` by the argmax at `=`."""
        tokens = self.tokens(prompts)
        pred = _greedy_tokens(model, tokens, tokens.shape[1] - 1, batch_size)[:, 0]
        return pred, pred == self.answers(prompts)


@dataclasses.dataclass(frozen=True)
class DigitTask:
    """A digit-splitting tokenizer with a fixed operand layout (module docstring).

    Attributes:
        tokenizer: the model's `converters.tokenizer.TextTokenizer`.
        op_digits: digits of op1 and of op2 (every prompt of the run has exactly these).
        template: `"compact"` (`"226-68="`) or `"spaced"` (`"226 - 68 ="`).
        few_shot: text before every prompt (e.g. solved examples, one per line).
        answer_digit: the analysed position predicts this answer digit (0 = the first);
            the digits before it are teacher-forced.
        max_answer: legal prompts have answers in `[0, max_answer]`.
    """

    tokenizer: object
    op_digits: tuple[int, int]
    template: str = "spaced"
    few_shot: str = ""
    answer_digit: int = 0
    max_answer: int = 999

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {list(TEMPLATES)}")
        if len(self.op_digits) != 2 or not all(1 <= d <= 3 for d in self.op_digits):
            raise ValueError(
                f"op_digits must be two counts in 1..3, got {self.op_digits}"
            )
        if not 0 <= self.answer_digit < len(str(self.max_answer)):
            raise ValueError(
                f"answer_digit must be in [0, {len(str(self.max_answer))})"
            )
        for d in range(10):
            if len(self._encode(str(d))) != 1:
                raise ValueError("the tokenizer does not keep every digit as one token")
        self._layout  # noqa: B018  (checks the template once, at construction)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, prepend_bos=False)

    @functools.cached_property
    def _digit_ids(self) -> np.ndarray:
        return np.array([self._encode(str(d))[0] for d in range(10)], np.int32)

    @functools.cached_property
    def _layout(self) -> dict:
        """Token pieces `prefix, middle[op], suffix, forced` from a probe prompt per
        operator, each checked to tokenize piecewise exactly as the whole text does."""
        d1, d2 = self.op_digits
        a, b, answer = "8" * d1, "7" * d2, "56"
        pieces = {}
        for op in OPERATORS:
            text = TEMPLATES[self.template].format(a=a, op=op, b=b)
            whole = self._encode(
                self.few_shot + text + " " * (self.template == "spaced")
            )
            whole_answered = self._encode(
                self.few_shot + text + " " * (self.template == "spaced") + answer
            )
            prefix = self._encode(self.few_shot)
            if whole[: len(prefix)] != prefix:
                raise ValueError(f"few_shot text merges with the prompt {text!r}")
            rest = whole[len(prefix) :]
            digits = self._digit_ids
            if rest[:d1] != [digits[8]] * d1 or whole_answered[: len(whole)] != whole:
                raise ValueError(f"{text!r} does not tokenize digit by digit")
            tail = rest[d1:]
            b_at = next(i for i, t in enumerate(tail) if t == digits[7])
            middle, suffix = tail[:b_at], tail[b_at + d2 :]
            if tail[b_at : b_at + d2] != [digits[7]] * d2 or len(middle) != 1 + (
                self.template == "spaced"
            ):
                raise ValueError(f"unexpected tokens of {text!r}: {rest}")
            pieces[op] = middle
        suffix_text = "=" if self.template == "compact" else " ="
        forced = len(suffix) - len(self._encode(suffix_text))
        if {len(m) for m in pieces.values()} != {len(pieces["+"])}:
            raise ValueError("operators tokenize to different lengths")
        return dict(prefix=prefix, middle=pieces, suffix=suffix, forced=forced)

    @property
    def n_prefix(self) -> int:
        return len(self._layout["prefix"])

    @property
    def positions(self) -> tuple[int, ...]:
        """Every position of the question (after the few-shot prefix)."""
        d1, d2 = self.op_digits
        n = d1 + len(self._layout["middle"]["+"]) + d2 + len(self._layout["suffix"])
        return tuple(range(self.n_prefix, self.n_prefix + n + self.answer_digit))

    @property
    def position_names(self) -> tuple[str, ...]:
        d1, d2 = self.op_digits
        middle = [self._name(t) for t in self._layout["middle"]["+"]]
        middle[middle.index("+") if "+" in middle else 0] = "op"
        names = [f"a{i}" for i in range(d1)] + middle + [f"b{i}" for i in range(d2)]
        names += [self._name(t) for t in self._layout["suffix"]]
        return tuple(names + [f"r{i}" for i in range(self.answer_digit)])

    def _name(self, token: int) -> str:
        return self.tokenizer.decode([token]).strip() or "_"

    def admits(self, prompt: Prompt) -> bool:
        """The prompt has the run's layout and an answer in `[0, max_answer]` with a digit
        `answer_digit`."""
        result = prompt.result
        return (
            (len(str(prompt.op1)), len(str(prompt.op2))) == tuple(self.op_digits)
            and result is not None
            and 0 <= result <= self.max_answer
            and len(str(result)) > self.answer_digit
        )

    def operand_tokens(self, values: np.ndarray) -> np.ndarray:
        """`[value, digits]` token ids of operands with equally many digits."""
        values = np.asarray(values)
        text = [str(v) for v in values.tolist()]
        if len({len(t) for t in text}) > 1:
            raise ValueError("operands of one grid axis must have equally many digits")
        width = len(text[0])
        places = 10 ** np.arange(width - 1, -1, -1)
        return self._digit_ids[(values[:, None] // places) % 10]

    def tokens(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt, pos]` token ids (every prompt must be `admits`ed): the question, then
        `answer_digit` teacher-forced answer digits."""
        question = self._question(prompts)
        if not self.answer_digit:
            return question
        forced = self._answer_digits(prompts)[:, : self.answer_digit]
        return np.concatenate([question, forced], axis=1)

    def _question(self, prompts: list[Prompt]) -> np.ndarray:
        bad = [p.text for p in prompts if not self.admits(p)]
        if bad:
            raise ValueError(f"prompt {bad[0]!r} does not have the run's layout")
        lay = self._layout
        return np.concatenate(
            [
                np.broadcast_to(lay["prefix"], (len(prompts), len(lay["prefix"]))),
                self.operand_tokens([p.op1 for p in prompts]),
                np.array([lay["middle"][p.op] for p in prompts]),
                self.operand_tokens([p.op2 for p in prompts]),
                np.broadcast_to(lay["suffix"], (len(prompts), len(lay["suffix"]))),
            ],
            axis=1,
        ).astype(np.int32)

    def _answer_digits(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt, max digits]` answer digit ids, right-padded with -1."""
        width = len(str(self.max_answer))
        out = np.full((len(prompts), width), -1, np.int32)
        for i, p in enumerate(prompts):
            if p.result is None or not 0 <= p.result <= self.max_answer:
                raise ValueError(
                    f"answer of {p.text!r} is outside [0, {self.max_answer}]"
                )
            digits = [int(c) for c in str(p.result)]
            out[i, : len(digits)] = self._digit_ids[digits]
        return out

    def answers(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt]` ids of answer digit `answer_digit`, which the last position
        predicts."""
        return self._answer_digits(prompts)[:, self.answer_digit]

    def grid_template(self, op: str) -> dict[str, list[int]] | None:
        """`operand_grid`'s template; None with teacher forcing (the suffix would then
        depend on the pair)."""
        if self.answer_digit:
            return None
        lay = self._layout
        return dict(
            prefix=lay["prefix"], middle=lay["middle"][op], suffix=lay["suffix"]
        )

    def is_number(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self._digit_ids)

    def correctness(
        self, model: Transformer, prompts: list[Prompt], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(predicted token at the analysed position [prompt], whole answer correct
        [prompt])` (greedy decoding, module docstring)."""
        question = self._question(prompts)
        digits = self._answer_digits(prompts)
        forced = self._layout["forced"]
        n = len(prompts)
        # teacher-forced continuation: the remaining digits, then a pad the model never
        # reads for any position that is checked (causal attention)
        cont = np.where(digits < 0, self._digit_ids[0], digits)
        full = np.concatenate([question, cont], axis=1)
        start = question.shape[1] - 1 - forced
        pred = _greedy_tokens(model, full, start, batch_size)  # [n, forced + width + 1]
        want = np.concatenate([question[:, start + 1 :], digits], axis=1)
        length = (digits >= 0).sum(1)
        ok = np.ones(n, bool)
        for i in range(want.shape[1]):
            checked = i < forced + length
            ok &= ~checked | (pred[:, i] == want[:, i])
        ends = pred[np.arange(n), forced + length]
        ok &= ~self.is_number(ends)
        return pred[:, forced + self.answer_digit], ok


@eqx.filter_jit
def _argmax_from(model, tokens, start: int):
    def one(t):
        taps = Taps(model.cfg)
        span = model.span(t.shape[0])
        x = model.run_blocks(model.embed_tokens(t, span, taps), span, taps)
        return jnp.argmax(model.unembed_resid(x[start:], taps), -1).astype(jnp.int32)

    return jax.vmap(one)(tokens)


def _greedy_tokens(
    model: Transformer, tokens: np.ndarray, start: int, batch_size: int
) -> np.ndarray:
    """Argmax token `[prompt, pos - start]` at every position from `start` on (only those
    positions are unembedded)."""
    if start < 0:
        start += tokens.shape[1]
    out = stream(
        lambda chunk: _argmax_from(model, chunk, start),
        jnp.asarray(tokens),
        batch_size=batch_size,
        desc="answers",
        progress_bar=False,
    )
    return np.asarray(out)

"""Arithmetic prompts of the paper: enumeration, splits and samples (paper-spec §2, §4).

A prompt is `f"{op1}{op}{op2}="` with no spaces, e.g. `"226-68="`. Everything here is pure
Python and seeded with local RNGs; no function touches the global `random` or numpy state.

Where the official code (technion-cs-nlp/llm-arithmetic-heuristics) drew samples from the
global `random` module after `set_deterministic(seed)`, the functions below make the same
sequence of `random.Random` calls (shuffle / sample / choices, operators in `OPERATORS`
order) on one local `random.Random(seed)`. Given the same input lists in the same order the
draws should therefore coincide with the official ones, but exact sample parity is not
promised: any other use of the global RNG in between in the official run would break it (the
tests only replay our reading of the official call sequence on the global RNG).
"""

import dataclasses
import hashlib
import random
import re
from collections.abc import Mapping, Sequence

OPERATORS = ("+", "-", "*", "/")
"""The four operators, in the paper's order (also the order RNG streams are consumed in)."""

OPERATOR_NAMES = {
    "+": "addition",
    "-": "subtraction",
    "*": "multiplication",
    "/": "division",
}

MAX_OP = 300
"""Operands are drawn from `range(lo, MAX_OP)` (0..299; 1..299 for division)."""

LLAMA3_MAX_SINGLE_TOKEN = 999
"""Default single-token limit S: Llama-3 tokenizes every integer 0..999 as one token."""

_PROMPT_RE = re.compile(r"([0-9]+)([-+*/])([0-9]+)=")  # ASCII digits only


@dataclasses.dataclass(frozen=True, slots=True)
class Prompt:
    """One arithmetic prompt `op1 op op2 =`.

    Attributes:
        op1: first operand, a non-negative int.
        op: one of `OPERATORS`.
        op2: second operand, a non-negative int.
    """

    op1: int
    op: str
    op2: int

    def __post_init__(self):
        if self.op not in OPERATORS:
            raise ValueError(f"operator {self.op!r} is not one of {OPERATORS}")
        for name in ("op1", "op2"):
            value = getattr(self, name)
            # bool is an int subclass; True+1= is almost certainly a bug upstream.
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    @property
    def text(self) -> str:
        """The prompt as the model sees it, e.g. `"226-68="` (no spaces, trailing `=`)."""
        return f"{self.op1}{self.op}{self.op2}="

    @property
    def result(self) -> int | None:
        """The true answer: exact for `+ - *`, floor division for `/`.

        Returns:
            The answer as an int (negative for illegal subtractions), or None for a division
            by zero, which only occurs in `all_prompts` (the mean-ablation set).
        """
        return _apply(self.op, self.op1, self.op2)


def _apply(op: str, a: int, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    # The official code evaluates the prompt with Python's `eval` (true division) and
    # compares `int(...)` of it with the model's answer, i.e. floor division for a, b >= 0.
    return None if b == 0 else a // b


def parse_prompt(text: str) -> Prompt:
    """Parse `"226-68="` back into a `Prompt` (e.g. prompts stored by the official code).

    Arguments:
        text: a prompt string of the exact form `f"{op1}{op}{op2}="`.

    Returns:
        The `Prompt`; `parse_prompt(p.text) == p` for every prompt.
    """
    match = _PROMPT_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an arithmetic prompt of the form '12+34='")
    a, op, b = match.groups()
    prompt = Prompt(int(a), op, int(b))
    if prompt.text != text:  # leading zeros ("007+1=") would not round-trip
        raise ValueError(f"{text!r} is not in canonical form {prompt.text!r}")
    return prompt


def operand_range(op: str, max_op: int = MAX_OP) -> range:
    """Range of op1 (and the lower bound of op2) for an operator: `[0, max_op)`, `[1, max_op)`
    for division (official `op_ranges`)."""
    _check_op(op)
    return range(1 if op == "/" else 0, max_op)


def _op2_range(op: str, op1: int, lo: int, hi: int, max_single_token: int) -> range:
    """op2 candidates for a given op1 (official `_get_operand_range`)."""
    if op == "+":
        # Upper bound S - op1 is exclusive, so sums equal to S itself are never enumerated.
        return range(lo, min(max_single_token - op1, hi))
    if op == "-":
        return range(lo, op1 + 1)  # non-negative differences only
    if op == "*":
        if op1 == 0:
            return range(lo, hi)
        return range(lo, min(max_single_token // op1 + 1, hi))
    return range(max(1, lo), hi)


def _in_single_token_range(op: str, a: int, b: int, max_single_token: int) -> bool:
    """The official `0 <= eval(prompt) <= S` filter, evaluated exactly in integers.

    For `/`, `eval` gives the true quotient, so a prompt whose floor answer equals S but
    whose quotient is not an integer (S < a/b < S + 1) is dropped. That only matters for
    S < 299, never for the paper's models (S >= 520).
    """
    if op == "/":
        return a <= max_single_token * b
    result = _apply(op, a, b)
    assert result is not None
    return 0 <= result <= max_single_token


def legal_prompts(
    op: str, *, max_single_token: int = LLAMA3_MAX_SINGLE_TOKEN, max_op: int = MAX_OP
) -> list[Prompt]:
    """Every legal prompt of one operator, in the official enumeration order (§2.1).

    op1 runs over `operand_range(op, max_op)`; op2 over the operator-specific range; a prompt
    is kept if its answer is in `[0, max_single_token]`. Counts for max_op=300: S=999 gives
    + 90000, - 45150, * 5784, / 89401; S=530: + 87585, * 3550; S=520: + 86840, * 3497.

    Arguments:
        op: one of `OPERATORS`.
        max_single_token: S, the largest integer the model's tokenizer keeps as one token.
        max_op: exclusive upper bound of both operands.

    Returns:
        The prompts, op1-major then op2 ascending.
    """
    operands = operand_range(op, max_op)
    prompts = []
    for a in operands:
        for b in _op2_range(op, a, operands.start, max_op, max_single_token):
            if _in_single_token_range(op, a, b, max_single_token):
                prompts.append(Prompt(a, op, b))
    return prompts


def all_prompts(op: str, max_op: int = MAX_OP) -> list[Prompt]:
    """Every `(x, y)` in `[0, max_op)^2` for one operator, legal or not (§4 mean cache).

    Includes negative differences, answers above the single-token limit and division by zero
    (whose `result` is None), as the official mean cache does "to keep the mean balanced".

    Arguments:
        op: one of `OPERATORS`.
        max_op: exclusive upper bound of both operands.

    Returns:
        `max_op**2` prompts, x-major then y ascending (the official order).
    """
    _check_op(op)
    return [Prompt(x, op, y) for x in range(max_op) for y in range(max_op)]


def mean_cache_prompts(max_op: int = MAX_OP) -> list[Prompt]:
    """The full mean-ablation set: `all_prompts` of the four operators in `OPERATORS` order
    (4 * 300 * 300 = 360000 prompts for the default `max_op`)."""
    return [p for op in OPERATORS for p in all_prompts(op, max_op)]


def split_pairs(
    prompts: Sequence[Prompt], *, held_out_fraction: float, seed: int
) -> tuple[list[Prompt], list[Prompt]]:
    """Split prompts into train / held-out by operand pair, per operator.

    For training an in-house model on this task: a held-out pair is never seen in training.
    Whether `(op, op1, op2)` is held out is a pure function of `(seed, op, op1, op2)`: a keyed
    hash mapped to [0, 1) is compared with `held_out_fraction`. So the split does not depend
    on the order or the contents of `prompts`: the same pair lands on the same side for any
    `max_single_token`, `max_op` or subset, and duplicates never straddle the split. The
    held-out share per operator is therefore binomial around `held_out_fraction`, not exact.

    Arguments:
        prompts: prompts of any operators.
        held_out_fraction: expected share of pairs held out, in [0, 1].
        seed: split seed; different seeds give independent splits.

    Returns:
        `(train, held_out)`, each in the input order.
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(
            f"held_out_fraction must be in [0, 1], got {held_out_fraction}"
        )
    train, held_out = [], []
    for prompt in prompts:
        key = f"{seed}|{prompt.op}|{prompt.op1}|{prompt.op2}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        (held_out if u < held_out_fraction else train).append(prompt)
    return train, held_out


def discovery_eval_split(
    correct: Mapping[str, Sequence[Prompt]], seed: int = 42, n_discovery: int = 50
) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    """Discovery / evaluation split of the correct prompts (§2.3, Llama3-8B notebook).

    Each operator's correct list is shuffled and cut: the first `n_discovery` prompts are
    for circuit discovery and attribution, the rest for faithfulness evaluation. The
    official code seeds the *global* `random` (`set_deterministic(42)`) and shuffles the
    operators' lists in order; here one local `random.Random(seed)` shuffles copies of the
    lists in `OPERATORS` order (see the module docstring on parity).

    Arguments:
        correct: operator -> the model's correct prompts of that operator, in enumeration
            order (the order the correctness filter produced them in).
        seed: RNG seed (42 in the paper).
        n_discovery: discovery prompts per operator (50 in the code; the paper text says 100).

    Returns:
        `(discovery, evaluation)`, two dicts keyed like `correct` (in `OPERATORS` order).
    """
    rng = random.Random(seed)
    discovery, evaluation = {}, {}
    for op in _ops_of(correct):
        shuffled = list(correct[op])
        rng.shuffle(shuffled)
        discovery[op], evaluation[op] = shuffled[:n_discovery], shuffled[n_discovery:]
    return discovery, evaluation


def evaluation_sample(
    evaluation: Sequence[Prompt], *, seed: int, k: int = 50
) -> list[Prompt]:
    """One faithfulness-evaluation batch (§4): `k` prompts without replacement.

    The official code calls `random.sample(evaluation_prompts[op], k=50)` right after
    `set_deterministic(seed)` for each seed in `[42, 412, 32879, 123, 436]`; this is the same
    draw on a local `random.Random(seed)`.

    Arguments:
        evaluation: one operator's evaluation prompts (from `discovery_eval_split`).
        seed: the evaluation seed.
        k: sample size.

    Returns:
        `k` distinct prompts in sampled order.
    """
    return random.Random(seed).sample(list(evaluation), k)


def maximize_unique_answers(
    prompts: Sequence[Prompt], *, k: int, rng: random.Random
) -> list[Prompt]:
    """Pick `k` prompts with as many distinct answers as possible (official
    `_maximize_unique_answers`), so clean and corrupt answers differ when patching.

    With at least `k` prompts: shuffle, keep the first prompt of each new answer, and if that
    gives fewer than `k`, top up with draws *with replacement* from all prompts (which may
    repeat prompts already taken). With fewer than `k` prompts: all of them plus draws with
    replacement, shuffled. The input is not modified (the official code shuffles in place).

    Arguments:
        prompts: candidate prompts (their `result` must be defined).
        k: number of prompts to return.
        rng: the random stream to consume.

    Returns:
        Exactly `k` prompts (possibly with repeats, see above).
    """
    pool = list(prompts)
    if not pool:
        raise ValueError("cannot pick prompts from an empty list")
    if len(pool) < k:
        picked = pool + rng.choices(pool, k=k - len(pool))
        rng.shuffle(picked)
        return picked
    rng.shuffle(pool)
    seen, picked = set(), []
    for prompt in pool:
        if prompt.result not in seen:
            seen.add(prompt.result)
            picked.append(prompt)
    if len(picked) < k:
        picked += rng.choices(pool, k=k - len(picked))
    return picked[:k]


def filtered_50(
    correct: Mapping[str, Sequence[Prompt]], seed: int = 42, k: int = 50
) -> dict[str, list[Prompt]]:
    """The filtered 50-prompt set per operator (§2.4; Llama3-70B, GPT-J, Pythia).

    Keeps correct prompts with `op1 > 5`, `op2 > 5` and answer `> 2` (drops trivial ones such
    as `x*1`, `x/1`); if fewer than `k` remain, tops up with a sample without replacement
    from the *unfiltered* correct list (which may duplicate kept prompts, as in the official
    code); then `maximize_unique_answers(k)`. One local `random.Random(seed)` replaces the
    official global `random` after `set_deterministic(seed)`, consumed in the same order: all
    operators' top-ups first, then each operator's answer maximisation.

    Arguments:
        correct: operator -> the model's correct prompts of that operator, in enumeration
            order.
        seed: RNG seed (42 in the paper).
        k: prompts per operator.

    Returns:
        Operator -> exactly `k` prompts, keyed in `OPERATORS` order.
    """
    rng = random.Random(seed)
    ops = _ops_of(correct)
    kept = {}
    for op in ops:
        pool = list(correct[op])
        keep = [p for p in pool if p.op1 > 5 and p.op2 > 5 and _result(p) > 2]
        if len(keep) < k:
            if len(pool) < k - len(keep):
                # The official code fails here too (random.sample on a short list).
                raise ValueError(f"only {len(pool)} correct {op!r} prompts; need {k}")
            keep += rng.sample(pool, k=k - len(keep))
        kept[op] = keep
    return {op: maximize_unique_answers(kept[op], k=k, rng=rng) for op in ops}


def counterfactual_pairs(
    clean: Sequence[Prompt],
    pool: Sequence[Prompt],
    *,
    rng: random.Random,
    distinct_answers: bool = False,
) -> list[Prompt]:
    """One counterfactual ("corrupt") prompt per clean prompt, drawn from `pool` (§3).

    The official code draws `random.sample(pool, len(clean))` from the union of the four
    operators' discovery prompts, so a counterfactual usually differs in operator and
    operands and may share the clean answer (or be the clean prompt itself). With
    `distinct_answers`, each clean prompt instead gets a prompt of the pool with another
    answer (drawn without replacement while the pool lasts), so the two answer tokens of
    every pair differ. Works for any operator mix; the template is the tokenizer's.

    Arguments:
        clean: the clean prompts.
        pool: the prompts counterfactuals are drawn from.
        rng: the random stream to consume.
        distinct_answers: require a different answer for every pair.

    Returns:
        `len(clean)` prompts, aligned with `clean`.
    """
    pool = list(pool)
    if not distinct_answers:
        if len(pool) < len(clean):
            raise ValueError(f"{len(clean)} counterfactuals from a pool of {len(pool)}")
        return rng.sample(pool, len(clean))
    order = rng.sample(pool, len(pool))
    used, pairs = set(), []
    for prompt in clean:
        answer = _result(prompt)
        free = [
            i for i, p in enumerate(order) if i not in used and _result(p) != answer
        ]
        if not free:
            free = [i for i, p in enumerate(order) if _result(p) != answer]
        if not free:
            raise ValueError(f"no prompt in the pool has an answer other than {answer}")
        used.add(free[0])
        pairs.append(order[free[0]])
    return pairs


def _result(prompt: Prompt) -> int:
    result = prompt.result
    if result is None:
        raise ValueError(f"{prompt.text!r} has no defined answer")
    return result


def _check_op(op: str) -> None:
    if op not in OPERATORS:
        raise ValueError(f"operator {op!r} is not one of {OPERATORS}")


def _ops_of(by_op: Mapping[str, Sequence[Prompt]]) -> list[str]:
    """The mapping's operators in `OPERATORS` order (fixes the RNG consumption order),
    checking that every prompt sits under its own operator."""
    for op, prompts in by_op.items():
        _check_op(op)
        for prompt in prompts:
            if prompt.op != op:
                raise ValueError(f"{prompt.text!r} is listed under operator {op!r}")
    return [op for op in OPERATORS if op in by_op]

"""Prompt enumeration, splits and samples (paper-spec §2, §4)."""

import functools
import random
from collections import Counter

import pytest

from experiments.arith_heuristics.prompts import (
    OPERATORS,
    Prompt,
    all_prompts,
    discovery_eval_split,
    evaluation_sample,
    filtered_50,
    legal_prompts,
    maximize_unique_answers,
    mean_cache_prompts,
    operand_range,
    parse_prompt,
    split_pairs,
)

# paper-spec §2.1, computed from the official code.
SPEC_COUNTS = [
    (999, {"+": 90000, "-": 45150, "*": 5784, "/": 89401}),
    (530, {"+": 87585, "-": 45150, "*": 3550, "/": 89401}),
    (520, {"+": 86840, "-": 45150, "*": 3497, "/": 89401}),
]


@pytest.mark.parametrize(
    "max_single_token, op, count",
    [(s, op, n) for s, counts in SPEC_COUNTS for op, n in counts.items()],
)
def test_legal_counts_match_spec(max_single_token, op, count):
    assert len(legal_prompts(op, max_single_token=max_single_token)) == count


def test_llama_total():
    assert sum(len(legal_prompts(op)) for op in OPERATORS) == 230335


def _is_legal(p: Prompt, s: int, max_op: int) -> bool:
    """Closed-form characterisation of the official enumeration, written independently of
    its range arithmetic."""
    a, b = p.op1, p.op2
    if not (a < max_op and b < max_op):
        return False
    if p.op == "+":
        return a + b <= s - 1  # the exclusive bound drops sums equal to S
    if p.op == "-":
        return 0 <= a - b <= s
    if p.op == "*":
        return a * b <= s
    return a >= 1 and b >= 1 and a <= s * b  # true quotient <= S


@pytest.mark.parametrize("s, max_op", [(999, 300), (20, 30), (7, 12), (0, 5)])
@pytest.mark.parametrize("op", OPERATORS)
def test_legal_prompts_equal_closed_form_in_official_order(op, s, max_op):
    got = legal_prompts(op, max_single_token=s, max_op=max_op)
    expected = [p for p in all_prompts(op, max_op) if _is_legal(p, s, max_op)]
    assert got == expected  # same set, and op1-major / op2-ascending order
    assert all(0 <= p.result <= s for p in got)


def test_addition_never_reaches_the_limit_itself():
    sums = {p.result for p in legal_prompts("+", max_single_token=530)}
    assert max(sums) == 529


def test_operand_ranges():
    assert operand_range("+") == range(0, 300)
    assert operand_range("/") == range(1, 300)
    assert min(p.op2 for p in legal_prompts("/")) == 1
    with pytest.raises(ValueError, match="operator"):
        operand_range("%")


def test_prompt_text_result_and_parse():
    p = Prompt(226, "-", 68)
    assert p.text == "226-68="
    assert p.result == 158
    assert Prompt(7, "/", 2).result == 3  # floor division
    assert Prompt(5, "/", 0).result is None  # only in the mean-ablation set
    assert Prompt(3, "-", 5).result == -2
    assert parse_prompt("226-68=") == p
    for q in legal_prompts("*")[::97]:
        assert parse_prompt(q.text) == q


@pytest.mark.parametrize("text", ["226 - 68 =", "007+1=", "1+1", "1%1=", "-1+1=", ""])
def test_parse_rejects_non_prompts(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


@pytest.mark.parametrize(
    "args", [(1, "%", 2), (-1, "+", 2), (1, "+", 2.0), (True, "+", 1)]
)
def test_prompt_validates_fields(args):
    with pytest.raises(ValueError):
        Prompt(*args)


def test_all_prompts_include_illegal_in_official_order():
    prompts = all_prompts("/")
    assert len(prompts) == 90000
    assert prompts[:3] == [Prompt(0, "/", 0), Prompt(0, "/", 1), Prompt(0, "/", 2)]
    assert prompts[300] == Prompt(1, "/", 0)
    assert sum(p.result is None for p in prompts) == 300
    small = mean_cache_prompts(max_op=4)
    assert len(small) == 4 * 16
    assert [p.op for p in small[::16]] == list(OPERATORS)


# -- training split ---------------------------------------------------------------------


def test_split_pairs_is_a_deterministic_partition():
    prompts = [
        p for op in OPERATORS for p in legal_prompts(op, max_single_token=530)[::3]
    ]
    train, held = split_pairs(prompts, held_out_fraction=0.1, seed=3)
    assert (train, held) == split_pairs(prompts, held_out_fraction=0.1, seed=3)
    assert len(train) + len(held) == len(prompts)
    assert not set(train) & set(held)
    # Input order is kept on both sides.
    position = {p: i for i, p in enumerate(prompts)}
    assert [position[p] for p in held] == sorted(position[p] for p in held)
    # Per operator the held-out share is binomial around 10%.
    for op in OPERATORS:
        n = sum(p.op == op for p in prompts)
        k = sum(p.op == op for p in held)
        assert abs(k - 0.1 * n) < 4 * (0.09 * n) ** 0.5, op
    other = split_pairs(prompts, held_out_fraction=0.1, seed=4)[1]
    assert set(other) != set(held)


def test_split_pairs_membership_ignores_order_and_contents():
    big = legal_prompts("+", max_single_token=999)
    small = legal_prompts("+", max_single_token=300)[::-1]
    held_big = set(split_pairs(big, held_out_fraction=0.2, seed=0)[1])
    held_small = set(split_pairs(small, held_out_fraction=0.2, seed=0)[1])
    assert held_small == held_big & set(small)


def test_split_pairs_edges():
    prompts = legal_prompts("*")
    assert split_pairs(prompts, held_out_fraction=0.0, seed=0) == (prompts, [])
    assert split_pairs(prompts, held_out_fraction=1.0, seed=0) == ([], prompts)
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_pairs(prompts, held_out_fraction=1.5, seed=0)


# -- discovery / evaluation split and the filtered 50 -----------------------------------


@functools.cache
def _llama_legal(op: str) -> tuple[Prompt, ...]:
    return tuple(legal_prompts(op))


def _fake_correct(stride: int = 3) -> dict[str, list[Prompt]]:
    """A stand-in for a model's correct sets: every `stride`-th legal prompt."""
    return {op: list(_llama_legal(op)[::stride]) for op in OPERATORS}


def test_discovery_eval_split():
    correct = _fake_correct()
    discovery, evaluation = discovery_eval_split(correct)
    assert list(discovery) == list(OPERATORS)
    for op in OPERATORS:
        assert len(discovery[op]) == 50
        assert Counter(discovery[op] + evaluation[op]) == Counter(correct[op])
    assert discovery_eval_split(correct) == (discovery, evaluation)
    assert discovery_eval_split(correct, seed=1)[0] != discovery
    assert len(discovery_eval_split(correct, n_discovery=100)[0]["*"]) == 100


def test_discovery_eval_split_replays_the_official_global_random_calls():
    """The official notebook: set_deterministic(42), then random.shuffle each operator's
    list in order. Replay that on the global RNG (restoring its state afterwards)."""
    correct = _fake_correct(stride=5)
    state = random.getstate()
    try:
        random.seed(42)
        official = {}
        for op in OPERATORS:
            shuffled = list(correct[op])
            random.shuffle(shuffled)
            official[op] = shuffled[:50]
    finally:
        random.setstate(state)
    assert discovery_eval_split(correct, seed=42)[0] == official


def test_discovery_eval_split_rejects_misfiled_prompts():
    with pytest.raises(ValueError, match="listed under"):
        discovery_eval_split({"+": [Prompt(1, "-", 1)]})


def test_filtered_50():
    correct = _fake_correct()
    chosen = filtered_50(correct)
    assert chosen == filtered_50(correct)
    assert chosen != filtered_50(correct, seed=7)
    for op in OPERATORS:
        prompts = chosen[op]
        assert len(prompts) == 50
        assert all(p.op1 > 5 and p.op2 > 5 and p.result > 2 for p in prompts)
        assert set(prompts) <= set(correct[op])
        # All answers differ where enough distinct answers exist; with op2 > 5 a quotient
        # is at most 299 // 6 = 49, so division has only the 47 answers 3..49.
        distinct = 47 if op == "/" else 50
        assert len({p.result for p in prompts}) == distinct


def test_filtered_50_tops_up_from_unfiltered_prompts():
    trivial = [Prompt(a, "*", 1) for a in range(60)]  # all fail op2 > 5
    few = [Prompt(a, "*", 6) for a in range(10, 20)]  # 10 pass the filter
    chosen = filtered_50({"*": trivial + few})["*"]
    assert len(chosen) == 50
    assert set(few) <= set(chosen)
    with pytest.raises(ValueError, match="correct"):
        filtered_50({"*": few})


def test_maximize_unique_answers():
    prompts = [Prompt(a, "+", b) for a in range(10) for b in range(10)]  # 19 answers
    before = list(prompts)
    chosen = maximize_unique_answers(prompts, k=30, rng=random.Random(0))
    assert prompts == before  # the official code shuffled its input in place
    assert len(chosen) == 30
    assert len({p.result for p in chosen[:19]}) == 19  # distinct answers come first
    short = maximize_unique_answers(prompts[:5], k=12, rng=random.Random(0))
    assert len(short) == 12 and set(short) == set(prompts[:5])


def test_evaluation_sample():
    evaluation = discovery_eval_split(_fake_correct())[1]["+"]
    sample = evaluation_sample(evaluation, seed=412)
    assert len(sample) == len(set(sample)) == 50
    assert set(sample) <= set(evaluation)
    assert sample == evaluation_sample(evaluation, seed=412)
    assert sample != evaluation_sample(evaluation, seed=42)

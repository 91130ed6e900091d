"""The arithmetic pipeline on models that split numbers into digits (`task.DigitTask`):
token layouts against the real tokenizers, whole-answer correctness against greedy
decoding, teacher-forced answer digits, and the K-map / mean-cache grid paths against
plain forwards."""

import dataclasses
import itertools

import numpy as np
import pytest

from converters import load, load_tokenizer
from converters.registry import is_installed
from experiments.arith_heuristics import circuit, heuristics, pipeline
from experiments.arith_heuristics.prompts import OPERATORS, Prompt
from experiments.arith_heuristics.task import DigitTask
from jaxinterp.generate import greedy
from jaxinterp.kernels import mean_cache

SMOL = "smollm2-135m"
QWEN = "qwen2.5-coder-0.5b"


def _param(name):
    marks = [
        pytest.mark.skipif(not is_installed(name), reason=f"{name} is not installed"),
        pytest.mark.qwen if name == QWEN else pytest.mark.smollm,
    ]
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module", params=[_param(SMOL), _param(QWEN)])
def tokenizer(request):
    return load_tokenizer(request.param, cache=True)


def _text(prompt: Prompt, template: str) -> str:
    if template == "compact":
        return prompt.text
    return f"{prompt.op1} {prompt.op} {prompt.op2} ="


@pytest.mark.parametrize("template", ["spaced", "compact"])
@pytest.mark.parametrize("digits", [(1, 1), (3, 2)])
def test_tokens_are_the_tokenizers_own(tokenizer, template, digits):
    """Composed token rows equal the tokenizer's encoding of prefix + prompt (+ the
    whitespace before the answer), for every operator; answers are the first digit."""
    task = DigitTask(tokenizer, digits, template, few_shot=pipeline.FEW_SHOT)
    rng = np.random.default_rng(0)
    lo, hi = (10 ** (d - 1) if d > 1 else 0 for d in digits), (10**d for d in digits)
    (lo1, lo2), (hi1, hi2) = lo, hi
    prompts = [
        Prompt(int(rng.integers(lo1, hi1)), op, int(rng.integers(max(lo2, 1), hi2)))
        for op in OPERATORS
        for _ in range(5)
    ]
    prompts = [p for p in prompts if task.admits(p)]
    tokens = task.tokens(prompts)
    space = " " if template == "spaced" else ""
    for row, p in zip(tokens, prompts, strict=True):
        want = tokenizer.encode(pipeline.FEW_SHOT + _text(p, template) + space)
        assert row.tolist() == want, p.text
        answered = tokenizer.encode(
            pipeline.FEW_SHOT + _text(p, template) + space + str(p.result)
        )
        assert answered[: len(want)] == want
        assert task.answers([p])[0] == answered[len(want)]
    assert (
        len(task.positions)
        == len(task.position_names)
        == tokens.shape[1] - task.n_prefix
    )
    assert task.position_names[digits[0]] == "op"


def test_layout_errors(tokenizer):
    task = DigitTask(tokenizer, (2, 2))
    with pytest.raises(ValueError, match="does not have the run's layout"):
        task.tokens([Prompt(5, "+", 12)])
    with pytest.raises(ValueError, match="op_digits"):
        DigitTask(tokenizer, (0, 2))
    with pytest.raises(ValueError, match="template"):
        DigitTask(tokenizer, (2, 2), template="latex")
    with pytest.raises(ValueError, match="equally many digits"):
        task.operand_tokens(np.array([5, 12]))


@pytest.fixture(scope="module")
def smol():
    if not is_installed(SMOL):
        pytest.skip(f"{SMOL} is not installed")
    return load(SMOL), load_tokenizer(SMOL, cache=True)


def _one_digit(task):
    return [
        p
        for a, op, b in itertools.product(range(2, 10, 3), OPERATORS, range(1, 10, 4))
        if task.admits(p := Prompt(a, op, b))
    ]


@pytest.mark.smollm
def test_correctness_is_greedy_decoding(smol):
    """Whole-answer correctness from one teacher-forced forward equals running greedy
    decoding and reading the number it writes."""
    model, tokenizer = smol
    task = DigitTask(tokenizer, (1, 1), "spaced", few_shot=pipeline.FEW_SHOT)
    prompts = _one_digit(task)
    pred, ok = task.correctness(model, prompts, batch_size=8)
    forced = task._layout["forced"]
    for p, first, good in zip(prompts, pred, ok, strict=True):
        question = task.tokens([p])[0]
        out = greedy(model, question[: len(question) - forced], 5)
        text = tokenizer.decode(out)
        written = text[1:] if text.startswith(" ") else None
        digits = "".join(itertools.takewhile(str.isdigit, written or ""))
        assert good == (written is not None and digits == str(p.result)), (p.text, text)
        if written is not None:  # the model wrote the forced space itself
            assert first == out[1]
    assert 0 < ok.sum() < len(prompts)  # both outcomes are exercised

    # teacher forcing: the same correctness; the analysed position predicts digit 1
    two = [p for p in prompts if p.result >= 10]
    forced_task = dataclasses.replace(task, answer_digit=1)
    assert all(forced_task.admits(p) for p in two)
    assert not forced_task.admits(Prompt(3, "+", 4))
    _, ok1 = forced_task.correctness(model, two, batch_size=8)
    assert (ok1 == task.correctness(model, two, batch_size=8)[1]).all()
    tokens = forced_task.tokens(two)
    assert (tokens[:, :-1] == task.tokens(two)).all()
    assert (tokens[:, -1] == task.answers(two)).all()
    want = [tokenizer.encode(str(p.result))[1] for p in two]
    assert forced_task.answers(two).tolist() == want


@pytest.mark.smollm
def test_grid_paths_equal_plain_forwards(smol, tmp_path):
    """K maps through the operand grid equal activations read from a forward per prompt,
    and the grid mean cache equals `mean_cache` over every prompt of the layout."""
    model, _ = smol
    config = pipeline.Config(
        model=SMOL,
        op_digits=(1, 1),
        template="spaced",
        few_shot=pipeline.FEW_SHOT,
        checkpoints=False,
        ops="+",
        batch_size=64,
    )
    ctx = pipeline.Context(config, model, run=None, progress=False)
    neurons = np.array([[20, 3], [20, 700], [29, 5]])
    K, KV, pairs = heuristics.kmaps(ctx, model, "+", neurons)
    legal = ctx.legal("+")
    assert len(legal) == len(pairs) == 100
    acts = heuristics._last_position(ctx, model, legal, [20, 29], np.array([3, 5, 700]))
    want = acts[:, [0, 0, 1], [0, 2, 1]].T
    np.testing.assert_allclose(K, want, atol=1e-4, rtol=1e-4)

    xs = np.arange(0, 10, 3)
    means = circuit.grid_means(ctx, model, xs, xs)
    every = [Prompt(int(a), op, int(b)) for op in OPERATORS for a in xs for b in xs]
    tokens = np.concatenate([_raw(ctx.task, p) for p in every])
    plain = mean_cache(model, tokens, circuit.MEAN_TAPS, progress_bar=False)
    for key, tap in zip(("z", "mlp"), circuit.MEAN_TAPS, strict=True):
        np.testing.assert_allclose(means[key], plain[tap], atol=1e-4, rtol=1e-4)


def _raw(task, p: Prompt) -> np.ndarray:
    """`[1, pos]` tokens of any prompt of the layout, legal or not (the mean cache covers
    negative differences and division by zero too)."""
    lay = task._layout
    return np.concatenate(
        [
            [lay["prefix"]],
            task.operand_tokens([p.op1]),
            [lay["middle"][p.op]],
            task.operand_tokens([p.op2]),
            [lay["suffix"]],
        ],
        axis=1,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="gpt2"), "runs on"),
        (dict(model=SMOL, checkpoints=False), "set op_digits"),
        (dict(model=SMOL, op_digits=(1, 1)), "checkpoints ship for arith-neox only"),
        (dict(few_shot="1 + 1 = 2\n"), "one token per number"),
        (dict(template="spaced"), "one token per number"),
        (dict(n_prompts=0), "n_prompts must be positive"),
        (dict(mean_stride=0), "mean_stride must be positive"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipeline.Config(**kwargs)

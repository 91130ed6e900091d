"""The paper's pipeline ("Arithmetic Without Algorithms") as resumable stages.

    prompts -> patching -> mean_cache -> circuit -> attribution -> topk -> kmaps ->
    classify -> knockouts -> failures -> probes -> dynamics -> report

Each stage is a function `stage(ctx) -> (arrays, summary)` in its own module; `run` calls
them in order, storing each result in a `RunDir` (fingerprinted by the configuration and
the model's weights) and skipping stages that already finished, so a killed run resumes
where it stopped. Later stages read earlier ones through `Context.get`.

`Config.mode` is the one switch between replicating the official code (`"parity"`) and the
fixed pipeline (`"clean"`); `MODE_DIFFERENCES` lists every difference, and the report
repeats the list.

The model decides how prompts become tokens (`task`, reached through `Context.task`): on
arith-neox every number is one token; SmolLM2 and Qwen2.5 split numbers into digits, so a
run fixes each operand's digit count (`op_digits`: one token layout for every prompt),
puts a few-shot prefix before each prompt, counts an answer correct when greedy decoding
writes all of it, and analyses the position that predicts the first answer digit (or,
teacher-forced, a later one). `MODEL_DEFAULTS` holds each model's settings.
"""

import dataclasses
import functools
import pathlib
from collections.abc import Callable

import numpy as np

import converters
from jaxinterp.model import Transformer
from jaxinterp.store import model_digest

from ..rundir import RunDir, run_stages
from . import arith_tokenizer as tok
from .prompts import OPERATOR_NAMES, OPERATORS, Prompt, legal_prompts
from .task import DigitTask, SingleTokenTask

MODES = ("parity", "clean")
SINGLE_TOKEN_MODEL = "arith-neox"
FEW_SHOT = "12 + 7 = 19\n31 - 15 = 16\n"
MODEL_DEFAULTS = {
    SINGLE_TOKEN_MODEL: {},
    "smollm2-135m": dict(
        op_digits=(1, 1),
        template="spaced",
        few_shot=FEW_SHOT,
        n_discovery=10,
        n_eval=10,
        top_k=24,
        checkpoints=False,
        probe_prompts=1000,
        batch_size=64,
    ),
    "qwen2.5-coder-0.5b": dict(
        ops="+-",
        op_digits=(2, 2),
        template="spaced",
        few_shot=FEW_SHOT,
        n_prompts=1000,
        n_discovery=10,
        n_eval=10,
        mean_stride=3,
        top_k=72,
        checkpoints=False,
        probe_prompts=1000,
        batch_size=16,
    ),
}
"""Settings each model runs with unless given otherwise: the instruct models that split
digits need a two-example prefix to answer in the bare `a op b = r` format at all, and
SmolLM2 answers only one-digit problems (measured: 52-82% of one-digit prompts, under
10% of two-digit ones); Qwen2.5-Coder answers 87% of two-digit additions. `top_k` is
about 1.5% of the MLP width, the share the paper finds sufficient. Smaller batches keep
the sweeps' `[prompt, variant, d_vocab]` logits in memory with these vocabularies."""
PIPELINE_VERSION = 3
"""Part of every run's identity: bumped when a stage's results change, so a run directory
of older code is refused instead of mixed with new stages."""

MODE_DIFFERENCES = {
    "indirect effect": (
        "parity ranks heads by the paper's Eq. 1 (relative probability change, divided by "
        "P(r') and P*(r): unbounded); clean ranks by its bounded form, the mean of the "
        "absolute probability changes 0.5 [(P*(r') - P(r')) + (P(r) - P*(r))] in [-1, 1]. "
        "Both are always computed and reported."
    ),
    "counterfactuals": (
        "parity samples counterfactuals from all operators' discovery prompts without "
        "exclusion (a pair may share its answer, even be the clean prompt); clean draws "
        "only prompts with a different answer"
    ),
    "faithfulness prompts": (
        "parity drops prompts with answer 0 from the neuron curves (official top-k "
        "script); clean keeps them. Both drop prompts where the clean and fully ablated "
        "normalised logits coincide (a zero denominator), and count them."
    ),
    "heuristic classification": (
        "parity: the released classifier's rules and quirks (op2 ranges use the op1 "
        "count, float left-to-right k formulas, ...); clean: the fixed rules (see "
        "experiments.arith_heuristics.classify)"
    ),
    "prompt association": (
        "parity: the published results' semantics (inclusive operand/result ranges, "
        "half-open both-operand ranges, true division for division results); clean: "
        "half-open ranges and floor division everywhere"
    ),
    "knockout threshold": (
        "parity: heuristic-type knockout at score >= 0.55 (the published figure's "
        "files), prompt knockout at 0.6; clean: 0.6 for both"
    ),
    "prompt-knockout priority": (
        "parity: a neuron's priority is the number of the prompt's heuristics it "
        "implements, control neurons are drawn from the layer's top neurons minus the "
        "chosen ones; clean: priority is its summed classification score, and control "
        "neurons exclude every neuron associated with the prompt"
    ),
    "probe labels": (
        "parity: labels re-shuffled per position while the activations keep the first "
        "position's order (official bug: only the '=' position is aligned); clean: "
        "aligned labels at every position"
    ),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one run (every field is a command-line option).

    Attributes:
        model: registry name of the model (`arith-neox`).
        mode: `"parity"` or `"clean"` (see `MODE_DIFFERENCES`).
        ops: operators analysed, e.g. `"+-*/"`.
        max_op: operands are below this (paper: 300).
        n_discovery: discovery prompts per operator (official code: 50).
        patch_seeds: counterfactual seeds of the patching sweep (paper: five).
        eval_seeds: seeds of the faithfulness evaluation samples.
        n_eval: evaluation prompts per operator and seed.
        circuit_faithfulness: the circuit is the smallest number of top heads (plus all
            MLPs) whose faithfulness reaches this.
        first_layer: first layer of the "heuristic" neurons (default: half the depth).
        top_k: important neurons per layer (default: 1/8 of the MLP width).
        threshold: classification score from which a neuron implements a heuristic.
        probe_prompts: correct prompts per operator used to train the answer probes.
        probe_epochs: probe training epochs.
        checkpoints: run the training-dynamics stage over the shipped checkpoints.
        dynamics_prompts: legal prompts per operator sampled to find each checkpoint's
            correct set.
        dynamics_ops: operators of the training-dynamics stage (the paper's Fig. 10b
            uses addition, 10c addition and subtraction).
        dynamics_steps: training steps analysed (default: every shipped checkpoint).
        batch_size: prompts per device call.
        op_digits: digits of op1 and op2 (models that split numbers into digits: every
            prompt of a run has one token layout; see `task.DigitTask`).
        template: `"compact"` (`"226-68="`) or `"spaced"` (`"226 - 68 ="`), digit models.
        few_shot: text before every prompt (digit models; solved examples, one per line).
        answer_digit: digit models: analyse the position predicting this answer digit,
            the earlier ones teacher-forced (0: the first answer token).
        n_prompts: legal prompts per operator whose correctness is measured (a seeded
            sample; default all).
        mean_stride: the mean cache covers operands `0, s, 2s, ...` of each axis.
    """

    model: str = "arith-neox"
    mode: str = "clean"
    ops: str = "+-*/"
    max_op: int = 300
    n_discovery: int = 50
    patch_seeds: tuple[int, ...] = (42, 412, 32879, 123, 436)
    eval_seeds: tuple[int, ...] = (42, 412, 32879)
    n_eval: int = 50
    circuit_faithfulness: float = 0.9
    first_layer: int | None = None
    top_k: int | None = None
    threshold: float = 0.6
    probe_prompts: int = 4000
    probe_epochs: int = 20
    checkpoints: bool = True
    dynamics_prompts: int = 3000
    dynamics_ops: str = "+-"
    dynamics_steps: tuple[int, ...] | None = None
    batch_size: int = 256
    op_digits: tuple[int, int] | None = None
    template: str = "compact"
    few_shot: str = ""
    answer_digit: int = 0
    n_prompts: int | None = None
    mean_stride: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        bad = [op for op in self.ops if op not in OPERATORS]
        if bad or not self.ops or len(set(self.ops)) != len(self.ops):
            raise ValueError(
                f"ops must be distinct operators from {''.join(OPERATORS)!r}, got "
                f"{self.ops!r}"
            )
        if not 2 <= self.max_op <= tok.MAX_NUMBER + 1:
            raise ValueError(f"max_op must be in [2, 1000], got {self.max_op}")
        for name in ("n_discovery", "n_eval", "probe_prompts", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.patch_seeds or not self.eval_seeds:
            raise ValueError("patch_seeds and eval_seeds must not be empty")
        if not 0 < self.threshold <= 1 or not 0 < self.circuit_faithfulness <= 1:
            raise ValueError("threshold and circuit_faithfulness must be in (0, 1]")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ValueError(f"n_prompts must be positive, got {self.n_prompts}")
        if self.mean_stride < 1:
            raise ValueError(f"mean_stride must be positive, got {self.mean_stride}")
        if self.model not in MODEL_DEFAULTS:
            raise ValueError(
                f"the arithmetic pipeline runs on {sorted(MODEL_DEFAULTS)}, not "
                f"{self.model!r}"
            )
        single = self.model == SINGLE_TOKEN_MODEL
        if single and (
            self.op_digits is not None
            or self.few_shot
            or self.answer_digit
            or self.template != "compact"
        ):
            raise ValueError(
                f"{self.model} has one token per number: op_digits, template, few_shot "
                "and answer_digit apply to models that split digits"
            )
        if not single:
            if self.op_digits is None:
                raise ValueError(
                    f"{self.model} splits numbers into digits: set op_digits (the digits "
                    "of op1 and op2, e.g. (2, 2)), so every prompt has one token layout"
                )
            if self.checkpoints:
                raise ValueError(
                    f"training checkpoints ship for {SINGLE_TOKEN_MODEL} only: set "
                    "checkpoints=False (--no-dynamics) for other models"
                )

    @property
    def operators(self) -> tuple[str, ...]:
        """The analysed operators in the paper's order."""
        return tuple(op for op in OPERATORS if op in self.ops)


def first_layer(config: Config, model: Transformer) -> int:
    """First layer of the heuristic neurons: `config.first_layer`, default half the depth."""
    n = model.cfg.n_layers
    first = n // 2 if config.first_layer is None else config.first_layer
    if not 0 <= first < n:
        raise ValueError(f"first_layer must be in [0, {n}), got {first}")
    return first


def top_k(config: Config, model: Transformer) -> int:
    """Important neurons per layer: `config.top_k`, default 1/8 of the MLP width."""
    d = model.cfg.d_mlp
    k = max(1, d // 8) if config.top_k is None else config.top_k
    if not 1 <= k <= d:
        raise ValueError(f"top_k must be in [1, {d}], got {k}")
    return k


def op_key(op: str) -> str:
    """Short array-name key of an operator (`"+"` -> `"add"`)."""
    return OPERATOR_NAMES[op][:3]


@dataclasses.dataclass
class Context:
    """What every stage sees: the configuration, the model and earlier stages' results."""

    config: Config
    model: Transformer
    run: RunDir
    progress: bool = True
    _loaded: dict = dataclasses.field(default_factory=dict)  # stage -> results
    _legal: dict = dataclasses.field(default_factory=dict)  # op -> prompts

    @property
    def first_layer(self) -> int:
        return first_layer(self.config, self.model)

    @property
    def top_k(self) -> int:
        return top_k(self.config, self.model)

    @property
    def heuristic_layers(self) -> list[int]:
        return list(range(self.first_layer, self.model.cfg.n_layers))

    @functools.cached_property
    def task(self) -> SingleTokenTask | DigitTask:
        """How prompts become tokens for this model (`task`)."""
        return make_task(self.config)

    def tokens(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt, pos]` token ids."""
        return self.task.tokens(prompts)

    def answers(self, prompts: list[Prompt]) -> np.ndarray:
        """`[prompt]` ids of the token the last position predicts."""
        return self.task.answers(prompts)

    def edited(self, tokens: np.ndarray) -> str | np.ndarray:
        """Positions that ablations edit: every position (`"all"`), or, after a few-shot
        prefix, every position of the question (the prefix is the same in every prompt,
        so mean ablation there changes nothing, and the examples stay intact)."""
        n_prefix = getattr(self.task, "n_prefix", 0)
        if not n_prefix:
            return "all"
        return np.arange(tokens.shape[1]) >= n_prefix

    def get(self, stage: str) -> tuple[dict[str, np.ndarray], dict]:
        """`(arrays, summary)` of a finished stage (read once per context)."""
        if stage not in self._loaded:
            self._loaded[stage] = self.run.load(stage)
        return self._loaded[stage]

    def legal(self, op: str) -> list[Prompt]:
        """Every legal prompt of `op` (paper-spec §2.1), in enumeration order."""
        if op not in self._legal:
            legal = legal_prompts(
                op, max_single_token=self.task.max_answer, max_op=self.config.max_op
            )
            self._legal[op] = [p for p in legal if self.task.admits(p)]
        return self._legal[op]

    def select(self, op: str, key: str) -> list[Prompt]:
        """Prompts of `op` stored by the prompts stage as indices (`discovery`, ...)."""
        legal = self.legal(op)
        return [legal[i] for i in self.get("prompts")[0][f"{op_key(op)}_{key}"]]


def make_task(config: Config) -> SingleTokenTask | DigitTask:
    """The prompt layout of `config.model` (`task`)."""
    if config.model == SINGLE_TOKEN_MODEL:
        return SingleTokenTask()
    return DigitTask(
        converters.load_tokenizer(config.model, cache=True),
        tuple(config.op_digits),
        template=config.template,
        few_shot=config.few_shot,
        answer_digit=config.answer_digit,
    )


def load_model(name: str, mesh=None) -> Transformer:
    """The model under study (placed on `mesh` if given, see `converters.load`);
    importing `experiments.arith_model` registers arith-neox."""
    import experiments.arith_model  # noqa: F401

    if name not in MODEL_DEFAULTS:
        raise ValueError(
            f"the arithmetic pipeline runs on {sorted(MODEL_DEFAULTS)}, not {name!r}"
        )
    return converters.load(name, mesh=mesh)


def stages() -> list[tuple[str, Callable]]:
    """The stages in order, as `(name, function)`."""
    from . import circuit, data, dynamics, heuristics, knockouts, neurons, probes

    return [
        ("prompts", data.prompts_stage),
        ("patching", circuit.patching_stage),
        ("mean_cache", circuit.mean_cache_stage),
        ("circuit", circuit.circuit_stage),
        ("attribution", neurons.attribution_stage),
        ("topk", neurons.topk_stage),
        ("kmaps", heuristics.kmaps_stage),
        ("classify", heuristics.classify_stage),
        ("knockouts", knockouts.knockouts_stage),
        ("failures", knockouts.failures_stage),
        ("probes", probes.probes_stage),
        ("dynamics", dynamics.dynamics_stage),
    ]


def run(
    config: Config,
    out: str | pathlib.Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    only: tuple[str, ...] | None = None,
) -> pathlib.Path:
    """Runs (or resumes) every stage and writes the report.

    Arguments:
        config: the run's settings.
        out: run directory; a directory of another configuration is refused.
        overwrite: replace a directory of another configuration.
        progress: progress bars and one line per stage.
        only: run only these stages (they must come first or be done already).

    Returns:
        The path of the HTML report.
    """
    from . import report

    model = load_model(config.model)
    first_layer(config, model), top_k(config, model)  # bad values fail before any work
    identity = dict(
        dataclasses.asdict(config),
        model_digest=model_digest(model),
        pipeline=PIPELINE_VERSION,
    )
    rundir = RunDir(out, identity, overwrite=overwrite)
    ctx = Context(config, model, rundir, progress)
    chosen = [
        (name, stage)
        for name, stage in stages()
        if (only is None or name in only) and (name != "dynamics" or config.checkpoints)
    ]
    run_stages(rundir, chosen, ctx, progress)
    return report.write(ctx)

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
"""

import dataclasses
import pathlib
import time
from collections.abc import Callable

import numpy as np

import converters
from jaxinterp.model import Transformer
from jaxinterp.store import model_digest

from . import arith_tokenizer as tok
from .prompts import OPERATOR_NAMES, OPERATORS, Prompt, legal_prompts
from .rundir import RunDir

MODES = ("parity", "clean")
PIPELINE_VERSION = 2
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

    def get(self, stage: str) -> tuple[dict[str, np.ndarray], dict]:
        """`(arrays, summary)` of a finished stage (read once per context)."""
        if stage not in self._loaded:
            self._loaded[stage] = self.run.load(stage)
        return self._loaded[stage]

    def legal(self, op: str) -> list[Prompt]:
        """Every legal prompt of `op` (paper-spec §2.1), in enumeration order."""
        if op not in self._legal:
            self._legal[op] = legal_prompts(
                op, max_single_token=tok.MAX_NUMBER, max_op=self.config.max_op
            )
        return self._legal[op]

    def select(self, op: str, key: str) -> list[Prompt]:
        """Prompts of `op` stored by the prompts stage as indices (`discovery`, ...)."""
        legal = self.legal(op)
        return [legal[i] for i in self.get("prompts")[0][f"{op_key(op)}_{key}"]]


def tokens_of(prompts: list[Prompt]) -> np.ndarray:
    """`[prompt, 5]` token ids `[BOS, a, op, b, =]`."""
    return tok.encode_prompts(prompts)


def answers_of(prompts: list[Prompt]) -> np.ndarray:
    """`[prompt]` answer token ids."""
    return tok.answer_tokens(prompts)


def load_model(name: str) -> Transformer:
    """The model under study; importing `experiments.arith_model` registers arith-neox."""
    import experiments.arith_model  # noqa: F401

    if name != "arith-neox":
        raise ValueError(
            f"the arithmetic pipeline runs on models whose numbers 0..999 are single "
            f"tokens with the arithmetic tokenizer (arith-neox); {name!r} is not one yet"
        )
    return converters.load(name)


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
    for name, stage in stages():
        if only is not None and name not in only:
            continue
        if name == "dynamics" and not config.checkpoints:
            continue
        if rundir.done(name):
            if progress:
                print(f"[{name}] done before, kept")
            continue
        t0 = time.perf_counter()
        arrays, summary = stage(ctx)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        rundir.save(name, arrays, summary)
        if progress:
            print(f"[{name}] {summary['seconds']} s")
    return report.write(ctx)

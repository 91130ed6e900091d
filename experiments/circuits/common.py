"""What every classic-circuit experiment shares: the model and tokenizer, a resumable run
directory per experiment, and one report over all experiments run on a model.

Layout of `out` (default `results/circuits/<model>`):

    out/<experiment>/run.json, <stage>.npz, <stage>.json   (see `experiments.rundir`)
    out/<experiment>/summary.json                          (the experiment's numbers)
    out/report.html                                        (every finished experiment)

An experiment's settings are a frozen dataclass of `configs` (with a `model` field); its
module defines `STAGES` (`[(name, stage(ctx) -> (arrays, summary))]`), `summary(ctx) ->
dict` (the numbers of `summary.json`) and `section(ctx) -> str` (its report section), and
may define `show(ctx)` to print its result on the terminal.
"""

import dataclasses
import functools
import html
import pathlib
from types import ModuleType
from typing import Any

import numpy as np

import converters
from converters.tokenizer import TextTokenizer
from jaxinterp.model import Transformer
from jaxinterp.store import model_digest

from ..html_report import write_page
from ..rundir import RunDir, run_stages, write_json
from .configs import CONFIGS

__all__ = ["Context", "EXPERIMENTS", "run_experiment", "write_report", "load"]

CIRCUITS_VERSION = 1
"""Part of every run's identity: bumped when a stage's results change."""

EXPERIMENTS = tuple(CONFIGS)
"""Report order; each is a module of this package."""


@dataclasses.dataclass
class Context:
    """One experiment run: its settings, the model, the tokenizer and the run directory."""

    config: Any
    model: Transformer
    tokenizer: TextTokenizer
    run: RunDir
    progress: bool = True

    def get(self, stage: str) -> tuple[dict[str, np.ndarray], dict]:
        return self.run.load(stage)


@functools.cache
def load(name: str) -> tuple[Transformer, TextTokenizer]:
    """The model and its tokenizer (registry name, .gguf, HF directory or store)."""
    return converters.load(name), converters.load_tokenizer(name, cache=True)


def _module(experiment: str) -> ModuleType:
    import importlib

    if experiment not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}"
        )
    return importlib.import_module(f"{__package__}.{experiment}")


def run_experiment(
    experiment: str,
    config: Any,
    out: str | pathlib.Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> pathlib.Path:
    """Runs (or resumes) one experiment and rewrites the model's report.

    Arguments:
        experiment: one of `EXPERIMENTS`.
        config: the experiment's `Config`.
        out: the model's results directory; the experiment keeps its stages in
            `out/<experiment>`, which must hold no run of another configuration.
        overwrite: replace such a run.
        progress: progress bars and one line per stage.

    Returns:
        The path of the report.
    """
    module = _module(experiment)
    if not isinstance(config, CONFIGS[experiment]):
        raise TypeError(f"{experiment} takes a {CONFIGS[experiment].__name__}")
    model, tokenizer = load(config.model)
    identity = dict(
        dataclasses.asdict(config),
        experiment=experiment,
        model_digest=model_digest(model),
        version=CIRCUITS_VERSION,
    )
    # a cheap experiment (REPLACE = True) is rerun for a new configuration, e.g. another
    # prompt of the logit lens, instead of refusing the directory
    overwrite = overwrite or getattr(module, "REPLACE", False)
    rundir = RunDir(pathlib.Path(out) / experiment, identity, overwrite=overwrite)
    ctx = Context(config, model, tokenizer, rundir, progress)
    run_stages(rundir, module.STAGES, ctx, progress)
    if progress and hasattr(module, "show"):
        module.show(ctx)
    summary = dict(module.summary(ctx), config=dataclasses.asdict(config))
    write_json(rundir.path / "summary.json", summary)
    return write_report(out)


def write_report(out: str | pathlib.Path) -> pathlib.Path:
    """`out/report.html`: a section for every experiment whose stages all finished."""
    out = pathlib.Path(out)
    body = ["<h1>Classic circuits</h1>"]
    for experiment in EXPERIMENTS:
        marker = out / experiment / "run.json"
        if not marker.exists():
            continue
        module = _module(experiment)
        rundir = RunDir.existing(marker.parent)
        kind = CONFIGS[experiment]
        fields = {f.name for f in dataclasses.fields(kind)}
        config = kind(
            **{k: _tuples(v) for k, v in rundir.identity.items() if k in fields}
        )
        if not all(rundir.done(name) for name, _ in module.STAGES):
            continue
        model, tokenizer = load(config.model)
        body.append(module.section(Context(config, model, tokenizer, rundir, False)))
        seconds = sum(rundir.load(name)[1]["seconds"] for name, _ in module.STAGES)
        body.append(
            f"<p><i>Made by <code>jaxinterp {experiment} --model "
            f"{html.escape(config.model)}</code> in {seconds:.0f} s (settings: "
            f"<code>{experiment}/run.json</code>).</i></p>"
        )
    return write_page(out / "report.html", "classic circuits", body)


def _tuples(value):
    """JSON lists back to the tuples a frozen config holds."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value

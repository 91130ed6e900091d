"""Stage `dynamics` (paper-spec §10): the pipeline rerun over the model's shipped training
checkpoints, and how the final model's heuristics emerge.

Per checkpoint: its correct prompts (on a fixed sample of legal prompts; all checkpoints in
one program, vmapped over the stacked checkpoints), the filtered 50 prompts per operator,
attribution, top neurons, K/KV maps (per operator one operand grid over all stacked
checkpoints, each with its own neurons) and HYBRID labels. Then, as in the paper's Fig. 10:

* intersection: the share of the final model's (heuristic, layer, neuron) labels, among its
  top quarter of important neurons, that the checkpoint already has (mean over operators);
* mutual-neuron faithfulness (addition): the final circuit's heads, all MLPs below the
  first heuristic layer, and either every heuristic neuron of the checkpoint or only those
  whose label triple the final model shares; the checkpoint's own mean cache (over a
  strided operand subset, every `MEAN_STRIDE`-th operand, to keep it short);
* prompt knockout (addition and subtraction) at three neuron counts per layer, against the
  random control: every checkpoint its own prompts and sets, all in one program
  (`ablation_sweep(..., stacked=True, stacked_inputs=True)`).
"""

import random

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from experiments.arith_model import checkpoints
from experiments.arith_model.train import answer_logits
from jaxinterp.kernels.batching import stream
from jaxinterp.kernels.sweep import stack_size

from .circuit import circuit_heads, faithfulness, grid_means
from .heuristics import classify_maps, kmaps, neuron_list
from .knockouts import knock, prompt_knockout_masks
from .neurons import importance, top_neurons
from .pipeline import Context
from .prompts import counterfactual_pairs, filtered_50

MEAN_STRIDE = 5  # operands 0, 5, 10, ... for the checkpoints' mean caches


@eqx.filter_jit
def _predictions(stacked, tokens):
    """Greedy answer ids `[checkpoint, prompt]` of every stacked checkpoint."""

    return eqx.filter_vmap(lambda m: jnp.argmax(answer_logits(m, tokens), -1))(stacked)


def _label_set(labels: dict) -> set[tuple[str, int, int]]:
    return {
        (name, layer, n) for name, entries in labels.items() for layer, n, _ in entries
    }


def _checkpoints(ctx: Context) -> tuple[list[int], list]:
    steps, models = checkpoints.load()
    wanted = ctx.config.dynamics_steps
    if wanted is None:
        return steps, models
    missing = sorted(set(wanted) - set(steps))
    if missing:
        raise ValueError(f"no shipped checkpoint at steps {missing}; there are {steps}")
    keep = [i for i, s in enumerate(steps) if s in wanted]
    return [steps[i] for i in keep], [models[i] for i in keep]


def _correct_sets(ctx: Context, ops: list[str], stacked) -> list[dict]:
    """Per checkpoint, op -> its correct prompts among a fixed sample of legal ones;
    every checkpoint in one program (vmapped over the stacked checkpoints)."""
    n_models = stack_size(stacked)
    rng = np.random.default_rng(0)
    out = [{} for _ in range(n_models)]
    for op in ops:
        legal = ctx.legal(op)
        n = min(ctx.config.dynamics_prompts, len(legal))
        sample = [legal[i] for i in np.sort(rng.choice(len(legal), n, replace=False))]
        preds = stream(
            lambda t: _predictions(stacked, t),
            ctx.tokens(sample),
            batch_size=ctx.config.batch_size * 4,
            desc="checkpoints",
            progress_bar=ctx.progress,
            axis=1,
        )  # [checkpoint, prompt]
        ok = np.asarray(preds) == ctx.answers(sample)
        for c in range(n_models):
            out[c][op] = [p for p, hit in zip(sample, ok[c], strict=True) if hit]
    return out


def _analyse(ctx: Context, models: list, stacked, correct: list[dict]) -> list[dict]:
    """Every checkpoint through the pipeline: filtered prompts, attribution and top
    neurons (per checkpoint), then per operator the K/KV maps of all checkpoints from one
    operand grid over the stacked checkpoints, and HYBRID labels (paper-spec §10)."""
    runs = []
    for model, sets in zip(models, correct, strict=True):
        ops = list(sets)
        filtered = filtered_50(sets, seed=42, k=ctx.config.n_discovery)
        pool = [p for op in ops for p in filtered[op]]
        rng = random.Random(42)
        distinct = ctx.config.mode == "clean"
        clean = [p for op in ops for p in filtered[op]]
        corrupt = [
            p
            for op in ops
            for p in counterfactual_pairs(
                filtered[op], pool, rng=rng, distinct_answers=distinct
            )
        ]
        top = top_neurons(ctx, importance(ctx, model, clean, corrupt, len(ops))[0])
        runs.append(
            dict(filtered=filtered, top=top, labels={}, classified={}, correct=sets)
        )
    for i, op in enumerate(correct[0]):
        neurons = np.stack([neuron_list(ctx, run["top"][i]) for run in runs])
        K, KV, pairs = kmaps(ctx, stacked, op, neurons, stacked=True)
        for run, k, kv, own in zip(runs, K, KV, neurons, strict=True):
            run["labels"][op], run["classified"][op], _ = classify_maps(
                ctx, op, k, kv, pairs, own, ctx.config.threshold
            )
    return runs


def _intersection(ctx: Context, runs: list[dict]) -> np.ndarray:
    """Fig. 10a: share of the final model's labels on its top quarter of neurons that each
    checkpoint already has, mean over operators."""
    final, ops = runs[-1], list(runs[-1]["labels"])
    quarter = max(1, ctx.top_k // 4)
    out = np.zeros(len(runs))
    for i, op in enumerate(ops):
        keep = {
            (layer, int(n))
            for layer, row in zip(ctx.heuristic_layers, final["top"][i], strict=True)
            for n in row[:quarter]
        }
        goal = {t for t in _label_set(final["labels"][op]) if (t[1], t[2]) in keep}
        for c, run in enumerate(runs):
            found = len(goal & _label_set(run["labels"][op]))
            out[c] += found / max(1, len(goal)) / len(ops)
    return out


def _mutual_faithfulness(ctx: Context, models: list, runs: list[dict]) -> np.ndarray:
    """Fig. 10b, addition: `[checkpoint, 2]` faithfulness of the final circuit's heads +
    earlier MLPs + (all heuristic neurons of the checkpoint, only those whose label the
    final model shares), each with the checkpoint's own mean cache."""
    mcfg = ctx.model.cfg
    heads = np.broadcast_to(circuit_heads(ctx, "+"), (2, mcfg.n_layers, mcfg.n_heads))
    values = np.arange(0, ctx.config.max_op, MEAN_STRIDE)
    final = _label_set(runs[-1]["labels"]["+"])
    out = np.zeros((len(runs), 2))
    for c, (model, run) in enumerate(zip(models, runs, strict=True)):
        sets = np.zeros((2, mcfg.n_layers, mcfg.d_mlp), bool)
        sets[:, : ctx.first_layer] = True
        for name, layer, n in _label_set(run["labels"]["+"]):
            sets[0, layer, n] = True
            sets[1, layer, n] |= (name, layer, n) in final
        correct = run["correct"]["+"]
        sample = random.Random(42).sample(correct, min(50, len(correct)))
        means = grid_means(ctx, model, values, values)
        out[c] = faithfulness(ctx, sample, heads, sets, model=model, means=means)[0]
    return out


def _knockouts(ctx: Context, stacked, runs: list[dict], grid: list[int]):
    """Fig. 10c: prompt knockout at each checkpoint, mean over + and -: `(heuristic,
    control)` accuracies `[checkpoint, L]`. Each checkpoint runs its own filtered prompts
    of both operators with its own sets, every checkpoint in one program."""
    ops = list(runs[-1]["labels"])
    knock_ops = [op for op in ops if op in "+-"]
    prompts, masks, owners = [], [], []  # per checkpoint, both operators
    for run in runs:
        own, own_masks = [], []
        for op in knock_ops:
            filtered = run["filtered"][op]
            top = run["top"][ops.index(op)]
            m, _ = prompt_knockout_masks(
                ctx, op, filtered, top, grid=grid, labels=run["labels"][op]
            )
            own, own_masks = own + filtered, own_masks + [m]
        prompts.append(own)
        masks.append(np.concatenate(own_masks))
        owners.append(
            np.repeat(knock_ops, [len(run["filtered"][op]) for op in knock_ops])
        )
    # every checkpoint padded to as many prompts as the longest list (results dropped)
    n = max(len(own) for own in prompts)
    filler = next(own[0] for own in prompts if own)
    padded = [own + [own[-1] if own else filler] * (n - len(own)) for own in prompts]
    masks = np.stack(
        [np.concatenate([m, np.zeros((n - len(m), *m.shape[1:]), bool)]) for m in masks]
    )
    acc = knock(ctx, padded, masks, stacked)  # [checkpoint, prompt, 2 * L]
    heuristic = np.zeros((len(runs), len(grid)))
    control = np.zeros((len(runs), len(grid)))
    for c, owner in enumerate(owners):
        for op in knock_ops:
            rows = acc[c, : len(owner)][owner == op]
            mean = rows.mean(0) if len(rows) else np.full(2 * len(grid), np.nan)
            heuristic[c] += mean[: len(grid)] / len(knock_ops)
            control[c] += mean[len(grid) :] / len(knock_ops)
    return heuristic, control


def dynamics_stage(ctx: Context):
    cfg = ctx.config
    ops = [op for op in cfg.operators if op in cfg.dynamics_ops]
    if not ops:
        raise ValueError(
            f"no operator of {cfg.ops!r} is in dynamics_ops {cfg.dynamics_ops!r}"
        )
    steps, models = _checkpoints(ctx)
    stacked = checkpoints.stack(models)
    correct = _correct_sets(ctx, ops, stacked)
    runs = _analyse(ctx, models, stacked, correct)
    faith = np.full((len(steps), 2), np.nan)
    if "+" in ops:
        faith = _mutual_faithfulness(ctx, models, runs)
    grid = sorted({max(1, ctx.top_k // d) for d in (16, 8, 4)})
    knock_h, knock_c = _knockouts(ctx, stacked, runs, grid)
    accuracy = np.array(
        [
            [len(c[op]) / min(cfg.dynamics_prompts, len(ctx.legal(op))) for op in ops]
            for c in correct
        ]
    )
    ratio = faith[:, 1] / faith[:, 0]
    summary = {
        "steps": steps,
        "ops": ops,
        "L": grid,
        "mutual_ratio": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else None,
        "classified": [run["classified"] for run in runs],
    }
    arrays = dict(
        steps=np.array(steps),
        accuracy=accuracy,
        intersection=_intersection(ctx, runs),
        faith_all=faith[:, 0],
        faith_mutual=faith[:, 1],
        knock_heuristic=knock_h,
        knock_control=knock_c,
    )
    return arrays, summary

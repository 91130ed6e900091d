"""Stage `dynamics` (paper-spec §10): the pipeline rerun over the model's shipped training
checkpoints, and how the final model's heuristics emerge.

Per checkpoint: its correct prompts (on a fixed sample of legal prompts; all checkpoints in
one program, vmapped over the stacked checkpoints), the filtered 50 prompts per operator,
attribution, top neurons, K/KV maps and HYBRID labels. Then, as in the paper's Fig. 10:

* intersection: the share of the final model's (heuristic, layer, neuron) labels, among its
  top quarter of important neurons, that the checkpoint already has (mean over operators);
* mutual-neuron faithfulness (addition): the final circuit's heads, all MLPs below the
  first heuristic layer, and either every heuristic neuron of the checkpoint or only those
  whose label triple the final model shares; the checkpoint's own mean cache (over a
  strided operand subset, every `MEAN_STRIDE`-th operand, to keep it short);
* prompt knockout (addition and subtraction) at three neuron counts per layer, against the
  random control.
"""

import random

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.arith_model import checkpoints
from jaxinterp.kernels.batching import stream

from . import arith_tokenizer as tok
from .circuit import circuit_heads, faithfulness, grid_means
from .heuristics import classify_maps, kmaps
from .knockouts import prompt_knockout
from .neurons import importance, top_neurons
from .pipeline import Context, answers_of, tokens_of
from .prompts import counterfactual_pairs, filtered_50

MEAN_STRIDE = 5  # operands 0, 5, 10, ... for the checkpoints' mean caches


@eqx.filter_jit
def _predictions(stacked, tokens):
    """Greedy answer ids `[checkpoint, prompt]` of every stacked checkpoint."""

    def one(model):
        return jnp.argmax(jax.vmap(model)(tokens)[:, -1], -1)

    return eqx.filter_vmap(one)(stacked)


def _label_set(labels: dict) -> set[tuple[str, int, int]]:
    return {
        (name, layer, n) for name, entries in labels.items() for layer, n, _ in entries
    }


def dynamics_stage(ctx: Context):
    cfg = ctx.config
    ops = [op for op in cfg.operators if op in cfg.dynamics_ops]
    if not ops:
        raise ValueError(
            f"no operator of {cfg.ops!r} is in dynamics_ops {cfg.dynamics_ops!r}"
        )
    steps, models = checkpoints.load()
    if cfg.dynamics_steps is not None:
        missing = sorted(set(cfg.dynamics_steps) - set(steps))
        if missing:
            raise ValueError(
                f"no shipped checkpoint at steps {missing}; there are {steps}"
            )
        keep = [i for i, s in enumerate(steps) if s in cfg.dynamics_steps]
        steps, models = [steps[i] for i in keep], [models[i] for i in keep]
    stacked = checkpoints.stack(models)
    rng = np.random.default_rng(0)
    samples = {}
    for op in ops:
        legal = ctx.legal(op)
        idx = rng.choice(
            len(legal), min(cfg.dynamics_prompts, len(legal)), replace=False
        )
        samples[op] = [legal[i] for i in np.sort(idx)]
    preds = {
        op: np.asarray(
            stream(
                lambda t: _predictions(stacked, t),
                tokens_of(samples[op]),
                batch_size=cfg.batch_size * 4,
                desc="checkpoints",
                progress_bar=ctx.progress,
                axis=1,
            )
        )
        for op in ops
    }  # op -> [checkpoint, prompt]
    accuracy = np.array(
        [
            [(preds[op][c] == answers_of(samples[op])).mean() for op in ops]
            for c in range(len(steps))
        ]
    )
    per_ckpt = []
    for c, model in enumerate(models):
        correct = {
            op: [
                p
                for p, ok in zip(
                    samples[op], preds[op][c] == answers_of(samples[op]), strict=True
                )
                if ok
            ]
            for op in ops
        }
        filtered = filtered_50(correct, seed=42, k=cfg.n_discovery)
        pool = [p for op in ops for p in filtered[op]]
        rng_cf = random.Random(42)
        corrupt = [
            p
            for op in ops
            for p in counterfactual_pairs(
                filtered[op], pool, rng=rng_cf, distinct_answers=cfg.mode == "clean"
            )
        ]
        clean = [p for op in ops for p in filtered[op]]
        imp = importance(ctx, model, clean, corrupt, len(ops))[0]
        top = top_neurons(ctx, imp)
        labels, classified = {}, {}
        for i, op in enumerate(ops):
            neurons = np.array(
                [
                    (layer, int(n))
                    for layer, row in zip(ctx.heuristic_layers, top[i], strict=True)
                    for n in row
                ]
            )
            K, KV, pairs = kmaps(ctx, model, op, neurons)
            labels[op], classified[op], _ = classify_maps(
                ctx, op, K, KV, pairs, neurons, cfg.threshold
            )
        per_ckpt.append(
            dict(
                filtered=filtered,
                top=top,
                labels=labels,
                classified=classified,
                correct=correct,
            )
        )
    final = per_ckpt[-1]
    # Fig. 10a: the final model's labels on its top quarter of neurons, found earlier
    quarter = max(1, ctx.top_k // 4)
    intersection = np.zeros(len(steps))
    for i, op in enumerate(ops):
        keep = {
            (layer, int(n))
            for layer, row in zip(ctx.heuristic_layers, final["top"][i], strict=True)
            for n in row[:quarter]
        }
        goal = {t for t in _label_set(final["labels"][op]) if (t[1], t[2]) in keep}
        for c, run in enumerate(per_ckpt):
            intersection[c] += (
                len(goal & _label_set(run["labels"][op])) / max(1, len(goal)) / len(ops)
            )
    # Fig. 10b: faithfulness with all vs mutual heuristic neurons (addition)
    faith_all = np.full(len(steps), np.nan)
    faith_mutual = np.full(len(steps), np.nan)
    if "+" in ops:
        mcfg = ctx.model.cfg
        heads = np.broadcast_to(
            circuit_heads(ctx, "+"), (2, mcfg.n_layers, mcfg.n_heads)
        )
        numbers = tok.NUMBER_OFFSET + np.arange(0, cfg.max_op, MEAN_STRIDE)
        final_set = _label_set(final["labels"]["+"])
        for c, (model, run) in enumerate(zip(models, per_ckpt, strict=True)):
            sets = np.zeros((2, mcfg.n_layers, mcfg.d_mlp), bool)
            sets[:, : ctx.first_layer] = True
            for name, layer, n in _label_set(run["labels"]["+"]):
                sets[0, layer, n] = True
                if (name, layer, n) in final_set:
                    sets[1, layer, n] = True
            sample = random.Random(42).sample(
                run["correct"]["+"], min(50, len(run["correct"]["+"]))
            )
            means = grid_means(ctx, model, numbers)
            f, _ = faithfulness(ctx, sample, heads, sets, model=model, means=means)
            faith_all[c], faith_mutual[c] = f
    # Fig. 10c: prompt knockout across training (addition and subtraction)
    grid = sorted({max(1, ctx.top_k // d) for d in (16, 8, 4)})
    knock_h = np.zeros((len(steps), len(grid)))
    knock_c = np.zeros((len(steps), len(grid)))
    knock_ops = [op for op in ops if op in "+-"]
    for c, (model, run) in enumerate(zip(models, per_ckpt, strict=True)):
        for op in knock_ops:
            i = ops.index(op)
            out = prompt_knockout(
                ctx,
                op,
                run["filtered"][op],
                run["top"][i],
                labels=run["labels"][op],
                model=model,
                grid=grid,
            )
            knock_h[c] += np.array(out["heuristic"]) / len(knock_ops)
            knock_c[c] += np.array(out["control"]) / len(knock_ops)
    ratio = faith_mutual / faith_all
    summary = {
        "steps": steps,
        "ops": ops,
        "L": grid,
        "mutual_ratio": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else None,
        "classified": [run["classified"] for run in per_ckpt],
    }
    arrays = dict(
        steps=np.array(steps),
        accuracy=accuracy,
        intersection=intersection,
        faith_all=faith_all,
        faith_mutual=faith_mutual,
        knock_heuristic=knock_h,
        knock_control=knock_c,
    )
    return arrays, summary

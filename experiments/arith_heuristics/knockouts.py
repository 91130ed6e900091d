"""Stages `knockouts` and `failures` (paper-spec §8, §9): zero-ablating the neurons of one
heuristic type on related vs unrelated prompts, prompt-guided knockout against a random
control, and heuristic neurons on correct vs incorrect prompts.

Every knockout is zero ablation of `mlp.hook_post` at all positions (after a few-shot
prefix, all positions of the question: `Context.edited`) and is measured by accuracy on
prompts the model answers correctly. Each prompt carries its own neuron sets
(`ablation_sweep(..., masks_per_prompt=True)`): one compiled program per experiment, no
loop of forwards over heuristics, prompts or neuron counts.
"""

import random

import numpy as np

from jaxinterp.kernels import ablation_sweep
from jaxinterp.kernels.metrics import accuracy

from . import classify as clf
from .circuit import eval_sample
from .heuristics import knockout_threshold, labels_of
from .pipeline import Context, op_key

MAX_RELATED = 100  # related prompts per heuristic (official)
MIN_NEURONS = 10  # heuristics with fewer neurons are not knocked out (official)


def _association(ctx: Context, op: str, names: list[str], prompts: list) -> np.ndarray:
    op1 = np.array([p.op1 for p in prompts])
    op2 = np.array([p.op2 for p in prompts])
    return clf.associated(names, op1, op2, op, mode=ctx.config.mode)


def knock(ctx: Context, prompts: list, masks: np.ndarray, models=None) -> np.ndarray:
    """Accuracy `[prompt, set]` with each prompt's own neuron sets `[prompt, set, layer,
    d_mlp]` zero-ablated at every position.

    With `models` (checkpoints stacked on a leading axis), `prompts` is one list per model
    (equally long), `masks` is `[checkpoint, prompt, set, layer, d_mlp]` and the accuracy
    `[checkpoint, prompt, set]`: every model its own prompts, in one program."""
    if models is None:
        tokens, answers = ctx.tokens(prompts), ctx.answers(prompts)
    else:
        tokens = np.stack([ctx.tokens(own) for own in prompts])
        answers = np.stack([ctx.answers(own) for own in prompts])
    return np.asarray(
        ablation_sweep(
            ctx.model if models is None else models,
            tokens,
            masks,
            metric=accuracy,
            metric_args=(answers,),
            positions=ctx.edited(tokens.reshape(-1, tokens.shape[-1])),
            masks_per_prompt=True,
            batch_size=max(1, ctx.config.batch_size // 4),
            progress_bar=ctx.progress,
            stacked=models is not None,
            stacked_inputs=models is not None,
        )
    )


def _mask(ctx: Context, neurons) -> np.ndarray:
    mcfg = ctx.model.cfg
    mask = np.zeros((mcfg.n_layers, mcfg.d_mlp), bool)
    for layer, n, *_ in neurons:
        mask[layer, n] = True
    return mask


def heuristic_knockout(ctx: Context, op: str) -> dict:
    """§8.1: per heuristic type (most neurons first, while it has >= MIN_NEURONS), the
    accuracy on up to 100 related correct prompts and as many unrelated ones with all its
    neurons zeroed."""
    labels = labels_of(ctx, op, knockout_threshold(ctx))
    names = sorted(labels, key=lambda n: -len(labels[n]))
    names = [n for n in names if len(labels[n]) >= MIN_NEURONS]
    correct = ctx.select(op, "correct")
    related_all = _association(ctx, op, names, correct) if names else None
    rng = random.Random(42)
    prompts, masks, spans = [], [], []
    for i, name in enumerate(names):
        related = list(np.flatnonzero(related_all[i]))
        unrelated = list(np.flatnonzero(~related_all[i]))
        if len(related) > MAX_RELATED:
            related = rng.sample(related, MAX_RELATED)
        unrelated = rng.sample(unrelated, min(len(related), len(unrelated)))
        if not related or not unrelated:
            continue
        start = len(prompts)
        prompts += [correct[j] for j in related + unrelated]
        masks += [_mask(ctx, labels[name])] * (len(related) + len(unrelated))
        spans.append((name, start, len(related), len(unrelated)))
    out = {
        "names": [],
        "related": [],
        "unrelated": [],
        "n_neurons": [],
        "n_prompts": [],
    }
    if not prompts:
        return out
    acc = knock(ctx, prompts, np.stack(masks)[:, None])[:, 0]
    for name, start, n_rel, n_unrel in spans:
        out["names"].append(name)
        out["related"].append(float(acc[start : start + n_rel].mean()))
        out["unrelated"].append(
            float(acc[start + n_rel : start + n_rel + n_unrel].mean())
        )
        out["n_neurons"].append(len(labels[name]))
        out["n_prompts"].append(n_rel)
    return out


def l_grid(top_k: int) -> list[int]:
    """Ablated neurons per layer: 0 to half the top neurons in about 20 steps (official:
    0..100 by 5 for 200 top neurons)."""
    return list(range(0, top_k // 2 + 1, max(1, round(top_k / 40))))


def prompt_knockout(
    ctx: Context,
    op: str,
    prompts: list,
    top: np.ndarray,
    *,
    grid: list[int] | None = None,
) -> dict:
    """§8.2: per prompt, zero the first L neurons per layer of its associated heuristics
    (by priority), against L random neurons per layer of the layer's top neurons.

    Arguments:
        top: int `[heuristic layer, k]` important neurons of the operator.
        grid: the values of L (default `l_grid`).
    """
    grid = l_grid(ctx.top_k) if grid is None else grid
    masks, n_ablated = prompt_knockout_masks(ctx, op, prompts, top, grid=grid)
    return knockout_summary(grid, knock(ctx, prompts, masks), n_ablated)


def knockout_summary(grid: list[int], acc: np.ndarray, n_ablated: np.ndarray) -> dict:
    """The prompt knockout's result from its accuracies `[prompt, 2 * L]` (heuristic
    neurons, then the random control) and neuron counts `[prompt, L]`."""
    return {
        "L": grid,
        "heuristic": acc[:, : len(grid)].mean(0).tolist(),
        "control": acc[:, len(grid) :].mean(0).tolist(),
        "n_ablated": n_ablated.mean(0).tolist(),
        "baseline": float(acc[:, 0].mean()),
    }


def prompt_knockout_masks(
    ctx: Context,
    op: str,
    prompts: list,
    top: np.ndarray,
    *,
    grid: list[int],
    labels: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The sets of `prompt_knockout`: `masks [prompt, 2 * L, layer, d_mlp]` (each L's
    heuristic neurons, then each L's random control) and `n_ablated [prompt, L]`.

    Arguments:
        labels: the labels of another model (a checkpoint) instead of this run's."""
    clean = ctx.config.mode == "clean"
    labels = labels_of(ctx, op, ctx.config.threshold, labels)
    names = list(labels)
    assoc = (
        _association(ctx, op, names, prompts)
        if names
        else np.zeros((0, len(prompts)), bool)
    )
    rng = random.Random(42)
    masks = np.zeros(
        (len(prompts), 2 * len(grid), ctx.model.cfg.n_layers, ctx.model.cfg.d_mlp), bool
    )
    n_ablated = np.zeros((len(prompts), len(grid)))
    for i in range(len(prompts)):
        priority: dict[tuple[int, int], float] = {}
        for name in (names[h] for h in np.flatnonzero(assoc[:, i])):
            for layer, n, score in labels[name]:
                priority[(layer, n)] = priority.get((layer, n), 0.0) + (
                    score if clean else 1.0
                )
        ranked = sorted(priority, key=lambda ln: -priority[ln])  # stable
        for j, layer in enumerate(ctx.heuristic_layers):
            chosen = [n for (lay, n) in ranked if lay == layer]
            excluded = set(chosen) if clean else set()
            for g, L in enumerate(grid):
                picked = chosen[:L]
                masks[i, g, layer, picked] = True
                n_ablated[i, g] += len(picked)
                pool = [int(n) for n in top[j] if n not in (excluded or set(picked))]
                control = rng.sample(pool, min(len(picked), len(pool)))
                masks[i, len(grid) + g, layer, control] = True
    return masks, n_ablated


def knockouts_stage(ctx: Context):
    tops = ctx.get("attribution")[0]["top"]
    summary = {"heuristic": {}, "prompt": {}, "threshold": knockout_threshold(ctx)}
    for i, op in enumerate(ctx.config.operators):
        summary["heuristic"][op] = heuristic_knockout(ctx, op)
        prompts = eval_sample(ctx, op, 42)
        summary["prompt"][op] = prompt_knockout(ctx, op, prompts, tops[i])
    return {}, summary


def failures_stage(ctx: Context):
    """§9: associated heuristic neurons and their summed KV value (the logit they give the
    correct answer) on correct vs incorrect prompts."""
    maps = ctx.get("kmaps")[0]
    summary = {}
    rng = random.Random(42)
    arrays = {}
    for op in ctx.config.operators:
        key = op_key(op)
        legal = ctx.legal(op)
        prompt_sets = ctx.get("prompts")[0]
        correct_idx = list(prompt_sets[f"{key}_discovery"])
        wrong = list(prompt_sets[f"{key}_incorrect"])
        wrong_idx = rng.sample(wrong, min(len(correct_idx), len(wrong)))
        labels = labels_of(ctx, op, ctx.config.threshold)
        names = list(labels)
        rows = {tuple(nl): r for r, nl in enumerate(maps[f"neurons_{key}"].tolist())}
        kv = maps[f"KV_{key}"]
        out = {}
        for kind, idx in (("correct", correct_idx), ("incorrect", wrong_idx)):
            prompts = [legal[i] for i in idx]
            if not prompts or not names:
                out[kind] = {"n_neurons": [], "contribution": []}
                continue
            assoc = _association(ctx, op, names, prompts)
            counts, totals = [], []
            for j, pair in enumerate(idx):
                neurons = {
                    (l, n)
                    for h in np.flatnonzero(assoc[:, j])
                    for l, n, _ in labels[names[h]]
                }
                counts.append(len(neurons))
                totals.append(float(sum(kv[rows[ln], pair] for ln in neurons)))
            out[kind] = {"n_neurons": counts, "contribution": totals}
            arrays[f"{key}_{kind}_contribution"] = np.array(totals)
        summary[op] = out
    return arrays, summary

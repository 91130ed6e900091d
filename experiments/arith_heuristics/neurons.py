"""Stages `attribution` and `topk` (paper-spec §6): neuron effects by attribution patching,
the important neurons per layer, faithfulness against the number of kept neurons, operator
overlap, and a check of attribution against exact patching.

Attribution (as the official code does it, instead of patching neurons one by one): the
gradient of Eq. 1 at the clean run times the activation change `a_corrupt - a_clean`, for
every neuron of every layer at every position. At the clean run Eq. 1's gradient equals that
of `0.5 [log P*(r') - log P*(r)]` (`half_log_ratio`), which is what is differentiated here:
the same scores, and a smooth metric whose exact patching effects the linear estimate can be
checked against (Eq. 1's own values explode where P(r') or P*(r) is tiny). A neuron's
importance for an operator is `mean + std` over its discovery prompts of the score at the
last position; the top `k` per layer from the first heuristic layer on are its important
neurons.
"""

import numpy as np

from jaxinterp.kernels import attribution_patching, attribution_vs_exact
from jaxinterp.kernels.metrics import log_prob

from .circuit import circuit_heads, counterfactual_sets, eval_sample, faithfulness
from .pipeline import Context, op_key

N_CHECK = 64  # neurons compared with exact patching


def half_log_ratio(logits, r, r_prime):
    """`0.5 [log P(r') - log P(r)]`: its gradient at the clean run is Eq. 1's."""
    return 0.5 * (log_prob(logits, r_prime) - log_prob(logits, r))


def importance(ctx: Context, model, clean: list, corrupt: list, n_ops: int):
    """`(importance [op, layer, d_mlp], scores, (tokens, corrupt tokens, metric args))`:
    mean + std over each operator's prompts (consecutive blocks of `clean`) of the
    attribution score at the last position."""
    ct, xt = ctx.tokens(clean), ctx.tokens(corrupt)
    margs = (ctx.answers(clean), ctx.answers(corrupt))
    scores = attribution_patching(
        model,
        ct,
        xt,
        metric=half_log_ratio,
        metric_args=margs,
        batch_size=max(1, ctx.config.batch_size // 8),
        progress_bar=ctx.progress,
    )["mlp.hook_post"]
    last = np.asarray(scores[:, :, -1], np.float64)  # [prompt, layer, d_mlp]
    last = last.reshape(n_ops, -1, *last.shape[1:])
    imp = np.nan_to_num(last.mean(1) + last.std(1, ddof=1))
    return imp, scores, (ct, xt, margs)


def top_neurons(ctx: Context, imp: np.ndarray) -> np.ndarray:
    """int `[op, heuristic layer, top_k]`: the most important neurons per layer."""
    top = np.argsort(-imp, axis=-1, kind="stable")[..., : ctx.top_k]
    return top[:, ctx.first_layer :]


def attribution_stage(ctx: Context):
    cfg, model = ctx.config, ctx.model
    pairs = counterfactual_sets(ctx, seed=42)
    clean = [p for op in cfg.operators for p in pairs[op][0]]
    corrupt = [p for op in cfg.operators for p in pairs[op][1]]
    imp, scores, (ct, xt, margs) = importance(
        ctx, model, clean, corrupt, len(cfg.operators)
    )
    top = top_neurons(ctx, imp)

    # attribution against exact patching of single neurons at '=', on all discovery
    # pairs: the N_CHECK / 2 most important neurons (any operator) and as many random ones
    d_mlp = model.cfg.d_mlp
    best = np.argsort(-imp.max(0).ravel(), kind="stable")[: N_CHECK // 2]
    rand = np.random.default_rng(0).choice(imp[0].size, N_CHECK // 2, replace=False)
    flat = np.concatenate([best, rand])
    cells = np.stack(
        [flat // d_mlp, np.full(N_CHECK, ct.shape[1] - 1), flat % d_mlp], 1
    )
    check = attribution_vs_exact(
        model,
        ct,
        xt,
        cells,
        metric=half_log_ratio,
        metric_args=margs,
        scores=scores,
        batch_size=cfg.batch_size // 4,
    )
    attr, exact = np.asarray(check["attribution"]), np.asarray(check["exact"])
    summary = {
        "top_k": ctx.top_k,
        "first_layer": ctx.first_layer,
        "attribution_vs_exact": {
            "n_cells": N_CHECK,
            "pearson": check["pearson"],
            "pearson_mean": check["pearson_mean"],
            "spearman_mean": _spearman(attr.mean(0), exact.mean(0)),
        },
        "overlap_iou": _overlap(ctx, top),
    }
    arrays = {"importance": imp, "top": top}
    return arrays, summary


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if x.size > 1 else float("nan")


def _overlap(ctx: Context, top: np.ndarray) -> dict:
    """IoU of the operators' important-neuron sets (paper-spec §6.3)."""
    sets = [
        {(layer, int(n)) for layer, row in enumerate(top[i]) for n in row}
        for i in range(len(ctx.config.operators))
    ]
    ops = ctx.config.operators
    return {
        f"{a}{b}": len(sets[i] & sets[j]) / len(sets[i] | sets[j])
        for i, a in enumerate(ops)
        for j, b in enumerate(ops)
        if i < j
    }


def k_grid(d_mlp: int) -> np.ndarray:
    """Kept neurons per layer for the faithfulness curve: about 64 steps, plus all."""
    step = max(1, d_mlp // 64)
    return np.array(sorted(set(range(0, d_mlp, step)) | {d_mlp}))


def neuron_sets(ctx: Context, order: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """bool `[k, layer, d_mlp]`: all neurons below the first heuristic layer, the top `k`
    of `order` (`[heuristic layer, d_mlp]`, best first) from it on."""
    mcfg = ctx.model.cfg
    sets = np.ones((len(ks), mcfg.n_layers, mcfg.d_mlp), bool)
    sets[:, ctx.first_layer :] = False
    for i, k in enumerate(ks):
        for j, layer in enumerate(ctx.heuristic_layers):
            sets[i, layer, order[j, :k]] = True
    return sets


def topk_stage(ctx: Context):
    cfg, mcfg = ctx.config, ctx.model.cfg
    importance = ctx.get("attribution")[0]["importance"]
    k_small = max(1, round(0.015 * mcfg.d_mlp))  # the paper's "about 1.5% per layer"
    ks = np.union1d(k_grid(mcfg.d_mlp), [k_small])
    arrays, summary = {"k": ks}, {"faithfulness_at_1.5%": {}, "k_for_0.9": {}}
    summary["k_1.5%"] = k_small
    for i, op in enumerate(cfg.operators):
        order = np.argsort(-importance[i, ctx.first_layer :], axis=-1, kind="stable")
        sets = neuron_sets(ctx, order, ks)
        heads = circuit_heads(ctx, op)
        heads = np.broadcast_to(heads, (len(ks), *heads.shape))
        curves = []
        for seed in cfg.eval_seeds:
            sample = eval_sample(ctx, op, seed)
            if cfg.mode == "parity":
                sample = [p for p in sample if p.result != 0]
            curves.append(faithfulness(ctx, sample, heads, sets)[0])
        curve = np.mean(curves, 0)
        arrays[f"{op_key(op)}_curve"] = curve
        summary["faithfulness_at_1.5%"][op] = float(curve[ks == k_small][0])
        reached = np.flatnonzero(curve >= 0.9)
        summary["k_for_0.9"][op] = int(ks[reached[0]]) if reached.size else None
    return arrays, summary

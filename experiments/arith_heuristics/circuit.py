"""Stages `patching`, `mean_cache` and `circuit` (paper-spec §3, §4): activation patching of
every head and MLP at every position of the question with counterfactual prompts, the mean
cache of all 4 x 300 x 300 prompts, and the faithfulness of the top-n heads plus all MLPs.

Effects of patching one component, per prompt, with P the clean and P* the patched softmax,
r the clean and r' the counterfactual answer:

* `ie`: the paper's Eq. 1, `0.5 [(P*(r') - P(r')) / P(r') + (P(r) - P*(r)) / P*(r)]`.
  Unbounded: on a confident model P(r') and P*(r) are tiny, so a few prompts dominate.
* `bounded`: `0.5 [(P*(r') - P(r')) + (P(r) - P*(r))]`, in [-1, 1].
* `logit_diff`: the change of `logit(r') - logit(r)`.
"""

import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.kernels import (
    ablation_sweep,
    activation_patching,
    answer_logits,
    operand_grid,
)
from jaxinterp.kernels.attribution import pearson
from jaxinterp.kernels.batching import NonFiniteWarning
from jaxinterp.kernels.means import mean_cache
from jaxinterp.kernels.metrics import indirect_effect, normalized_logit, pick

from .pipeline import Context, op_key
from .prompts import (
    OPERATORS,
    counterfactual_pairs,
    evaluation_sample,
    operand_range,
)

EFFECTS = ("ie", "bounded", "logit_diff")
MEAN_TAPS = ("attn.hook_z", "mlp.hook_post")


def effects(logits, clean_logits, r, r_prime):
    """The three effects of one patched run (module docstring)."""
    p, clean = jax.nn.softmax(logits), jax.nn.softmax(clean_logits)
    bounded = 0.5 * (
        (pick(p, r_prime) - pick(clean, r_prime)) + (pick(clean, r) - pick(p, r))
    )
    diff = pick(logits, r_prime) - pick(logits, r)
    clean_diff = pick(clean_logits, r_prime) - pick(clean_logits, r)
    return {
        "ie": indirect_effect(logits, clean_logits, r, r_prime),
        "bounded": bounded,
        "logit_diff": diff - clean_diff,
    }


def rank_effect(ctx: Context) -> str:
    """The effect that ranks heads: Eq. 1 in parity mode, its bounded form in clean mode."""
    return "ie" if ctx.config.mode == "parity" else "bounded"


def counterfactual_sets(ctx: Context, seed: int) -> dict[str, tuple[list, list]]:
    """op -> (clean discovery prompts, counterfactuals from all operators' discovery
    prompts), drawn with `random.Random(seed)` in operator order."""
    rng = random.Random(seed)
    discovery = {op: ctx.select(op, "discovery") for op in ctx.config.operators}
    pool = [p for op in ctx.config.operators for p in discovery[op]]
    distinct = ctx.config.mode == "clean"
    return {
        op: (
            clean,
            counterfactual_pairs(clean, pool, rng=rng, distinct_answers=distinct),
        )
        for op, clean in discovery.items()
    }


def patching_stage(ctx: Context):
    cfg, model = ctx.config, ctx.model
    clean, corrupt = [], []
    for seed in cfg.patch_seeds:
        for c, x in counterfactual_sets(ctx, seed).values():
            clean += c
            corrupt += x
    ct, xt = ctx.tokens(clean), ctx.tokens(corrupt)
    r, r_prime = ctx.answers(clean), ctx.answers(corrupt)
    clean_logits = answer_logits(model, ct, batch_size=cfg.batch_size)
    common = dict(
        metric=effects,
        metric_args=(clean_logits, r, r_prime),
        positions=ctx.task.positions,
        batch_size=max(1, cfg.batch_size // 8),
        progress_bar=ctx.progress,
    )
    with warnings.catch_warnings():  # Eq. 1 may overflow: counted below, not an error
        warnings.simplefilter("ignore", NonFiniteWarning)
        heads = activation_patching(model, ct, xt, tap="attn.hook_z", **common)
        mlps = activation_patching(model, ct, xt, tap="mlp.hook_post", **common)
    shape = (len(cfg.patch_seeds), len(cfg.operators), cfg.n_discovery)
    arrays, summary = {}, {}
    for name in EFFECTS:
        h = np.asarray(heads[name]).reshape(*shape, *heads[name].shape[1:])
        m = np.asarray(mlps[name]).reshape(*shape, *mlps[name].shape[1:])
        # [op, seed, layer, pos(, head)]: mean over prompts
        arrays[f"heads_{name}"] = h.mean(2).swapaxes(0, 1)
        arrays[f"mlp_{name}"] = m.mean(2).swapaxes(0, 1)
        arrays[f"heads_{name}_median"] = np.median(h, 2).swapaxes(0, 1)
    # agreement of the effects over head cells (op, seed, layer, position, head)
    for a, b in (("ie", "logit_diff"), ("ie", "bounded"), ("bounded", "logit_diff")):
        summary[f"pearson_{a}_vs_{b}"] = pearson(
            arrays[f"heads_{a}"], arrays[f"heads_{b}"]
        )
    ie = np.abs(np.concatenate([np.ravel(heads["ie"]), np.ravel(mlps["ie"])]))
    summary["ie_abs_max"] = float(ie[np.isfinite(ie)].max())
    summary["ie_non_finite"] = int((~np.isfinite(ie)).sum())
    summary["same_answer_pairs"] = int((r == r_prime).sum())
    summary["n_pairs"] = len(clean)
    summary["rank_effect"] = rank_effect(ctx)
    summary["positions"] = list(ctx.task.positions)
    summary["position_names"] = list(ctx.task.position_names)
    return arrays, summary


def head_ranking(ctx: Context) -> dict[str, np.ndarray]:
    """op -> `[n_heads_total, 2]` (layer, head) pairs, most effective first: the ranking
    effect averaged over seeds and the patched positions (paper-spec §3)."""
    arrays, _ = ctx.get("patching")
    scores = arrays[f"heads_{rank_effect(ctx)}"].mean(axis=(1, 3))  # [op, layer, head]
    n_heads = scores.shape[-1]
    out = {}
    for i, op in enumerate(ctx.config.operators):
        order = np.argsort(-scores[i].ravel(), kind="stable")
        out[op] = np.stack([order // n_heads, order % n_heads], axis=1)
    return out


def grid_means(
    ctx: Context, model, xs: np.ndarray, ys: np.ndarray
) -> dict[str, np.ndarray]:
    """Mean of every head's `z` (`"z"`) and MLP neuron (`"mlp"`) per position over all
    `x op y =` with `x` in `xs`, `y` in `ys` and all four operators. Positions from `y` on
    come from the operand grid (2 of 5 tokens per prompt on arith-neox), the earlier ones
    from the `4 len(xs)` distinct prefixes `[..., x, op]`, each of which stands for
    `len(ys)` prompts (so plain means over them weigh every prompt equally).

    Where the operand grid does not apply (teacher-forced answer digits, which depend on
    the pair), the means are taken over the legal prompts of the four operators instead.
    """
    task, bs = ctx.task, ctx.config.batch_size
    if task.grid_template("+") is None:
        prompts = [p for op in OPERATORS for p in ctx.legal(op)]
        means = mean_cache(model, ctx.tokens(prompts), MEAN_TAPS, progress_bar=False)
        return {
            key: np.asarray(means[t])
            for key, t in zip(("z", "mlp"), MEAN_TAPS, strict=True)
        }
    a_tokens, b_tokens = task.operand_tokens(xs), task.operand_tokens(ys)
    late, prefixes = {t: [] for t in MEAN_TAPS}, []
    for op in OPERATORS:
        template = task.grid_template(op)
        n_shared = len(template["prefix"]) + a_tokens.shape[1] + len(template["middle"])
        n_total = n_shared + b_tokens.shape[1] + len(template["suffix"])
        for t in MEAN_TAPS:
            grid_mean = operand_grid(
                model,
                a_tokens,
                b_tokens,
                **template,
                tap=t,
                positions=tuple(range(n_shared, n_total)),
                reduce="mean",
                batch_size=8 * bs,
                progress_bar=ctx.progress,
            )  # [pos, layer, *unit]
            late[t].append(np.moveaxis(grid_mean, 0, 1))
        prefixes.append(
            np.concatenate(
                [
                    np.broadcast_to(
                        template["prefix"], (len(xs), len(template["prefix"]))
                    ),
                    a_tokens,
                    np.broadcast_to(
                        template["middle"], (len(xs), len(template["middle"]))
                    ),
                ],
                axis=1,
            )
        )
    early = mean_cache(model, np.concatenate(prefixes), MEAN_TAPS, progress_bar=False)
    return {
        key: np.concatenate([np.asarray(early[t]), np.mean(late[t], 0)], axis=1)
        for key, t in zip(("z", "mlp"), MEAN_TAPS, strict=True)
    }


def operand_values(config, op: str, which: int) -> np.ndarray:
    """Values of operand `which` (0 or 1) in the layout of `config` (the pipeline's
    `Config`), ascending: the operator's operand range (paper-spec §2.1), restricted to
    `op_digits` digits on digit models."""
    values = np.array(operand_range(op, config.max_op))
    digits = config.op_digits
    if digits is not None:
        width = np.array([len(str(v)) for v in values.tolist()])
        values = values[width == digits[which]]
    if not values.size:
        raise ValueError(f"no operand of {op!r} has the run's layout")
    return values


def mean_cache_stage(ctx: Context):
    """The mean cache of paper-spec §4: all 4 x max_op x max_op prompts (of the run's
    layout, every `mean_stride`-th operand)."""
    stride = ctx.config.mean_stride
    xs, ys = (operand_values(ctx.config, "+", i)[::stride] for i in (0, 1))
    arrays = grid_means(ctx, ctx.model, xs, ys)
    return arrays, {"n_prompts": len(OPERATORS) * len(xs) * len(ys)}


def _nl(logits, target):
    return normalized_logit(logits, target, center=True)


def faithfulness(
    ctx: Context,
    prompts: list,
    head_sets: np.ndarray,
    neuron_sets: np.ndarray,
    *,
    model=None,
    means=None,
) -> tuple[np.ndarray, int]:
    """Normalised-logit faithfulness of circuits under mean ablation (paper-spec §4).

    Arguments:
        prompts: the evaluation prompts.
        head_sets: bool `[set, layer, head]`, True = the head is in the circuit.
        neuron_sets: bool `[set, layer, d_mlp]`, True = the neuron is in the circuit.
        model, means: another model (a training checkpoint) and its mean cache.

    Returns:
        `(faithfulness [set], n_dropped)`: the mean over prompts of `(NL_circuit -
        NL_ablated) / (NL_model - NL_ablated)`, where everything outside the circuit is
        mean-ablated at every position and NL is the vocabulary-centred normalised logit;
        prompts whose denominator is zero are dropped and counted.
    """
    model = ctx.model if model is None else model
    if means is None:
        means = ctx.get("mean_cache")[0]
    z, mlp = means["z"], means["mlp"]
    tokens, answers = ctx.tokens(prompts), ctx.answers(prompts)
    bs = ctx.config.batch_size

    good = jax.vmap(_nl)(
        answer_logits(model, tokens, batch_size=bs), jnp.asarray(answers)
    )
    common = dict(
        metric=_nl,
        metric_args=(answers,),
        tap=("attn.hook_z", "mlp.hook_post"),
        values=(z, mlp),
        positions=ctx.edited(tokens),
        batch_size=max(1, bs // 4),
        progress_bar=False,
    )
    everything = (
        np.ones((1, *head_sets.shape[1:]), bool),
        np.ones((1, *neuron_sets.shape[1:]), bool),
    )
    bad = ablation_sweep(model, tokens, everything, **common)[:, 0]
    kept = ablation_sweep(model, tokens, (~head_sets, ~neuron_sets), **common)
    good, bad, kept = (np.asarray(a, np.float64) for a in (good, bad, kept))
    denom = good - bad
    ok = np.abs(denom) > 1e-6
    ratio = (kept[ok] - bad[ok, None]) / denom[ok, None]
    return ratio.mean(0), int((~ok).sum())


MAX_CURVE_POINTS = 64


def head_counts(n_total: int) -> np.ndarray:
    """Numbers of top heads at which the faithfulness curve is measured: every count up
    to `MAX_CURVE_POINTS` heads in all, evenly spaced counts (0 and all included) above."""
    if n_total <= MAX_CURVE_POINTS:
        return np.arange(n_total + 1)
    return np.unique(np.linspace(0, n_total, MAX_CURVE_POINTS + 1).round().astype(int))


def circuit_stage(ctx: Context):
    cfg, mcfg = ctx.config, ctx.model.cfg
    ranking = head_ranking(ctx)
    n_total = mcfg.n_layers * mcfg.n_heads
    counts = head_counts(n_total)
    arrays = {"n": counts}
    summary = {"n_heads": {}, "faithfulness": {}, "dropped": {}}
    for op in cfg.operators:
        head_sets = np.zeros((len(counts), mcfg.n_layers, mcfg.n_heads), bool)
        for i, n in enumerate(counts):
            head_sets[i, ranking[op][:n, 0], ranking[op][:n, 1]] = True
        neuron_sets = np.ones((len(counts), mcfg.n_layers, mcfg.d_mlp), bool)
        curves, dropped = [], 0
        for seed in cfg.eval_seeds:
            sample = eval_sample(ctx, op, seed)
            f, d = faithfulness(ctx, sample, head_sets, neuron_sets)
            curves.append(f)
            dropped += d
        curve = np.mean(curves, 0)
        reached = np.flatnonzero(curve >= cfg.circuit_faithfulness)
        i = int(reached[0]) if reached.size else len(counts) - 1
        n = int(counts[i])
        arrays[f"{op_key(op)}_curve"] = np.asarray(curves)
        arrays[f"{op_key(op)}_heads"] = ranking[op][:n]
        arrays[f"{op_key(op)}_ranking"] = ranking[op]
        summary["n_heads"][op] = n
        summary["faithfulness"][op] = float(curve[i])
        summary["dropped"][op] = dropped
    return arrays, summary


def eval_sample(ctx: Context, op: str, seed: int) -> list:
    evaluation = ctx.select(op, "evaluation")
    k = min(ctx.config.n_eval, len(evaluation))
    return evaluation_sample(evaluation, seed=seed, k=k)


def circuit_heads(ctx: Context, op: str) -> np.ndarray:
    """bool `[layer, head]` of the operator's circuit heads."""
    mcfg = ctx.model.cfg
    mask = np.zeros((mcfg.n_layers, mcfg.n_heads), bool)
    heads = ctx.get("circuit")[0][f"{op_key(op)}_heads"]
    mask[heads[:, 0], heads[:, 1]] = True
    return mask

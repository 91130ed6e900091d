"""Induction heads: scores on repeated random tokens, and what ablating them costs.

Each prompt is a random token sequence of `seq_len` tokens written twice (after the
tokenizer's BOS, when it has one). The model cannot predict the first half, and an
induction mechanism predicts the second half by copying what followed the current token
the first time (Olsson et al. 2022).

Stages:
* `scores`: previous-token, duplicate-token and induction scores of every head
  (`kernels.head_detector`), averaged over the prompts.
* `ablation`: next-token loss at every position with sets of heads ablated at every
  position (`ablation_sweep(read="all")`, one program): nothing, the top-k heads by
  induction score for each k, and `n_random` random sets of k heads drawn from the heads
  outside the largest top-k set. Mean ablation replaces a head's `hook_z` by its mean over
  the prompts at that position; zero ablation by zeros.
"""

import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.kernels import ablation_sweep, head_detector, mean_cache
from jaxinterp.kernels.metrics import token_nll

from ..html_report import html_section, html_table, png
from .common import Context
from .configs import InductionConfig as Config

__all__ = ["Config", "STAGES", "repeated_tokens", "summary", "section"]


def repeated_tokens(ctx: Context) -> np.ndarray:
    """`[prompt, (1 +) 2 seq_len]`: BOS (if the tokenizer has one), then a random sequence
    of ordinary tokens (no special or added token) written twice."""
    cfg = ctx.config
    special = ctx.tokenizer.tokenizer.get_added_tokens_decoder()
    low = max(special, default=-1) + 1
    rng = np.random.default_rng(cfg.seed)
    half = rng.integers(low, ctx.model.cfg.d_vocab, (cfg.n_prompts, cfg.seq_len))
    tokens = np.concatenate([half, half], axis=1)
    if ctx.tokenizer.bos_id is not None:
        bos = np.full((cfg.n_prompts, 1), ctx.tokenizer.bos_id)
        tokens = np.concatenate([bos, tokens], axis=1)
    return tokens.astype(np.int32)


def scores_stage(ctx: Context):
    tokens = repeated_tokens(ctx)
    scores = head_detector(
        ctx.model,
        tokens,
        batch_size=ctx.config.batch_size,
        progress_bar=ctx.progress,
    )
    arrays = {k: np.nanmean(np.asarray(v), 0) for k, v in scores.items()}
    flat = arrays["induction"].ravel()
    top = np.argsort(-flat)[:10]
    n_heads = ctx.model.cfg.n_heads
    return arrays, {
        "top_induction": [
            [int(i // n_heads), int(i % n_heads), float(flat[i])] for i in top
        ],
        "n_above_0.4": int((flat > 0.4).sum()),
    }


def head_sets(ctx: Context, induction: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """`[set, layer, head]` masks (nothing; top-k and random sets per k) and their
    descriptions."""
    cfg = ctx.config
    n_layers, n_heads = induction.shape
    order = np.argsort(-induction.ravel())
    outside = order[max(cfg.ks) :]
    rng = np.random.default_rng(cfg.seed + 1)
    sets, info = [np.zeros(n_layers * n_heads, bool)], [{"kind": "none", "k": 0}]
    for k in cfg.ks:
        chosen = [("top", order[:k])] + [
            ("random", rng.choice(outside, k, replace=False))
            for _ in range(cfg.n_random)
        ]
        for kind, heads in chosen:
            mask = np.zeros(n_layers * n_heads, bool)
            mask[heads] = True
            sets.append(mask)
            info.append({"kind": kind, "k": k})
    return np.stack(sets).reshape(-1, n_layers, n_heads), info


def ablation_stage(ctx: Context):
    cfg = ctx.config
    induction = ctx.get("scores")[0]["induction"]
    n_heads = ctx.model.cfg.n_layers * ctx.model.cfg.n_heads
    if 2 * max(cfg.ks) > n_heads:
        raise ValueError(f"ks {cfg.ks} too large for a model with {n_heads} heads")
    tokens = repeated_tokens(ctx)[: cfg.n_ablate]
    masks, info = head_sets(ctx, induction)
    values = None
    if cfg.ablation == "mean":
        values = mean_cache(
            ctx.model,
            repeated_tokens(ctx),
            ("attn.hook_z",),
            batch_size=cfg.batch_size,
            progress_bar=ctx.progress,
        )["attn.hook_z"]
    targets = np.roll(tokens, -1, axis=1)
    nll = ablation_sweep(
        ctx.model,
        tokens,
        masks,
        metric=token_nll,
        metric_args=(targets,),
        tap="attn.hook_z",
        values=values,
        positions="all",
        read="all",
        batch_size=max(1, cfg.batch_size // 4),
        progress_bar=ctx.progress,
    )
    nll = np.asarray(nll)[..., :-1]  # [prompt, set, predicted position]
    first, second = _halves(ctx, nll.shape[-1])
    loss = {
        "first": nll[..., first].mean((0, 2)),
        "repeated": nll[..., second].mean((0, 2)),
    }
    rows = []
    for k in cfg.ks:
        top = [i for i, d in enumerate(info) if d["k"] == k and d["kind"] == "top"]
        rand = [i for i, d in enumerate(info) if d["k"] == k and d["kind"] == "random"]
        rows.append(
            {
                "k": k,
                "top_repeated": float(loss["repeated"][top[0]]),
                "top_first": float(loss["first"][top[0]]),
                "random_repeated_mean": float(loss["repeated"][rand].mean()),
                "random_repeated_max": float(loss["repeated"][rand].max()),
                "random_first_mean": float(loss["first"][rand].mean()),
            }
        )
    summary = {
        "clean_first": float(loss["first"][0]),
        "clean_repeated": float(loss["repeated"][0]),
        "by_k": rows,
        "sets": info,
    }
    return {"nll": nll.mean(0), "masks": masks}, summary


def _halves(ctx: Context, n_pred: int) -> tuple[slice, slice]:
    """Predicted positions of tokens in the first half (after its first token) and in the
    repeated half."""
    offset = n_pred - 2 * ctx.config.seq_len + 1  # 1 with a BOS
    return slice(offset, offset + ctx.config.seq_len - 1), slice(
        offset + ctx.config.seq_len - 1, n_pred
    )


STAGES = [("scores", scores_stage), ("ablation", ablation_stage)]


def summary(ctx: Context) -> dict:
    scores, abl = ctx.get("scores")[1], ctx.get("ablation")[1]
    return {
        "top_induction_heads": scores["top_induction"],
        "heads_with_induction_score_above_0.4": scores["n_above_0.4"],
        "loss_first_half": abl["clean_first"],
        "loss_repeated_half": abl["clean_repeated"],
        "ablation": abl["by_k"],
        "seconds": {"scores": scores["seconds"], "ablation": abl["seconds"]},
    }


def section(ctx: Context) -> str:
    cfg = ctx.config
    arrays, _ = ctx.get("scores")
    abl_arrays, abl = ctx.get("ablation")
    s = summary(ctx)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for ax, kind in zip(
        axes, ("induction", "previous_token", "duplicate_token"), strict=True
    ):
        im = ax.imshow(arrays[kind], aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set(title=f"{kind} score", xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax)
    heatmaps = png(fig)
    nll = abl_arrays["nll"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6), layout="constrained")
    big = [i for i, d in enumerate(abl["sets"]) if d["k"] == max(cfg.ks)]
    ax1.plot(nll[0], label="clean", color="k")
    ax1.plot(nll[big[0]], label=f"top {max(cfg.ks)} induction heads ablated")
    ax1.plot(nll[big[1:]].mean(0), label=f"{max(cfg.ks)} random heads (mean of sets)")
    ax1.axvline(_halves(ctx, nll.shape[-1])[1].start, color="grey", ls=":")
    ax1.set(xlabel="position", ylabel="next-token loss", title="loss by position")
    ax1.legend(fontsize=8)
    ks = [r["k"] for r in s["ablation"]]
    ax2.plot(
        ks, [r["top_repeated"] for r in s["ablation"]], "o-", label="top-k induction"
    )
    ax2.plot(
        ks, [r["random_repeated_mean"] for r in s["ablation"]], "s--", label="random k"
    )
    ax2.axhline(s["loss_repeated_half"], color="k", ls=":", label="clean")
    ax2.set(xscale="log", xlabel="heads ablated", ylabel="repeated-half loss")
    ax2.legend(fontsize=8)
    curves = png(fig)
    top = s["top_induction_heads"]
    rows = [
        [
            f"{l}.{h}",
            score,
            float(arrays["previous_token"][l, h]),
            float(arrays["duplicate_token"][l, h]),
        ]
        for l, h, score in top
    ]
    k_rows = [
        [
            r["k"],
            r["top_first"],
            r["top_repeated"],
            r["random_first_mean"],
            r["random_repeated_mean"],
            r["random_repeated_max"],
        ]
        for r in s["ablation"]
    ]
    best = s["ablation"][-1]
    ours = (
        f"On {cfg.n_prompts} random sequences of {cfg.seq_len} tokens written twice, the "
        f"loss is {s['loss_first_half']:.2f} on the first half and "
        f"{s['loss_repeated_half']:.2f} on the repeated half. "
        f"{s['heads_with_induction_score_above_0.4']} heads put more than 0.4 of their "
        f"attention on the token after the current token's earlier occurrence; the top "
        f"one is {top[0][0]}.{top[0][1]} ({top[0][2]:.2f}). {cfg.ablation.capitalize()}-"
        f"ablating the top {best['k']} raises the repeated-half loss to "
        f"{best['top_repeated']:.2f}; {cfg.n_random} random sets of {best['k']} other "
        f"heads give {best['random_repeated_mean']:.2f} on average (at most "
        f"{best['random_repeated_max']:.2f})."
    )
    return html_section(
        "Induction heads",
        "Induction heads attend from a token to the one after its previous occurrence "
        "and copy it; they make the loss on a repeated random sequence drop far below "
        "the first half's, and ablating them removes that drop (Olsson et al. 2022).",
        ours,
        heatmaps,
        html_table(["head", "induction", "previous token", "duplicate token"], rows),
        curves,
        html_table(
            [
                "k",
                "top-k: first half",
                "top-k: repeated half",
                "random: first half",
                "random: repeated half",
                "random: max repeated",
            ],
            k_rows,
        ),
        source="Literature",
    )

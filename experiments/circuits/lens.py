"""Logit lens and direct logit attribution (DLA) of one prompt.

Stage `lens`:
* the residual stream entering every layer (and leaving the last) read through the final
  norm and unembedding at the last position (`kernels.logit_lens`): the top predictions
  per layer, and the rank and probability of the expected answer's first token;
* the answer's logit difference against the model's strongest other prediction, split
  into the direct contributions of the embedding, every head and every neuron
  (`kernels.direct_logit_attribution`, the final norm's scale frozen at its value in
  this run, as TransformerLens's `apply_ln_to_stack`).
"""

import html

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.kernels import direct_logit_attribution, logit_lens
from jaxinterp.kernels.lens import logit_direction

from ..html_report import html_section, html_table, png
from .common import Context

__all__ = ["STAGES", "summary", "section", "show"]


def _answer_id(ctx: Context) -> int | None:
    """The first token of the answer text, or None without an answer."""
    if not ctx.config.answer:
        return None
    ids = ctx.tokenizer.encode(ctx.config.answer, prepend_bos=False)
    if not ids:
        raise ValueError(f"answer {ctx.config.answer!r} encodes to no token")
    return ids[0]


def lens_stage(ctx: Context):
    cfg, model = ctx.config, ctx.model
    tokens = np.asarray(ctx.tokenizer.encode(cfg.prompt), np.int32)[None]
    if tokens.shape[1] == 0:
        raise ValueError(f"prompt {cfg.prompt!r} encodes to no token")
    logits = np.asarray(logit_lens(model, tokens)[0], np.float64)  # [layer + 1, vocab]
    probs = np.asarray(jax.nn.softmax(logits, -1))
    top = np.argsort(-logits, -1)[:, : cfg.top_k]
    answer = _answer_id(ctx)
    final = np.argsort(-logits[-1])
    target = final[0] if answer is None else answer
    rival = final[0] if final[0] != target else final[1]
    dla = direct_logit_attribution(
        model, tokens, logit_direction(model.cfg.d_vocab, np.r_[target], np.r_[rival])
    )
    dla = {k: np.asarray(v)[0] for k, v in dla.items()}
    rank = (logits > logits[:, [target]]).sum(-1)
    neurons = dla["neurons"].ravel()
    best = np.argsort(-np.abs(neurons))[:10]
    d_mlp = model.cfg.d_mlp
    n_heads = model.cfg.n_heads
    heads = dla["heads"].ravel()
    best_heads = np.argsort(-np.abs(heads))[:10]
    arrays = {
        "tokens": tokens[0],
        "top": top,
        "top_prob": np.take_along_axis(probs, top, -1),
        "target_rank": rank,
        "target_prob": probs[:, target],
        "dla_heads": dla["heads"],
        "dla_neurons_by_layer": dla["neurons"].sum(-1),
    }
    summary = {
        "prompt": cfg.prompt,
        "target": int(target),
        "target_text": ctx.tokenizer.decode([int(target)]),
        "answer_given": answer is not None,
        "rival": int(rival),
        "rival_text": ctx.tokenizer.decode([int(rival)]),
        "logit_diff": float(logits[-1, target] - logits[-1, rival]),
        "first_layer_top1": _first_top1(rank),
        "dla_total": float(sum(np.sum(v) for v in dla.values())),
        "dla_embed": float(dla["embed"]),
        "dla_heads_sum": float(dla["heads"].sum()),
        "dla_neurons_sum": float(dla["neurons"].sum()),
        "top_heads": [
            [int(i // n_heads), int(i % n_heads), float(heads[i])] for i in best_heads
        ],
        "top_neurons": [
            [int(i // d_mlp), int(i % d_mlp), float(neurons[i])] for i in best
        ],
    }
    return arrays, summary


def _first_top1(rank: np.ndarray) -> int | None:
    """The first residual stream (0 = the embedding) from which the target stays top-1."""
    if rank[-1] != 0:
        return None
    later = np.flatnonzero(rank != 0)
    return int(later[-1] + 1) if len(later) else 0


STAGES = [("lens", lens_stage)]
REPLACE = True  # seconds to run: a new prompt replaces the previous one


def summary(ctx: Context) -> dict:
    arrays, s = ctx.get("lens")
    s = dict(s)
    s["target_rank_by_layer"] = arrays["target_rank"].tolist()
    s["target_prob_by_layer"] = arrays["target_prob"].tolist()
    s["top_by_layer"] = [
        [ctx.tokenizer.decode([int(t)]) for t in row] for row in arrays["top"]
    ]
    return s


def _rows(ctx: Context) -> list[list]:
    arrays, _ = ctx.get("lens")
    rows = []
    for l, (ids, p) in enumerate(zip(arrays["top"], arrays["top_prob"], strict=True)):
        where = "final" if l == len(arrays["top"]) - 1 else f"resid_pre {l}"
        preds = "  ".join(
            f"{ctx.tokenizer.decode([int(t)])!r} {q:.2f}"
            for t, q in zip(ids, p, strict=True)
        )
        rows.append(
            [
                where,
                preds,
                int(arrays["target_rank"][l]),
                float(arrays["target_prob"][l]),
            ]
        )
    return rows


def show(ctx: Context) -> None:
    """Prints the per-layer table and the strongest direct contributions."""
    s = summary(ctx)
    print(f"target {s['target_text']!r} vs {s['rival_text']!r}")
    print(f"{'stream':<14} {'rank':>6} {'prob':>6}  top predictions")
    for where, preds, rank, prob in _rows(ctx):
        print(f"{where:<14} {rank:>6} {prob:>6.3f}  {preds}")
    heads = ", ".join(f"{l}.{h} {v:+.2f}" for l, h, v in s["top_heads"][:5])
    print(f"logit difference {s['logit_diff']:.3f}; strongest heads (DLA): {heads}")


def section(ctx: Context) -> str:
    arrays, _ = ctx.get("lens")
    s = summary(ctx)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6), layout="constrained")
    ax1.plot(arrays["target_prob"], "o-", label="probability")
    ax1b = ax1.twinx()
    ax1b.plot(arrays["target_rank"] + 1, "s--", color="C1", label="rank")
    ax1b.set(yscale="log", ylabel="rank (1 = top)")
    ax1.set(
        xlabel="residual stream (entering layer; last = final)",
        ylabel="probability",
        title=f"logit lens of {s['target_text']!r}",
    )
    lim = np.abs(arrays["dla_heads"]).max() or 1.0
    im = ax2.imshow(
        arrays["dla_heads"], aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim
    )
    ax2.set(
        xlabel="head",
        ylabel="layer",
        title=f"DLA of {s['target_text']!r} - {s['rival_text']!r}",
    )
    fig.colorbar(im, ax=ax2)
    first = s["first_layer_top1"]
    ours = (
        f"Prompt {html.escape(repr(s['prompt']))}: the target "
        f"{html.escape(repr(s['target_text']))} "
        + (
            f"is the top prediction from residual stream {first} on"
            if first is not None
            else "is not the final top prediction"
        )
        + f"; its logit difference against {html.escape(repr(s['rival_text']))} is "
        f"{s['logit_diff']:.2f}, of which the heads write {s['dla_heads_sum']:.2f} "
        f"directly, the neurons {s['dla_neurons_sum']:.2f} and the embedding "
        f"{s['dla_embed']:.2f} (the pieces sum to {s['dla_total']:.2f})."
    )
    head_rows = [[f"{l}.{h}", v] for l, h, v in s["top_heads"]]
    neuron_rows = [[f"L{l} N{n}", v] for l, n, v in s["top_neurons"]]
    return html_section(
        "Logit lens and direct logit attribution",
        "Reading intermediate residual streams through the unembedding shows the "
        "prediction forming over depth (nostalgebraist 2020); direct logit attribution "
        "splits the final logit into per-component contributions.",
        ours,
        png(fig),
        html_table(
            ["stream", "top predictions", "target rank", "target prob"], _rows(ctx)
        ),
        html_table(["head", "direct logit difference"], head_rows),
        html_table(["neuron", "direct logit difference"], neuron_rows),
        source="Literature",
    )

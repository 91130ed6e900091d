"""Stages `kmaps` and `classify` (paper-spec §7): activation maps of the important neurons
over every legal operand pair, their logit-weighted versions, and the heuristic labels.

* K map of neuron (l, n): its activation at the last position (`=`) for every legal pair
  `(op1, op2)`, in the official pair order (op1 ascending, then op2; `pairs_<op>`),
  computed with the operand grid (only `op2 =` runs per pair).
* KV map: K times the neuron's logit-lens value of the token the last position predicts
  (the answer, or its first digit on models that split digits), with the
  unembedding processed as TransformerLens's `fold_ln` + `center_unembed` do (as the
  official code reads it).

Stored per operator: `K_<op>`, `KV_<op>` float32 `[neuron, pair]`, `pairs_<op>` int
`[pair, 2]` and `neurons_<op>` int `[neuron, 2]` (layer, neuron index): any classifier can
be run on them. The HYBRID labels (result heuristics from KV, the others from K) are in
the `classify` stage's summary.
"""

import jax
import numpy as np

from jaxinterp.kernels import neuron_logit_lens, operand_grid, stacked_activations

from . import classify as clf
from .circuit import operand_values
from .pipeline import Context, op_key


def neuron_list(ctx: Context, top: np.ndarray) -> np.ndarray:
    """int `[neuron, 2]` (layer, neuron), layer-major, of `top` (`[heuristic layer, k]`
    neuron indices, e.g. one operator's row of `neurons.top_neurons`)."""
    return np.array(
        [
            (layer, int(n))
            for layer, row in zip(ctx.heuristic_layers, top, strict=True)
            for n in row
        ]
    )


def important_neurons(ctx: Context, op: str) -> np.ndarray:
    """`neuron_list` of the operator's top neurons (attribution stage)."""
    top = ctx.get("attribution")[0]["top"]
    return neuron_list(ctx, top[ctx.config.operators.index(op)])


def kmaps(
    ctx: Context, model, op: str, neurons: np.ndarray, *, stacked: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(K [neuron, pair], KV [neuron, pair], pairs [pair, 2])` of `neurons` (`[neuron,
    2]` layer, index, layer-major) over every legal pair of `op`; one operand grid for
    all layers (or, with teacher-forced answer digits, one forward per legal prompt).

    With `stacked`, `model` is checkpoints of one architecture stacked on a leading axis
    (`checkpoints.stack`) and `neurons` is `[checkpoint, neuron, 2]`, each checkpoint's
    own neurons over the same layers: one operand grid runs every checkpoint, and K and
    KV get a leading checkpoint axis."""
    legal = ctx.legal(op)
    pairs = np.array([(p.op1, p.op2) for p in legal])
    per_model = neurons if stacked else neurons[None]
    layers = sorted(set(per_model[0, :, 0].tolist()))
    unions = [np.unique(own[:, 1], return_inverse=True) for own in per_model]
    width = max(len(u) for u, _ in unions)  # pad with a repeated unit
    units = np.stack([np.pad(u, (0, width - len(u)), mode="edge") for u, _ in unions])
    template = ctx.task.grid_template(op)
    if template is None:
        if stacked:
            raise ValueError(
                "checkpoint K maps need the operand grid (no answer_digit)"
            )
        acts = _last_position(ctx, model, legal, layers, units[0])[None]
    else:
        xs, ys = (operand_values(ctx.config, op, i) for i in (0, 1))
        grid = operand_grid(
            model,
            ctx.task.operand_tokens(xs),
            ctx.task.operand_tokens(ys),
            **template,
            layers=layers,
            units=units if stacked else units[0],
            batch_size=8 * ctx.config.batch_size,
            progress_bar=ctx.progress,
            stacked=stacked,
        )  # [(checkpoint,) a, b, layer, unit]
        grid = grid if stacked else grid[None]
        rows, cols = np.searchsorted(xs, pairs[:, 0]), np.searchsorted(ys, pairs[:, 1])
        acts = grid[:, rows, cols]  # [checkpoint, pair, layer, unit]
    K, KV, answers = [], [], ctx.answers(legal)
    for c, (own, (_, column)) in enumerate(zip(per_model, unions, strict=True)):
        m = jax.tree.map(lambda a, c=c: a[c], model) if stacked else model
        k = acts[c][:, np.searchsorted(layers, own[:, 0]), column].T
        lens = np.concatenate(
            [
                np.asarray(neuron_logit_lens(m, layer, own[own[:, 0] == layer, 1]))
                for layer in layers
            ]
        )  # [neuron, d_vocab]
        K.append(k.astype(np.float32))
        KV.append((k * lens[:, answers]).astype(np.float32))
    if stacked:
        return np.stack(K), np.stack(KV), pairs
    return K[0], KV[0], pairs


def _last_position(ctx: Context, model, prompts, layers, units) -> np.ndarray:
    """`[prompt, layer, unit]` MLP activations at each prompt's last position."""
    tokens, bs = ctx.tokens(prompts), ctx.config.batch_size
    out = []
    for start in range(0, len(tokens), bs):
        acts = stacked_activations(
            model, tokens[start : start + bs], "mlp.hook_post", batch_size=bs
        )  # [prompt, layer, pos, d_mlp]
        out.append(np.asarray(acts[:, np.asarray(layers), -1][..., units]))
    return np.concatenate(out)


def kmaps_stage(ctx: Context):
    arrays, summary = {}, {"n_pairs": {}, "n_neurons": {}}
    for op in ctx.config.operators:
        neurons = important_neurons(ctx, op)
        K, KV, pairs = kmaps(ctx, ctx.model, op, neurons)
        key = op_key(op)
        arrays[f"K_{key}"], arrays[f"KV_{key}"] = K, KV
        arrays[f"pairs_{key}"], arrays[f"neurons_{key}"] = pairs, neurons
        summary["n_pairs"][op] = len(pairs)
        summary["n_neurons"][op] = len(neurons)
    return arrays, summary


def classify_maps(
    ctx: Context, op: str, K, KV, pairs, neurons, threshold: float
) -> tuple[dict[str, list], float, list]:
    """HYBRID labels `name -> [[layer, neuron, score]]` (score >= threshold), the share of
    neurons with a label at the classification threshold, and the classifier's notes."""
    cfg = ctx.config
    common = dict(
        op=op, max_single_token=ctx.task.max_answer, mode=cfg.mode, max_op=cfg.max_op
    )
    hybrid = clf.hybrid(
        clf.classify(K, pairs, kind="K", **common),
        clf.classify(KV, pairs, kind="KV", **common),
    )
    matched = hybrid.matched(threshold)
    labels = {
        name: [[*map(int, neurons[row]), float(score)] for row, score in entries]
        for name, entries in matched.items()
        if entries
    }
    rows = {
        row
        for entries in matched.values()
        for row, score in entries
        if score >= cfg.threshold
    }
    return labels, len(rows) / len(neurons), list(hybrid.notes)


def classify_stage(ctx: Context):
    maps = ctx.get("kmaps")[0]
    summary = {"classified": {}, "n_analysed": {}, "labels": {}, "notes": {}}
    lowest = min(ctx.config.threshold, knockout_threshold(ctx))
    for op in ctx.config.operators:
        key = op_key(op)
        neurons = maps[f"neurons_{key}"]
        labels, share, notes = classify_maps(
            ctx,
            op,
            maps[f"K_{key}"],
            maps[f"KV_{key}"],
            maps[f"pairs_{key}"],
            neurons,
            lowest,
        )
        summary["labels"][op] = labels
        summary["classified"][op] = share
        summary["n_analysed"][op] = len(neurons)
        summary["notes"][op] = notes
    return {}, summary


def knockout_threshold(ctx: Context) -> float:
    """Score threshold of the heuristic-type knockout: 0.55 in parity mode (the files
    behind the published figure), the classification threshold in clean mode."""
    return 0.55 if ctx.config.mode == "parity" else ctx.config.threshold


def labels_of(
    ctx: Context, op: str, threshold: float, labels: dict | None = None
) -> dict[str, list]:
    """HYBRID heuristic name -> `[(layer, neuron, score)]` with score >= threshold (of the
    classify stage, or of the given labels)."""
    labels = ctx.get("classify")[1]["labels"][op] if labels is None else labels
    return {
        name: kept
        for name, entries in labels.items()
        if (kept := [e for e in entries if e[2] >= threshold])
    }

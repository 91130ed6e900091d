"""The HTML report and summary JSON of a pipeline run: every figure next to the paper's claim
and what this model shows. Figures are matplotlib PNGs embedded in one self-contained file.
"""

import html
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..html_report import html_section, html_table, png, write_page  # noqa: E402
from .heuristics import labels_of  # noqa: E402
from .pipeline import MODE_DIFFERENCES, Context, op_key, stages  # noqa: E402


def _patching(ctx: Context) -> str:
    arrays, summary = ctx.get("patching")
    ops = ctx.config.operators
    figs = []
    for effect, label in (("ie", "Eq. 1 (log1p |IE|)"), ("bounded", "bounded IE")):
        fig, axes = plt.subplots(
            1,
            len(ops),
            figsize=(3.6 * len(ops), 3.2),
            squeeze=False,
            layout="constrained",
        )
        for i, op in enumerate(ops):
            heads = arrays[f"heads_{effect}"][i].mean(0)  # [layer, pos, head]
            mlp = arrays[f"mlp_{effect}"][i].mean(0)  # [layer, pos]
            grid = np.concatenate(
                [heads[:, -1], mlp], axis=1
            )  # heads at '=', MLP per pos
            if effect == "ie":
                grid = np.log1p(np.abs(grid))
            ax = axes[0, i]
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
            n_heads = heads.shape[-1]
            ax.set_xticks(range(grid.shape[1]))
            ax.set_xticklabels(
                [f"H{h}" for h in range(n_heads)]
                + [f"M:{name}" for name in ctx.task.position_names],
                fontsize=7,
                rotation=90 * (grid.shape[1] > 24),
            )
            ax.set_yticks(range(grid.shape[0]))
            ax.set_ylabel("layer")
            ax.set_title(f"{op}  {label}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        figs.append(png(fig))
    circuit = ctx.get("circuit")[1]
    rows = [
        [
            op,
            circuit["n_heads"][op],
            circuit["faithfulness"][op],
            circuit["dropped"][op],
        ]
        for op in ops
    ]
    ours = (
        f"Eq. 1 reaches |IE| up to {summary['ie_abs_max']:.3g} (its denominators P(r') and "
        f"P*(r) are tiny on a confident model); over head cells its Pearson correlation "
        f"with logit-difference patching is {summary['pearson_ie_vs_logit_diff']:.2f}, the "
        f"bounded variant's is {summary['pearson_bounded_vs_logit_diff']:.2f}. Heads are "
        f"ranked by <i>{summary['rank_effect']}</i>. The circuit (top heads + all MLPs) "
        f"reaching faithfulness {ctx.config.circuit_faithfulness}:"
    )
    curves = []
    fig, ax = plt.subplots(figsize=(5, 3))
    for op in ops:
        arrays = ctx.get("circuit")[0]
        ax.plot(arrays["n"], arrays[f"{op_key(op)}_curve"].mean(0), label=op)
    ax.set_xlabel("top heads kept (all MLPs kept)")
    ax.set_ylabel("faithfulness")
    ax.legend()
    curves.append(png(fig))
    return html_section(
        "1. Circuit discovery (activation patching) and faithfulness",
        "A sparse set of heads (6 for + on Llama3-8B) plus all MLPs recovers ~96% of the "
        "model's normalised-logit performance; MLPs at the last position dominate; Eq. 1 "
        "indirect effect, log1p heatmaps.",
        ours
        + " Heatmaps: heads (H) patched at the last position, MLPs at each position of "
        f"the question (M:{', M:'.join(ctx.task.position_names)}); mean over seeds and "
        "prompts.",
        html_table(["op", "heads in circuit", "faithfulness", "prompts dropped"], rows),
        *figs,
        *curves,
    )


def _neurons(ctx: Context) -> str:
    attr = ctx.get("attribution")[1]
    topk_arrays, topk = ctx.get("topk")
    ops = ctx.config.operators
    fig, ax = plt.subplots(figsize=(5, 3))
    d_mlp = ctx.model.cfg.d_mlp
    for op in ops:
        ks = topk_arrays["k"]
        ax.plot(
            100 * np.maximum(ks, 1) / d_mlp,
            topk_arrays[f"{op_key(op)}_curve"],
            label=op,
        )
    ax.set_xscale("log")
    ax.axvline(1.5, color="gray", ls=":")
    ax.set_xlabel("% of neurons kept per heuristic layer")
    ax.set_ylabel("faithfulness")
    ax.legend()
    check = attr["attribution_vs_exact"]
    rows = [[op, topk["faithfulness_at_1.5%"][op], topk["k_for_0.9"][op]] for op in ops]
    iou = html_table(
        ["operators", "IoU of top neurons"],
        [[k, v] for k, v in attr["overlap_iou"].items()],
    )
    at = [topk["faithfulness_at_1.5%"][op] for op in ops]
    need = [topk["k_for_0.9"][op] for op in ops]
    need_txt = ", ".join(
        f"{op} {k} ({100 * k / d_mlp:.0f}%)" if k is not None else f"{op} never"
        for op, k in zip(ops, need, strict=True)
    )
    ours = (
        f"Keeping {topk['k_1.5%']} neurons per layer (1.5% of {d_mlp}) in layers "
        f"{attr['first_layer']}+ (the circuit's heads and all earlier MLPs kept) gives "
        f"faithfulness {min(at):.2f} to {max(at):.2f}; 0.9 needs per layer: {need_txt}. "
        "Attribution vs exact patching of "
        f"{check['n_cells']} neurons at '=' (half the most important, half random) on "
        f"the metric 0.5 [log P(r') - log P(r)]: Pearson {check['pearson']:.2f} over "
        f"(prompt, neuron), {check['pearson_mean']:.2f} over neuron means, Spearman "
        f"{check['spearman_mean']:.2f}."
    )
    return html_section(
        "2. Important neurons (attribution patching)",
        "About 1.5% of neurons per layer (200 of 14336) suffice for high faithfulness; "
        "operators share a part of their top neurons.",
        ours,
        html_table(["op", "faithfulness at 1.5%", "k per layer for 0.9"], rows),
        png(fig),
        iou,
    )


def _kind(name: str) -> str:
    """Heuristic type of a label, e.g. `result_range_140_170` -> `result_range`."""
    subject = "both_operands" if name.startswith("both") else name.split("_")[0]
    for key, kind in (
        ("multi", "multi_value"),
        ("range", "range"),
        ("mod", "mod"),
        ("pattern", "pattern/value"),
        ("value", "pattern/value"),
    ):
        if key in name:
            return f"{subject}_{kind}"
    return name  # same_operand


def _heuristics(ctx: Context) -> str:
    summary = ctx.get("classify")[1]
    maps = ctx.get("kmaps")[0]
    ops = ctx.config.operators
    rows = []
    parts = []
    for op in ops:
        labels = labels_of(ctx, op, ctx.config.threshold)
        types = {}
        for name in labels:
            types[_kind(name)] = types.get(_kind(name), 0) + 1
        rows.append(
            [
                op,
                summary["n_analysed"][op],
                summary["classified"][op],
                len(labels),
                ", ".join(f"{k}:{v}" for k, v in sorted(types.items())),
            ]
        )
        # heatmaps of the four neurons with the most labels
        by_neuron = {}
        for name, entries in labels.items():
            for layer, n, s in entries:
                by_neuron.setdefault((layer, n), []).append((s, name))
        best = sorted(by_neuron, key=lambda ln: -len(by_neuron[ln]))[:4]
        if not best:
            continue
        key = op_key(op)
        pairs, neurons = maps[f"pairs_{key}"], maps[f"neurons_{key}"].tolist()
        fig, axes = plt.subplots(
            1, len(best), figsize=(3.3 * len(best), 3.2), squeeze=False
        )
        for ax, ln in zip(axes[0], best, strict=True):
            row = neurons.index(list(ln))
            lo, hi = pairs.min(0), pairs.max(0)  # the run's operand ranges
            grid = np.full(hi - lo + 1, np.nan)
            grid[pairs[:, 0] - lo[0], pairs[:, 1] - lo[1]] = maps[f"K_{key}"][row]
            extent = (lo[1] - 0.5, hi[1] + 0.5, lo[0] - 0.5, hi[0] + 0.5)
            ax.imshow(grid, cmap="RdBu_r", origin="lower", extent=extent, aspect="auto")
            top = sorted(by_neuron[ln], reverse=True)[:3]
            ax.set_title(
                f"L{ln[0]}N{ln[1]} ({op})\n" + "\n".join(n for _, n in top), fontsize=7
            )
            ax.set_xlabel("op2")
            ax.set_ylabel("op1")
        parts.append(png(fig))
    return html_section(
        "3. Heuristic neurons (K / KV maps, classification)",
        "91% of the top neurons of each operator implement at least one heuristic (score "
        ">= 0.6): operand / result ranges, modulos, patterns.",
        "Share of the important neurons with a HYBRID score >= "
        f"{ctx.config.threshold}, and the K maps of the most-labelled neurons:"
        + _span_caveat(ctx),
        html_table(
            ["op", "neurons analysed", "classified", "heuristics", "types"], rows
        ),
        *parts,
    )


def _span_caveat(ctx: Context) -> str:
    """On a restricted operand layout, the taxonomy's wide ranges match trivially."""
    if ctx.config.op_digits is None:
        return ""
    spans = [ctx.get("kmaps")[0][f"pairs_{op_key(op)}"] for op in ctx.config.operators]
    lo, hi = min(p.min() for p in spans), max(p.max() for p in spans)
    return (
        f" Operands here span only {lo}..{hi}, while the taxonomy was built for "
        f"0..{ctx.config.max_op - 1}: a range heuristic covering the whole span matches "
        "any neuron, so the share classified says little on its own; the K maps show "
        "what the neurons respond to."
    )


def _knock_text(summary: dict, ops) -> str:
    rel = [r for op in ops for r in summary["heuristic"][op]["related"]]
    unrel = [u for op in ops for u in summary["heuristic"][op]["unrelated"]]
    parts = []
    if rel:
        parts.append(
            f"Knocking out one heuristic type leaves {np.mean(rel):.2f} accuracy on its "
            f"related prompts and {np.mean(unrel):.2f} on unrelated ones (mean over "
            f"{len(rel)} types)."
        )
    for op in ops:
        p = summary["prompt"][op]
        i = len(p["L"]) // 2
        parts.append(
            f"{op}: ablating {p['L'][i]} associated neurons per layer leaves "
            f"{p['heuristic'][i]:.2f}, as many random top neurons {p['control'][i]:.2f}."
        )
    return " ".join(parts)


def _knockouts(ctx: Context) -> str:
    summary = ctx.get("knockouts")[1]
    ops = ctx.config.operators
    rows = []
    for op in ops:
        h = summary["heuristic"][op]
        if h["names"]:
            rows.append(
                [
                    op,
                    len(h["names"]),
                    float(np.mean(h["related"])),
                    float(np.mean(h["unrelated"])),
                ]
            )
        else:
            rows.append([op, 0, "-", "-"])
    fig, axes = plt.subplots(
        1, len(ops), figsize=(3.6 * len(ops), 3), squeeze=False, layout="constrained"
    )
    for ax, op in zip(axes[0], ops, strict=True):
        p = summary["prompt"][op]
        ax.plot(p["L"], p["heuristic"], label="associated heuristics")
        ax.plot(p["L"], p["control"], ls=":", label="random control")
        ax.set_title(op)
        ax.set_xlabel("neurons ablated per layer")
        ax.set_ylim(-0.05, 1.05)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    return html_section(
        "4. Knockouts",
        "Ablating one heuristic type drops accuracy on related prompts by 29% on average "
        "and leaves unrelated prompts mostly intact; ablating a prompt's associated "
        "heuristic neurons (~25 per layer) destroys it while random neurons do not.",
        _knock_text(summary, ops)
        + f" Heuristic types with >= 10 neurons (threshold {summary['threshold']}), "
        "zero-ablated at every position; accuracy on related vs unrelated correct "
        "prompts (1.0 before ablation), and prompt-guided knockout curves:",
        html_table(["op", "heuristic types", "related acc.", "unrelated acc."], rows),
        png(fig),
    )


def _compare(rows: list, what: str) -> str:
    """One sentence per operator: incorrect vs correct means of contribution and count."""
    parts = []
    for op, c_ok, c_bad, n_ok, n_bad, n in rows:
        if n == 0 or isinstance(c_bad, str):
            parts.append(f"{op}: no incorrect prompts")
            continue
        more = "more" if n_bad > n_ok else "fewer"
        parts.append(
            f"{op}: incorrect prompts have {more} associated neurons ({n_bad:.1f} vs "
            f"{n_ok:.1f}) and {c_bad:.1f} vs {c_ok:.1f} of {what}"
        )
    return "; ".join(parts) + "."


def _failures(ctx: Context) -> str:
    summary = ctx.get("failures")[1]
    ops = ctx.config.operators
    fig, axes = plt.subplots(
        1, len(ops), figsize=(3.6 * len(ops), 2.8), squeeze=False, layout="constrained"
    )
    rows = []
    for ax, op in zip(axes[0], ops, strict=True):
        data = [summary[op][k]["contribution"] for k in ("correct", "incorrect")]
        counts = [summary[op][k]["n_neurons"] for k in ("correct", "incorrect")]
        if all(len(d) for d in data):
            ax.boxplot(
                data, orientation="horizontal", tick_labels=["correct", "incorrect"]
            )
        ax.set_title(op)
        ax.set_xlabel("logit to the correct answer")
        rows.append(
            [
                op,
                *(float(np.mean(d)) if len(d) else "-" for d in data),
                *(float(np.mean(c)) if len(c) else "-" for c in counts),
                len(data[1]),
            ]
        )
    return html_section(
        "5. Correct vs incorrect prompts",
        "Incorrect prompts have as many or more associated heuristic neurons, but those "
        "give the correct answer less logit: failures come from insufficient "
        "heuristics, not missing ones (shown for addition).",
        _compare(rows, "the correct answer's logit from associated heuristic neurons")
        + " Means over the correct (discovery) and incorrect prompts:",
        html_table(
            [
                "op",
                "contribution (correct)",
                "contribution (incorrect)",
                "#neurons (correct)",
                "#neurons (incorrect)",
                "incorrect prompts",
            ],
            rows,
        ),
        png(fig),
    )


def _probes(ctx: Context) -> str:
    arrays, summary = ctx.get("probes")
    acc = arrays["accuracy"].mean(0)  # [layer, pos]
    labels = "aligned labels"
    if ctx.config.mode == "parity":
        labels = "parity mode: labels misaligned except at '='"
    fig, ax = plt.subplots(figsize=(5, 3))
    for p, pos in enumerate(summary["positions"]):
        name = summary.get("position_names", [pos] * len(summary["positions"]))[p]
        ax.plot(range(acc.shape[0]), acc[:, p], marker="o", label=f"position {name}")
    ax.set_xticks(range(acc.shape[0]))
    ax.set_xlabel("layer")
    ax.set_ylabel("probe test accuracy")
    ax.legend(fontsize=7)
    return html_section(
        "6. Linear probes for the answer",
        "The answer is linearly decodable only at the last position, from the middle "
        "layers on.",
        f"Last layer at '=': {acc[-1, 0]:.2f}; best elsewhere: "
        f"{acc[:, 1:].max():.2f}; always answering the most frequent test answer "
        f"scores {summary['majority_baseline']:.2f}. "
        f"Mean over operators, {summary['n_prompts']} prompts per operator; {labels}.",
        png(fig),
    )


def _dynamics(ctx: Context) -> str:
    arrays, summary = ctx.get("dynamics")
    steps = arrays["steps"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    axes[0].plot(steps, arrays["accuracy"].mean(1), marker="o", label="accuracy")
    axes[0].plot(
        steps, arrays["intersection"], marker="o", label="heuristics shared with final"
    )
    axes[0].set_xscale("log")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, arrays["faith_all"], marker="o", label="all heuristic neurons")
    axes[1].plot(
        steps, arrays["faith_mutual"], marker="o", label="only final's neurons"
    )
    axes[1].set_xscale("log")
    axes[1].legend(fontsize=7)
    axes[1].set_title("faithfulness (+)")
    for j, L in enumerate(summary["L"]):
        axes[2].plot(steps, arrays["knock_heuristic"][:, j], marker="o", label=f"L={L}")
        axes[2].plot(
            steps,
            arrays["knock_control"][:, j],
            ls=":",
            color=axes[2].lines[-1].get_color(),
        )
    axes[2].set_xscale("log")
    axes[2].set_title("prompt knockout (+, -)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("training step")
    return html_section(
        "7. Training dynamics",
        "Heuristics appear early and are refined; the final model's heuristic neurons "
        "explain most of the faithfulness at earlier checkpoints (ratio 0.79); prompt "
        "knockout with 25 neurons per layer breaks the model at every checkpoint.",
        _dynamics_text(arrays, summary),
        png(fig),
    )


def _dynamics_text(arrays: dict, summary: dict) -> str:
    steps, shared = arrays["steps"], arrays["intersection"]
    half = np.flatnonzero(shared >= 0.5)
    ratio = summary["mutual_ratio"]
    j = len(summary["L"]) - 1
    h, c = arrays["knock_heuristic"][:, j], arrays["knock_control"][:, j]
    text = (
        f"{len(steps)} checkpoints (steps {steps[0]}..{steps[-1]}), operators "
        f"{''.join(summary['ops'])}: accuracy {arrays['accuracy'][0].mean():.2f} -> "
        f"{arrays['accuracy'][-1].mean():.2f}; the final model's labels already present: "
        f"{shared[0]:.2f} at step {steps[0]}"
    )
    if half.size:
        text += f", half of them by step {steps[half[0]]}"
    if ratio is not None:
        text += f"; faithfulness with only the final's neurons / with all: {ratio:.2f}"
    return text + (
        f"; prompt knockout of {summary['L'][j]} neurons per layer leaves "
        f"{h.min():.2f}..{h.max():.2f} accuracy (random control {c.min():.2f}.."
        f"{c.max():.2f})."
    )


def _prompt_format(ctx: Context) -> str:
    """How prompts look and what counts as correct, for models that split digits."""
    cfg, task = ctx.config, ctx.task
    if cfg.op_digits is None:
        return (
            "<p>Prompts <code>[BOS, a, op, b, =]</code>, every number one token; correct "
            "= the argmax token at <code>=</code> is the answer.</p>"
        )
    example = html.escape(
        task.tokenizer.decode(task.tokens([_example(ctx)])[0].tolist()[task.n_prefix :])
    )
    text = (
        f"<p>This model splits numbers into digits. Operands have {cfg.op_digits[0]} and "
        f"{cfg.op_digits[1]} digits, so every prompt has one token layout "
        f"(positions: {html.escape(' | '.join(task.position_names))}); template "
        f"<code>{example}</code> after the few-shot prefix "
        f"<code>{html.escape(repr(cfg.few_shot))}</code>. Correct = greedy decoding "
        "writes the whole answer and the number ends there. Patching, grids and neuron "
        "analyses read the last position, which predicts "
    )
    if cfg.answer_digit:
        return (
            text
            + f"answer digit {cfg.answer_digit} (earlier digits teacher-forced).</p>"
        )
    return text + "the first answer digit.</p>"


def _example(ctx: Context):
    op = ctx.config.operators[0]
    return ctx.select(op, "correct")[0]


def write(ctx: Context) -> pathlib.Path:
    """Writes `report.html` and `summary.json` into the run directory."""
    cfg = ctx.config
    sections = [  # each with the stages it reads
        (_patching, ("patching", "circuit")),
        (_neurons, ("attribution", "topk")),
        (_heuristics, ("kmaps", "classify")),
        (_knockouts, ("knockouts",)),
        (_failures, ("failures",)),
        (_probes, ("probes",)),
        (_dynamics, ("dynamics",)),
    ]
    stage_times = {}
    summary = {"config": ctx.run.identity}
    for name, _ in stages():
        if ctx.run.done(name):
            s = ctx.get(name)[1]
            stage_times[name] = s.get("seconds")
            summary[name] = {k: v for k, v in s.items() if k != "labels"}
    prompts = ctx.get("prompts")[1]
    acc_rows = [
        [
            op,
            prompts["n_legal"][op],
            prompts.get("n_measured", prompts["n_legal"])[op],
            prompts["accuracy"][op],
        ]
        for op in cfg.operators
    ]
    body = [
        f"<h1>Arithmetic without algorithms: {html.escape(cfg.model)}, mode {cfg.mode}</h1>",
        "<p>Reproduction of Nikankin et al. (2024) with jaxinterp's kernels. Each section "
        "puts the paper's claim (Llama3-8B) beside what this model shows.</p>",
        _prompt_format(ctx),
        html_table(["op", "legal prompts", "measured", "accuracy"], acc_rows),
        *(
            section(ctx)
            for section, needs in sections
            if all(ctx.run.done(stage) for stage in needs)
        ),
        "<h2>Parity vs clean mode</h2><ul>"
        + "".join(
            f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
            for k, v in MODE_DIFFERENCES.items()
        )
        + "</ul>",
        "<h2>Stage times (s)</h2>",
        html_table(["stage", "seconds"], [[k, v] for k, v in stage_times.items()]),
    ]
    path = write_page(ctx.run.path / "report.html", "arithmetic report", body)
    (ctx.run.path / "summary.json").write_text(
        json.dumps(summary, indent=1, default=float)
    )
    return path

"""Stage `prompts` (paper-spec §2): which legal prompts the model answers correctly, and the
discovery / evaluation / filtered sets drawn from them.

Correct means greedy decoding gives the whole answer (`task`; for arith-neox: the argmax
token at `=`, over the whole vocabulary, is the answer's token id); incorrect means the
predicted token at the analysed position is a number (digit) token but the answer is wrong.
With `n_prompts`, correctness is measured on a seeded sample of the legal prompts. Every set
is stored as indices into the operator's legal prompts (`Context.legal`), so nothing is
stored twice.
"""

import numpy as np

from .pipeline import Context, op_key
from .prompts import discovery_eval_split, filtered_50


def measured(ctx: Context, op: str) -> np.ndarray:
    """Indices of the legal prompts whose correctness is measured: all, or a sample of
    `n_prompts` (seed 42, in enumeration order)."""
    n_legal, n = len(ctx.legal(op)), ctx.config.n_prompts
    if n is None or n >= n_legal:
        return np.arange(n_legal)
    return np.sort(np.random.default_rng(42).choice(n_legal, n, replace=False))


def prompts_stage(ctx: Context):
    cfg = ctx.config
    arrays, summary = (
        {},
        {"accuracy": {}, "n_legal": {}, "n_measured": {}, "n_correct": {}},
    )
    correct_sets = {}
    for op in cfg.operators:
        legal = ctx.legal(op)
        if not legal:
            raise ValueError(f"no legal {op!r} prompt with these operand settings")
        index = measured(ctx, op)
        pred, ok = ctx.task.correctness(
            ctx.model, [legal[i] for i in index], 4 * cfg.batch_size
        )
        key = op_key(op)
        arrays[f"{key}_pred"] = pred
        arrays[f"{key}_measured"] = index
        arrays[f"{key}_correct"] = index[ok]
        arrays[f"{key}_incorrect"] = index[~ok & ctx.task.is_number(pred)]
        correct_sets[op] = [legal[i] for i in index[ok]]
        summary["accuracy"][op] = float(ok.mean())
        summary["n_legal"][op] = len(legal)
        summary["n_measured"][op] = len(index)
        summary["n_correct"][op] = int(ok.sum())
        if len(correct_sets[op]) < cfg.n_discovery + cfg.n_eval:
            raise ValueError(
                f"the model answers only {ok.sum()} {op!r} prompts correctly; the "
                f"pipeline needs {cfg.n_discovery + cfg.n_eval} (n_discovery + n_eval)"
            )
    discovery, evaluation = discovery_eval_split(
        correct_sets, seed=42, n_discovery=cfg.n_discovery
    )
    filtered = filtered_50(correct_sets, seed=42, k=cfg.n_discovery)
    for op in cfg.operators:
        index = {p: i for i, p in enumerate(ctx.legal(op))}
        for name, sets in (
            ("discovery", discovery),
            ("evaluation", evaluation),
            ("filtered", filtered),
        ):
            arrays[f"{op_key(op)}_{name}"] = np.array([index[p] for p in sets[op]])
    total = sum(summary["n_measured"].values())
    summary["accuracy_weighted"] = (
        sum(summary["n_correct"].values()) / total if total else float("nan")
    )
    return arrays, summary

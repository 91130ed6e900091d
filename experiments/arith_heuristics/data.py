"""Stage `prompts` (paper-spec §2): which legal prompts the model answers correctly, and the
discovery / evaluation / filtered sets drawn from them.

Correct means the argmax token at `=` (over the whole vocabulary) is the answer's token id;
incorrect means the argmax is a number token but another one. Every set is stored as indices
into the operator's legal prompts (`Context.legal`), so nothing is stored twice.
"""

import numpy as np

from experiments.arith_model.train import predict

from . import arith_tokenizer as tok
from .pipeline import Context, answers_of, op_key, tokens_of
from .prompts import discovery_eval_split, filtered_50


def correctness(model, prompts, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(predicted token ids, correct)` of each prompt, by greedy argmax at `=`."""
    pred = predict(model, tokens_of(prompts), batch=batch_size)
    return pred, pred == answers_of(prompts)


def prompts_stage(ctx: Context):
    cfg = ctx.config
    arrays, summary = {}, {"accuracy": {}, "n_legal": {}, "n_correct": {}}
    correct_sets = {}
    for op in cfg.operators:
        legal = ctx.legal(op)
        pred, ok = correctness(ctx.model, legal, 4 * cfg.batch_size)
        is_number = (pred >= tok.NUMBER_OFFSET) & (pred <= tok.NUMBER_OFFSET + 999)
        key = op_key(op)
        arrays[f"{key}_pred"] = pred
        arrays[f"{key}_correct"] = np.flatnonzero(ok)
        arrays[f"{key}_incorrect"] = np.flatnonzero(~ok & is_number)
        correct_sets[op] = [legal[i] for i in np.flatnonzero(ok)]
        summary["accuracy"][op] = float(ok.mean())
        summary["n_legal"][op] = len(legal)
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
    total = sum(summary["n_legal"].values())
    summary["accuracy_weighted"] = (
        sum(summary["n_correct"].values()) / total if total else float("nan")
    )
    return arrays, summary

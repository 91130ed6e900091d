"""Reproduce the accuracy numbers of the committed model from its HF directory alone.

    python -m experiments.arith_model.evaluate                     # all prompts (~1 min)
    python -m experiments.arith_model.evaluate --subset            # checkpoint-curve subsets
    python -m experiments.arith_model.evaluate --model DIR

Loads `DIR` (default `experiments/arith_model/arith-neox`) with `converters.from_pretrained`,
rebuilds the train / held-out split from the `train_config` stored in `DIR/metrics.json`,
and measures greedy accuracy per operator (argmax over the full vocabulary of the logits at
`=` equals the answer token). Without `--subset` it compares with `metrics.json["final"]`
(every prompt); with `--subset` with the last entry of `metrics.json["curve"]` (the fixed
subsets used for the accuracy-over-training curve, which the final checkpoint is part of).
Exits with status 1 if any number differs.
"""

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import converters
from experiments.arith_heuristics.prompts import OPERATOR_NAMES, OPERATORS
from experiments.arith_model.train import (
    DEFAULT_OUT,
    TrainConfig,
    build_splits,
    eval_subsets,
    per_op_accuracy,
)


def evaluate(
    model_dir: str | pathlib.Path, *, subset: bool = False
) -> tuple[dict, dict]:
    """Returns `(measured, recorded)`: `{"train"|"held_out": {op: accuracy}}` each."""
    model_dir = pathlib.Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    cfg = TrainConfig(**metrics["train_config"])
    model = converters.from_pretrained(model_dir)
    train_split, held_out = build_splits(cfg)
    if subset:
        train_split, held_out = eval_subsets(
            train_split, held_out, metrics["n_curve"], seed=metrics["subset_seed"]
        )
        recorded = metrics["curve"][-1]
        assert recorded["step"] == cfg.steps
    else:
        recorded = metrics["final"]
    measured = {
        "train": per_op_accuracy(model, train_split),
        "held_out": per_op_accuracy(model, held_out),
    }
    return measured, {k: recorded[k] for k in ("train", "held_out")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.arith_model.evaluate",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--model", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--subset", action="store_true")
    args = parser.parse_args(argv)
    measured, recorded = evaluate(args.model, subset=args.subset)
    ok = True
    print(f"{'operator':<16}{'split':<10}{'measured':>10}{'recorded':>10}")
    for op in OPERATORS:
        for side in ("train", "held_out"):
            m, r = measured[side][op], recorded[side][op]
            flag = "" if m == r else "  MISMATCH"
            ok &= m == r
            print(f"{OPERATOR_NAMES[op]:<16}{side:<10}{m:>10.4f}{r:>10.4f}{flag}")
    print("all numbers reproduced" if ok else "some numbers differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

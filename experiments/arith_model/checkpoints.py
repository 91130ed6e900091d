"""The shipped training checkpoints of arith-neox, for the training-dynamics analysis.

`checkpoints/step_NNNNN.safetensors` hold the model weights (float32, keyed by pytree path)
of a few training steps of the committed run, dense early; the final step is the committed
model itself (`arith-neox/`). `load()` returns them in step order and `stack()` puts them on
a leading `checkpoint` axis, so one program can run over every checkpoint (`eqx.filter_vmap`).

    python -m experiments.arith_model.checkpoints --workdir results/arith_model/checkpoints

re-exports the files from an orbax training directory (`train.py`'s), checking that the
run's final step equals the committed model bit for bit.
"""

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxinterp.model import Transformer

from . import MODEL_DIR
from .train import TrainConfig, _flat, _unflat, checkpoint_manager, restore_model

CHECKPOINT_DIR = pathlib.Path(__file__).resolve().parent / "checkpoints"
SHIPPED_STEPS = (611, 910, 1357, 2024, 3017, 4498, 6707)
"""Steps shipped as files; the final step (10000) is the committed model."""


def _config() -> TrainConfig:
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    return TrainConfig(**metrics["train_config"])


def _final() -> Transformer:
    import converters

    return converters.from_pretrained(MODEL_DIR)


def load(
    directory: str | pathlib.Path = CHECKPOINT_DIR,
) -> tuple[list[int], list[Transformer]]:
    """`(steps, models)` of the shipped checkpoints and the final model, in step order."""
    directory = pathlib.Path(directory)
    cfg = _config()
    final = _final()  # the template: every checkpoint gets its structure and config
    want = {k: (v.shape, v.dtype) for k, v in _flat(final).items()}
    steps, models = [], []
    for path in sorted(directory.glob("step_*.safetensors")):
        flat = load_file(path)
        got = {k: (v.shape, v.dtype) for k, v in flat.items()}
        if got != want:
            raise ValueError(f"{path} does not hold arith-neox weights of float32")
        models.append(_unflat(flat, final))
        steps.append(int(path.stem.split("_")[1]))
    if not steps:
        raise ValueError(f"no step_*.safetensors in {directory}")
    return [*steps, cfg.steps], [*models, final]


def stack(models: Sequence[Transformer]) -> Transformer:
    """The models' arrays stacked on a new leading axis (same structure required)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *models)


def export(
    workdir: str | pathlib.Path, out: str | pathlib.Path = CHECKPOINT_DIR
) -> None:
    """Writes `SHIPPED_STEPS` of an orbax run as safetensors and checks its final step
    against the committed model."""
    cfg = _config()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mngr = checkpoint_manager(workdir, read_only=True)
    final = restore_model(mngr, cfg.steps, cfg)
    committed = _final()
    for a, b in zip(
        jax.tree.leaves(eqx.filter(final, eqx.is_array)),
        jax.tree.leaves(eqx.filter(committed, eqx.is_array)),
        strict=True,
    ):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise ValueError(f"the final step of {workdir} is not the committed model")
    for step in SHIPPED_STEPS:
        model = restore_model(mngr, step, cfg)
        flat = {k: np.asarray(v) for k, v in _flat(model).items()}
        save_file(
            flat, out / f"step_{step:05d}.safetensors", metadata={"step": str(step)}
        )
    mngr.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.arith_model.checkpoints"
    )
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, default=CHECKPOINT_DIR)
    args = parser.parse_args(argv)
    export(args.workdir, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Train a small GPT-NeoX on the paper's arithmetic prompts, with orbax checkpoints, and
export it as a Hugging Face `GPTNeoXForCausalLM` directory.

    python -m experiments.arith_model.train                      # train (resumes) + export
    python -m experiments.arith_model.train --steps 200 --workdir /tmp/probe --no-export
    python -m experiments.arith_model.train --export-only        # re-run the export step

Task (paper-spec §1.4, §2.1 with max_single_token=999): every legal prompt `a op b =` of the
four operators (operands 0..299, answers 0..999, floor division). The operand pairs of each
operator are split once into train / held-out (`prompts.split_pairs`, a keyed hash, so the
split is fixed by `split_seed` alone). A training sequence is `[BOS, a, op, b, =]` followed
by the answer token; the loss is the cross-entropy of the answer token predicted at the `=`
position only. Since the model is causal, the logits at `=` do not depend on the answer
token, so it is never fed in: the model sees the 5 prompt tokens and the answer is the
target of position 4 (identical loss and gradients, one position less of compute).

Model: GPT-NeoX as in Pythia (parallel residual, rotate-half partial rotary, exact GELU,
LayerNorm, untied embeddings), built with `jaxinterp.init_transformer`.

Optimisation: optax AdamW (weight decay on weight matrices only, not on biases and norms),
linear warmup + cosine decay, global-norm gradient clipping. The unembedding bias `b_U` is
frozen at zero (GPT-NeoX has none). Every batch holds the same
number of prompts of each operator; each operator's train prompts are visited in epochs of
a fresh permutation drawn from one seeded numpy `Generator`, so the small multiplication set
(~5.2k train prompts against ~81k for + and ÷) is oversampled by cycling through it faster.

Checkpoints (`orbax.checkpoint.CheckpointManager`, synchronous) are written at
`checkpoint_steps(cfg)`: geometrically spaced, dense early, always ending at the last step.
Each holds the parameters, the optimizer state, the step, and the data sampler's state (the
numpy bit-generator state, the current permutations and cursors). Restarting the command
resumes from the latest complete checkpoint and reaches the bit-identical final parameters
(orbax writes a step into a temporary directory and renames it when complete, so a killed
save is never listed as a step; stale temporaries are removed on the next start).

Export (`export`): restores every checkpoint and measures greedy accuracy (argmax of the
last-position logits over the full vocabulary == answer token) on fixed per-operator
subsets of train and held-out pairs, measures the final model on all train and held-out
prompts, and writes `config.json`, `model.safetensors`, the tokenizer files,
`metrics.json` and `accuracy.png` to `--out` (default `experiments/arith_model/arith-neox`).
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import converters
from experiments.arith_heuristics import arith_tokenizer
from experiments.arith_heuristics.prompts import OPERATORS, legal_prompts, split_pairs
from jaxinterp import Transformer, TransformerConfig, init_transformer

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "arith-neox"
DEFAULT_WORKDIR = pathlib.Path("results/arith_model/checkpoints")
ARCHITECTURE = "GPTNeoXForCausalLM"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (saved with every run).

    The defaults are the settings of the committed model `arith-neox/`.
    """

    # data
    max_single_token: int = 999
    max_op: int = 300
    held_out_fraction: float = 0.1
    split_seed: int = 0
    # model: GPT-NeoX / Pythia style
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    rotary_pct: float = 0.25
    n_ctx: int = 16
    # optimisation
    seed: int = 0
    steps: int = 10000
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 200
    end_lr_fraction: float = 0.01
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    # checkpoints
    n_checkpoints: int = 16
    first_checkpoint: int = 25

    def __post_init__(self):
        if self.batch_size % len(OPERATORS):
            raise ValueError(f"batch_size must be a multiple of {len(OPERATORS)}")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")

    def model_config(self) -> TransformerConfig:
        d_head = self.d_model // self.n_heads
        rotary_dim = int(d_head * self.rotary_pct)
        return TransformerConfig(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_head=d_head,
            d_mlp=self.d_mlp,
            d_vocab=arith_tokenizer.VOCAB_SIZE,
            n_ctx=self.n_ctx,
            act_fn="gelu",
            norm="ln",
            eps=1e-5,
            positional="rotary",
            rotary_dim=rotary_dim - rotary_dim % 2,
            parallel_residual=True,
            tied_embeddings=False,
        )


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Geometrically spaced steps from `first_checkpoint` to `steps` (dense early)."""
    first = min(cfg.first_checkpoint, cfg.steps)
    raw = np.geomspace(first, cfg.steps, cfg.n_checkpoints)
    return sorted({int(round(s)) for s in raw} | {cfg.steps})


# ---------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass(frozen=True)
class Split:
    """Token ids of one operator's prompts: `tokens [n, 5]`, `answers [n]` (int32)."""

    tokens: np.ndarray
    answers: np.ndarray

    def __len__(self) -> int:
        return len(self.answers)

    def take(self, index: np.ndarray) -> "Split":
        return Split(self.tokens[index], self.answers[index])


def build_splits(cfg: TrainConfig) -> tuple[dict[str, Split], dict[str, Split]]:
    """Per-operator `(train, held_out)` token ids of all legal prompts, in enumeration
    order."""
    train, held_out = {}, {}
    for op in OPERATORS:
        prompts = legal_prompts(
            op, max_single_token=cfg.max_single_token, max_op=cfg.max_op
        )
        tr, ho = split_pairs(
            prompts, held_out_fraction=cfg.held_out_fraction, seed=cfg.split_seed
        )
        for side, ps in ((train, tr), (held_out, ho)):
            side[op] = Split(
                arith_tokenizer.encode_prompts(ps), arith_tokenizer.answer_tokens(ps)
            )
    return train, held_out


class Sampler:
    """Balanced batches: `batch_size / 4` prompts of each operator per step, each operator
    read in epochs of permutations drawn from one numpy `Generator` (operators in
    `OPERATORS` order), so the data order is a pure function of the seed."""

    def __init__(self, train: dict[str, Split], batch_size: int, seed: int):
        self.train = train
        self.per_op = batch_size // len(OPERATORS)
        self.rng = np.random.default_rng(seed)
        self.perms = [self.rng.permutation(len(train[op])) for op in OPERATORS]
        self.cursors = [0] * len(OPERATORS)
        self.epochs = [0] * len(OPERATORS)

    def _take(self, i: int) -> np.ndarray:
        out, need = [], self.per_op
        while need:
            chunk = self.perms[i][self.cursors[i] : self.cursors[i] + need]
            out.append(chunk)
            need -= len(chunk)
            self.cursors[i] += len(chunk)
            if self.cursors[i] == len(self.perms[i]):
                self.perms[i] = self.rng.permutation(len(self.perms[i]))
                self.cursors[i] = 0
                self.epochs[i] += 1
        return np.concatenate(out)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns `(tokens [B, 5], answers [B])`, operators in `OPERATORS` order."""
        parts = [self.train[op].take(self._take(i)) for i, op in enumerate(OPERATORS)]
        return (
            np.concatenate([p.tokens for p in parts]),
            np.concatenate([p.answers for p in parts]),
        )

    # checkpointing: arrays go to the orbax pytree, the rest to JSON
    def state_arrays(self) -> dict[str, np.ndarray]:
        return {f"perm_{i}": p.astype(np.int64) for i, p in enumerate(self.perms)}

    def state_json(self) -> dict:
        return {
            "bit_generator": self.rng.bit_generator.state,
            "cursors": list(self.cursors),
            "epochs": list(self.epochs),
        }

    def load_state(self, arrays: dict, meta: dict) -> None:
        self.rng.bit_generator.state = meta["bit_generator"]
        self.perms = [np.asarray(arrays[f"perm_{i}"]) for i in range(len(OPERATORS))]
        self.cursors = list(meta["cursors"])
        self.epochs = list(meta["epochs"])


# ---------------------------------------------------------------------------------------------
# model, optimizer, steps


def init_model(cfg: TrainConfig) -> Transformer:
    return init_transformer(cfg.model_config(), jax.random.key(cfg.seed))


def _decay_mask(model: Transformer):
    """Weight decay on weight matrices (`W_*`) only, not on biases and norm weights."""

    def is_weight(path, leaf):
        return getattr(path[-1], "name", "").startswith("W_")

    return jax.tree_util.tree_map_with_path(is_weight, model)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=min(cfg.warmup_steps, cfg.steps // 2),  # capped for tiny runs
        decay_steps=cfg.steps,
        end_value=cfg.lr * cfg.end_lr_fraction,
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            schedule,
            b1=cfg.beta1,
            b2=cfg.beta2,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        ),
    )


def answer_logits(model: Transformer, tokens: jax.Array) -> jax.Array:
    """Logits at the last (`=`) position for a batch: `[B, 5] -> [B, d_vocab]`."""
    return jax.vmap(model)(tokens)[:, -1]


def loss_fn(model: Transformer, tokens: jax.Array, answers: jax.Array):
    logits = answer_logits(model, tokens).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, answers[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(logits, axis=-1) == answers
    return nll.mean(), correct.astype(jnp.float32).mean()


def trainable(model: Transformer):
    """Filter spec of the trained arrays: all but `unembed.b_U`, which stays zero because
    GPT-NeoX has no unembedding bias (the HF export refuses a nonzero one)."""
    spec = jax.tree.map(eqx.is_array, model)
    return eqx.tree_at(lambda m: m.unembed.b_U, spec, replace=False)


@functools.cache
def make_train_step(cfg: TrainConfig):
    """The jitted step for a config (cached, so resumed runs in one process compile once)."""
    optimizer = make_optimizer(cfg)

    @eqx.filter_jit(donate="all-except-first")
    def train_step(model, opt_state, tokens, answers):
        params, frozen = eqx.partition(model, trainable(model))

        def loss_of(params):
            return loss_fn(eqx.combine(params, frozen), tokens, answers)

        (loss, acc), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        # optax's Adam bias correction computes `float ** int32`, which strict dtype
        # promotion (the test suite's setting) rejects; the optimizer is traced with the
        # standard rules, the model (above) with whatever the caller set.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.combine(eqx.apply_updates(params, updates), frozen)
        return model, opt_state, loss, acc

    return train_step


@eqx.filter_jit
def _predict(model: Transformer, tokens: jax.Array) -> jax.Array:
    return jnp.argmax(answer_logits(model, tokens), axis=-1).astype(jnp.int32)


def predict(model: Transformer, tokens: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Greedy answer token (argmax over the full vocabulary at `=`) of each prompt.

    Batches are padded to a fixed size so every call reuses one compiled program.
    """
    out = []
    for start in range(0, len(tokens), batch):
        chunk = tokens[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        out.append(np.asarray(_predict(model, jnp.asarray(chunk)))[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def accuracy(model: Transformer, split: Split) -> float:
    return float(np.mean(predict(model, split.tokens) == split.answers))


# ---------------------------------------------------------------------------------------------
# checkpoints


def _flat(tree) -> dict[str, jax.Array]:
    """Array leaves keyed by their pytree path (orbax-friendly plain dict)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _unflat(flat: dict, like):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(flat[jax.tree_util.keystr(p)]) for p, _ in paths]
    )


ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"
"""Suffix of the directory orbax writes a step into before renaming it (its atomic commit)."""


def checkpoint_manager(
    workdir: str | pathlib.Path, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The run's orbax manager: synchronous saves, every checkpoint kept.

    A save killed before its commit leaves `<step>.orbax-checkpoint-tmp`, which orbax never
    lists as a step. A writer removes such leftovers here, synchronously: orbax's own
    `cleanup_tmp_directories` deletes them in a background thread that `close()` does not
    wait for, so two managers opened in a row on one directory race in `rmtree`
    (`FileNotFoundError: 'ocdbt.process_0'`). Readers pass `read_only=True`.
    """
    workdir = pathlib.Path(workdir).resolve()
    if not read_only:
        for tmp in workdir.glob(f"*{ORBAX_TMP_SUFFIX}*"):
            shutil.rmtree(tmp)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        enable_async_checkpointing=False,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(
        workdir, options=options, item_names=("arrays", "meta")
    )


def save_checkpoint(mngr, step, model, opt_state, sampler) -> None:
    arrays = {
        "model": _flat(model),
        "opt_state": _flat(opt_state),
        "data": sampler.state_arrays(),
    }
    meta = {"step": step, "sampler": sampler.state_json()}
    mngr.save(
        step,
        args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    mngr.wait_until_finished()


def _abstract(x) -> jax.ShapeDtypeStruct:
    # One CPU/accelerator device: restore onto it (saying so avoids orbax reading, and
    # warning about, the saved sharding file).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), np.dtype(x.dtype), sharding=device)


def restore_checkpoint(mngr, step, model, opt_state, sampler):
    """Restores `(model, opt_state)` in place of the given templates and the sampler."""
    like = {
        "model": _flat(model),
        "opt_state": _flat(opt_state),
        "data": sampler.state_arrays(),
    }
    abstract = jax.tree.map(_abstract, like)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    arrays, meta = restored["arrays"], restored["meta"]
    assert meta["step"] == step
    sampler.load_state(arrays["data"], meta["sampler"])
    return _unflat(arrays["model"], model), _unflat(arrays["opt_state"], opt_state)


def restore_model(mngr, step: int, cfg: TrainConfig) -> Transformer:
    """Only the model of a checkpoint (for evaluation)."""
    template = eqx.filter_eval_shape(init_model, cfg)
    abstract = {"model": {k: _abstract(v) for k, v in _flat(template).items()}}
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            arrays=ocp.args.PyTreeRestore(
                abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            )
        ),
    )
    return _unflat(restored["arrays"]["model"], template)


def _check_run_config(workdir: pathlib.Path, cfg: TrainConfig) -> None:
    path = workdir / "train_config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != dataclasses.asdict(cfg):
            diff = {
                k: (saved.get(k), v)
                for k, v in dataclasses.asdict(cfg).items()
                if saved.get(k) != v
            }
            raise ValueError(
                f"{workdir} holds a run with another config (saved, requested): {diff}; "
                "use another --workdir"
            )
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# training


def train(
    cfg: TrainConfig,
    workdir: str | pathlib.Path,
    *,
    stop_at: int | None = None,
    progress: bool = True,
) -> Transformer:
    """Trains (or resumes) a run in `workdir`; returns the model at the last step run.

    Arguments:
        cfg: the run's settings; must equal the ones a resumed `workdir` was started with.
        workdir: orbax checkpoint directory (plus `train_config.json`, `log.jsonl`).
        stop_at: stop after this step, as if killed there (tests); the schedule still
            runs to `cfg.steps`.
        progress: show a tqdm bar.
    """
    workdir = pathlib.Path(workdir)
    _check_run_config(workdir, cfg)
    train_split, _ = build_splits(cfg)
    sampler = Sampler(train_split, cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(cfg)
    model = init_model(cfg)
    opt_state = optimizer.init(eqx.filter(model, trainable(model)))
    mngr = checkpoint_manager(workdir)
    start = mngr.latest_step() or 0
    if start:
        model, opt_state = restore_checkpoint(mngr, start, model, opt_state, sampler)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with (workdir / "log.jsonl").open("a") as log:
        model = _loop(cfg, model, opt_state, sampler, mngr, log, start, end, progress)
    mngr.close()
    return model


def _loop(
    cfg, model, opt_state, sampler, mngr, log, start, end, progress, log_every=100
):
    from tqdm.auto import tqdm

    save_at = set(checkpoint_steps(cfg))
    train_step = make_train_step(cfg)
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=not progress,
        desc="train",
        smoothing=0.05,
    )
    t0 = time.perf_counter()
    losses, accs = [], []
    for step in range(start + 1, end + 1):
        tokens, answers = sampler.next()
        model, opt_state, loss, acc = train_step(
            model, opt_state, jnp.asarray(tokens), jnp.asarray(answers)
        )
        losses.append(loss)
        accs.append(acc)
        if step % log_every == 0 or step in save_at or step == end:
            mean_loss = float(jnp.mean(jnp.stack(losses)))
            mean_acc = float(jnp.mean(jnp.stack(accs)))
            losses, accs = [], []
            record = {
                "step": step,
                "loss": mean_loss,
                "train_batch_acc": mean_acc,
                "seconds": round(time.perf_counter() - t0, 2),
                "epochs": sampler.epochs,
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.3f}")
        if step in save_at:
            save_checkpoint(mngr, step, model, opt_state, sampler)
        bar.update(1)
    bar.close()
    return model


# ---------------------------------------------------------------------------------------------
# export


def eval_subsets(
    train_split: dict[str, Split], held_out: dict[str, Split], n: int, seed: int
) -> tuple[dict[str, Split], dict[str, Split]]:
    """Fixed random subsets of at most `n` prompts per operator (enumeration order kept)."""
    rng = np.random.default_rng(seed)

    def sub(split: Split) -> Split:
        if len(split) <= n:
            return split
        return split.take(np.sort(rng.choice(len(split), n, replace=False)))

    return (
        {op: sub(train_split[op]) for op in OPERATORS},
        {op: sub(held_out[op]) for op in OPERATORS},
    )


def per_op_accuracy(model: Transformer, splits: dict[str, Split]) -> dict[str, float]:
    return {op: accuracy(model, splits[op]) for op in OPERATORS}


def export(
    cfg: TrainConfig,
    workdir: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    n_curve: int = 1000,
    progress: bool = True,
) -> dict:
    """Writes the HF directory, `metrics.json` and `accuracy.png` from a finished run."""
    from tqdm.auto import tqdm

    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if out.resolve() in (workdir.resolve(), *workdir.resolve().parents):
        raise ValueError(f"{out} is replaced by the export; it must not hold {workdir}")
    train_split, held_out = build_splits(cfg)
    mngr = checkpoint_manager(workdir, read_only=True)
    steps = sorted(mngr.all_steps())
    if not steps or steps[-1] != cfg.steps:
        raise ValueError(f"{workdir} has no checkpoint at the final step {cfg.steps}")
    curve_train, curve_held = eval_subsets(train_split, held_out, n_curve, seed=0)
    curve = []
    for step in tqdm(steps, desc="checkpoints", disable=not progress):
        model = restore_model(mngr, step, cfg)
        curve.append(
            {
                "step": step,
                "train": per_op_accuracy(model, curve_train),
                "held_out": per_op_accuracy(model, curve_held),
            }
        )
    mngr.close()

    t0 = time.perf_counter()
    final = {
        "train": per_op_accuracy(model, train_split),
        "held_out": per_op_accuracy(model, held_out),
    }
    eval_seconds = time.perf_counter() - t0

    # Replaces `out` as a whole (a previous export's files included); the tokenizer,
    # metrics.json and accuracy.png are written into it below.
    converters.save_pretrained(model, out, architecture=ARCHITECTURE, overwrite=True)
    arith_tokenizer.save_tokenizer(out)
    log = [json.loads(line) for line in (workdir / "log.jsonl").open()]
    metrics = {
        "description": (
            "Greedy accuracy (argmax over the full vocabulary of the logits at '=' equals "
            "the answer token) of an in-house GPT-NeoX trained on the paper's arithmetic "
            "prompts (max_single_token=999, operands 0..299, floor division). "
            "'final' is over every train / held-out prompt; 'curve' is over fixed subsets "
            "(at most n_curve per operator, subset_seed) at every checkpoint."
        ),
        "command": "python -m experiments.arith_model.train",
        "train_config": dataclasses.asdict(cfg),
        "model_config": cfg.model_config().to_dict(),
        "n_params": int(
            sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
        ),
        "n_prompts": {
            "train": {op: len(train_split[op]) for op in OPERATORS},
            "held_out": {op: len(held_out[op]) for op in OPERATORS},
        },
        "final": final,
        "final_eval_seconds": round(eval_seconds, 1),
        "train_seconds": _train_seconds(log),
        "checkpoint_steps": steps,
        "n_curve": n_curve,
        "subset_seed": 0,
        "curve": curve,
        "train_log": [r for r in log if r["step"] % 500 == 0 or r["step"] in steps],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot(metrics, out / "accuracy.png")
    return metrics


def _train_seconds(log: list[dict]) -> float:
    """Wall time of the run from `log.jsonl` (each resumed segment's clock restarts)."""
    total, last = 0.0, 0.0
    for record in log:
        if record["seconds"] < last:  # a new segment started
            total += last
        last = record["seconds"]
    return round(total + last, 1)


def plot(metrics: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.arith_heuristics.prompts import OPERATOR_NAMES

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    steps = [c["step"] for c in metrics["curve"]]
    for i, op in enumerate(OPERATORS):
        color = f"C{i}"
        for side, style in (("train", "--"), ("held_out", "-")):
            ax.plot(
                steps,
                [c[side][op] for c in metrics["curve"]],
                style,
                color=color,
                marker="o" if side == "held_out" else None,
                markersize=3,
                label=f"{OPERATOR_NAMES[op]} ({side.replace('_', '-')})",
            )
    ax.set_xscale("log")
    ax.set_xlabel("training step (checkpoints)")
    ax.set_ylabel("greedy accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("arith-neox: accuracy over training")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.arith_model.train",
        description=__doc__.split("\n")[0],
    )
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(field.default),
            default=field.default,
            help=f"(default {field.default})",
        )
    parser.add_argument("--workdir", type=pathlib.Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--no-export", action="store_true", help="train only")
    parser.add_argument("--export-only", action="store_true", help="skip training")
    parser.add_argument("--n-curve", type=int, default=1000)
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    )
    return cfg, args


def main(argv: Sequence[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    if not args.export_only:
        train(cfg, args.workdir)
    if not args.no_export:
        metrics = export(cfg, args.workdir, args.out, n_curve=args.n_curve)
        print(json.dumps(metrics["final"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Stage `probes` (paper-spec §5): linear probes for the answer on the residual stream after
every layer at every position of the question.

One linear classifier `d_model -> max answer + 1` per (operator, layer, position), trained
with Adam (lr 3e-4, batch 32, cross-entropy) on 80% of the operator's correct prompts
(shuffled) and tested on the other 20%: all (layer, position) probes of an operator train
together as one vmapped, scanned program. Reported: test accuracy after the last epoch as
the official code computes it (mean of per-batch accuracies).

Parity mode replays the official label bug: the prompt list is re-shuffled for every
position while the activations keep the order of the first position processed (`=`), so
only that position has aligned labels. Clean mode aligns every position.
"""

import random

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.kernels import stacked_activations

from .pipeline import Context

BATCH = 32
LR = 3e-4


@eqx.filter_jit
def _train(x, y_train, x_test, y_test, n_classes, epochs, key):
    """Trains `[probe]` linear probes at once; `x [probe, n, d]`, `y [probe, n]`."""
    n_probe, n, d = x.shape
    steps = n // BATCH
    params = (jnp.zeros((n_probe, d, n_classes)), jnp.zeros((n_probe, n_classes)))
    opt = optax.adam(LR)
    state = opt.init(params)

    def loss(params, xb, yb):
        logits = jnp.einsum("pbd,pdc->pbc", xb, params[0]) + params[1][:, None]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, yb[..., None], -1).mean()

    def step(carry, idx):
        params, state = carry
        xb, yb = x[:, idx], y_train[:, idx]
        grads = jax.grad(loss)(params, xb, yb)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    def epoch(carry, k):
        order = jax.random.permutation(k, n)[: steps * BATCH].reshape(steps, BATCH)
        return jax.lax.scan(step, carry, order)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, state), jax.random.split(key, epochs))
    n_test = x_test.shape[1]
    t_steps = max(1, n_test // BATCH)
    pred = jnp.argmax(
        jnp.einsum("pnd,pdc->pnc", x_test, params[0]) + params[1][:, None], -1
    )
    hit = (pred == y_test)[:, : t_steps * BATCH].reshape(n_probe, t_steps, -1)
    return hit.mean(-1).mean(-1)  # mean of per-batch accuracies


def positions(ctx: Context) -> tuple[int, ...]:
    """Probed positions: the question's, last first (the official script's order)."""
    return ctx.task.positions[::-1]


def probe_labels(
    results: np.ndarray, mode: str, rng: random.Random, n_positions: int
) -> np.ndarray:
    """Labels `[position, prompt]` for activations in the order of `results`, positions in
    `positions` order: the answers themselves, or in parity mode the official bug (after
    the first position the list is re-shuffled, so the labels move and the activations
    do not)."""
    out, order = [], list(range(len(results)))
    for p in range(n_positions):
        if mode == "parity" and p > 0:
            rng.shuffle(order)
        out.append(results[order] if mode == "parity" else results)
    return np.stack(out)


def probes_stage(ctx: Context):
    cfg, model = ctx.config, ctx.model
    n_layers = model.cfg.n_layers
    pos = positions(ctx)
    acc = np.zeros((len(cfg.operators), n_layers, len(pos)))
    majority = []
    for o, op in enumerate(cfg.operators):
        prompts = ctx.select(op, "correct")
        rng = random.Random(42)
        prompts = rng.sample(prompts, min(cfg.probe_prompts, len(prompts)))
        tokens, bs = ctx.tokens(prompts), cfg.batch_size
        acts = np.concatenate(
            [
                np.asarray(
                    stacked_activations(
                        model, tokens[i : i + bs], "hook_resid_post", batch_size=bs
                    )[:, :, np.asarray(pos)]
                )
                for i in range(0, len(tokens), bs)
            ]
        )  # [prompt, layer, position, d_model]
        labels = probe_labels(
            np.array([p.result for p in prompts]), cfg.mode, rng, len(pos)
        )
        xs, ys = [], []
        for p in range(len(pos)):
            xs.append(acts[:, :, p].transpose(1, 0, 2))  # [layer, prompt, d]
            ys.append(np.broadcast_to(labels[p], (n_layers, len(prompts))))
        n_classes = int(labels.max()) + 1  # answers 0..max (the official: 999 classes)
        x = np.concatenate(xs)  # [(pos, layer), prompt, d]
        y = np.concatenate(ys)
        n_train = int(0.8 * len(prompts))
        test = labels[0, n_train:]
        majority.append(float(np.bincount(test).max() / len(test)))
        with jax.numpy_dtype_promotion(
            "standard"
        ):  # optax's bias correction mixes types
            out = _train(
                jnp.asarray(x[:, :n_train]),
                jnp.asarray(y[:, :n_train]),
                jnp.asarray(x[:, n_train:]),
                jnp.asarray(y[:, n_train:]),
                n_classes,
                cfg.probe_epochs,
                jax.random.key(o),
            )
        acc[o] = np.asarray(out).reshape(len(pos), n_layers).T
    names = dict(zip(ctx.task.positions, ctx.task.position_names, strict=True))
    summary = {
        "positions": list(pos),
        "position_names": [names[p] for p in pos],
        "mean_over_ops": acc.mean(0).tolist(),
        "majority_baseline": float(np.mean(majority)),
        "n_prompts": min(
            cfg.probe_prompts,
            min(len(ctx.select(op, "correct")) for op in cfg.operators),
        ),
    }
    return {"accuracy": acc}, summary

"""Sparse probing of MLP neurons: which neurons tell French from English, Python code from
prose and digits from words, and what ablating the best of them costs.

Data (`probing_data`, written for the project or generated): four pools of short texts,
`english`, `french`, `python` and `numbers` (English sentences with numbers), the first
`texts_per_pool` of each after a seeded shuffle, of which `test_texts` per pool are held
out. The split is by text, so no test token shares a text with a training token. Each text
keeps its first `max_tokens` tokens; the first token is never used (it has no context,
and first positions often carry outlier activations).

Binary features of a token, each defined on the tokens of some pools only:

* `french`: the token is in a French text (1) or an English text (0);
* `python`: the token is in a Python snippet (1) or an English text (0);
* `digit`: in the number sentences, the token is a run of digits (1) or anything else (0).

Stages:

* `probes`: `mlp.hook_post` of every layer at every kept token (`stacked_activations`,
  kept on the host in float16). Every neuron of every layer gets a score per feature,
  `d = (mean on - mean off) / sqrt((var on + var off) / 2)` over the training tokens (the
  class-conditional mean difference over the pooled standard deviation). Per feature and
  layer, the `max(ks)` neurons of largest `|d|` feed k-sparse logistic probes that read the
  top k of them, for every k in `ks`: standardised inputs, a class-balanced logistic loss
  with an L2 penalty (`L2`), `steps` full-batch Adam steps (`LR`), all features, layers and
  ks in one vmapped program. Test F1 (positive class) and accuracy on the held-out texts.
  The best single neurons of a feature are its `n_ablate` neurons of largest `|d|` over all
  layers, each scored by a one-neuron probe the same way. Monosemanticity per layer: the
  k = 1 test F1 of each feature, the number of neurons that *respond* to each feature
  (`|d| >= RESPONDS_D`, a class separation of one pooled standard deviation), and the
  number that respond to two features or more.
* `ablation`: the next-token loss of every held-out text with a set of neurons ablated at
  every position (`ablation_sweep(read="all")`, one program): nothing; per feature, its
  `n_ablate` best single neurons; per feature, a control of as many random neurons drawn
  in the same layers (never one of that feature's best). Mean ablation writes each neuron's
  mean over all training tokens; zero ablation writes zeros. The loss is averaged over the
  positions whose token has the feature (*matching*: French text, Python code, digit
  tokens; predicting the token that follows) and over the positions of the same feature's
  other class (*other*: English text, English text, non-digit tokens of the number texts).
  The loss at each position is read from the logits of every position and averaged over
  the measured positions of all texts on the host (`sequence_loss` would be NaN for a text
  without such positions).

`french` and `python` share their other class (English prose), so a neuron that separates
English prose from everything else responds to both.

Run: `jaxinterp probing [--model M] [--out DIR]` (under 2 minutes for SmolLM2-135M on two
CPU cores).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxinterp.kernels import ablation_sweep, stacked_activations
from jaxinterp.kernels.batching import progress
from jaxinterp.kernels.metrics import token_nll

from ..html_report import html_section, html_table, png
from . import probing_data
from .common import Context
from .configs import ProbingConfig as Config

__all__ = [
    "Config",
    "STAGES",
    "FEATURES",
    "Corpus",
    "corpus",
    "kept",
    "feature_labels",
    "capture",
    "neuron_scores",
    "fit_probes",
    "probe_metrics",
    "run_probes",
    "neuron_sets",
    "summary",
    "section",
]

POOLS = ("english", "french", "python", "numbers")
FEATURES = {
    "french": "French text vs English text",
    "python": "Python code vs English prose",
    "digit": "digit token vs other tokens of number sentences",
}
LR = 0.05
"""Adam learning rate of the probes."""
L2 = 1e-3
"""L2 penalty on the probe weights (inputs are standardised)."""
RESPONDS_D = 1.0
"""A neuron responds to a feature when its `|d|` reaches this (monosemanticity counts)."""
_F16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The texts read: `tokens`/`mask` `[text, pos]` (right-padded, at most `max_tokens`),
    the pool of each text (index into `POOLS`) and whether it is held out."""

    texts: list[str]
    pool: np.ndarray
    test: np.ndarray
    tokens: np.ndarray
    mask: np.ndarray


def corpus(ctx: Context) -> Corpus:
    """The first `texts_per_pool` texts of each pool after a seeded shuffle; the first
    `test_texts` of them are held out."""
    cfg = ctx.config
    rng = np.random.default_rng(cfg.seed)
    texts, pool, test = [], [], []
    for p, (name, pool_texts) in enumerate(
        probing_data.pools(cfg.seed, cfg.texts_per_pool).items()
    ):
        assert name == POOLS[p]
        order = rng.permutation(len(pool_texts))[: cfg.texts_per_pool]
        texts += [pool_texts[i] for i in order]
        pool += [p] * len(order)
        test += [i < cfg.test_texts for i in range(len(order))]
    tokens, mask = ctx.tokenizer.encode_batch(texts, padding_side="right")
    tokens, mask = tokens[:, : cfg.max_tokens], mask[:, : cfg.max_tokens]
    return Corpus(texts, np.array(pool), np.array(test), tokens, mask)


def kept(c: Corpus) -> np.ndarray:
    """`[text, pos]`: the tokens read (real tokens after the first)."""
    keep = c.mask.astype(bool)
    keep[:, 0] = False
    return keep


def is_digit_token(tokenizer, ids: np.ndarray) -> np.ndarray:
    """Whether each id decodes to digits only (surrounding spaces allowed)."""
    table = {
        int(i): tokenizer.decode([int(i)]).strip().isdigit() for i in np.unique(ids)
    }
    return np.vectorize(table.__getitem__, otypes=[bool])(ids)


def feature_labels(ctx: Context, c: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """`(member, label)`, both bool `[feature, text, pos]`: whether the feature is defined
    at a token (its text is in one of the feature's pools) and its value there."""
    pool = np.broadcast_to(c.pool[:, None], c.tokens.shape)
    english, french, python, numbers = (pool == POOLS.index(p) for p in POOLS)
    member = np.stack([english | french, english | python, numbers])
    label = np.stack(
        [french, python, numbers & is_digit_token(ctx.tokenizer, c.tokens)]
    )
    return member, label & member


def capture(ctx: Context, c: Corpus) -> np.ndarray:
    """`mlp.hook_post` of every layer at every kept token, `[token, layer, d_mlp]` in
    float16 (tokens in the row-major order of `kept(c)`; values beyond float16's range are
    clipped), one compile: every call has `batch_size` texts."""
    cfg, keep = ctx.config, kept(c)
    n = len(c.tokens)
    bs = min(cfg.batch_size, n)
    starts = range(0, n, bs)
    out = []
    for start in progress(starts, len(starts), "mlp.hook_post", ctx.progress):
        rows = np.minimum(np.arange(start, start + bs), n - 1)
        acts = stacked_activations(
            ctx.model,
            c.tokens[rows],
            "mlp.hook_post",
            attention_mask=c.mask[rows],
            batch_size=bs,
        )
        acts = np.asarray(acts).transpose(0, 2, 1, 3)[: n - start]  # [text, pos, L, D]
        acts = acts[keep[start : start + bs]]
        out.append(np.clip(acts, -_F16_MAX, _F16_MAX).astype(np.float16))
    return np.concatenate(out)


def weighted_moments(acts: np.ndarray, weights: np.ndarray, block: int = 256):
    """`(sum_n w[n, c] x[n], sum_n w[n, c] x[n]^2)`, `[c, *unit]` in float64, for
    activations `[token, *unit]` and weights `[token, c]`, read `block` tokens at a time."""
    n = len(acts)
    s1 = np.zeros((weights.shape[1], acts[0].size))
    s2 = np.zeros_like(s1)
    for start in range(0, n, block):
        x = acts[start : start + block].reshape(-1, acts[0].size).astype(np.float64)
        w = weights[start : start + block].astype(np.float64)
        s1 += w.T @ x
        s2 += w.T @ (x * x)
    shape = (weights.shape[1], *acts.shape[1:])
    return s1.reshape(shape), s2.reshape(shape)


def neuron_scores(acts: np.ndarray, on: np.ndarray, off: np.ndarray) -> np.ndarray:
    """`d [feature, *unit]`: mean on minus mean off over the pooled standard deviation,
    for activations `[token, *unit]` and bool masks `on`/`off` `[feature, token]`."""
    weights = np.concatenate([on, off]).T.astype(np.float64)  # [token, 2 feature]
    s1, s2 = weighted_moments(acts, weights)
    count = weights.sum(0).reshape(-1, *(1,) * (acts.ndim - 1))
    mean = s1 / np.maximum(count, 1)
    var = np.maximum(s2 / np.maximum(count, 1) - mean**2, 0)
    n_f = len(on)
    pooled = np.sqrt((var[:n_f] + var[n_f:]) / 2)
    return ((mean[:n_f] - mean[n_f:]) / np.maximum(pooled, 1e-6)).astype(np.float32)


@eqx.filter_jit
def fit_probes(x, y, w, keep, steps: int):
    """Logistic probes of every feature, unit group and sparsity, trained together.

    Arguments:
        x: `[feature, group, token, K]` standardised inputs (a group is a layer's top-K
            neurons, or one neuron with K = 1).
        y: `[feature, token]` labels, 0. or 1.
        w: `[feature, token]` sample weights (0 on padding; each class sums to 1/2).
        keep: `[sparsity, K]`, 1. on the inputs a probe of that sparsity reads.
        steps: full-batch Adam steps.

    Returns:
        `(weights [feature, group, sparsity, K], bias [feature, group, sparsity])`.
    """
    opt = optax.adam(LR)

    def fit(x, y, w, keep):
        def loss(params):
            weight, bias = params
            z = x @ (weight * keep) + bias
            ce = optax.sigmoid_binary_cross_entropy(z, y)
            return jnp.sum(w * ce) + L2 * jnp.sum((weight * keep) ** 2)

        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        params = (jnp.zeros(x.shape[-1], x.dtype), jnp.zeros((), x.dtype))
        carry = (params, opt.init(params))
        (params, _), _ = jax.lax.scan(step, carry, None, length=steps)
        return params[0] * keep, params[1]

    over_k = jax.vmap(fit, (None, None, None, 0))
    over_group = jax.vmap(over_k, (0, None, None, None))
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes types
        return jax.vmap(over_group, (0, 0, 0, None))(x, y, w, keep)


def probe_metrics(weight, bias, x, y, valid) -> tuple[np.ndarray, np.ndarray]:
    """Test `(F1 of the positive class, accuracy)`, `[feature, group, sparsity]`, of the
    probes of `fit_probes` on inputs `x [feature, group, token, K]` with labels and a
    validity mask `[feature, token]`."""
    z = np.einsum("fgnk,fgsk->fgsn", x, weight) + bias[..., None]
    pred = z > 0
    y, valid = y[:, None, None].astype(bool), valid[:, None, None].astype(bool)
    tp = (pred & y & valid).sum(-1)
    fp = (pred & ~y & valid).sum(-1)
    fn = (~pred & y & valid).sum(-1)
    right = ((pred == y) & valid).sum(-1)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return f1, right / np.maximum(valid.sum(-1), 1)


def gather(acts, rows, layers, neurons):
    """`[feature, group, token, K]` activations of `[feature, group, K]` (layer, neuron)
    units at the token `rows [feature, token]` (float32)."""
    return np.stack(
        [
            acts[r[None, :, None], l[:, None, :], n[:, None, :]]
            for r, l, n in zip(rows, layers, neurons, strict=True)
        ]
    ).astype(np.float32)


def padded_rows(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For bool `[feature, token]` masks: the token indices of each feature padded to one
    length (repeating its first token) and which of them are real."""
    idx = [np.nonzero(m)[0] for m in masks]
    width = max(map(len, idx))
    rows = np.stack([np.resize(i, width) for i in idx])
    valid = np.arange(width)[None] < np.array([len(i) for i in idx])[:, None]
    return rows, valid


def run_probes(acts, labels, train, test, layers, neurons, ks, steps: int):
    """Test F1 and accuracy `[feature, group, len(ks)]` of k-sparse probes on the units
    `(layers, neurons) [feature, group, K]` (ordered: a k-probe reads the first k),
    trained on the `train` tokens and tested on the `test` tokens (`[feature, token]`
    masks; `labels` likewise)."""
    rows_tr, valid_tr = padded_rows(train)
    rows_te, valid_te = padded_rows(test)
    x_tr = gather(acts, rows_tr, layers, neurons)
    x_te = gather(acts, rows_te, layers, neurons)
    w = valid_tr[:, None, :, None]
    count = np.maximum(valid_tr.sum(-1), 1)[:, None, None]
    mean = (x_tr * w).sum(2) / count
    std = np.sqrt((((x_tr - mean[:, :, None]) * w) ** 2).sum(2) / count)
    std = np.maximum(std, 1e-6)
    x_tr = (x_tr - mean[:, :, None]) / std[:, :, None]
    x_te = (x_te - mean[:, :, None]) / std[:, :, None]
    y_tr = np.take_along_axis(labels, rows_tr, 1).astype(np.float32)
    y_te = np.take_along_axis(labels, rows_te, 1)
    n_on = (y_tr * valid_tr).sum(-1, keepdims=True)
    n_off = ((1 - y_tr) * valid_tr).sum(-1, keepdims=True)
    sample_w = valid_tr * np.where(
        y_tr > 0, 0.5 / np.maximum(n_on, 1), 0.5 / np.maximum(n_off, 1)
    )
    keep = (np.arange(x_tr.shape[-1])[None] < np.asarray(ks)[:, None]).astype(
        np.float32
    )
    weight, bias = fit_probes(
        jnp.asarray(x_tr),
        jnp.asarray(y_tr),
        jnp.asarray(sample_w, jnp.float32),
        jnp.asarray(keep),
        steps,
    )
    return probe_metrics(np.asarray(weight), np.asarray(bias), x_te, y_te, valid_te)


def probes_stage(ctx: Context):
    cfg, model = ctx.config, ctx.model
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if max(cfg.ks) > d_mlp:
        raise ValueError(f"ks {cfg.ks} exceed the {d_mlp} neurons of a layer")
    if 2 * cfg.n_ablate > d_mlp:
        raise ValueError(
            f"n_ablate {cfg.n_ablate} leaves no room for a random control in a layer of "
            f"{d_mlp} neurons"
        )
    c = corpus(ctx)
    keep = kept(c)
    member, label = (a[:, keep] for a in feature_labels(ctx, c))  # [feature, token]
    text = np.nonzero(keep)[0]
    test_tok = c.test[text]
    train, test = member & ~test_tok, member & test_tok
    for name, tr, te, lab in zip(FEATURES, train, test, label, strict=True):
        if not all((m & lab).any() and (m & ~lab).any() for m in (tr, te)):
            raise ValueError(
                f"feature {name!r} needs tokens of both classes in training and test "
                "texts; read more texts or more tokens per text"
            )
    acts = capture(ctx, c)
    clipped = int((np.abs(acts) >= _F16_MAX).sum())
    d = neuron_scores(acts, train & label, train & ~label)  # [feature, layer, d_mlp]
    sums = weighted_moments(acts, (~test_tok)[:, None].astype(np.float64))[0]
    neuron_mean = sums[0] / max(int((~test_tok).sum()), 1)  # [layer, d_mlp]
    order = np.argsort(-np.abs(d), axis=-1)[..., : max(cfg.ks)]  # [feature, layer, K]
    layer_idx = np.broadcast_to(np.arange(n_layers)[None, :, None], order.shape)
    f1, acc = run_probes(acts, label, train, test, layer_idx, order, cfg.ks, cfg.steps)
    # best single neurons over all layers
    flat = np.argsort(-np.abs(d).reshape(len(FEATURES), -1), axis=-1)[:, : cfg.n_ablate]
    best = np.stack([flat // d_mlp, flat % d_mlp], -1)  # [feature, n_ablate, 2]
    single_f1, single_acc = run_probes(
        acts, label, train, test, best[..., :1], best[..., 1:], (1,), cfg.steps
    )
    mean_on, mean_off = (
        np.stack(
            [
                acts[np.nonzero(m)[0][:, None], b[:, 0], b[:, 1]].astype(float).mean(0)
                for m, b in zip(test & sel, best, strict=True)
            ]
        )
        for sel in (label, ~label)
    )
    responds = np.abs(d) >= RESPONDS_D  # [feature, layer, d_mlp]
    arrays = {
        "d": d,
        "f1": f1,
        "accuracy": acc,
        "top": order,
        "best": best,
        "best_f1": single_f1[..., 0],
        "best_accuracy": single_acc[..., 0],
        "best_mean_on": mean_on,
        "best_mean_off": mean_off,
        "responding": responds.sum(-1),
        "shared": (responds.sum(0) >= 2).sum(-1),
        "neuron_mean": neuron_mean.astype(np.float32),
    }
    counts = {
        name: {
            "train_on": int((train[f] & label[f]).sum()),
            "train_off": int((train[f] & ~label[f]).sum()),
            "test_on": int((test[f] & label[f]).sum()),
            "test_off": int((test[f] & ~label[f]).sum()),
        }
        for f, name in enumerate(FEATURES)
    }
    return arrays, {
        "tokens": counts,
        "clipped_values": clipped,
        "n_texts": len(c.texts),
        "n_tokens": len(text),
    }


def neuron_sets(ctx: Context, best: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """`[set, layer, d_mlp]` masks: nothing; per feature its best neurons; per feature as
    many random neurons in the same layers, none of them among that feature's best."""
    mcfg = ctx.model.cfg
    rng = np.random.default_rng(ctx.config.seed + 1)
    sets, info = [np.zeros((mcfg.n_layers, mcfg.d_mlp), bool)], [{"kind": "none"}]
    for f, name in enumerate(FEATURES):
        top = np.zeros_like(sets[0])
        top[best[f, :, 0], best[f, :, 1]] = True
        control = np.zeros_like(top)
        for layer in best[f, :, 0]:
            free = np.nonzero(~top[layer] & ~control[layer])[0]
            control[layer, rng.choice(free)] = True
        sets += [top, control]
        info += [{"kind": "best", "feature": name}, {"kind": "random", "feature": name}]
    return np.stack(sets), info


def ablation_stage(ctx: Context):
    cfg = ctx.config
    arrays = ctx.get("probes")[0]
    c = corpus(ctx)
    member, label = feature_labels(ctx, c)
    # measured: held-out texts, a kept token with a next token to predict
    measured = kept(c) & np.roll(c.mask.astype(bool), -1, axis=1)
    measured[:, -1] = False
    measured &= c.test[:, None]
    rows = np.nonzero(c.test)[0]
    tokens, mask = c.tokens[rows], c.mask[rows]
    on = (member & label & measured)[:, rows]  # [feature, text, pos]
    off = (member & ~label & measured)[:, rows]
    masks, info = neuron_sets(ctx, arrays["best"])
    values = None
    if cfg.ablation == "mean":
        mean = arrays["neuron_mean"][:, None, :]  # [layer, 1, d_mlp]
        values = np.repeat(mean, tokens.shape[1], 1).astype(ctx.model.embed.W_E.dtype)
    nll = ablation_sweep(
        ctx.model,
        tokens,
        masks,
        metric=token_nll,
        metric_args=(np.roll(tokens, -1, axis=1),),
        tap="mlp.hook_post",
        values=values,
        positions="all",
        read="all",
        attention_mask=mask,
        batch_size=max(1, cfg.batch_size // 4),
        progress_bar=ctx.progress,
    )
    nll = np.asarray(nll, np.float64)  # [text, set, pos]

    def loss(where):  # [text, pos] -> [set]
        return (nll * where[:, None]).sum((0, 2)) / max(int(where.sum()), 1)

    rows_out = {}
    for f, name in enumerate(FEATURES):
        best = 1 + 2 * f
        on_loss, off_loss = loss(on[f]), loss(off[f])
        rows_out[name] = {
            "clean_matching": float(on_loss[0]),
            "clean_other": float(off_loss[0]),
            "best_matching": float(on_loss[best]),
            "best_other": float(off_loss[best]),
            "random_matching": float(on_loss[best + 1]),
            "random_other": float(off_loss[best + 1]),
            "positions_matching": int(on[f].sum()),
            "positions_other": int(off[f].sum()),
        }
    arrays_out = {
        "masks": masks,
        "loss_matching": np.stack([loss(o) for o in on]),  # [feature, set]
        "loss_other": np.stack([loss(o) for o in off]),
    }
    return arrays_out, {"by_feature": rows_out, "sets": info}


STAGES = [("probes", probes_stage), ("ablation", ablation_stage)]


def summary(ctx: Context) -> dict:
    cfg = ctx.config
    arrays, probes = ctx.get("probes")
    abl = ctx.get("ablation")[1]
    f1, acc = arrays["f1"], arrays["accuracy"]
    out_probes, out_best = {}, {}
    for f, name in enumerate(FEATURES):
        by_k = []
        for j, k in enumerate(cfg.ks):
            layer = int(np.argmax(f1[f, :, j]))
            by_k.append(
                {
                    "k": k,
                    "layer": layer,
                    "f1": float(f1[f, layer, j]),
                    "accuracy": float(acc[f, layer, j]),
                }
            )
        out_probes[name] = {
            "best_layer_by_k": by_k,
            "f1_k1_by_layer": f1[f, :, 0].tolist(),
        }
        out_best[name] = [
            {
                "layer": int(layer),
                "neuron": int(neuron),
                "d": float(arrays["d"][f, layer, neuron]),
                "f1": float(arrays["best_f1"][f, i]),
                "accuracy": float(arrays["best_accuracy"][f, i]),
                "mean_on": float(arrays["best_mean_on"][f, i]),
                "mean_off": float(arrays["best_mean_off"][f, i]),
            }
            for i, (layer, neuron) in enumerate(arrays["best"][f])
        ]
    per_layer = [
        {
            "layer": layer,
            "f1_k1": {n: float(f1[f, layer, 0]) for f, n in enumerate(FEATURES)},
            "responding": {
                n: int(arrays["responding"][f, layer]) for f, n in enumerate(FEATURES)
            },
            "responding_to_two_or_more": int(arrays["shared"][layer]),
        }
        for layer in range(f1.shape[1])
    ]
    return {
        "features": FEATURES,
        "tokens": probes["tokens"],
        "probes": out_probes,
        "best_neurons": out_best,
        "ablation": {"kind": cfg.ablation, **abl["by_feature"]},
        "monosemanticity": {"responds_at_abs_d": RESPONDS_D, "per_layer": per_layer},
        "float16_clipped_values": probes["clipped_values"],
        "seconds": {"probes": probes["seconds"], "ablation": abl["seconds"]},
    }


def _chance_f1(counts: dict) -> float:
    """F1 of always answering 1 on the test tokens."""
    p = counts["test_on"] / max(counts["test_on"] + counts["test_off"], 1)
    return 2 * p / (1 + p)


def section(ctx: Context) -> str:
    cfg = ctx.config
    arrays, _ = ctx.get("probes")
    s = summary(ctx)
    names = list(FEATURES)
    f1 = arrays["f1"]
    n_layers = f1.shape[1]
    fig, axes = plt.subplots(1, len(names), figsize=(14, 3.6), layout="constrained")
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(cfg.ks)))
    for f, (ax, name) in enumerate(zip(axes, names, strict=True)):
        for j, k in enumerate(cfg.ks):
            ax.plot(f1[f, :, j], color=colors[j], label=f"k={k}")
        ax.axhline(_chance_f1(s["tokens"][name]), color="grey", ls=":", label="all 1")
        ax.set(title=FEATURES[name], xlabel="layer", ylabel="test F1", ylim=(0, 1.02))
    axes[-1].legend(fontsize=7, ncol=2)
    curves = png(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6), layout="constrained")
    for f, name in enumerate(names):
        ax1.plot(arrays["responding"][f], label=name)
    ax1.plot(arrays["shared"], "k--", label="two features or more")
    ax1.set(
        yscale="symlog",
        xlabel="layer",
        ylabel="neurons",
        title=f"neurons with |d| >= {RESPONDS_D:g}",
    )
    ax1.legend(fontsize=8)
    abl = s["ablation"]
    x = np.arange(len(names))
    for i, (kind, label) in enumerate((("best", "best neurons"), ("random", "random"))):
        for j, (where, hatch) in enumerate((("matching", ""), ("other", "//"))):
            rise = [abl[n][f"{kind}_{where}"] - abl[n][f"clean_{where}"] for n in names]
            ax2.bar(
                x + (2 * i + j - 1.5) * 0.2,
                rise,
                0.2,
                color=f"C{i}",
                hatch=hatch,
                label=f"{label}, {where} text",
            )
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set(
        xticks=x,
        xticklabels=names,
        ylabel="loss increase (nats)",
        title=f"{cfg.ablation}-ablating {cfg.n_ablate} neurons",
    )
    ax2.legend(fontsize=7)
    bars = png(fig)

    best_rows = [
        [
            name,
            f"{b['layer']}.{b['neuron']}",
            b["d"],
            b["f1"],
            b["accuracy"],
            b["mean_on"],
            b["mean_off"],
        ]
        for name in names
        for b in s["best_neurons"][name]
    ]
    k_rows = [
        [name]
        + [
            f"{r['f1']:.2f} (L{r['layer']})"
            for r in s["probes"][name]["best_layer_by_k"]
        ]
        for name in names
    ]
    abl_rows = [
        [
            name,
            abl[name]["clean_matching"],
            abl[name]["best_matching"],
            abl[name]["random_matching"],
            abl[name]["clean_other"],
            abl[name]["best_other"],
            abl[name]["random_other"],
        ]
        for name in names
    ]
    mono_rows = [
        [r["layer"]]
        + [r["f1_k1"][n] for n in names]
        + [r["responding"][n] for n in names]
        + [r["responding_to_two_or_more"]]
        for r in s["monosemanticity"]["per_layer"]
    ]
    return html_section(
        "Sparse probing of MLP neurons",
        "Gurnee et al. (2023) rank MLP neurons by a cheap score, train logistic probes "
        "on the top k of them and find that some features, such as the language of a "
        "text or whether it is code, are read well by a single neuron, mostly in middle "
        "layers, while early layers spread token-level features over several neurons; "
        "ablating such a context neuron raises the loss on the matching text more than "
        "on other text.",
        _ours(ctx, s, n_layers),
        curves,
        html_table(["feature", *(f"k={k}" for k in cfg.ks)], k_rows),
        "<p>Best single neurons (largest |d| over all layers, test F1 of a one-neuron "
        "probe, mean activation on held-out tokens of each class):</p>",
        html_table(
            ["feature", "neuron", "d", "F1", "accuracy", "mean on", "mean off"],
            best_rows,
        ),
        bars,
        html_table(
            [
                "feature",
                "clean: matching",
                "best ablated: matching",
                "random ablated: matching",
                "clean: other",
                "best ablated: other",
                "random ablated: other",
            ],
            abl_rows,
        ),
        f"<p>Monosemanticity by layer: the test F1 of the k = 1 probe (the layer's "
        f"neuron of largest |d|) per feature; the neurons responding to each feature "
        f"(|d| &ge; {RESPONDS_D:g}); the neurons responding to two features or more.</p>",
        html_table(
            ["layer"]
            + [f"F1 k=1 {n}" for n in names]
            + [f"responding {n}" for n in names]
            + ["two or more"],
            mono_rows,
        ),
        source="Literature",
    )


def _ours(ctx: Context, s: dict, n_layers: int) -> str:
    cfg = ctx.config
    parts = [
        f"{cfg.texts_per_pool} texts per kind ({cfg.test_texts} held out), up to "
        f"{cfg.max_tokens} tokens each."
    ]
    for name in FEATURES:
        k1 = s["probes"][name]["best_layer_by_k"][0]
        top = s["probes"][name]["best_layer_by_k"][-1]
        b = s["best_neurons"][name][0]
        a = s["ablation"][name]
        parts.append(
            f"<b>{name}</b>: the best single-neuron probe (k = {k1['k']}) reaches test F1 "
            f"{k1['f1']:.2f} in layer {k1['layer']}, the best k = {top['k']} probe "
            f"{top['f1']:.2f} in layer {top['layer']}; the neuron of largest |d| is "
            f"{b['layer']}.{b['neuron']} (d = {b['d']:.1f}, F1 {b['f1']:.2f}). "
            f"{cfg.ablation.capitalize()}-ablating the {cfg.n_ablate} best neurons "
            f"changes the loss on matching text by "
            f"{a['best_matching'] - a['clean_matching']:+.3f} and on other text by "
            f"{a['best_other'] - a['clean_other']:+.3f} nats ({cfg.n_ablate} random "
            f"neurons in the same layers: {a['random_matching'] - a['clean_matching']:+.3f}"
            f" and {a['random_other'] - a['clean_other']:+.3f})."
        )
    shared = [r["responding_to_two_or_more"] for r in s["monosemanticity"]["per_layer"]]
    parts.append(
        f"Neurons responding to two features or more: {min(shared)} to {max(shared)} "
        f"per layer (most in layer {int(np.argmax(shared))} of {n_layers}). The texts "
        "are few and short; French and Python share their other class (English "
        "prose), so a neuron separating English from the rest counts for both; and "
        "the features are confounded with token identity and "
        "topic, so a high F1 shows a neuron that separates these texts, not that it "
        "encodes the feature in general."
    )
    return " ".join(parts)

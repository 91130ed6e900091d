"""Every sweep kernel against a naive Python-loop reference built from `run` + plain edits.

Tiny random models with every weight (biases and norm weights included) perturbed, three
architectures (rotary/RMS/gated/GQA; learned positions/LayerNorm/parallel residual; GPT-2-like
serial LayerNorm). Each sweep runs over several padded batches and must compile its batch
program exactly once.
"""

import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

from jaxinterp import Add, Replace, init_transformer, process, run
from jaxinterp.kernels import (
    ablate,
    attribution,
    grids,
    heads,
    lens,
    means,
    metrics,
    patch,
)
from jaxinterp.taps import Taps

from .helpers import max_abs, tiny_config

TOL = 1e-5  # float32, relative to the values' magnitude (at least 1)


def close(got, want, tol=TOL) -> bool:
    """max |got - want| <= tol * max(1, max |want|)."""
    scale = max(1.0, float(np.max(np.abs(np.asarray(want, np.float64)))))
    return max_abs(got, want) <= tol * scale


CONFIGS = {
    "rotary_rms_gated_gqa": tiny_config(),
    "learned_ln_parallel": tiny_config(
        positional="learned",
        norm="ln",
        parallel_residual=True,
        gated_mlp=False,
        act_fn="gelu",
        n_kv_heads=4,
    ),
    "learned_ln_serial": tiny_config(
        positional="learned",
        norm="ln",
        gated_mlp=False,
        act_fn="gelu_new",
        n_kv_heads=4,
    ),
}
N_PROMPT, N_POS = 5, 5


def random_model(cfg, seed=0):
    """A model whose every array (biases, norm weights too) is non-trivial, drawn on the
    host (no compile)."""
    skeleton = eqx.filter_eval_shape(init_transformer, cfg, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith(".w"):  # norm weights
            return jnp.asarray(1 + 0.1 * rng.normal(size=leaf.shape), jnp.float32)
        if name.endswith(".b") and cfg.norm == "rms":  # RMSNorm has no bias
            return jnp.zeros(leaf.shape, jnp.float32)
        scale = 0.1 if len(leaf.shape) <= 2 and ".b" in name else 0.2
        return jnp.asarray(scale * rng.normal(size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, skeleton)


ALL = list(CONFIGS)
TWO = ALL[:2]
ONE = ALL[:1]


@functools.cache
def _setup(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, cfg.d_vocab, (N_PROMPT, N_POS))
    corrupt = rng.integers(0, cfg.d_vocab, (N_PROMPT, N_POS))
    answer = rng.integers(0, cfg.d_vocab, N_PROMPT)
    wrong = rng.integers(0, cfg.d_vocab, N_PROMPT)
    return model, clean, corrupt, answer, wrong


@pytest.fixture
def setup(request):
    return _setup(request.param)


def configs(names):
    """Parametrizes the `setup` fixture over the named architectures."""
    return pytest.mark.parametrize("setup", names, indirect=True)


def n_compiles(kernel) -> int:
    return kernel._cached._cache_size()


def last_logits(model, tokens, edits=None):
    logits, _ = run(model, tokens, edits=edits)
    return np.asarray(logits)[..., -1, :]


def capture(model, tokens, suffix):
    """Stacked `[prompt, layer, pos, ...]` activations via plain `run`."""
    n = model.cfg.n_layers
    names = [f"blocks.{l}.{suffix}" for l in range(n)]
    _, cache = run(model, tokens, capture=names)
    return np.stack([np.asarray(cache[m]) for m in names], axis=1)


# ------------------------------------------------------------------ building blocks


def unembed(model, x):
    """Final norm and unembedding of residual vectors `[..., d_model]`."""
    flat = jnp.asarray(x).reshape(-1, x.shape[-1])
    out = model.unembed_resid(flat, Taps(model.cfg))
    return out.reshape(*x.shape[:-1], -1)


@configs(TWO)
def test_mean_cache_and_stacked(setup):
    model, clean, *_ = setup
    got = means.mean_cache(
        model, clean, ("attn.hook_z", "mlp.hook_post"), batch_size=2, progress_bar=False
    )
    for suffix in ("attn.hook_z", "mlp.hook_post"):
        assert close(got[suffix], capture(model, clean, suffix).mean(0))


@configs(ONE)
def test_stacked_activations_and_last_logits(setup):
    model, clean, *_ = setup
    acts = means.stacked_activations(model, clean, "hook_resid_post", batch_size=2)
    assert close(acts, capture(model, clean, "hook_resid_post"))
    assert (
        max_abs(
            means.answer_logits(model, clean, batch_size=2), last_logits(model, clean)
        )
        < 1e-4
    )


# ------------------------------------------------------------------ metrics


def test_metrics():
    rng = np.random.default_rng(1)
    clean, patched = (jnp.asarray(rng.normal(size=11), jnp.float32) for _ in range(2))
    p, q = jax.nn.softmax(clean), jax.nn.softmax(patched)
    r, r2 = 3, 7
    want = 0.5 * ((q[r2] - p[r2]) / p[r2] + (p[r] - q[r]) / q[r])
    assert abs(metrics.indirect_effect(patched, clean, r, r2) - want) < 1e-6
    assert metrics.logit_diff(patched, r, r2) == patched[r] - patched[r2]
    assert abs(metrics.target_prob(patched, r) - q[r]) < 1e-7
    centred = patched - patched.mean()
    assert (
        metrics.normalized_logit(patched, r, center=True) == centred[r] / centred.max()
    )
    kl = float(jnp.sum(p * (jnp.log(p) - jnp.log(q))))
    assert abs(metrics.kl_div(patched, clean) - kl) < 1e-6
    assert metrics.accuracy(patched, jnp.argmax(patched)) == 1.0


# ------------------------------------------------------------------ ablation


@configs(ONE)
@pytest.mark.parametrize(
    "kind, positions", [("zero", "last"), ("mean", "all"), ("resample", "mask")]
)
def test_ablation_sweep_neurons(setup, kind, positions):
    model, clean, corrupt, answer, _ = setup
    cfg = model.cfg
    rng = np.random.default_rng(2)
    masks = rng.random((3, cfg.n_layers, cfg.d_mlp)) < 0.2
    if kind == "mean":
        masks[:, 0] = False  # first edited layer is 1: layer 0 is shared across sets
    pos_mask = np.array([False, True, False, True, True])
    pos_arg = pos_mask if positions == "mask" else positions
    pm = {"last": np.eye(N_POS, dtype=bool)[-1], "all": np.ones(N_POS, bool)}.get(
        positions, pos_mask
    )
    if kind == "zero":
        values = None
        per_prompt = np.zeros((N_PROMPT, cfg.n_layers, N_POS, cfg.d_mlp), np.float32)
    elif kind == "mean":
        values = capture(model, corrupt, "mlp.hook_post").mean(0)
        per_prompt = np.broadcast_to(values, (N_PROMPT, *values.shape))
    else:
        values = per_prompt = capture(model, corrupt, "mlp.hook_post")
    before = n_compiles(ablate._ablate)
    got = ablate.ablation_sweep(
        model,
        clean,
        masks,
        metric=metrics.logit_and_argmax,
        metric_args=(answer,),
        values=values,
        positions=pos_arg,
        batch_size=2,
        progress_bar=False,
    )
    assert n_compiles(ablate._ablate) - before == 1
    want_logit = np.zeros((3, N_PROMPT))
    want_arg = np.zeros((3, N_PROMPT), int)
    for s in range(3):
        for i in range(N_PROMPT):
            edits = {
                f"blocks.{l}.mlp.hook_post": Replace(
                    per_prompt[i, l], pm[:, None] & masks[s, l][None, :]
                )
                for l in range(cfg.n_layers)
            }
            logits = last_logits(model, clean[i], edits)
            want_logit[s, i] = logits[answer[i]]
            want_arg[s, i] = logits.argmax()
    assert close(got[0].T, want_logit)  # results are [prompt, set]
    np.testing.assert_array_equal(got[1].T, want_arg)


@configs(TWO)
def test_ablation_sweep_heads_and_components(setup):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    head_sets = np.zeros((cfg.n_heads, cfg.n_layers, cfg.n_heads), bool)
    for h in range(cfg.n_heads):
        head_sets[h, 1, h] = True
    mean_z = capture(model, corrupt, "attn.hook_z").mean(0)
    got = ablate.ablation_sweep(
        model,
        clean,
        head_sets,
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        tap="attn.hook_z",
        values=mean_z,
        positions="all",
        batch_size=3,
        progress_bar=False,
    )
    for h in range(cfg.n_heads):
        where = np.zeros((N_POS, cfg.n_heads, 1), bool)
        where[:, h] = True
        logits = last_logits(
            model, clean, {"blocks.1.attn.hook_z": Replace(mean_z[1], where)}
        )
        want = logits[np.arange(N_PROMPT), answer] - logits[np.arange(N_PROMPT), wrong]
        assert close(got[:, h], want)


@configs(TWO)
def test_ablation_sweep_heads_and_neurons_per_prompt(setup):
    """Two taps ablated together (a circuit: heads and neurons), each prompt its own sets."""
    model, clean, corrupt, answer, _ = setup
    cfg = model.cfg
    rng = np.random.default_rng(5)
    heads = rng.random((N_PROMPT, 2, cfg.n_layers, cfg.n_heads)) < 0.4
    neurons = rng.random((N_PROMPT, 2, cfg.n_layers, cfg.d_mlp)) < 0.3
    neurons[:, :, 0] = False
    mean_z = capture(model, corrupt, "attn.hook_z").mean(0)
    got = ablate.ablation_sweep(
        model,
        clean,
        (heads, neurons),
        metric=metrics.target_logit,
        metric_args=(answer,),
        tap=("attn.hook_z", "mlp.hook_post"),
        values=(mean_z, None),
        positions="all",
        masks_per_prompt=True,
        batch_size=2,
        progress_bar=False,
    )
    assert got.shape == (N_PROMPT, 2)
    for i in range(N_PROMPT):
        for s in range(2):
            edits = {}
            for l in range(cfg.n_layers):
                edits[f"blocks.{l}.attn.hook_z"] = Replace(
                    mean_z[l], heads[i, s, l][None, :, None]
                )
                edits[f"blocks.{l}.mlp.hook_post"] = Replace(
                    np.zeros((N_POS, cfg.d_mlp), np.float32), neurons[i, s, l][None]
                )
            logits = last_logits(model, clean[i], edits)
            assert close(got[i, s], logits[answer[i]])


@configs(TWO)
def test_ablation_sweep_over_stacked_checkpoints(setup):
    """Models stacked on a leading axis run the same prompts and sets in one program,
    each giving its own results (`[checkpoint, prompt, set]`)."""
    model, clean, _, answer, _ = setup
    cfg = model.cfg
    other = jax.tree.map(lambda a: a * 0.9 if eqx.is_inexact_array(a) else a, model)
    models = jax.tree.map(lambda *a: jnp.stack(a), model, other)
    masks = np.random.default_rng(7).random((3, cfg.n_layers, cfg.d_mlp)) < 0.3
    kw = dict(
        metric=metrics.target_logit,
        metric_args=(answer,),
        positions="all",
        batch_size=3,
        progress_bar=False,
    )
    got = ablate.ablation_sweep(models, clean, masks, stacked=True, **kw)
    each = [ablate.ablation_sweep(m, clean, masks, **kw) for m in (model, other)]
    assert got.shape == (2, N_PROMPT, 3)
    assert close(got, np.stack(each))
    with pytest.raises(ValueError, match="stacked on a leading axis"):
        ablate.ablation_sweep(model, clean, masks, stacked=True, **kw)

    # each model its own prompts, answers and per-prompt sets (stacked_inputs)
    rng = np.random.default_rng(8)
    own_tokens = np.stack([clean, clean[::-1]])  # [checkpoint, prompt, pos]
    own_answer = np.stack([answer, rng.permutation(answer)])
    own_masks = rng.random((2, N_PROMPT, 3, cfg.n_layers, cfg.d_mlp)) < 0.3
    kw = kw | dict(metric_args=(own_answer,), masks_per_prompt=True)
    got = ablate.ablation_sweep(
        models, own_tokens, own_masks, stacked=True, stacked_inputs=True, **kw
    )
    each = [
        ablate.ablation_sweep(
            m, own_tokens[c], own_masks[c], **(kw | dict(metric_args=(own_answer[c],)))
        )
        for c, m in enumerate((model, other))
    ]
    assert got.shape == (2, N_PROMPT, 3)
    assert close(got, np.stack(each))
    with pytest.raises(ValueError, match="leading checkpoint axis of 2"):
        ablate.ablation_sweep(
            models, clean, own_masks, stacked=True, stacked_inputs=True, **kw
        )
    with pytest.raises(ValueError, match="needs stacked=True"):
        ablate.ablation_sweep(model, own_tokens, own_masks, stacked_inputs=True, **kw)


@configs(TWO)
def test_ablation_sweep_reads_every_position(setup):
    """`read="all"`: the metric sees `[pos, d_vocab]` logits (a loss over padded texts)."""
    model, clean, _, _, _ = setup
    cfg = model.cfg
    mask = np.ones((N_PROMPT, N_POS), np.int32)
    mask[1, -2:] = 0  # right padding
    mask[3, :1] = 0  # left padding
    targets = np.roll(clean, -1, axis=1)
    weights = (mask * np.roll(mask, -1, axis=1)).astype(np.float32)
    weights[:, -1] = 0
    heads = np.zeros((3, cfg.n_layers, cfg.n_heads), bool)
    heads[0, 1, 0] = heads[1, 0, 1] = heads[2, 1, 2] = heads[2, 0, 0] = True
    got = ablate.ablation_sweep(
        model,
        clean,
        heads,
        metric=metrics.sequence_loss,
        metric_args=(targets, weights),
        tap="attn.hook_z",
        positions="all",
        attention_mask=mask,
        read="all",
        batch_size=2,
        progress_bar=False,
    )
    assert got.shape == (N_PROMPT, 3)
    for s in range(3):
        edits = {
            f"blocks.{l}.attn.hook_z": Replace(
                np.zeros((N_POS, cfg.n_heads, cfg.d_head), np.float32),
                heads[s, l][None, :, None],
            )
            for l in range(cfg.n_layers)
        }
        logits, _ = run(model, clean, edits=edits, attention_mask=mask)
        logp = np.asarray(jax.nn.log_softmax(logits))
        nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
        want = (nll * weights).sum(1) / weights.sum(1)
        assert close(got[:, s], want)
    with pytest.raises(ValueError, match="answer_pos"):
        ablate.ablation_sweep(
            model,
            clean,
            heads,
            metric=metrics.sequence_loss,
            metric_args=(targets, weights),
            tap="attn.hook_z",
            read="all",
            answer_pos=np.zeros(N_PROMPT, int),
        )


@pytest.mark.parametrize("per_prompt", [False, True])
@configs(ONE)
def test_ablation_sweep_in_layer_groups(setup, per_prompt):
    """Sets split by their first edited layer, each group run from its own first layer,
    give the results of one group, in the sets' order (a set editing nothing included)."""
    model, clean, corrupt, answer, _ = setup
    cfg = model.cfg
    heads = np.zeros((2 * cfg.n_heads + 1, cfg.n_layers, cfg.n_heads), bool)
    order = np.random.default_rng(3).permutation(2 * cfg.n_heads)
    for s, i in enumerate(order):
        heads[s, i // cfg.n_heads, i % cfg.n_heads] = True  # last set: nothing
    if per_prompt:
        heads = np.broadcast_to(heads, (N_PROMPT, *heads.shape)).copy()
        heads[1, 0] = False
    kw = dict(
        metric=metrics.target_logit,
        metric_args=(answer,),
        tap="attn.hook_z",
        values=capture(model, corrupt, "attn.hook_z").mean(0),
        positions="all",
        masks_per_prompt=per_prompt,
        batch_size=2,
        progress_bar=False,
    )
    one = ablate.ablation_sweep(model, clean, heads, **kw)
    two = ablate.ablation_sweep(model, clean, heads, n_layer_groups=2, **kw)
    assert close(two, one)
    clean_logit = last_logits(model, clean)[np.arange(N_PROMPT), answer]
    assert close(one[:, -1], clean_logit)
    if per_prompt:
        assert close(one[1, 0], clean_logit[1])


@configs(ONE)
def test_ablation_sweep_components(setup):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    # whole MLP components, zero-ablated at the last position
    comp_sets = np.eye(cfg.n_layers, dtype=bool)
    got = ablate.ablation_sweep(
        model,
        clean,
        comp_sets,
        metric=metrics.target_logit,
        metric_args=(answer,),
        tap="hook_mlp_out",
        batch_size=5,
        progress_bar=False,
    )
    for l in range(cfg.n_layers):
        where = np.eye(N_POS, dtype=bool)[-1][:, None]
        edit = Replace(np.zeros((1, cfg.d_model), np.float32), where)
        logits = last_logits(model, clean, {f"blocks.{l}.hook_mlp_out": edit})
        assert close(got[:, l], logits[np.arange(N_PROMPT), answer])


# ------------------------------------------------------------------ activation patching


@pytest.mark.parametrize(
    "setup, tap, positions, groups",
    [
        (ALL[0], "attn.hook_z", (1, -1), 2),
        (ALL[0], "mlp.hook_post", (3,), 1),
        (ALL[1], "attn.hook_z", (3,), 1),
    ],
    indirect=["setup"],
)
def test_activation_patching(setup, tap, positions, groups):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    before = n_compiles(patch._patch)
    got = patch.activation_patching(
        model,
        clean,
        corrupt,
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        tap=tap,
        positions=positions,
        n_layer_groups=groups,
        batch_size=2,
        progress_bar=False,
    )
    assert n_compiles(patch._patch) - before == 1
    src = capture(model, corrupt, tap)
    per_head = tap == "attn.hook_z"
    pos_list = [p % N_POS for p in positions]
    units = range(cfg.n_heads) if per_head else [None]
    assert got.shape[:3] == (N_PROMPT, cfg.n_layers, len(pos_list))
    for l in range(cfg.n_layers):
        for j, p in enumerate(pos_list):
            for u in units:
                want = []
                for i in range(N_PROMPT):
                    where = np.zeros(src.shape[2:], bool)
                    if u is None:
                        where[p] = True
                    else:
                        where[p, u] = True
                    edits = {f"blocks.{l}.{tap}": Replace(src[i, l], where)}
                    logits = last_logits(model, clean[i], edits)
                    want.append(logits[answer[i]] - logits[wrong[i]])
                cell = got[:, l, j, u] if per_head else got[:, l, j]
                assert close(cell, want), (l, p, u)


def ie_attribution(setup, taps, batch_size):
    """Attribution scores of the paper's indirect effect, and the metric's arguments."""
    model, clean, corrupt, answer, wrong = setup
    margs = (last_logits(model, clean), answer, wrong)
    scores = attribution.attribution_patching(
        model,
        clean,
        corrupt,
        metric=metrics.indirect_effect,
        metric_args=margs,
        taps=taps,
        batch_size=batch_size,
        progress_bar=False,
    )
    return scores, margs


@configs(TWO)
def test_attribution_patching(setup):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    scores, (clean_logits, *_) = ie_attribution(
        setup, ("mlp.hook_post", "attn.hook_z"), batch_size=2
    )

    # naive: grad through `run` with per-layer zero Add edits, one prompt at a time
    def f(deltas, tokens, ref, r, r2):
        edits = {
            f"blocks.{l}.{s}": Add(deltas[s][l])
            for s in deltas
            for l in range(cfg.n_layers)
        }
        logits, _ = run(model, tokens, edits=edits)
        return metrics.indirect_effect(logits[-1], ref, r, r2)

    naive_grad = jax.jit(jax.grad(f))
    suffixes = ("mlp.hook_post", "attn.hook_z")
    a_clean = {s: capture(model, clean, s) for s in suffixes}
    a_src = {s: capture(model, corrupt, s) for s in suffixes}
    for i in range(N_PROMPT):
        zeros = {s: jnp.zeros_like(jnp.asarray(a_clean[s][i])) for s in suffixes}
        grads = naive_grad(zeros, clean[i], clean_logits[i], answer[i], wrong[i])
        for s in suffixes:
            want = (a_src[s][i] - a_clean[s][i]) * np.asarray(grads[s])
            assert close(scores[s][i], want)


@configs(ONE)
def test_attribution_vs_exact(setup):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    scores, margs = ie_attribution(setup, ("mlp.hook_post",), batch_size=5)
    clean_logits = margs[0]
    # exact patching of single neurons against plain run, and the validator
    rng = np.random.default_rng(3)
    cells = np.stack(
        [
            rng.integers(0, cfg.n_layers, 6),
            rng.integers(0, N_POS, 6),
            rng.integers(0, cfg.d_mlp, 6),
        ],
        axis=1,
    )
    report = attribution.attribution_vs_exact(
        model,
        clean,
        corrupt,
        cells,
        metric=metrics.indirect_effect,
        metric_args=margs,
        scores=scores["mlp.hook_post"],
        batch_size=4,
    )
    src = capture(model, corrupt, "mlp.hook_post")
    for c, (l, p, n) in enumerate(cells):
        for i in range(N_PROMPT):
            where = np.zeros((N_POS, cfg.d_mlp), bool)
            where[p, n] = True
            logits = last_logits(
                model,
                clean[i],
                {f"blocks.{l}.mlp.hook_post": Replace(src[i, l], where)},
            )
            ie = metrics.indirect_effect(logits, clean_logits[i], answer[i], wrong[i])
            base = metrics.indirect_effect(
                clean_logits[i], clean_logits[i], answer[i], wrong[i]
            )
            assert abs(report["exact"][i, c] - (ie - base)) < 1e-4
    assert -1 <= report["pearson"] <= 1


@configs(ALL)
def test_patch_cells_skips_layers_and_positions_before_the_cells(setup):
    """Cells at layers >= 1 and positions >= 2: the kernel starts there (clean prefix and
    keys/values reused) and must equal full forwards with one plain edit each."""
    model, clean, corrupt, answer, wrong = setup
    margs = (answer, wrong)
    for tap, cells in [
        ("hook_resid_pre", np.array([[1, 2], [1, 4], [1, -2]])),
        ("attn.hook_z", np.array([[1, 3, 0], [1, 2, 3], [1, 4, 1]])),
    ]:
        got = patch.patch_cells(
            model,
            clean,
            corrupt,
            cells,
            metric=metrics.logit_diff,
            metric_args=margs,
            tap=tap,
            batch_size=2,
            progress_bar=False,
        )
        assert got.shape == (N_PROMPT, len(cells))
        src = capture(model, corrupt, tap)
        for c, (l, p, *unit) in enumerate(cells):
            for i in range(N_PROMPT):
                where = np.zeros(src.shape[2:], bool)
                where[(p, *unit)] = True
                name = f"blocks.{l}.{tap}"
                logits = last_logits(model, clean[i], {name: Replace(src[i, l], where)})
                want = logits[answer[i]] - logits[wrong[i]]
                assert close(got[i, c], want), (tap, c, i)


# ------------------------------------------------------------------ path patching


@pytest.mark.parametrize("groups", [1, 2])
@configs(TWO)
def test_path_patching(setup, groups):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    n = cfg.n_layers
    senders = np.zeros((3, n, cfg.n_heads), bool)
    senders[0, 0, 0] = True
    senders[1, 0, [1, 2]] = True
    senders[2, 1, 3] = True
    receivers = np.zeros((n, cfg.n_heads), bool)
    receivers[1, [0, 3]] = True
    got = patch.path_patching(
        model,
        clean,
        corrupt,
        senders,
        receivers,
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        n_layer_groups=groups,
        batch_size=2,
        progress_bar=False,
    )
    z_clean = capture(model, clean, "attn.hook_z")
    z_src = capture(model, corrupt, "attn.hook_z")
    post_clean = capture(model, clean, "mlp.hook_post")
    q_names = [f"blocks.{l}.attn.hook_q" for l in range(n)]
    for s in range(3):
        for i in range(N_PROMPT):
            edits = {}
            for l in range(n):
                z = np.where(senders[s, l][None, :, None], z_src[i, l], z_clean[i, l])
                edits[f"blocks.{l}.attn.hook_z"] = Replace(z)
                edits[f"blocks.{l}.mlp.hook_post"] = Replace(post_clean[i, l])
            _, cache = run(model, clean[i], capture=q_names, edits=edits)
            edits = {
                q_names[l]: Replace(cache[q_names[l]], receivers[l][None, :, None])
                for l in range(n)
            }
            logits = last_logits(model, clean[i], edits)
            want = logits[answer[i]] - logits[wrong[i]]
            assert abs(got[i, s] - want) < TOL
    # senders in the receivers' layer or above have no path: effect equals the clean run
    clean_logits = last_logits(model, clean)
    clean_diff = (
        clean_logits[np.arange(N_PROMPT), answer]
        - clean_logits[np.arange(N_PROMPT), wrong]
    )
    assert close(got[:, 2], clean_diff)


# ------------------------------------------------------------------ lens / DLA


@configs(ALL)
def test_logit_lens_and_dla(setup):
    model, clean, _, answer, wrong = setup
    cfg = model.cfg
    n = cfg.n_layers
    got = lens.logit_lens(model, clean)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    logits, cache = run(model, clean, capture=names)
    assert max_abs(got[:, -1], np.asarray(logits)[:, -1]) < 1e-4
    for l in range(n):
        want = unembed(model, cache[names[l]][:, -1])
        assert max_abs(got[:, l], want) < 1e-4
    direction = lens.logit_direction(cfg.d_vocab, answer, wrong)
    dla = lens.direct_logit_attribution(model, clean, direction)
    total = (
        dla["embed"]
        + dla["heads"].sum((1, 2))
        + dla["attn_bias"].sum(1)
        + dla["neurons"].sum((1, 2))
        + dla["mlp_bias"].sum(1)
        + dla["constant"]
    )
    want = np.asarray(logits)[np.arange(N_PROMPT), -1] @ np.asarray(direction).T
    assert max_abs(total, np.diag(want)) < 1e-4
    # one head's DLA by hand: its result vector through the frozen final norm
    z = capture(model, clean, "attn.hook_z")[:, 1, -1, 2]  # [prompt, d_head]
    result = z @ np.asarray(model.blocks.attn.W_O[1, 2])
    last = f"blocks.{n - 1}.hook_resid_post"
    final = np.asarray(run(model, clean, capture=[last])[1][last])[:, -1]
    if cfg.norm == "ln":
        scale = np.sqrt(final.var(-1) + cfg.eps)
        result = result - result.mean(-1, keepdims=True)
    else:
        scale = np.sqrt((final**2).mean(-1) + cfg.eps)
    u = np.asarray(model.unembed.W_U) @ np.asarray(direction).T  # [d_model, prompt]
    want = np.einsum("pm,m,mp->p", result, np.asarray(model.ln_final.w), u) / scale
    assert max_abs(dla["heads"][:, 1, 2], want) < 1e-4


@configs(ALL)
def test_neuron_logit_lens(setup):
    model, *_ = setup
    tl = process.tl_default(model)
    neurons = np.array([0, 5, 17])
    got = lens.neuron_logit_lens(model, 1, neurons)
    want = np.asarray(tl.blocks.mlp.W_out[1][neurons]) @ np.asarray(tl.unembed.W_U)
    assert max_abs(got, want) < 1e-4
    raw = lens.neuron_logit_lens(model, 1, neurons, tl_processing=False)
    want = np.asarray(model.blocks.mlp.W_out[1][neurons]) @ np.asarray(
        model.unembed.W_U
    )
    assert max_abs(raw, want) < 1e-4


# ------------------------------------------------------------------ operand grid


@pytest.mark.parametrize(
    "setup, prefix_len", [(ALL[0], 1), (ALL[2], 4)], indirect=["setup"]
)
def test_operand_grid(setup, prefix_len, tmp_path):
    model, *_ = setup
    cfg = model.cfg
    rng = np.random.default_rng(4)
    prefix = rng.integers(0, cfg.d_vocab, prefix_len)
    op, eq = 7, 9
    a_tok = rng.integers(0, cfg.d_vocab, 4)
    b_tok = rng.integers(0, cfg.d_vocab, 3)
    prompts = np.array([[*prefix, a, op, b, eq] for a in a_tok for b in b_tok])
    full = capture(model, prompts, "mlp.hook_post")  # [pair, layer, pos, d_mlp]
    full = full.reshape(4, 3, *full.shape[1:])
    kw = dict(prefix=prefix, middle=[op], suffix=[eq], batch_size=5, progress_bar=False)
    before = n_compiles(grids._grid_chunk)
    got = grids.operand_grid(model, a_tok, b_tok, **kw)
    assert n_compiles(grids._grid_chunk) - before == 1
    assert got.shape == (4, 3, cfg.n_layers, cfg.d_mlp)
    assert close(got, full[:, :, :, -1])
    # sub-grids of row pieces (2 of 3 columns) and of several rows (2 rows, padded)
    for bs in (2, 7):
        got = grids.operand_grid(model, a_tok, b_tok, **(kw | dict(batch_size=bs)))
        assert close(got, full[:, :, :, -1]), bs
    units = np.array([3, 50, 7])
    got = grids.operand_grid(
        model, a_tok, b_tok, layers=[1], units=units, positions=[-2, -1], **kw
    )
    assert close(got, np.moveaxis(full[:, :, 1:2, -2:][..., units], 3, 2))
    mean = grids.operand_grid(model, a_tok, b_tok, reduce="mean", **kw)
    assert close(mean, full[:, :, :, -1].mean((0, 1)))
    flat = full[:, :, :, -1].reshape(12, cfg.n_layers, cfg.d_mlp)
    want = -np.sort(-flat, axis=0)[:3]
    for bs in (5, 7):
        top = grids.operand_grid(
            model, a_tok, b_tok, reduce="topk", k=3, **(kw | dict(batch_size=bs))
        )
        assert close(top["values"], want)
        layer, unit = np.arange(cfg.n_layers)[:, None], np.arange(cfg.d_mlp)
        picked = full[top["a"], top["b"], layer, -1, unit]
        assert close(picked, top["values"])
    # .npy output: complete files only; a killed run resumes from its last block
    path = tmp_path / "grid.npy"
    grids.operand_grid(model, a_tok, b_tok, out=path, **kw)
    assert close(np.load(path), full[:, :, :, -1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.npy", "grid.npy.json"]
    again = grids.operand_grid(model, a_tok, b_tok, out=path, **kw)  # no recompute
    assert np.array_equal(again, np.load(path))
    partial = tmp_path / "grid.npy.partial"
    path.rename(partial)  # as if killed after 2 of 4 rows (the markers say 6 pairs)
    fingerprint = json.loads((tmp_path / "grid.npy.json").read_text())
    (tmp_path / "grid.npy.json").unlink()
    arr = np.load(partial, mmap_mode="r+")
    arr.reshape(12, -1)[:6] = 7.0  # a sentinel: finished blocks are not recomputed
    arr.reshape(12, -1)[6:] = np.nan
    arr.flush()
    del arr
    marker = tmp_path / "grid.npy.partial.json"
    marker.write_text(json.dumps({"done": 6, "fingerprint": fingerprint}))
    # a different computation of the same shape never continues the file
    other = b_tok[::-1].copy()
    with pytest.raises(ValueError, match="different computation .*tokens"):
        grids.operand_grid(model, a_tok, other, out=path, **kw)
    grids.operand_grid(model, a_tok, b_tok, out=path, **kw)
    resumed = np.load(path).reshape(12, -1)
    assert (resumed[:6] == 7.0).all()
    assert close(resumed[6:], full[:, :, :, -1].reshape(12, -1)[6:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.npy", "grid.npy.json"]
    # nor is a finished file served for another model, tap, layer set or operands
    other_model = jax.tree.map(lambda a: a * 1.01, model)
    for args, changes in [
        ((other_model, a_tok, b_tok), {}),
        ((model, a_tok, other), {}),
        ((model, a_tok, b_tok), dict(units=units)),
        ((model, a_tok, b_tok), dict(tap="hook_resid_post")),
    ]:
        with pytest.raises(ValueError, match="different computation"):
            grids.operand_grid(*args, out=path, **(kw | changes))
    with pytest.raises(ValueError, match="remove it"):
        grids.operand_grid(model, a_tok, b_tok[:2], out=path, **kw)
    # a zarr directory (the multi-process format, here one process): the same contract
    zarr = tmp_path / "grid.zarr"
    got = grids.operand_grid(model, a_tok, b_tok, out=zarr, **(kw | dict(batch_size=2)))
    assert close(np.asarray(got), full[:, :, :, -1])
    progress = zarr / "progress" / "0-of-1.json"
    zarr.rename(tmp_path / "grid.zarr.partial")  # as if killed after 6 of 12 pairs
    marker = tmp_path / "grid.zarr.partial" / "progress" / "0-of-1.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"done": 6}))
    where = {"driver": "file", "path": str(marker.parents[1] / "array")}
    array = ts.open({"driver": "zarr3", "kvstore": where}).result()
    array[:2].write(np.full(array[:2].shape, 7.0, np.float32)).result()  # a sentinel
    with pytest.raises(ValueError, match="different computation .*tokens"):
        grids.operand_grid(model, a_tok, other, out=zarr, **kw)
    with pytest.raises(ValueError, match="same batch size and mesh"):
        grids.operand_grid(model, a_tok, b_tok, out=zarr, **(kw | dict(batch_size=3)))
    stored = grids.operand_grid(
        model, a_tok, b_tok, out=zarr, **(kw | dict(batch_size=2))
    )
    assert json.loads(progress.read_text())["done"] == 12
    stored = np.asarray(stored)
    assert (stored[:2] == 7.0).all() and np.array_equal(stored[2:], np.asarray(got)[2:])
    with pytest.raises(ValueError, match="different computation"):
        grids.operand_grid(other_model, a_tok, b_tok, out=zarr, **kw)
    with pytest.raises(ValueError, match="must lie"):
        grids.operand_grid(model, a_tok, b_tok, positions=prefix_len, **kw)


@pytest.mark.parametrize("setup", [ALL[2]], indirect=True)
def test_operand_grid_multi_token_operands(setup):
    """Operands of several tokens each (one per digit): the grid equals a forward over
    the composed prompts, and one-token rows `[a, 1]` equal plain `[a]` ids."""
    model, *_ = setup
    cfg = model.cfg
    rng = np.random.default_rng(5)
    prefix, middle, suffix = (rng.integers(0, cfg.d_vocab, n) for n in (3, 2, 2))
    a_tok = rng.integers(0, cfg.d_vocab, (3, 2))  # 3 operands of 2 tokens
    b_tok = rng.integers(0, cfg.d_vocab, (4, 3))  # 4 operands of 3 tokens
    prompts = np.array(
        [[*prefix, *a, *middle, *b, *suffix] for a in a_tok for b in b_tok]
    )
    full = capture(model, prompts, "mlp.hook_post").reshape(
        3, 4, cfg.n_layers, -1, cfg.d_mlp
    )
    kw = dict(
        prefix=prefix, middle=middle, suffix=suffix, batch_size=5, progress_bar=False
    )
    got = grids.operand_grid(model, a_tok, b_tok, positions=[-5, -1], **kw)
    assert close(got, np.moveaxis(full[:, :, :, [-5, -1]], 3, 2))
    mean = grids.operand_grid(model, a_tok, b_tok, positions=-2, reduce="mean", **kw)
    assert close(mean, full[:, :, :, -2].mean((0, 1)))
    with pytest.raises(ValueError, match="must lie in the \\[b\\] \\+ suffix part"):
        grids.operand_grid(model, a_tok, b_tok, positions=-6, **kw)
    one = grids.operand_grid(model, a_tok[:, :1], b_tok[:, :1], **kw)
    assert close(one, grids.operand_grid(model, a_tok[:, 0], b_tok[:, 0], **kw))


@pytest.mark.parametrize("setup", [ALL[0]], indirect=True)
def test_operand_grid_over_stacked_checkpoints(setup, tmp_path):
    """Models stacked on a leading axis run in one program and give each model's own
    grid (shared or per-model units; full, mean and top-k; resumable output)."""
    model, *_ = setup
    cfg = model.cfg
    other = jax.tree.map(lambda a: a * 1.1 if eqx.is_inexact_array(a) else a, model)
    models = jax.tree.map(lambda *a: jnp.stack(a), model, other)
    rng = np.random.default_rng(6)
    a_tok, b_tok = rng.integers(0, cfg.d_vocab, 3), rng.integers(0, cfg.d_vocab, 4)
    kw = dict(prefix=[1], middle=[7], suffix=[9], batch_size=5, progress_bar=False)
    each = [grids.operand_grid(m, a_tok, b_tok, **kw) for m in (model, other)]
    got = grids.operand_grid(models, a_tok, b_tok, stacked=True, **kw)
    assert close(got, np.stack(each))
    own = np.array([[1, 4, 9], [0, 2, 5]])
    got = grids.operand_grid(models, a_tok, b_tok, units=own, stacked=True, **kw)
    assert close(got, np.stack([e[..., u] for e, u in zip(each, own, strict=True)]))
    mean = grids.operand_grid(models, a_tok, b_tok, reduce="mean", stacked=True, **kw)
    assert close(mean, np.stack(each).mean((1, 2)))
    top = grids.operand_grid(
        models, a_tok, b_tok, reduce="topk", k=2, stacked=True, **kw
    )
    for c, m in enumerate((model, other)):
        want = grids.operand_grid(m, a_tok, b_tok, reduce="topk", k=2, **kw)
        assert close(top["values"][c], want["values"])
        assert (top["a"][c] == want["a"]).all() and (top["b"][c] == want["b"]).all()
    path = tmp_path / "stack.npy"
    first = grids.operand_grid(models, a_tok, b_tok, out=path, stacked=True, **kw)
    again = grids.operand_grid(models, a_tok, b_tok, out=path, stacked=True, **kw)
    assert close(first, np.stack(each)) and close(again, np.stack(each))
    with pytest.raises(ValueError, match="stacked on a leading axis"):
        grids.operand_grid(model, a_tok, b_tok, stacked=True, **kw)
    with pytest.raises(ValueError, match=r"\[2, unit\]"):
        grids.operand_grid(
            models, a_tok, b_tok, units=own[:1].repeat(3, 0), stacked=True, **kw
        )


# ------------------------------------------------------------------ head detectors


def test_detection_patterns_of_a_repeated_sequence():
    tokens = np.array([9, 5, 6, 7, 5, 6, 7])
    want_induction = {(4, 2), (5, 3), (6, 4)}  # after the earlier 5, 6, 7
    got = heads.detection_pattern(tokens, "induction")
    assert set(zip(*np.nonzero(got), strict=True)) == want_induction
    dup = heads.detection_pattern(tokens, "duplicate_token")
    assert set(zip(*np.nonzero(dup), strict=True)) == {(4, 1), (5, 2), (6, 3)}
    prev = heads.detection_pattern(tokens, "previous_token")
    assert set(zip(*np.nonzero(prev), strict=True)) == {(q, q - 1) for q in range(1, 7)}
    # left padding shifts nothing: the pattern sits on the real tokens
    padded = heads.detection_pattern(
        np.r_[0, 0, tokens], "induction", np.r_[0, 0, [1] * 7]
    )
    assert set(zip(*np.nonzero(padded), strict=True)) == {
        (q + 2, k + 2) for q, k in want_induction
    }
    with pytest.raises(ValueError, match="unknown detector"):
        heads.detection_pattern(tokens, "copy")


@configs(TWO)
def test_head_detector_matches_captured_patterns(setup):
    model, clean, *_ = setup
    cfg = model.cfg
    tokens = np.concatenate([clean[:, :3], clean[:, :3]], axis=1)  # repeated halves
    mask = np.ones(tokens.shape, np.int32)
    mask[2, :1] = 0
    custom = np.tril(np.ones((N_PROMPT, 6, 6), bool))
    got = heads.head_detector(
        model,
        tokens,
        attention_mask=mask,
        patterns={"custom": custom},
        batch_size=2,
        progress_bar=False,
    )
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
    _, cache = run(model, tokens, capture=names, attention_mask=mask)
    pattern = np.stack([np.asarray(cache[n]) for n in names], 1)  # [p, l, h, q, k]
    for kind in (*heads.DETECTORS, "custom"):
        for i in range(N_PROMPT):
            real = mask[i].astype(bool)
            if kind == "custom":
                target = custom[i] & real[:, None] & real[None, :]
            else:
                target = heads.detection_pattern(tokens[i], kind, real)
            asked = target.any(1)
            mass = (pattern[i] * target).sum(-1)  # [l, h, q]
            want = mass[..., asked].mean(-1)
            assert close(got[kind][i], want), kind
    assert close(got["custom"], np.ones((N_PROMPT, cfg.n_layers, cfg.n_heads)))

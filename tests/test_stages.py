"""The staged forward, stacked captures, names filters, edits that never recompile, the
embedding taps in kernels, padded (ragged) prompt sets in kernels, and the axis convention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import Replace, Scale, run
from jaxinterp.kernels import ablate, attribution, means, metrics, patch
from jaxinterp.kernels import run as runlib
from jaxinterp.taps import Taps

from .helpers import max_abs
from .test_kernels import CONFIGS, _setup, close, last_logits, n_compiles

ROTARY, LEARNED = "rotary_rms_gated_gqa", "learned_ln_serial"


@pytest.mark.parametrize("name", [ROTARY, LEARNED])
def test_stages_compose_to_the_forward(name):
    model, clean, *_ = _setup(name)
    cfg = model.cfg
    tokens = jnp.asarray(clean[0])
    want, cache = run(model, tokens, capture=["blocks.1.mlp.hook_post", "hook_embed"])
    taps = Taps(cfg, frozenset({"blocks.1.mlp.hook_post", "hook_embed"}))
    span = model.span(tokens.shape[0])
    x = model.embed_tokens(tokens, span, taps)
    x = model.run_blocks(x, span, taps, 0, 1)
    x = model.run_blocks(x, span, taps, 1, cfg.n_layers)  # taps keep global names
    got = model.unembed_resid(x, taps)
    assert max_abs(got, want) < 1e-5
    for key in ("blocks.1.mlp.hook_post", "hook_embed"):
        assert max_abs(taps.records[key], cache[key]) < 1e-5
    # a continuation of a cache built by one stage equals the full run
    head, tail = span.split(3)
    x0 = model.embed_tokens(tokens, span, Taps(cfg))
    _, kv, _ = runlib.run_cached(model, x0[:3], head)
    x = model.run_blocks(x0[3:], tail, Taps(cfg), past=kv)
    assert max_abs(model.unembed_resid(x, Taps(cfg)), want[3:]) < 1e-5


def test_stacked_capture_and_names_filter():
    model, clean, *_ = _setup(ROTARY)
    n = model.cfg.n_layers
    per_layer = [f"blocks.{l}.attn.hook_z" for l in range(n)]
    _, cache = run(model, clean, capture=per_layer + ["blocks.*.mlp.hook_post"])
    _, ref = run(model, clean, capture=[f"blocks.{l}.mlp.hook_post" for l in range(n)])
    stacked = cache["blocks.*.mlp.hook_post"]
    assert stacked.shape == (len(clean), n, clean.shape[1], model.cfg.d_mlp)
    for l in range(n):
        assert max_abs(stacked[:, l], ref[f"blocks.{l}.mlp.hook_post"]) < 1e-6
    _, filtered = run(model, clean, capture=lambda name: name.endswith("attn.hook_z"))
    assert sorted(filtered) == sorted(per_layer)
    for key in per_layer:
        assert max_abs(filtered[key], cache[key]) < 1e-6
    with pytest.raises(ValueError, match="unknown tap"):
        run(model, clean, capture=["blocks.*.mlp.hook_postt"])


def test_new_edit_values_never_recompile():
    model, clean, *_ = _setup(ROTARY)
    tap = "blocks.0.attn.hook_z"
    before = n_compiles(runlib._run)
    outs = [
        run(model, clean, edits={tap: Scale(v)})[0]
        for v in (0.5, 0.25, jnp.asarray(0.1), np.float32(0.7))
    ]
    assert n_compiles(runlib._run) - before == 1
    assert not np.allclose(outs[0], outs[1])
    with pytest.raises(ValueError, match="cannot be cast safely"):
        run(model, clean, edits={tap: Scale(jnp.asarray(1 + 1j))})


def test_embedding_taps_in_kernels():
    """`hook_embed` / `hook_pos_embed` are sites of every sweep kernel."""
    model, clean, corrupt, answer, wrong = _setup(LEARNED)
    cfg = model.cfg
    n_prompt, n_pos = clean.shape
    # ablation of embedding dims at the last position
    masks = np.zeros((2, cfg.d_model), bool)
    masks[0, :8], masks[1, 30:] = True, True
    got = ablate.ablation_sweep(
        model,
        clean,
        masks,
        metric=metrics.target_logit,
        metric_args=(answer,),
        tap="hook_pos_embed",
        batch_size=2,
        progress_bar=False,
    )
    assert got.shape == (n_prompt, 2)
    for s in range(2):
        where = np.eye(n_pos, dtype=bool)[-1][:, None] & masks[s][None]
        edit = Replace(np.zeros((n_pos, cfg.d_model), np.float32), where)
        logits = last_logits(model, clean, {"hook_pos_embed": edit})
        assert close(got[:, s], logits[np.arange(n_prompt), answer])
    # activation patching of the token embedding, one cell per position
    got = patch.activation_patching(
        model,
        clean,
        corrupt,
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        tap="hook_embed",
        batch_size=2,
        progress_bar=False,
    )
    assert got.shape == (n_prompt, n_pos)
    _, src = run(model, corrupt, capture=["hook_embed"])
    for p in range(n_pos):
        for i in range(n_prompt):
            where = (np.arange(n_pos) == p)[:, None]
            edit = Replace(src["hook_embed"][i], where)
            logits = last_logits(model, clean[i], {"hook_embed": edit})
            assert close(got[i, p], logits[answer[i]] - logits[wrong[i]])
    # attribution of the embedding and the mean cache of it
    scores = attribution.attribution_patching(
        model,
        clean,
        corrupt,
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        taps=("hook_embed", "mlp.hook_post"),
        progress_bar=False,
    )
    assert scores["hook_embed"].shape == (n_prompt, n_pos, cfg.d_model)
    assert scores["mlp.hook_post"].shape == (n_prompt, cfg.n_layers, n_pos, cfg.d_mlp)
    _, clean_cache = run(model, clean, capture=["hook_embed"])

    def diff(delta, i):
        logits, _ = run(model, clean[i], edits={"hook_embed": Replace(delta)})
        return logits[-1, answer[i]] - logits[-1, wrong[i]]

    for i in range(n_prompt):
        a = clean_cache["hook_embed"][i]
        grad = jax.grad(diff)(a, i)
        assert close(scores["hook_embed"][i], (src["hook_embed"][i] - a) * grad)
    mean = means.mean_cache(model, clean, ("hook_embed",), progress_bar=False)
    assert close(mean["hook_embed"], np.asarray(clean_cache["hook_embed"]).mean(0))


@pytest.mark.parametrize("name", [ROTARY, LEARNED])
def test_ragged_prompts_in_kernels(name):
    """Prompts of different lengths, right- or left-padded into one batch, give exactly
    the results of each prompt run alone (answer read at its last real token)."""
    model, clean, corrupt, answer, wrong = _setup(name)
    cfg = model.cfg
    lengths = [5, 3, 4, 2, 5]
    n_pos = max(lengths)
    right = np.zeros((5, n_pos), np.int64)
    left = np.zeros((5, n_pos), np.int64)
    rmask = np.zeros((5, n_pos), np.int64)
    lmask = np.zeros((5, n_pos), np.int64)
    for i, n in enumerate(lengths):
        right[i, :n], rmask[i, :n] = clean[i, :n], 1
        left[i, n_pos - n :], lmask[i, n_pos - n :] = clean[i, :n], 1
    rng = np.random.default_rng(5)
    masks = rng.random((3, cfg.n_layers, cfg.d_mlp)) < 0.3
    want = np.zeros((5, 3))
    for i, n in enumerate(lengths):
        for s in range(3):
            where = np.eye(n, dtype=bool)[-1][:, None] & masks[s][:, None, :]
            edits = {
                f"blocks.{l}.mlp.hook_post": Replace(np.zeros((n, cfg.d_mlp)), where[l])
                for l in range(cfg.n_layers)
            }
            want[i, s] = last_logits(model, clean[i, :n], edits)[answer[i]]
    for tokens, mask in ((right, rmask), (left, lmask)):
        got = ablate.ablation_sweep(
            model,
            tokens,
            masks,
            metric=metrics.target_logit,
            metric_args=(answer,),
            attention_mask=mask,
            batch_size=2,
            progress_bar=False,
        )
        assert close(got, want)
    # patching between a prompt and itself shifted: cells line up position by position
    got = patch.activation_patching(
        model,
        right,
        np.where(rmask == 1, corrupt[:, :n_pos], 0),
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        tap="mlp.hook_post",
        attention_mask=rmask,
        batch_size=2,
        progress_bar=False,
    )
    assert got.shape == (5, cfg.n_layers, n_pos)
    for i, n in enumerate(lengths):
        _, src = run(model, corrupt[i, :n], capture=["blocks.*.mlp.hook_post"])
        for l in range(cfg.n_layers):
            for p in range(n_pos):
                where = (np.arange(n) == p)[:, None]
                value = src["blocks.*.mlp.hook_post"][l]
                edit = {f"blocks.{l}.mlp.hook_post": Replace(value, where)}
                logits = last_logits(model, clean[i, :n], edit)
                assert close(got[i, l, p], logits[answer[i]] - logits[wrong[i]]), (i, p)
    assert CONFIGS[name] is cfg

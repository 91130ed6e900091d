"""Bad inputs to `run` and the kernels give one clear error, or a NaN that is reported:
never a silently clamped index or a NaN averaged away."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import run
from jaxinterp.generate import greedy
from jaxinterp.inputs import check_indices
from jaxinterp.kernels import ablate, attribution, grids, lens, means, metrics, patch
from jaxinterp.kernels.batching import NonFiniteWarning
from jaxinterp.taps import Taps, tap_dims

from .test_kernels import _setup

ROTARY, LEARNED = "rotary_rms_gated_gqa", "learned_ln_serial"


@pytest.fixture(scope="module")
def setup():
    return _setup(ROTARY)


def test_metrics_never_read_another_token():
    logits = jnp.arange(10.0)
    for bad in (10, -1, 1000):
        assert np.isnan(metrics.target_logit(logits, bad))
        assert np.isnan(metrics.logit_diff(logits, 3, bad))
        assert np.isnan(metrics.target_prob(logits, bad))
        assert np.isnan(metrics.accuracy(logits, bad))
    assert metrics.target_logit(logits, 9) == 9.0
    assert np.isnan(metrics.accuracy(jnp.full(10, jnp.nan), 0))  # was 1.0
    assert np.isnan(metrics.accuracy(logits.at[3].set(jnp.inf), 9))
    assert metrics.accuracy(logits, 9) == 1.0


def test_bad_metric_targets_surface_in_sweeps(setup):
    model, clean, _, answer, _ = setup
    masks = np.zeros((2, model.cfg.n_layers, model.cfg.d_mlp), bool)
    masks[1, 0, :3] = True
    bad = answer.copy()
    bad[2] = model.cfg.d_vocab  # one prompt's target is not a token
    with pytest.warns(
        NonFiniteWarning, match=r"ablate: 2 of 10 values .*index \(2, 0\)"
    ):
        got = ablate.ablation_sweep(
            model,
            clean,
            masks,
            metric=metrics.target_logit,
            metric_args=(bad,),
            progress_bar=False,
        )
    assert np.isnan(got[2]).all() and np.isfinite(np.delete(got, 2, axis=0)).all()


def test_nan_in_the_model_is_reported_not_averaged(setup):
    model, clean, *_ = setup
    W_U = model.unembed.W_U.at[0, 5].set(jnp.nan)
    broken = eqx.tree_at(lambda m: m.unembed.W_U, model, W_U)
    with pytest.warns(NonFiniteWarning, match="logits"):
        logits = means.answer_logits(broken, clean)
    assert np.isnan(logits[:, 5]).all()


def test_index_arguments_are_validated(setup, tmp_path):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    a, b = np.array([3, 4]), np.array([5, 6, 7])
    kw = dict(prefix=[1], middle=[2], suffix=[8], progress_bar=False)
    cases = [
        (dict(units=[cfg.d_mlp]), "units .* outside"),  # was unit d_mlp - 1
        (dict(units=[-cfg.d_mlp - 1]), "units .* outside"),
        (dict(positions=9), r"positions 9 outside \[-5, 5\)"),  # was position 4
        (dict(layers=[cfg.n_layers]), "layers .* outside"),
        (dict(batch_size=0), "batch_size"),
        (dict(reduce="topk", k=0), "k=0"),
        (dict(reduce="mean", out=tmp_path / "g.npy"), "reduce='full'"),
    ]
    for extra, match in cases:
        with pytest.raises(ValueError, match=match):
            grids.operand_grid(model, a, b, **(kw | extra))
    with pytest.raises(ValueError, match="non-empty"):
        grids.operand_grid(model, a, b[:0], **kw)
    for bad in ([0.5], [], np.array([True])):
        with pytest.raises(ValueError, match="units must be non-empty integer"):
            check_indices(bad, 4, "units")
    margs = dict(metric=metrics.logit_diff, metric_args=(answer, wrong))
    with pytest.raises(ValueError, match="cells column 2 .* outside"):
        patch.patch_cells(model, clean, corrupt, np.array([[1, 2, cfg.d_mlp]]), **margs)
    with pytest.raises(ValueError, match="cells column 1 .* outside"):
        patch.patch_cells(
            model, clean, corrupt, np.array([[1, 5]]), tap="hook_resid_pre", **margs
        )
    with pytest.raises(ValueError, match="cells"):
        patch.patch_cells(model, clean, corrupt, np.zeros((0, 3), int), **margs)
    with pytest.raises(ValueError, match="positions .* outside"):
        patch.activation_patching(model, clean, corrupt, positions=(7,), **margs)
    with pytest.raises(ValueError, match="answer_pos .* outside"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers, 4), bool), answer_pos=np.full(5, 5),
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="batch_size"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers, 4), bool), batch_size=0,
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="masks of .* must be bool"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers + 1, 4), bool),
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip


def test_attention_masks_and_lengths_are_validated(setup):
    model, clean, corrupt, answer, wrong = setup
    ones = np.ones(clean.shape, int)
    for mask, match in [
        (ones[:, :3], "has shape"),
        (ones * 2, "only 0"),
        (ones * np.array([0, 1, 1, 1, 1])[:, None], "without any real token"),
    ]:
        with pytest.raises(ValueError, match=match):
            run(model, clean, attention_mask=mask)
    pad_answer = ones.copy()
    pad_answer[0, -1] = 0
    with pytest.raises(ValueError, match="padded position"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, model.cfg.n_layers, 4), bool),
            attention_mask=pad_answer, answer_pos=np.full(5, -1),
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip
    learned, *_ = _setup(LEARNED)
    too_long = np.zeros((2, learned.cfg.n_ctx + 1), int)
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        patch.activation_patching(
            learned, too_long, too_long, metric=metrics.target_logit,
            metric_args=(np.zeros(2, int),), progress_bar=False,
        )  # fmt: skip


def test_review_findings_stay_fixed(setup):
    model, clean, corrupt, answer, wrong = setup
    cfg = model.cfg
    margs = dict(metric=metrics.logit_diff, metric_args=(answer, wrong))
    # attention grids are [head, query, key]: not a per-position sweep site
    with pytest.raises(ValueError, match="per-position"):
        attribution.attribution_patching(
            model, clean, corrupt, taps=("attn.hook_pattern",), **margs
        )
    # positions read by the lens are validated (a gather would clamp them)
    with pytest.raises(ValueError, match="answer_pos .* outside"):
        lens.logit_lens(model, clean, pos=100)
    mask = np.ones(clean.shape, int)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="padded position"):
        lens.logit_lens(model, clean, pos=-1, attention_mask=mask)
    with pytest.raises(ValueError, match="layer .* outside"):
        lens.neuron_logit_lens(model, 99)
    with pytest.raises(ValueError, match="neurons .* outside"):
        lens.neuron_logit_lens(model, 0, np.array([cfg.d_mlp]))
    # replacement values of the wrong length are not truncated
    with pytest.raises(ValueError, match="values of .* must be"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers, 4), bool),
            values=np.zeros((cfg.n_layers, 9, cfg.d_mlp), np.float32),
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip
    # a metric argument without the prompt axis is named, not an IndexError
    with pytest.raises(ValueError, match="leading prompt axis"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers, 4), bool),
            metric=metrics.target_logit, metric_args=(np.int32(3),), progress_bar=False,
        )  # fmt: skip
    # one recorder never silently stacks two runs of the same layers
    taps = Taps(cfg, frozenset({"blocks.*.hook_resid_post"}))
    span = model.span(clean.shape[1])
    x = model.embed_tokens(jnp.asarray(clean[0]), span, taps)
    model.run_blocks(x, span, taps)
    model.run_blocks(x, span, taps)
    with pytest.raises(ValueError, match="captured twice"):
        taps.records  # noqa: B018
    assert tap_dims("blocks.*.mlp.hook_post", cfg)[0] == "layer"


def test_greedy_reaches_n_ctx_with_learned_positions():
    learned, *_ = _setup(LEARNED)
    n_ctx = learned.cfg.n_ctx
    out = greedy(learned, np.arange(n_ctx - 3) % learned.cfg.d_vocab, 3)
    assert out.shape == (3,)

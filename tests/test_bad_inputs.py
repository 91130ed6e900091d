"""Bad inputs to `run` and the kernels give one clear error, or a NaN that is reported:
never a silently clamped index or a NaN averaged away."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import run
from jaxinterp.kernels import ablate, grids, means, metrics, patch
from jaxinterp.kernels.batching import NonFiniteWarning

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
        (dict(units=[-1]), "units .* outside"),
        (dict(positions=9), "outside the 5 prompt positions"),  # was position 4
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
    margs = dict(metric=metrics.logit_diff, metric_args=(answer, wrong))
    with pytest.raises(ValueError, match="column 2 outside"):
        patch.patch_cells(model, clean, corrupt, np.array([[1, 2, cfg.d_mlp]]), **margs)
    with pytest.raises(ValueError, match="column 1 outside"):
        patch.patch_cells(
            model, clean, corrupt, np.array([[1, 5]]), tap="hook_resid_pre", **margs
        )
    with pytest.raises(ValueError, match="cells"):
        patch.patch_cells(model, clean, corrupt, np.zeros((0, 3), int), **margs)
    with pytest.raises(ValueError, match="answer_pos outside"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers, 4), bool), answer_pos=np.full(5, 5),
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="batch_size"):
        ablate.ablation_sweep(
            model, clean, np.zeros((1, cfg.n_layers, 4), bool), batch_size=0,
            metric=metrics.target_logit, metric_args=(answer,), progress_bar=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="masks must be bool"):
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

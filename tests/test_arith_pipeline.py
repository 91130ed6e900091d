"""The arithmetic pipeline (experiments.arith_heuristics.pipeline) on arith-neox with small
operands: every stage runs, the report is written, runs resume and refuse to mix, and the
metrics are checked against hand-computed cases."""

import dataclasses
import json
import random

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.arith_heuristics import circuit, knockouts, pipeline, probes
from experiments.arith_heuristics.prompts import Prompt, counterfactual_pairs
from experiments.rundir import RunDir

TINY = pipeline.Config(
    ops="+-",
    max_op=24,
    n_discovery=8,
    n_eval=8,
    patch_seeds=(42,),
    eval_seeds=(42,),
    top_k=8,
    probe_prompts=64,
    probe_epochs=2,
    checkpoints=False,
    batch_size=64,
)
STAGES = [name for name, _ in pipeline.stages() if name != "dynamics"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith") / "run"
    report = pipeline.run(TINY, out, progress=False)
    return out, report


def test_every_stage_runs_and_the_report_is_written(tiny_run):
    out, report = tiny_run
    for name in STAGES:
        assert (out / f"{name}.json").exists(), name
    page = report.read_text()
    for title in (
        "Circuit discovery",
        "Important neurons",
        "Heuristic neurons",
        "Knockouts",
        "Correct vs incorrect",
        "Linear probes",
        "Parity vs clean",
    ):
        assert title in page
    assert page.count("data:image/png;base64") >= 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["max_op"] == 24
    assert 0 <= summary["classify"]["classified"]["+"] <= 1


def test_stage_results_are_consistent(tiny_run):
    out, _ = tiny_run
    run = RunDir(out, json.loads((out / "run.json").read_text()))
    prompts = run.load("prompts")[1]
    assert prompts["n_legal"] == {"+": 24 * 24, "-": 24 * 25 // 2}
    patching = run.load("patching")[0]
    # [op, seed, layer, pos(, head)] means over the discovery prompts
    assert patching["heads_bounded"].shape == (2, 1, 4, 4, 4)
    assert np.abs(patching["heads_bounded"]).max() <= 1  # bounded by construction
    maps = run.load("kmaps")[0]
    assert maps["K_add"].shape == (16, 24 * 24)  # 2 heuristic layers x top 8
    assert maps["pairs_add"][:3].tolist() == [[0, 0], [0, 1], [0, 2]]
    circuit_arrays = run.load("circuit")[0]
    curve = circuit_arrays["add_curve"][0]
    # every head kept (and every MLP): the model itself, faithfulness 1
    assert curve[-1] == pytest.approx(1.0, abs=1e-5)


def test_a_second_run_resumes_and_another_config_is_refused(tiny_run, capsys):
    out, _ = tiny_run
    pipeline.run(TINY, out, progress=True)
    printed = capsys.readouterr().out
    assert printed.count("done before, kept") == len(STAGES)
    other = dataclasses.replace(TINY, mode="parity")
    with pytest.raises(ValueError, match="differs in: mode"):
        pipeline.run(other, out, progress=False)


def test_a_killed_stage_is_recomputed_and_earlier_ones_kept(tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, ops="+")
    calls = []
    real = circuit.patching_stage

    def dies(ctx):
        calls.append(1)
        raise KeyboardInterrupt  # killed in the middle of the stage

    monkeypatch.setattr(circuit, "patching_stage", dies)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, tmp_path, progress=False, only=("prompts", "patching"))
    run = RunDir(tmp_path, json.loads((tmp_path / "run.json").read_text()))
    assert run.done("prompts") and not run.done("patching")
    monkeypatch.setattr(circuit, "patching_stage", real)
    pipeline.run(config, tmp_path, progress=False, only=("prompts", "patching"))
    assert run.done("patching") and calls == [1]


def test_rundir_never_vouches_for_foreign_arrays(tmp_path):
    run = RunDir(tmp_path, {"a": 1})
    run.save("s", {"x": np.arange(3)}, {"n": 3})
    assert run.done("s")
    np.savez(tmp_path / "s.npz", x=np.arange(4))  # arrays replaced behind its back
    assert not run.done("s")
    with pytest.raises(ValueError, match="differs in: a"):
        RunDir(tmp_path, {"a": 2})
    RunDir(tmp_path, {"a": 2}, overwrite=True)
    assert not (tmp_path / "s.json").exists()


def test_counterfactual_pairs():
    clean = [Prompt(1, "+", 2), Prompt(2, "+", 1), Prompt(5, "-", 2)]
    pool = clean + [Prompt(9, "*", 1)]
    # parity: exactly random.sample from the pool
    assert counterfactual_pairs(clean, pool, rng=random.Random(3)) == random.Random(
        3
    ).sample(pool, 3)
    pairs = counterfactual_pairs(
        clean, pool, rng=random.Random(0), distinct_answers=True
    )
    assert all(c.result != x.result for c, x in zip(clean, pairs, strict=True))
    with pytest.raises(ValueError, match="other than"):
        counterfactual_pairs(
            clean[:1], clean[:2], rng=random.Random(0), distinct_answers=True
        )


def test_effects_by_hand():
    # clean: P = softmax([0, 0, ln 2]) = [.25, .25, .5]; patched: [.5, .25, .25]
    clean = jnp.log(jnp.array([1.0, 1.0, 2.0]))
    patched = jnp.log(jnp.array([2.0, 1.0, 1.0]))
    out = circuit.effects(patched, clean, jnp.array(2), jnp.array(0))
    # r = 2, r' = 0: Eq. 1 = 0.5 [(.5 - .25)/.25 + (.5 - .25)/.25] = 1.0
    assert float(out["ie"]) == pytest.approx(1.0)
    # bounded = 0.5 [(.5 - .25) + (.5 - .25)] = 0.25
    assert float(out["bounded"]) == pytest.approx(0.25)
    # logit diff: patched ln2 - 0 minus clean 0 - ln2 = 2 ln 2
    assert float(out["logit_diff"]) == pytest.approx(2 * np.log(2.0))


def test_probe_labels_aligned_in_clean_mode_only_at_equals_in_parity():
    results = np.arange(100)
    clean = probes.probe_labels(results, "clean", random.Random(42), 4)
    parity = probes.probe_labels(results, "parity", random.Random(42), 4)
    assert (clean == results).all()
    assert (parity[0] == results).all()  # '=' first
    for p in range(1, 4):
        assert (parity[p] != results).mean() > 0.9
        assert sorted(parity[p]) == list(results)  # the same labels, moved


def test_l_grid_and_priorities():
    assert knockouts.l_grid(200) == list(range(0, 101, 5))  # the official grid
    assert knockouts.l_grid(8)[0] == 0 and knockouts.l_grid(8)[-1] == 4


def test_cli_names_a_bad_option(tmp_path, capsys):
    from jaxinterp_cli.main import main

    code = main(["arithmetic", "--ops", "+x", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "ops must be distinct operators" in capsys.readouterr().err
    code = main(["arithmetic", "--top-k", "600", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "top_k must be in [1, 512], got 600" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_dynamics_over_two_checkpoints(tiny_run):
    from experiments.arith_heuristics import dynamics

    out, _ = tiny_run
    config = dataclasses.replace(
        TINY, checkpoints=True, dynamics_steps=(6707, 10000), dynamics_prompts=200
    )
    run = RunDir(out, json.loads((out / "run.json").read_text()))
    ctx = pipeline.Context(config, pipeline.load_model("arith-neox"), run, False)
    arrays, summary = dynamics.dynamics_stage(ctx)
    assert arrays["steps"].tolist() == [6707, 10000]
    # the final checkpoint is the committed model: its labels are all its own
    assert arrays["intersection"][-1] == pytest.approx(1.0)
    assert arrays["faith_all"][-1] == pytest.approx(arrays["faith_mutual"][-1])
    assert arrays["accuracy"].shape == (2, 2) and arrays["accuracy"][-1].min() > 0.9
    assert len(summary["L"]) == arrays["knock_heuristic"].shape[1]
    with pytest.raises(ValueError, match="no shipped checkpoint at steps \\[5\\]"):
        dynamics.dynamics_stage(
            pipeline.Context(
                dataclasses.replace(config, dynamics_steps=(5,)), ctx.model, run, False
            )
        )


def test_shipped_checkpoints_load_and_stack():
    from experiments.arith_model import checkpoints

    steps, models = checkpoints.load()
    assert steps == [*checkpoints.SHIPPED_STEPS, 10000]
    stacked = checkpoints.stack(models[:2])
    assert stacked.blocks.mlp.W_out.shape[0] == 2
    # different weights at different steps, the same structure
    assert not np.array_equal(models[0].blocks.mlp.W_out, models[-1].blocks.mlp.W_out)


def test_faithfulness_is_one_for_the_model_and_zero_for_nothing(tiny_run):
    out, _ = tiny_run
    run = RunDir(out, json.loads((out / "run.json").read_text()))
    ctx = pipeline.Context(TINY, pipeline.load_model("arith-neox"), run, False)
    cfg = ctx.model.cfg
    heads = np.zeros((2, cfg.n_layers, cfg.n_heads), bool)
    neurons = np.zeros((2, cfg.n_layers, cfg.d_mlp), bool)
    heads[1], neurons[1] = True, True  # set 0: nothing kept; set 1: everything kept
    f, dropped = circuit.faithfulness(ctx, ctx.select("+", "discovery"), heads, neurons)
    assert dropped == 0
    assert f[0] == pytest.approx(0.0, abs=1e-6)  # the circuit is the ablated model
    assert f[1] == pytest.approx(1.0, abs=1e-5)  # the circuit is the model


def test_checkpoint_kmaps_in_one_grid_equal_one_grid_per_checkpoint(tiny_run):
    from experiments.arith_heuristics import heuristics
    from experiments.arith_model import checkpoints

    out, _ = tiny_run
    run = RunDir(out, json.loads((out / "run.json").read_text()))
    ctx = pipeline.Context(TINY, pipeline.load_model("arith-neox"), run, False)
    _, models = checkpoints.load()
    models = models[-2:]
    rng = np.random.default_rng(0)
    neurons = np.stack(  # each checkpoint its own neurons, layer-major
        [
            np.array(
                [(layer, n) for layer in (2, 3) for n in rng.choice(512, 5, False)]
            )
            for _ in models
        ]
    )
    K, KV, pairs = heuristics.kmaps(
        ctx, checkpoints.stack(models), "+", neurons, stacked=True
    )
    for c, model in enumerate(models):
        k, kv, p = heuristics.kmaps(ctx, model, "+", neurons[c])
        assert (p == pairs).all()
        np.testing.assert_allclose(K[c], k, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(KV[c], kv, rtol=1e-5, atol=1e-4)

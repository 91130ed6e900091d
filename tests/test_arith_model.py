"""In-house arithmetic GPT-NeoX (issue #5): data, resumable orbax checkpoints, the committed
HF export and its metrics."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.arith_heuristics import arith_tokenizer
from experiments.arith_heuristics.prompts import OPERATORS
from experiments.arith_model import train as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "experiments" / "arith_model" / "arith-neox"

# Operands < 20 keep the data tiny; checkpoints at steps 2, 4, 7, 12.
TINY = T.TrainConfig(
    max_op=20,
    d_model=32,
    n_layers=2,
    n_heads=2,
    d_mlp=64,
    n_ctx=8,
    steps=12,
    batch_size=16,
    warmup_steps=3,
    n_checkpoints=4,
    first_checkpoint=2,
)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# data and schedule


def test_checkpoint_steps():
    assert T.checkpoint_steps(TINY) == [2, 4, 7, 12]
    steps = T.checkpoint_steps(T.TrainConfig())
    assert len(steps) >= 12 and steps[-1] == T.TrainConfig().steps
    gaps = np.diff(steps)
    assert np.all(gaps > 0) and np.all(np.diff(gaps) >= -1)  # dense early


def test_splits_are_the_legal_prompts():
    train, held_out = T.build_splits(T.TrainConfig())
    counts = {op: len(train[op]) + len(held_out[op]) for op in OPERATORS}
    assert counts == {"+": 90_000, "-": 45_150, "*": 5_784, "/": 89_401}
    for op in OPERATORS:
        assert 0.08 < len(held_out[op]) / counts[op] < 0.12
        pairs = {tuple(r) for r in train[op].tokens[:, [1, 3]]}
        assert not pairs & {tuple(r) for r in held_out[op].tokens[:, [1, 3]]}
        assert np.all(train[op].tokens[:, 2] == arith_tokenizer.OPERATOR_IDS[op])


def test_sampler_balanced_deterministic_and_restorable():
    train, _ = T.build_splits(TINY)
    a, b = T.Sampler(train, 16, seed=3), T.Sampler(train, 16, seed=3)
    for _ in range(200):  # crosses epochs of every operator
        (ta, aa), (tb, ab) = a.next(), b.next()
        assert np.array_equal(ta, tb) and np.array_equal(aa, ab)
        ops = ta[:, 2].reshape(len(OPERATORS), -1)
        for i, op in enumerate(OPERATORS):
            assert np.all(ops[i] == arith_tokenizer.OPERATOR_IDS[op])
    assert min(a.epochs) >= 1
    c = T.Sampler(train, 16, seed=0)
    c.load_state(
        {k: v.copy() for k, v in a.state_arrays().items()},
        json.loads(json.dumps(a.state_json())),
    )
    for _ in range(30):
        assert np.array_equal(a.next()[0], c.next()[0])


# ---------------------------------------------------------------------------------------------
# resumable, atomic checkpoints


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """TINY trained in one go."""
    workdir = tmp_path_factory.mktemp("straight")
    return T.train(TINY, workdir, progress=False), workdir


def test_checkpoints_hold_the_run(straight):
    model, workdir = straight
    mngr = T.checkpoint_manager(workdir, read_only=True)
    assert sorted(mngr.all_steps()) == [2, 4, 7, 12]
    assert leaves_equal(T.restore_model(mngr, 12, TINY), model)
    mngr.close()


def test_resume_is_bit_identical(straight, tmp_path):
    model, _ = straight
    stopped = T.train(
        TINY, tmp_path, stop_at=5, progress=False
    )  # "killed" after step 5
    assert not leaves_equal(stopped, model)
    resumed = T.train(TINY, tmp_path, progress=False)  # restarts from step 4
    assert leaves_equal(resumed, model)
    mngr = T.checkpoint_manager(tmp_path, read_only=True)
    assert sorted(mngr.all_steps()) == [2, 4, 7, 12]
    mngr.close()


_KILL_DURING_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
from experiments.arith_model import train as T
from tests.test_arith_model import TINY

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def die_before_commit(self):
    if self.get_final().name == "7":  # everything written, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = die_before_commit
T.train(TINY, sys.argv[1], progress=False)
"""


def test_killed_save_is_never_picked_up(straight, tmp_path):
    model, _ = straight
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith("7.orbax-checkpoint-tmp") for n in names), names
    mngr = T.checkpoint_manager(tmp_path, read_only=True)
    assert sorted(mngr.all_steps()) == [2, 4]
    mngr.close()
    resumed = T.train(TINY, tmp_path, progress=False)  # from step 4
    assert leaves_equal(resumed, model)
    assert not any("tmp" in p.name for p in tmp_path.iterdir())


def test_resume_refuses_another_config(straight):
    _, workdir = straight
    with pytest.raises(ValueError, match="another config"):
        T.train(dataclasses.replace(TINY, lr=0.5), workdir, progress=False)


# ---------------------------------------------------------------------------------------------
# the committed model


@pytest.fixture(scope="module")
def committed():
    if not (ARTIFACT / "metrics.json").exists():
        pytest.skip("experiments/arith_model/arith-neox not built")
    import converters

    metrics = json.loads((ARTIFACT / "metrics.json").read_text())
    return converters.from_pretrained(ARTIFACT), metrics


def test_committed_files(committed):
    names = {p.name for p in ARTIFACT.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "metrics.json",
        "accuracy.png",
    } <= names
    size = sum(p.stat().st_size for p in ARTIFACT.iterdir())
    assert size < 10 * 2**20
    model, metrics = committed
    cfg = T.TrainConfig(**metrics["train_config"])
    assert model.cfg == cfg.model_config()
    assert json.loads((ARTIFACT / "config.json").read_text())["architectures"] == [
        "GPTNeoXForCausalLM"
    ]
    assert [c["step"] for c in metrics["curve"]] == T.checkpoint_steps(cfg)


def _some_prompts(n: int) -> np.ndarray:
    train, held_out = T.build_splits(T.TrainConfig(held_out_fraction=0.1))
    rng = np.random.default_rng(0)
    parts = [
        s.tokens[rng.choice(len(s), n)] for s in (*train.values(), *held_out.values())
    ]
    return np.concatenate(parts)


@pytest.mark.hf
def test_committed_matches_transformers(committed):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, _ = committed
    hf = transformers.AutoModelForCausalLM.from_pretrained(ARTIFACT).eval()
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    tokens = _some_prompts(8)
    with torch.no_grad():
        expected = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    ours = np.asarray(jax.vmap(model)(tokens))
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(ARTIFACT)
    assert tok("226-68=")["input_ids"] == arith_tokenizer.encode_prompt("226-68=")


def test_committed_accuracy_reproduces_metrics(committed):
    """The last curve point is the final model on fixed subsets: recompute it exactly."""
    from experiments.arith_model.evaluate import evaluate

    measured, recorded = evaluate(ARTIFACT, subset=True)
    assert measured == recorded
    _, metrics = committed
    # the subsets are samples of the full sets: close to the full-set numbers
    for side in ("train", "held_out"):
        for op in OPERATORS:
            assert abs(recorded[side][op] - metrics["final"][side][op]) < 0.06

"""The sparse-probing experiment (`experiments.circuits.probing`) on a tiny random Llama
with a byte-level tokenizer trained on the experiment's texts: end to end through its
command (resumed without recomputing), the probes and the neuron ranking on planted
features, the split and labels of the texts, the ablated sets, and bad settings."""

import json

import numpy as np
import pytest

from experiments.circuits import common, probing, probing_data
from experiments.circuits.configs import ProbingConfig

from .helpers import write_tiny_llama
from .test_circuits import cache, run_cli  # noqa: F401  (cache: autouse fixture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [t for pool in probing_data.pools(0, 60).values() for t in pool]
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", texts)


SMALL = ["--texts-per-pool", 6, "--test-texts", 2, "--max-tokens", 12]
SMALL += ["--ks", "1,4", "--steps", 30, "--n-ablate", 2, "--batch-size", 4]


def test_probing_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["probing", "--model", tiny, "--out", out, *SMALL]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "[probes]" in stdout and "[ablation]" in stdout
    summary = json.loads((out / "probing" / "summary.json").read_text())
    assert set(summary["probes"]) == set(probing.FEATURES)
    for name in probing.FEATURES:
        by_k = summary["probes"][name]["best_layer_by_k"]
        assert [r["k"] for r in by_k] == [1, 4]
        assert all(0 <= r["f1"] <= 1 and 0 <= r["layer"] < 2 for r in by_k)
        best = summary["best_neurons"][name]
        assert len(best) == 2 and all(0 <= b["neuron"] < 96 for b in best)
        assert abs(best[0]["d"]) >= abs(best[1]["d"])
        a = summary["ablation"][name]
        assert a["positions_matching"] > 0 and a["positions_other"] > 0
        assert all(np.isfinite(v) for v in a.values())
        counts = summary["tokens"][name]
        assert min(counts.values()) > 0
    assert len(summary["monosemanticity"]["per_layer"]) == 2
    assert summary["float16_clipped_values"] == 0
    report = (out / "report.html").read_text()
    assert "Sparse probing of MLP neurons" in report and "data:image/png" in report
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0 and stdout.count("done before, kept") == 2


def test_ranking_and_probes_find_planted_neurons():
    """On synthetic activations, the neuron whose value is the label (plus noise) ranks
    first and a one-neuron probe on it is perfect on held-out tokens; a probe on a noise
    neuron is not."""
    rng = np.random.default_rng(0)
    n, n_layers, d_mlp = 400, 2, 20
    label = np.stack([rng.random(n) < 0.3, rng.random(n) < 0.5])  # [feature, token]
    acts = rng.normal(size=(n, n_layers, d_mlp))
    acts[:, 1, 7] += 6 * label[0]  # feature 0 planted in neuron 1.7
    acts[:, 0, 3] -= 6 * label[1]  # feature 1 planted, negatively, in neuron 0.3
    acts = acts.astype(np.float16)
    train = np.broadcast_to(np.arange(n) < 300, label.shape)
    d = probing.neuron_scores(acts, train & label, train & ~label)
    assert d.shape == (2, n_layers, d_mlp)
    assert np.unravel_index(np.argmax(np.abs(d[0])), d[0].shape) == (1, 7)
    assert np.unravel_index(np.argmax(np.abs(d[1])), d[1].shape) == (0, 3)
    assert d[0, 1, 7] > 3 and d[1, 0, 3] < -3
    assert np.abs(d).ravel()[np.argsort(-np.abs(d).ravel())[2:]].max() < 1
    layers = np.array([[[1], [0]], [[0], [1]]])  # [feature, group, 1]: planted, noise
    neurons = np.array([[[7], [0]], [[3], [5]]])
    f1, acc = probing.run_probes(acts, label, train, ~train, layers, neurons, (1,), 200)
    assert f1.shape == (2, 2, 1)
    np.testing.assert_array_equal(f1[:, 0, 0], [1.0, 1.0])
    np.testing.assert_array_equal(acc[:, 0, 0], [1.0, 1.0])
    assert f1[:, 1, 0].max() < 0.8


def test_k_sparse_probe_reads_only_k_inputs():
    """A feature that needs two neurons (their sum) is solved at k = 2, not at k = 1."""
    rng = np.random.default_rng(1)
    n = 600
    a, b = rng.normal(size=(2, n))
    label = (a + b > 0)[None]
    x = np.stack([a, b], -1)[None, None]  # [feature, group, token, K]
    y = label.astype(np.float32)
    w = np.full((1, n), 1.0 / n, np.float32)
    keep = np.array([[1, 0], [1, 1]], np.float32)
    weight, bias = probing.fit_probes(x, y, w, keep, 300)
    weight = np.asarray(weight)
    assert weight[0, 0, 0, 1] == 0  # k = 1 never reads the second input
    f1, acc = probing.probe_metrics(weight, np.asarray(bias), x, label, np.ones_like(y))
    assert acc[0, 0, 1] > 0.98 and acc[0, 0, 0] < 0.85


def test_corpus_split_labels_and_sets(tiny):
    config = ProbingConfig(
        model=str(tiny), texts_per_pool=5, test_texts=2, max_tokens=10, n_ablate=3
    )
    model, tokenizer = common.load(str(tiny))
    ctx = common.Context(config, model, tokenizer, None, False)
    c = probing.corpus(ctx)
    assert c.tokens.shape[0] == 20 and c.tokens.shape[1] <= 10
    for p in range(4):  # each pool: 5 texts, 2 held out
        assert (c.pool == p).sum() == 5 and (c.test & (c.pool == p)).sum() == 2
    again = probing.corpus(ctx)
    assert again.texts == c.texts and (again.test == c.test).all()
    member, label = probing.feature_labels(ctx, c)
    english, french, python, numbers = (c.pool == p for p in range(4))
    assert (member[0].any(1) == (english | french)).all()
    assert (label[0].any(1) == french).all()
    assert (label[1].any(1) == python).all()
    assert not label[2][~numbers].any() and label[2][numbers].any()
    digits = tokenizer.decode(c.tokens[label[2]])
    assert digits.replace(" ", "").isdigit()
    assert not probing.kept(c)[:, 0].any()
    best = np.array([[[0, 1], [0, 2], [1, 5]]] * 3)  # [feature, n_ablate, (layer, n)]
    masks, info = probing.neuron_sets(ctx, best)
    assert [d["kind"] for d in info] == ["none"] + ["best", "random"] * 3
    assert masks.shape == (7, 2, 96) and masks[0].sum() == 0
    assert set(zip(*np.nonzero(masks[1]), strict=True)) == {(0, 1), (0, 2), (1, 5)}
    control = masks[2]
    assert control.sum() == 3 and control.sum(-1).tolist() == [2, 1]
    assert not (control & masks[1]).any()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--ablation", "resample"], "ablation must be 'mean' or 'zero'"),
        (["--ks", "0,2"], "ks must be at least 1"),
        (["--test-texts", "48"], "test_texts 48 must be below texts_per_pool 48"),
        (["--texts-per-pool", "100"], "texts_per_pool 100 > 60"),
        (["--ks", "2,2"], "ks must not repeat"),
    ],
)
def test_probing_bad_settings(tiny, tmp_path, capsys, argv, match):
    code, _, err = run_cli(capsys, "probing", "--model", tiny, "--out", tmp_path, *argv)
    assert code == 2 and match in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--ks", "1,200"], "exceed the 96 neurons"),
        (["--n-ablate", "60"], "no room for a random control"),
    ],
)
def test_probing_too_large_for_model(tiny, tmp_path, capsys, argv, match):
    code, _, err = run_cli(
        capsys, "probing", "--model", tiny, "--out", tmp_path, *SMALL, *argv
    )
    assert code == 2 and match in err

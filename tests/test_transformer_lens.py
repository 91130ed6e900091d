"""The TransformerLens bridge: exact round trips, and logits plus every shared hook equal to
`jaxinterp.run` for tiny random models of every family (float32, highest matmul precision).

Tolerance 1e-5 everywhere. The weights are random at the scale `helpers.randomize_hf` gives
tiny HF models (matrices `0.8 N(0, 1) / sqrt(d_model)`, biases `0.2 N(0, 1)`, norm weights
`1 + 0.2 N(0, 1)`): activations stay of order one, so float32 rounding (the two frameworks
reduce in different orders) stays below the tolerance, while a mapping error shows as a
difference of order one.

Hooks: every tap of ours is compared with the TransformerLens hook of the same name.
`ln*.hook_normalized` is compared after applying TransformerLens's norm weight (and bias),
since TransformerLens records it before them and we after. TransformerLens's only extra hooks
here, `unembed.hook_in` / `unembed.hook_out`, are compared with our
`ln_final.hook_normalized` and the logits.
"""

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from converters import ConversionError
from converters.transformer_lens import (
    config_from_tl,
    from_transformer_lens,
    to_transformer_lens,
)
from jaxinterp.taps import available_taps

from .helpers import max_abs, tiny_config

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")
pytestmark = [
    pytest.mark.hf,
    pytest.mark.tl,
    pytest.mark.filterwarnings(
        "ignore:HookedTransformer is deprecated:DeprecationWarning"
    ),
]

_LN_MHA = dict(norm="ln", gated_mlp=False, n_kv_heads=4)  # GPT-2, NeoX, GPT-J
FAMILIES = {
    "gpt2": tiny_config(positional="learned", act_fn="gelu_new", **_LN_MHA),
    "neox-parallel-partial-rotary": tiny_config(
        act_fn="gelu", rotary_dim=8, parallel_residual=True, **_LN_MHA
    ),
    "neox-serial-relu": tiny_config(
        act_fn="relu", rotary_dim=8, rotary_base=500.0, **_LN_MHA
    ),
    "gptj-interleaved-partial": tiny_config(
        act_fn="gelu_new",
        rotary_dim=8,
        rotary_interleaved=True,
        parallel_residual=True,
        **_LN_MHA,
    ),
    "llama-gqa": tiny_config(),
    "llama3-mqa-rope-scaling-tied": tiny_config(
        n_kv_heads=1,
        n_ctx=64,
        tied_embeddings=True,
        rope_scaling=ji.Llama3RopeScaling(8.0, 1.0, 4.0, 16),
    ),
    "qwen2-gqa-theta-1e6": tiny_config(rotary_base=1e6),
}
TOKENS = np.random.default_rng(0).integers(0, 97, size=(2, 12))
TL_ONLY = {"unembed.hook_in", "unembed.hook_out"}


def _random_model(cfg, seed: int = 0) -> ji.Transformer:
    """Random weights with nonzero biases and non-unit norms (zero norm biases for RMSNorm,
    which has none), at a scale that keeps activations of order one (see the docstring)."""
    skeleton = eqx.filter_eval_shape(ji.init_transformer, cfg, jax.random.key(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    rng = np.random.default_rng(seed)
    leaves = []
    for path, leaf in flat:
        name = ".".join(k.name for k in path)
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if name.endswith(".b") and cfg.norm == "rms":  # a norm bias
            noise = np.zeros_like(noise)
        elif name.endswith(".w"):  # a norm weight
            noise = 1 + 0.2 * noise
        elif name.split(".")[-1].startswith("b"):
            noise = 0.2 * noise
        else:
            noise = noise * np.float32(0.8 / np.sqrt(cfg.d_model))
        leaves.append(jnp.asarray(noise))
    return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.fixture(scope="module", params=list(FAMILIES))
def bridged(request):
    """(family, our model, its HookedTransformer)."""
    model = _random_model(FAMILIES[request.param])
    return request.param, model, to_transformer_lens(model)


def _assert_same_model(a: ji.Transformer, b: ji.Transformer) -> None:
    assert a.cfg == b.cfg
    assert jax.tree.structure(a) == jax.tree.structure(b)
    same = jax.tree.map(
        lambda x, y: x.dtype == y.dtype and bool(jnp.array_equal(x, y)), a, b
    )
    assert all(jax.tree.leaves(same))


def test_round_trip_is_bit_exact(bridged):
    _, model, hooked = bridged
    _assert_same_model(from_transformer_lens(hooked), model)


def test_bfloat16_round_trip_keeps_every_bit():
    model = _random_model(FAMILIES["llama-gqa"])
    model = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model)
    hooked = to_transformer_lens(model)
    assert hooked.W_E.dtype == torch.bfloat16 and hooked.cfg.dtype == torch.bfloat16
    _assert_same_model(from_transformer_lens(hooked), model)


def _max_abs_masked(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Max abs difference where both are finite; the -inf (masked) entries must coincide."""
    assert ours.shape == theirs.shape
    assert np.array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(ours)
    return max_abs(ours[finite], theirs[finite])


def _tl_as_ours(name: str, value, hooked) -> np.ndarray:
    """TransformerLens's hook value in our semantics (norm weight and bias applied)."""
    if name.endswith("hook_normalized"):
        norm = hooked.get_submodule(name.rsplit(".", 1)[0])
        value = value * norm.w + (norm.b if hasattr(norm, "b") else 0)
    return value.detach().numpy()


def hook_diffs(model: ji.Transformer, hooked, tokens: np.ndarray) -> dict[str, float]:
    """Max abs difference of the logits and of every shared hook, ours vs TransformerLens's.

    Also asserts that the hook names are ours plus `TL_ONLY` and that shapes agree.
    """
    names = available_taps(model.cfg)
    logits, ours = ji.run(model, tokens, capture=names)
    with torch.no_grad():
        plain = hooked(torch.from_numpy(tokens))  # the bridge's settings
        hooked.set_use_attn_result(
            True
        )  # TransformerLens computes hook_result on demand
        try:
            _, cache = hooked.run_with_cache(torch.from_numpy(tokens))
        finally:
            hooked.set_use_attn_result(False)
    assert set(cache.keys()) == set(names) | TL_ONLY
    diffs = {"logits": max_abs(logits, plain.numpy())}
    for name in names:
        diffs[name] = _max_abs_masked(
            np.asarray(ours[name]), _tl_as_ours(name, cache[name], hooked)
        )
    unembed_in = np.asarray(ours["ln_final.hook_normalized"])
    diffs["unembed.hook_in"] = max_abs(unembed_in, cache["unembed.hook_in"].numpy())
    diffs["unembed.hook_out"] = max_abs(logits, cache["unembed.hook_out"].numpy())
    return diffs


def test_logits_and_every_hook_match(bridged):
    _, model, hooked = bridged
    diffs = hook_diffs(model, hooked, TOKENS)
    bad = {name: d for name, d in diffs.items() if not d < 1e-5}
    assert not bad, bad


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_weight_processed_models_convert(family):
    """TransformerLens's own processing (fold_ln etc.: `LNPre` / `RMSPre` norms) converts to
    a model with the same logits, which are ours after `process.tl_default`."""
    model = _random_model(FAMILIES[family])
    hooked = to_transformer_lens(model)
    hooked.load_and_process_state_dict(
        hooked.state_dict(), fold_ln=True, center_writing_weights=True,
        center_unembed=True, fold_value_biases=True,
    )  # fmt: skip
    assert hooked.cfg.normalization_type.endswith("Pre")
    converted = from_transformer_lens(hooked)
    with torch.no_grad():
        theirs = hooked(torch.from_numpy(TOKENS)).numpy()
    assert max_abs(ji.run(converted, TOKENS)[0], theirs) < 1e-5
    processed = ji.run(ji.process.tl_default(model), TOKENS)[0]
    assert max_abs(processed, theirs) < 1e-5


def _tl_config(**overrides):
    kw = dict(
        d_model=64, d_head=16, n_layers=2, n_ctx=32, d_mlp=96, d_vocab=97, act_fn="gelu",
        device="cpu",
    )  # fmt: skip
    return tl.HookedTransformerConfig(**(kw | overrides))


def test_config_from_tl_reads_defaults():
    cfg = config_from_tl(_tl_config())
    assert (cfg.norm, cfg.positional, cfg.n_kv_heads, cfg.act_fn) == (
        "ln", "learned", 4, "gelu",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(use_qk_norm=True), "use_qk_norm"),
        (dict(attn_only=True), "attn_only"),
        (dict(positional_embedding_type="alibi"), "positional_embedding_type"),
        (dict(act_fn="solu_ln"), "activation"),
        (dict(original_architecture="Olmo2ForCausalLM"), "original_architecture"),
        (dict(final_rms=True), "mixed norms"),
        (dict(d_vocab_out=5), "d_vocab_out"),
        (dict(use_attn_scale=False), "sqrt"),
        (dict(normalization_type=None), "normalization_type"),
        (dict(positional_embedding_type="rotary", use_yarn_rope=True), "use_yarn_rope"),
    ],
)
def test_unsupported_tl_configs_raise(overrides, match):
    with pytest.raises(ConversionError, match=match):
        config_from_tl(_tl_config(**overrides))


def test_nonzero_rmsnorm_bias_cannot_be_bridged():
    model = _random_model(FAMILIES["llama-gqa"])
    model = eqx.tree_at(lambda m: m.ln_final.b, model, jnp.ones_like(model.ln_final.b))
    with pytest.raises(ConversionError, match="ln_final.b"):
        to_transformer_lens(model)


def test_importing_the_bridge_does_not_import_torch():
    code = (
        "import sys, converters, converters.transformer_lens\n"
        "bad = {'torch', 'transformer_lens'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

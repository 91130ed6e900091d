"""Taps and edits: name validation, shape errors, no-op identities, one compile per sweep,
layer sweeps as vmap over stacked edits, gradients through masks, KV-cache continuation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import taps as tapslib
from jaxinterp.kernels.run import forward, kv_cache

from .helpers import max_abs, tiny_config

CONFIGS = {
    "llama-gqa": tiny_config(),
    "gpt2-like": tiny_config(
        positional="learned",
        norm="ln",
        act_fn="gelu_new",
        gated_mlp=False,
        n_kv_heads=4,
    ),
    "neox-like": tiny_config(
        norm="ln",
        act_fn="gelu",
        gated_mlp=False,
        n_kv_heads=4,
        parallel_residual=True,
        rotary_dim=8,
    ),  # fmt: skip
}


@pytest.fixture(params=list(CONFIGS))
def model(request):
    return ji.init_transformer(CONFIGS[request.param], jax.random.key(3), std=0.3)


TOKENS = jnp.array([5, 17, 3, 44, 96, 0, 12])


def test_unknown_tap_names_raise_with_close_matches(model):
    with pytest.raises(ValueError, match=r"did you mean 'blocks\.1\.mlp\.hook_post'"):
        ji.run(model, TOKENS, capture=["blocks.1.mlp.hook_pots"])
    with pytest.raises(ValueError, match="out of range"):
        ji.run(model, TOKENS, capture=["blocks.9.mlp.hook_post"])
    with pytest.raises(ValueError, match="unknown tap name"):
        ji.run(model, TOKENS, edits={"blocks.0.nonsense": ji.Scale(0.0)})
    with pytest.raises(TypeError, match="not a single string"):
        ji.run(model, TOKENS, capture="hook_embed")


def test_taps_exist_only_where_the_architecture_has_them():
    rotary, learned = CONFIGS["llama-gqa"], CONFIGS["gpt2-like"]
    assert "blocks.0.attn.hook_rot_q" in tapslib.available_taps(rotary)
    assert "hook_pos_embed" not in tapslib.available_taps(rotary)
    assert "blocks.0.attn.hook_rot_q" not in tapslib.available_taps(learned)
    assert "blocks.0.mlp.hook_pre_linear" not in tapslib.available_taps(learned)
    assert "blocks.0.hook_resid_mid" not in tapslib.available_taps(CONFIGS["neox-like"])
    with pytest.raises(ValueError):
        tapslib.parse("blocks.0.hook_resid_mid", CONFIGS["neox-like"])
    assert ji.tap_name("mlp.hook_post", layer=3) == "blocks.3.mlp.hook_post"
    assert ji.all_layers("attn.hook_z", 2) == (
        "blocks.0.attn.hook_z",
        "blocks.1.attn.hook_z",
    )


def test_wrongly_shaped_edits_raise(model):
    with pytest.raises(
        ValueError, match=r"blocks\.0\.attn\.hook_z.*does not broadcast"
    ):
        ji.run(model, TOKENS, edits={"blocks.0.attn.hook_z": ji.Scale(jnp.ones((3,)))})
    with pytest.raises(ValueError, match="does not broadcast"):  # would enlarge the tap
        ji.run(model, TOKENS, edits={"hook_embed": ji.Add(jnp.ones((2, 7, 64)))})
    with pytest.raises(ValueError, match="boolean mask"):
        ji.run(
            model, TOKENS, edits={"hook_embed": ji.Replace(0.0, where=jnp.ones((7, 1)))}
        )
    with pytest.raises(ValueError, match="leading layer axis"):
        ji.run(
            model,
            TOKENS,
            edits={ji.every_layer("mlp.hook_post"): ji.Scale(jnp.ones((96,)))},
        )
    with pytest.raises(ValueError, match="out of vocabulary"):
        ji.run(model, jnp.array([1, 2, 97]))


def test_identity_edits_are_no_ops(model):
    base, _ = ji.run(model, TOKENS)
    edits = {
        "blocks.0.attn.hook_z": ji.Scale(jnp.ones((1, 4, 1))),
        "blocks.1.mlp.hook_post": ji.Add(jnp.zeros((96,))),
        "hook_embed": ji.Replace(jnp.zeros((64,)), where=jnp.zeros((7, 1), bool)),
        ji.every_layer("hook_resid_post"): ji.Scale(jnp.ones((2, 1, 1))),
    }
    edited, _ = ji.run(model, TOKENS, edits=edits)
    np.testing.assert_array_equal(np.asarray(base), np.asarray(edited))


def test_edits_change_exactly_what_they_target(model):
    _, clean = ji.run(
        model, TOKENS, capture=["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    )
    knock = jnp.ones((1, 4, 1)).at[0, 2, 0].set(0.0)
    _, edited = ji.run(
        model,
        TOKENS,
        capture=["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"],
        edits={"blocks.0.attn.hook_z": ji.Scale(knock)},
    )
    z0 = np.asarray(edited["blocks.0.attn.hook_z"])
    assert np.all(z0[:, 2] == 0)
    np.testing.assert_array_equal(
        z0[:, [0, 1, 3]], np.asarray(clean["blocks.0.attn.hook_z"])[:, [0, 1, 3]]
    )
    assert max_abs(edited["blocks.1.attn.hook_z"], clean["blocks.1.attn.hook_z"]) > 1e-4


def test_one_compile_per_capture_set_and_edit_structure(model):
    fwd = forward
    before = eqx.debug.get_num_traces(fwd)
    capture = ["blocks.1.mlp.hook_post"]
    for i in range(4):  # new values, same structure: no retrace
        edits = {"blocks.0.mlp.hook_post": ji.Scale(jnp.full((96,), float(i)))}
        ji.run(model, TOKENS, capture=capture, edits=edits)
    assert eqx.debug.get_num_traces(fwd) - before == 1
    ji.run(model, TOKENS, capture=["blocks.0.mlp.hook_post"])  # new capture set
    assert eqx.debug.get_num_traces(fwd) - before == 2


def test_layer_sweep_is_a_vmap_over_a_stacked_edit(model):
    """Zero-ablating MLP l via a one-hot stacked mask equals per-layer keyed edits, and all
    layers run in one traced program."""
    n_layers = model.cfg.n_layers

    def ablate(onehot):
        factor = 1.0 - onehot[:, None, None]  # [layer, 1, 1]
        edits = {ji.every_layer("mlp.hook_post"): ji.Scale(factor)}
        return forward(model, TOKENS, frozenset(), edits)[0]

    swept = eqx.filter_jit(jax.vmap(ablate))(jnp.eye(n_layers))
    for layer in range(n_layers):
        edit = {f"blocks.{layer}.mlp.hook_post": ji.Scale(0.0)}
        loop, _ = ji.run(model, TOKENS, edits=edit)
        assert max_abs(swept[layer], loop) < 1e-5


def test_capture_of_selected_layers_matches_full_capture(model):
    names = ji.all_layers("mlp.hook_post", model.cfg.n_layers)
    _, everything = ji.run(model, TOKENS, capture=names)
    _, one = ji.run(model, TOKENS, capture=names[1:])
    assert set(one) == set(names[1:])
    np.testing.assert_array_equal(
        np.asarray(one[names[1]]), np.asarray(everything[names[1]])
    )


def test_grad_through_a_head_mask(model):
    """d(logit)/d(mask) equals the effect of a small change: attribution is differentiable."""

    def target(mask):
        edits = {"blocks.1.attn.hook_z": ji.Scale(mask[None, :, None])}
        return forward(model, TOKENS, frozenset(), edits)[0][-1, 7]

    g = jax.grad(target)(jnp.ones(4))
    eps = 1e-2
    finite = [
        (target(jnp.ones(4).at[h].add(eps)) - target(jnp.ones(4).at[h].add(-eps)))
        / (2 * eps)
        for h in range(4)
    ]
    np.testing.assert_allclose(np.asarray(g), np.asarray(finite), rtol=1e-2, atol=1e-4)


def test_kv_cache_continuation_equals_full_forward(model):
    full, cache = ji.run(model, TOKENS, capture=["blocks.1.mlp.hook_post"])
    _, past = kv_cache(model, TOKENS[:4])
    rest, rest_cache = ji.run(
        model, TOKENS[4:], past_kv=past, capture=["blocks.1.mlp.hook_post"]
    )
    assert max_abs(rest, full[4:]) < 1e-5
    # a composed tap (layer 1 of a model with large random weights): the 1e-4 tolerance
    assert (
        max_abs(
            rest_cache["blocks.1.mlp.hook_post"], cache["blocks.1.mlp.hook_post"][4:]
        )
        < 1e-4
    )
    batched, _ = ji.run(model, jnp.stack([TOKENS[4:]] * 3), past_kv=past)
    assert max_abs(batched[2], full[4:]) < 1e-5


def test_batched_run_equals_per_example_runs(model):
    batch = jnp.stack([TOKENS, TOKENS[::-1]])
    logits, cache = ji.run(model, batch, capture=["blocks.0.attn.hook_pattern"])
    for i in range(2):
        single, c = ji.run(model, batch[i], capture=["blocks.0.attn.hook_pattern"])
        assert max_abs(logits[i], single) < 1e-6
        assert (
            max_abs(
                cache["blocks.0.attn.hook_pattern"][i], c["blocks.0.attn.hook_pattern"]
            )
            < 1e-6
        )


def test_cache_analyses_reconstruct_the_residual_stream(model):
    cfg = model.cfg
    names = set(ji.cache.decompose_resid_names(cfg, 2)) | {"blocks.1.hook_resid_post"}
    names |= set(ji.cache.accumulated_resid_names(cfg.n_layers))
    names |= {
        "blocks.1.attn.hook_z",
        "blocks.1.attn.hook_result",
        "ln_final.hook_normalized",
    }
    logits, cache = ji.run(model, TOKENS, capture=names)
    parts = ji.cache.decompose_resid(cache, cfg, 2)
    assert max_abs(parts.sum(0), cache["blocks.1.hook_resid_post"]) < 1e-4
    acc = ji.cache.accumulated_resid(cache, cfg.n_layers)
    assert acc.shape == (cfg.n_layers + 1, 7, cfg.d_model)
    results = ji.cache.head_results(model, cache, 1)
    assert max_abs(results, cache["blocks.1.attn.hook_result"]) < 1e-4
    normed = ji.cache.apply_ln_final(model, acc[-1])
    assert max_abs(normed, cache["ln_final.hook_normalized"]) < 1e-5

"""Greedy decoding with the preallocated KV cache equals naive re-running of the prefix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.generate import greedy

from .helpers import tiny_config


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_config(),
        tiny_config(
            positional="learned",
            norm="ln",
            act_fn="gelu",
            gated_mlp=False,
            n_kv_heads=4,
        ),
    ],
    ids=["rotary-gqa", "learned"],
)
def test_greedy_equals_naive_decoding(cfg):
    model = ji.init_transformer(cfg, jax.random.key(1), std=0.3)
    prompt = np.array([5, 9, 33, 2])
    seq = list(prompt)
    for _ in range(8):
        logits, _ = ji.run(model, jnp.array(seq))
        seq.append(int(jnp.argmax(logits[-1])))
    np.testing.assert_array_equal(greedy(model, prompt, 8), seq[4:])
    stop = seq[6]
    assert (
        list(greedy(model, prompt, 8, stop_ids=[stop])) == seq[4 : seq.index(stop, 4)]
    )


def test_greedy_rejects_bad_input():
    model = ji.init_transformer(tiny_config(), jax.random.key(1))
    with pytest.raises(ValueError, match="out of vocabulary"):
        greedy(model, np.array([1, 2, 500]), 3)
    with pytest.raises(ValueError, match="at least 1"):
        greedy(model, np.array([1, 2]), 0)

"""Metrics on the logits of one prompt at the answer position (unbatched; `vmap` them).

Every kernel takes `metric(logits, *args)`: `logits` are the last-position logits
`[d_vocab]` of one (edited) run and `args` are that prompt's slices of the kernel's
`metric_args` (e.g. the answer token). A metric returns a scalar or any pytree of scalars
(several metrics from one run: `lambda l, t: (target_logit(l, t), argmax(l))`). Kernels jit
over the metric, so pass a module-level function (a new lambda per call recompiles).

Names and formulas follow the paper's `metrics.py` (paper-spec §3, §4):
* `indirect_effect` is Eq. 1: `0.5 * [(P*(r') - P(r')) / P(r') + (P(r) - P*(r)) / P*(r)]`
  with `P` the clean softmax and `P*` the patched one.
* `normalized_logit` is `logit[correct] / max_v logit[v]` (§4), on vocabulary-centred
  logits when `center=True` (what TransformerLens's `center_unembed` gives).
"""

import jax
import jax.numpy as jnp

from .._typing import ArrayLike, Float, Int

__all__ = [
    "target_logit",
    "logit_diff",
    "target_prob",
    "log_prob",
    "argmax",
    "accuracy",
    "normalized_logit",
    "kl_div",
    "indirect_effect",
    "indirect_effect_logits",
    "logit_and_argmax",
]

Logits = Float[ArrayLike, " d_vocab"]
Scalar = Float[ArrayLike, ""]
Token = Int[ArrayLike, ""]


def target_logit(logits: Logits, target: Token) -> Scalar:
    """`logits[target]`."""
    return logits[target]


def logit_diff(logits: Logits, correct: Token, wrong: Token) -> Scalar:
    """`logits[correct] - logits[wrong]`."""
    return logits[correct] - logits[wrong]


def target_prob(logits: Logits, target: Token) -> Scalar:
    """Softmax probability of `target`."""
    return jax.nn.softmax(logits)[target]


def log_prob(logits: Logits, target: Token) -> Scalar:
    """Log-softmax of `target`."""
    return jax.nn.log_softmax(logits)[target]


def argmax(logits: Logits) -> Token:
    """The predicted token."""
    return jnp.argmax(logits)


def accuracy(logits: Logits, target: Token) -> Scalar:
    """1.0 where the argmax is `target`, else 0.0 (mean it over prompts)."""
    return (jnp.argmax(logits) == target).astype(logits.dtype)


def normalized_logit(logits: Logits, target: Token, center: bool = False) -> Scalar:
    """`logit[target] / max logit` (paper §4), optionally on vocabulary-centred logits."""
    if center:
        logits = logits - logits.mean()
    return logits[target] / logits.max()


def kl_div(logits: Logits, ref_logits: Logits) -> Scalar:
    """`KL(P_ref || P)` between the softmax of `ref_logits` (e.g. clean) and of `logits`."""
    ref = jax.nn.log_softmax(ref_logits)
    return jnp.sum(jnp.exp(ref) * (ref - jax.nn.log_softmax(logits)))


def _ie(clean: Logits, patched: Logits, r: Token, r_prime: Token) -> Scalar:
    return 0.5 * (
        (patched[r_prime] - clean[r_prime]) / clean[r_prime]
        + (clean[r] - patched[r]) / patched[r]
    )


def indirect_effect(
    logits: Logits,
    clean_logits: Logits,
    r: Token,
    r_prime: Token,
) -> Scalar:
    """Paper Eq. 1 on probabilities: `logits` is the patched run, `clean_logits` the clean
    run, `r` the clean answer and `r_prime` the corrupt answer."""
    return _ie(jax.nn.softmax(clean_logits), jax.nn.softmax(logits), r, r_prime)


def indirect_effect_logits(
    logits: Logits,
    clean_logits: Logits,
    r: Token,
    r_prime: Token,
) -> Scalar:
    """Eq. 1 applied to raw logits (the notebooks' 'IE-Logits' variant)."""
    return _ie(clean_logits, logits, r, r_prime)


def logit_and_argmax(logits: Logits, target: Token) -> tuple[Scalar, Token]:
    """`(logits[target], argmax)`: target logit and prediction from one run."""
    return logits[target], jnp.argmax(logits)

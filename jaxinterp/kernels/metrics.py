"""Metrics on the logits of one prompt at the answer position (unbatched; `vmap` them).

Every kernel takes `metric(logits, *args)`: `logits` are the last-position logits
`[d_vocab]` of one (edited) run (`[pos, d_vocab]`, every position, for sequence metrics
such as `sequence_loss` with `ablation_sweep(read="all")`) and `args` are that prompt's
slices of the kernel's `metric_args` (e.g. the answer token). A metric returns a scalar or
any pytree of scalars (several metrics from one run: `lambda l, t: (target_logit(l, t),
argmax(l))`). Kernels jit over the metric, so pass a module-level function (a new lambda
per call recompiles).

Names and formulas follow the code of Nikankin et al. (2024), "Arithmetic Without
Algorithms" (its `metrics.py`):
* `indirect_effect` is Eq. 1: `0.5 * [(P*(r') - P(r')) / P(r') + (P(r) - P*(r)) / P*(r)]`
  with `P` the clean softmax and `P*` the patched one.
* `normalized_logit` is `logit[correct] / max_v logit[v]` (§4), on vocabulary-centred
  logits when `center=True` (what TransformerLens's `center_unembed` gives).
"""

import jax
import jax.numpy as jnp

from .._typing import ArrayLike, Float, Int

__all__ = [
    "pick",
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
    "sequence_loss",
    "token_nll",
]

Logits = Float[ArrayLike, " d_vocab"]
Scalar = Float[ArrayLike, ""]
Token = Int[ArrayLike, ""]


def pick(values: Logits, token: Token) -> Scalar:
    """`values[token]`, or NaN when `token` is not an id of the vocabulary (a plain JAX
    gather would silently clamp or wrap it to another token)."""
    token = jnp.asarray(token)
    n = values.shape[-1]
    valid = (token >= 0) & (token < n)
    return jnp.where(valid, values[jnp.clip(token, 0, n - 1)], jnp.nan)


def target_logit(logits: Logits, target: Token) -> Scalar:
    """`logits[target]`."""
    return pick(logits, target)


def logit_diff(logits: Logits, correct: Token, wrong: Token) -> Scalar:
    """`logits[correct] - logits[wrong]`."""
    return pick(logits, correct) - pick(logits, wrong)


def target_prob(logits: Logits, target: Token) -> Scalar:
    """Softmax probability of `target`."""
    return pick(jax.nn.softmax(logits), target)


def log_prob(logits: Logits, target: Token) -> Scalar:
    """Log-softmax of `target`."""
    return pick(jax.nn.log_softmax(logits), target)


def argmax(logits: Logits) -> Token:
    """The predicted token."""
    return jnp.argmax(logits)


def accuracy(logits: Logits, target: Token) -> Scalar:
    """1.0 where the argmax is `target`, else 0.0 (mean it over prompts); NaN when a logit
    is not finite or `target` is not an id, so that a broken run never counts as right."""
    hit = (jnp.argmax(logits) == target).astype(logits.dtype)
    valid = jnp.isfinite(logits).all() & ~jnp.isnan(pick(logits, target))
    return jnp.where(valid, hit, jnp.nan)


def normalized_logit(logits: Logits, target: Token, center: bool = False) -> Scalar:
    """`logit[target] / max logit` (paper §4), optionally on vocabulary-centred logits."""
    if center:
        logits = logits - logits.mean()
    return pick(logits, target) / logits.max()


def kl_div(logits: Logits, ref_logits: Logits) -> Scalar:
    """`KL(P_ref || P)` between the softmax of `ref_logits` (e.g. clean) and of `logits`."""
    ref = jax.nn.log_softmax(ref_logits)
    return jnp.sum(jnp.exp(ref) * (ref - jax.nn.log_softmax(logits)))


def _ie(clean: Logits, patched: Logits, r: Token, r_prime: Token) -> Scalar:
    c_r, c_rp = pick(clean, r), pick(clean, r_prime)
    p_r, p_rp = pick(patched, r), pick(patched, r_prime)
    return 0.5 * ((p_rp - c_rp) / c_rp + (c_r - p_r) / p_r)


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
    return pick(logits, target), jnp.argmax(logits)


def sequence_loss(
    logits: Float[ArrayLike, "pos d_vocab"],
    targets: Int[ArrayLike, " pos"],
    weights: Float[ArrayLike, " pos"],
) -> Scalar:
    """Weighted mean next-token loss `-log P(targets[p])` over positions `p` (weight 0
    drops a position: padding, or a part of the text not measured); NaN when every weight
    is 0 or a target is not an id."""
    nll = -jax.vmap(pick)(jax.nn.log_softmax(logits), targets)
    weights = jnp.asarray(weights, nll.dtype)
    return jnp.sum(jnp.where(weights > 0, nll * weights, 0.0)) / jnp.sum(weights)


def token_nll(
    logits: Float[ArrayLike, "pos d_vocab"], targets: Int[ArrayLike, " pos"]
) -> Float[ArrayLike, " pos"]:
    """Next-token loss `-log P(targets[p])` at every position (NaN where a target is not
    an id): average it over the positions you measure, on the host."""
    return -jax.vmap(pick)(jax.nn.log_softmax(logits), targets)

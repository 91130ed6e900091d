"""`jaxinterp demo`: a tour of the library on a real model, with timings.

Next-token predictions for a few prompts (one padded batch, one compile), a greedy
continuation, a logit-lens table (`jaxinterp.kernels.logit_lens`) and the shapes of a few
captured taps.
"""

import time

import jax
import numpy as np

from converters.loading import load, load_tokenizer, source_info
from jaxinterp import kernels, run
from jaxinterp import taps as taplib
from jaxinterp.generate import greedy

from .commands import encode, mib, nbytes, table

PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little",
    "1 + 1 = 2\n2 + 3 = ",
)
TAPS = (
    "hook_embed",
    "blocks.0.attn.hook_rot_q",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.mlp.hook_post",
    "ln_final.hook_normalized",
)


def demo(model: str, *, max_new_tokens: int, dtype: str | None, cache: bool) -> int:
    """`jaxinterp demo [MODEL]`: the tour (see the module docstring).

    Arguments:
        model: registry name or path, as for `converters.load`.
        max_new_tokens: length of the greedy continuation.
        dtype: parameter dtype; None keeps the loader's default.
        cache: reuse a converted copy of the model (`converters.load(cache=True)`).

    Returns:
        The exit status, 0.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    kind, path = source_info(model)
    tokenizer = load_tokenizer(model, cache=cache)
    lap("tokenizer", t0)
    t0 = time.perf_counter()
    loaded = load(model, dtype=dtype, cache=cache)
    jax.block_until_ready(loaded)
    lap("load model" + (" (cache)" if cache else ""), t0)
    cfg = loaded.cfg
    dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(loaded)})
    print(f"== {model}: {kind} {path}")
    print(
        f"   {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads / "
        f"{cfg.n_kv_heads} KV heads, d_vocab {cfg.d_vocab}, {', '.join(dtypes)}, "
        f"{mib(nbytes(loaded))}"
    )

    # All prompts in one batch, right-padded: a causal model's logits at a prompt's last
    # real position do not see the padding after it, so one compile serves every prompt.
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    batch = np.zeros((len(prompts), width), np.int32)
    for i, ids in enumerate(prompts):
        batch[i, : len(ids)] = ids
    available = set(taplib.available_taps(cfg))
    shown = [name for name in TAPS if name in available]
    t0 = time.perf_counter()
    logits, captured = run(loaded, batch, capture=shown)
    logits = np.asarray(logits, np.float32)
    lap("forward (compile + run)", t0)
    t0 = time.perf_counter()
    jax.block_until_ready(run(loaded, batch, capture=shown))
    lap("forward (run again)", t0)

    print(f"\n== next-token predictions (top 5, batch of {len(prompts)} prompts)")
    for text, n, row in zip(PROMPTS, lengths, logits, strict=True):
        probs = _softmax(row[n - 1])
        top = np.argsort(-probs)[:5]
        print(f"{text!r}")
        print(
            "   "
            + "  ".join(f"{tokenizer.decode([int(t)])!r} {probs[t]:.3f}" for t in top)
        )

    t0 = time.perf_counter()
    stop = () if tokenizer.eos_id is None else (tokenizer.eos_id,)
    new = greedy(loaded, prompts[0], max_new_tokens, stop_ids=stop)
    lap(f"greedy {max_new_tokens} tokens (compile + run)", t0)
    print(
        f"\n== greedy continuation\n{PROMPTS[0]!r} -> {tokenizer.decode(new.tolist())!r}"
    )

    # Logit lens at the last position of prompt 0. The kernel reads blocks.L.hook_resid_pre
    # for every L and then the final residual; entry L + 1 is blocks.L.hook_resid_post.
    t0 = time.perf_counter()
    lens = np.asarray(kernels.logit_lens(loaded, prompts[0][None], pos=-1), np.float32)
    lens = lens[0, 1:]  # [layer, d_vocab]
    lap("logit lens (compile + run)", t0)
    final = int(np.argmax(logits[0, lengths[0] - 1]))
    print(
        f"\n== logit lens: {PROMPTS[0]!r}, last position, blocks.L.hook_resid_post"
        " -> ln_final -> W_U"
    )
    rows = []
    for l, row in enumerate(lens):
        probs = _softmax(row)
        top = int(np.argmax(probs))
        rows.append(
            [
                str(l),
                repr(tokenizer.decode([top])),
                f"{probs[top]:.3f}",
                f"{probs[final]:.3f}",
            ]
        )
    table(["layer", "top token", "p(top)", f"p({tokenizer.decode([final])!r})"], rows)

    print(f"\n== captured taps (batch {len(prompts)}, padded to {width} tokens)")
    for name in shown:
        value = captured[name]
        print(f"   {name:<28} {tuple(value.shape)} {value.dtype}")

    timings["total"] = time.perf_counter() - start
    print("\n== timings (s)")
    for name, seconds in timings.items():
        print(f"   {name:<40} {seconds:6.2f}")
    return 0


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()

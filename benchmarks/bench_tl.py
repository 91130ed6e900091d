"""jaxinterp sweep kernels vs TransformerLens 3.9 hooks and HF forward hooks (CPU).

    .venv/bin/python benchmarks/bench_tl.py --quick     # ~2 min: GPT-2-small shape only
    .venv/bin/python benchmarks/bench_tl.py             # full: GPT-2, Pythia-160M, SmolLM2-135M
    .venv/bin/python benchmarks/bench_tl.py --models gpt2 --workloads W3   # a subset

Same random weights everywhere: a random HF model (from its config, no download) is saved as
safetensors, converted with `converters.from_pretrained`, and TransformerLens's
`HookedTransformer` is built from the converted model by
`converters.transformer_lens.to_transformer_lens` (TL and jaxinterp share parameter names and
layouts). Logits of the three are checked to agree before timing, and every workload's
outputs are compared across frameworks.

Timings are wall-clock on this machine (shared with other jobs: noisy). JAX compile time is
measured separately (first call minus a second identical call). Slow PyTorch baselines run on
a subset of the workload and are extrapolated per item; the table says so.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import converters  # noqa: E402
from converters.transformer_lens import to_transformer_lens  # noqa: E402
from jaxinterp.kernels import ablate, attribution, grids, means, metrics, patch  # noqa: E402
from jaxinterp.kernels.sweep import first_edited  # noqa: E402

torch.set_num_threads(2)
torch.set_grad_enabled(False)
jax.config.update("jax_default_matmul_precision", "highest")

ROWS: list[dict] = []


# ----------------------------------------------------------------------------- models


def hf_config(name: str):
    import transformers as T

    if name == "gpt2":
        return T.GPT2Config()  # 12L, 768, 12 heads, vocab 50257
    if name == "pythia-160m":
        return T.GPTNeoXConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, vocab_size=50304, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
            tie_word_embeddings=False,
        )  # fmt: skip
    if name == "smollm2-135m":
        return T.LlamaConfig(
            hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
            max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, hidden_act="silu",
        )  # fmt: skip
    raise ValueError(name)


def tl_model(model):
    """A TransformerLens HookedTransformer with the converted model's weights (float32, no
    weight processing, no BOS prepending)."""
    return to_transformer_lens(model, dtype=torch.float32)


HF_POST = {  # module whose *input* is mlp.hook_post
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "pythia-160m": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
    "smollm2-135m": "model.layers.{}.mlp.down_proj",
}


def converted(name: str):
    """A seeded random HF model of `name`'s shape (float32, eager attention) and its
    jaxinterp conversion."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(
        hf_config(name), attn_implementation="eager", dtype=torch.float32
    ).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = converters.from_pretrained(d, dtype=jnp.float32)
    return model, hf


def build(name: str):
    model, hf = converted(name)
    tl = tl_model(model)
    toks = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 7))
    ours = np.asarray(jax.vmap(model)(jnp.asarray(toks)))
    theirs_tl = tl(torch.from_numpy(toks)).numpy()
    theirs_hf = hf(torch.from_numpy(toks)).logits.numpy()
    print(
        f"[{name}] logits max|jax-TL| = {np.abs(ours - theirs_tl).max():.2e}, "
        f"max|jax-HF| = {np.abs(ours - theirs_hf).max():.2e}"
    )
    return model, tl, hf


# ----------------------------------------------------------------------------- helpers


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    jax.block_until_ready(out) if not isinstance(out, torch.Tensor) else None
    return out, time.perf_counter() - t


def jax_timed(fn, *args, warm=None, **kw):
    """(out, steady seconds, compile seconds).

    `warm` is a smaller call `(args, kw, fraction_of_items)` with the same per-batch shapes:
    it compiles the batch program; compile time = its time minus its share of the steady
    time. Without `warm` the full call runs twice.
    """
    if warm is None:
        _, first = timed(fn, *args, **kw)
        out, second = timed(fn, *args, **kw)
        return out, second, max(0.0, first - second)
    w_args, w_kw, frac = warm
    _, first = timed(fn, *w_args, **w_kw)
    out, t = timed(fn, *args, **kw)
    return out, t, max(0.0, first - frac * t)


def layer_flops(cfg) -> float:
    """Matmul FLOPs of one token through one block (attention scores ignored: 5 tokens)."""
    d, dh = cfg.d_model, cfg.d_head
    attn = 2 * d * dh * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    mlp = 2 * d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    return attn + mlp


def matmul_gflops() -> float:
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a).block_until_ready())[1] for _ in range(10))
    return 2 * n**3 / best / 1e9


def record(model, workload, variant, items, seconds, *, compile_s=None, flops=None,
           note="", diff=None):  # fmt: skip
    row = dict(
        model=model, workload=workload, variant=variant, items=items,
        per_s=items / seconds, seconds=seconds, compile_s=compile_s,
        gflops=None if flops is None else flops / seconds / 1e9, note=note, diff=diff,
    )  # fmt: skip
    ROWS.append(row)
    extra = f" compile {compile_s:.1f}s" if compile_s is not None else ""
    extra += f" {row['gflops']:.1f} GFLOP/s" if flops is not None else ""
    extra += f" max|diff| {diff:.1e}" if diff is not None else ""
    print(
        f"  {workload:4s} {variant:34s} {items / seconds:10.1f} items/s{extra} {note}"
    )


def prompts(rng, v, n):
    """`[n, 5]` prompts [BOS, a, op, b, =] with random token ids."""
    bos, op, eq = 1, 2, 3
    a, b = rng.integers(10, v, n), rng.integers(10, v, n)
    return np.stack([np.full(n, bos), a, np.full(n, op), b, np.full(n, eq)], 1)


def prompt_pairs(seed, v, n):
    """Clean and corrupt `[n, 5]` prompts and random answer / wrong tokens `[n]`."""
    rng = np.random.default_rng(seed)
    clean, corrupt = prompts(rng, v, n), prompts(rng, v, n)
    return clean, corrupt, rng.integers(0, v, n), rng.integers(0, v, n)


# ----------------------------------------------------------------------------- W1


def copier(dest):
    """A TL hook copying the last position into `dest` (returns None: no replacement)."""

    def fn(act, hook):
        dest[: act.shape[0]].copy_(act[:, -1])

    return fn


def w1_grid(name, model, tl, hf, size, prefix_len, tl_budget):
    cfg = model.cfg
    rng = np.random.default_rng(1)
    a_tok = rng.integers(10, cfg.d_vocab, size)
    b_tok = rng.integers(10, cfg.d_vocab, size)
    bos, op, eq = 1, 2, 3
    prefix = np.concatenate([[bos], rng.integers(10, cfg.d_vocab, prefix_len)]).astype(
        int
    )
    tag = "W1" if prefix_len == 0 else "W1p"
    n = size * size
    n_pre = prefix.size
    kw = dict(
        prefix=prefix, middle=[op], suffix=[eq], batch_size=512, progress_bar=False
    )
    k = min(size, -(-512 // size))
    warm = ((model, a_tok, b_tok[:k]), kw, k / size)
    grid, t, c = jax_timed(grids.operand_grid, model, a_tok, b_tok, warm=warm, **kw)
    flops = layer_flops(cfg) * cfg.n_layers * (2 * n + 2 * size + n_pre)
    record(name, tag, "jax operand_grid (KV reuse)", n, t, compile_s=c, flops=flops)
    ref = grid.reshape(n, cfg.n_layers, cfg.d_mlp)

    # PyTorch baselines on the first rows of the grid (extrapolated per prompt)
    rows = max(1, min(size, int(tl_budget // size) or 1))
    sub = np.array([[*prefix, a, op, b, eq] for a in a_tok[:rows] for b in b_tok])
    m = sub.shape[0]
    names = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    bs = 200
    note = f"{m} of {n} prompts" if m < n else ""

    def tl_cache():
        outs = []
        for s in range(0, m, bs):
            _, cache = tl.run_with_cache(
                torch.from_numpy(sub[s : s + bs]), names_filter=lambda x: x in names
            )
            outs.append(torch.stack([cache[x][:, -1] for x in names], 1))
        return torch.cat(outs)

    def tl_hooks(stop):
        out = torch.empty(m, cfg.n_layers, cfg.d_mlp)
        for s in range(0, m, bs):
            hooks = [(x, copier(out[s : s + bs, l])) for l, x in enumerate(names)]
            tl.run_with_hooks(
                torch.from_numpy(sub[s : s + bs]), fwd_hooks=hooks,
                stop_at_layer=cfg.n_layers if stop else None,
            )  # fmt: skip
        return out

    def hf_hooks():
        out = torch.empty(m, cfg.n_layers, cfg.d_mlp)
        state = {}

        def pre_hook(l):
            def fn(mod, args):
                out[state["s"] : state["s"] + args[0].shape[0], l].copy_(args[0][:, -1])

            return fn

        handles = [
            hf.get_submodule(HF_POST[name].format(l)).register_forward_pre_hook(
                pre_hook(l)
            )
            for l in range(cfg.n_layers)
        ]
        try:
            for s in range(0, m, 256):  # the batch a skilled user would pick
                state["s"] = s
                hf.base_model(torch.from_numpy(sub[s : s + 256]))  # no lm_head
        finally:
            for h in handles:
                h.remove()
        return out

    for label, fn in [
        ("TL run_with_cache(names_filter)", tl_cache),
        ("TL run_with_hooks last-pos copy", lambda: tl_hooks(False)),
        ("TL run_with_hooks + stop_at_layer", lambda: tl_hooks(True)),
        ("HF forward pre-hooks, no lm_head", hf_hooks),
    ]:
        out, t = timed(fn)
        diff = float(np.abs(out.numpy() - ref[:m]).max())
        record(name, tag, label, m, t, note=note, diff=diff)

    if prefix_len:
        from transformer_lens import TransformerLensKeyValueCache as Cache

        def tl_kv():
            out = torch.empty(m, cfg.n_layers, cfg.d_mlp)
            state = {}

            def kv_hook(l):
                def fn(act, hook):
                    state["out"][:, l].copy_(act[:, -1])

                return fn

            hooks = [(x, kv_hook(l)) for l, x in enumerate(names)]
            shared = Cache.init_cache(tl.cfg, "cpu", 1)
            pre = torch.from_numpy(prefix[None])
            tl(
                pre,
                past_kv_cache=shared,
                return_type=None,
                attention_mask=torch.ones_like(pre),
            )
            suffix = torch.from_numpy(np.stack([b_tok, np.full(size, eq)], 1))
            for i, a in enumerate(a_tok[:rows]):
                cache = Cache.init_cache(tl.cfg, "cpu", 1)
                for e, s in zip(cache.entries, shared.entries, strict=True):
                    e.past_keys, e.past_values = s.past_keys, s.past_values
                cache.previous_attention_mask = shared.previous_attention_mask
                mid = torch.tensor([[a, op]])
                tl(
                    mid,
                    past_kv_cache=cache,
                    return_type=None,
                    attention_mask=torch.ones_like(mid),
                )
                for e in cache.entries:
                    e.past_keys = e.past_keys.expand(size, -1, -1, -1)
                    e.past_values = e.past_values.expand(size, -1, -1, -1)
                cache.previous_attention_mask = cache.previous_attention_mask.expand(
                    size, -1
                )
                cache.freeze()
                state["out"] = out[i * size : (i + 1) * size]
                tl.run_with_hooks(
                    suffix,
                    past_kv_cache=cache,
                    attention_mask=torch.ones_like(suffix),
                    fwd_hooks=hooks,
                    stop_at_layer=cfg.n_layers,
                )
            return out

        out, t = timed(tl_kv)
        diff = float(np.abs(out.numpy() - ref[:m]).max())
        record(
            name, tag, "TL KV-cache prefix + stop_at_layer", m, t, note=note, diff=diff
        )


# ----------------------------------------------------------------------------- W2


def w2_ablation(name, model, tl, n_sets, n_prompts, tl_items):
    cfg = model.cfg
    rng = np.random.default_rng(2)
    toks = prompts(rng, cfg.d_vocab, n_prompts)
    target = rng.integers(0, cfg.d_vocab, n_prompts)
    mean = means.mean_cache(
        model, toks, ("mlp.hook_post",), batch_size=256, progress_bar=False
    )
    mean = mean["mlp.hook_post"]
    masks = np.zeros((n_sets, cfg.n_layers, cfg.d_mlp), bool)
    for s in range(n_sets):
        flat = rng.choice(cfg.n_layers * cfg.d_mlp, 64, replace=False)
        masks[s].reshape(-1)[flat] = True
    kw = dict(
        metric=metrics.logit_and_argmax, metric_args=(target,), values=mean,
        positions="last", batch_size=64, progress_bar=False,
    )  # fmt: skip
    w_kw = dict(kw, metric_args=(target[:64],))
    warm = ((model, toks[:64], masks), w_kw, 64 / n_prompts)
    (logit, arg), t, c = jax_timed(
        ablate.ablation_sweep, model, toks, masks, warm=warm, **kw
    )
    L = first_edited(masks, 1)
    items = n_sets * n_prompts
    flops = items * (
        layer_flops(cfg) * (cfg.n_layers - L) + 2 * cfg.d_model * cfg.d_vocab
    )
    flops += n_prompts * layer_flops(cfg) * cfg.n_layers * 5
    record(
        name, "W2", "jax ablation_sweep (vmap sets)", items, t, compile_s=c, flops=flops
    )

    # TL idiom: one run_with_hooks per set over prompt batches (subset, extrapolated)
    sets = max(1, min(n_sets, tl_items // n_prompts))
    m = min(n_prompts, tl_items // sets)
    mean_t = torch.from_numpy(np.array(mean))
    bs = 200

    def set_hooks(s):
        """Mean-ablation hooks of set `s` at the last position (none below layer L)."""
        hooks = []
        for l in range(L, cfg.n_layers):
            idx = torch.from_numpy(np.flatnonzero(masks[s, l]))
            if idx.numel() == 0:
                continue

            def hook(act, hook, l=l, idx=idx):
                act[:, -1, idx] = mean_t[l, -1, idx]
                return act

            hooks.append((f"blocks.{l}.mlp.hook_post", hook))
        return hooks

    def tl_run():
        outs = []
        for s in range(sets):
            hooks = set_hooks(s)
            for b in range(0, m, bs):
                logits = tl.run_with_hooks(
                    torch.from_numpy(toks[b : min(b + bs, m)]), fwd_hooks=hooks
                )
                last = logits[:, -1]
                tt = torch.from_numpy(target[b : min(b + bs, m)])
                outs.append(
                    torch.stack(
                        [last[torch.arange(len(tt)), tt], last.argmax(-1).float()], 1
                    )
                )
        return torch.cat(outs).reshape(sets, m, 2)

    # The strongest TL variant: the residual entering the first edited layer once per
    # prompt batch, then per set start_at_layer there, stop before ln_final and unembed
    # only the last position.
    def tl_start_stop():
        outs = []
        for b in range(0, m, bs):
            chunk = torch.from_numpy(toks[b : min(b + bs, m)])
            start = tl(chunk, stop_at_layer=L) if L else None
            tt = torch.from_numpy(target[b : min(b + bs, m)])
            for s in range(sets):
                with tl.hooks(fwd_hooks=set_hooks(s)):
                    resid = (
                        tl(start, start_at_layer=L, stop_at_layer=cfg.n_layers)
                        if L
                        else tl(chunk, stop_at_layer=cfg.n_layers)
                    )
                    last = tl.unembed(tl.ln_final(resid[:, -1:]))[:, 0]
                outs.append(
                    (s, b, torch.stack(
                        [last[torch.arange(len(tt)), tt], last.argmax(-1).float()], 1
                    ))
                )  # fmt: skip
        out = torch.zeros(sets, m, 2)
        for s, b, o in outs:
            out[s, b : b + len(o)] = o
        return out

    for label, fn in [
        ("TL run_with_hooks per set", tl_run),
        ("TL start_at_layer + last-pos unembed", tl_start_stop),
    ]:
        out, t = timed(fn)
        # kernel results are [prompt, set]
        diff = float(np.abs(out[..., 0].numpy() - np.asarray(logit).T[:sets, :m]).max())
        agree = float((out[..., 1].numpy() == np.asarray(arg).T[:sets, :m]).mean())
        note = f"{sets}x{m} of {n_sets}x{n_prompts}; argmax agree {agree:.3f}"
        record(name, "W2", label, sets * m, t, note=note, diff=diff)


# ----------------------------------------------------------------------------- W3

N_GROUPS = 4  # layer groups of activation_patching: fewer FLOPs, more compile time


def w3_patching(name, model, tl, n_pairs, tl_cells):
    cfg = model.cfg
    clean, corrupt, ans, wrong = prompt_pairs(3, cfg.d_vocab, n_pairs)
    kw = dict(
        metric=metrics.logit_diff, metric_args=(ans, wrong), tap="attn.hook_z",
        n_layer_groups=N_GROUPS, batch_size=8, progress_bar=False,
    )  # fmt: skip
    w_kw = dict(kw, metric_args=(ans[:8], wrong[:8]))
    warm = ((model, clean[:8], corrupt[:8]), w_kw, 8 / n_pairs)
    got, t, c = jax_timed(
        patch.activation_patching, model, clean, corrupt, warm=warm, **kw
    )
    n_cells = cfg.n_layers * 5 * cfg.n_heads
    items = n_cells * n_pairs
    groups = patch.layer_groups(cfg.n_layers, N_GROUPS)
    seg_layers = sum((cfg.n_layers - s) * (e - s) for s, e in groups) * cfg.n_heads
    flops = n_pairs * (
        sum(seg_layers * (5 - p) * layer_flops(cfg) for p in range(5))
        + n_cells * 2 * cfg.d_model * cfg.d_vocab
        + 2 * 5 * cfg.n_layers * layer_flops(cfg)
    )
    record(
        name,
        "W3",
        "jax activation_patching (1 program)",
        items,
        t,
        compile_s=c,
        flops=flops,
    )

    # TL manual loop: one run_with_hooks per (layer, pos, head) cell over all pairs (subset)
    _, cache = tl.run_with_cache(
        torch.from_numpy(corrupt), names_filter=lambda x: x.endswith("attn.hook_z")
    )
    cells = [
        (l, p, h)
        for l in range(cfg.n_layers)
        for p in range(5)
        for h in range(cfg.n_heads)
    ]
    pick = np.random.default_rng(0).choice(
        len(cells), min(tl_cells, len(cells)), replace=False
    )
    base = torch.from_numpy(clean)
    a_t, w_t = torch.from_numpy(ans), torch.from_numpy(wrong)

    def tl_run():
        out = []
        for i in pick:
            l, p, h = cells[i]
            src = cache[f"blocks.{l}.attn.hook_z"]

            def hook(z, hook, p=p, h=h, src=src):
                z[:, p, h] = src[:, p, h]
                return z

            logits = tl.run_with_hooks(
                base, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)]
            )
            last = logits[:, -1]
            r = torch.arange(n_pairs)
            out.append(last[r, a_t] - last[r, w_t])
        return torch.stack(out)

    # The strongest TL variant: 200 (cell, pair) rows per forward, each layer's hook
    # patching its own rows' (pos, head), stopped before ln_final, last position only.
    rows = np.array([(i, j) for i in pick for j in range(n_pairs)])  # (cell, pair)
    lph = np.array([cells[i] for i in rows[:, 0]])  # (layer, pos, head) per row
    bs = 200

    def tl_batched():
        out = []
        for b in range(0, len(rows), bs):
            r = slice(b, min(b + bs, len(rows)))
            pairs = torch.from_numpy(rows[r, 1])
            hooks = []
            for l in np.unique(lph[r, 0]):
                sel = np.flatnonzero(lph[r, 0] == l)
                src = cache[f"blocks.{l}.attn.hook_z"]
                ps, hs = (torch.from_numpy(lph[r][sel, k]) for k in (1, 2))
                sel_t = torch.from_numpy(sel)

                def hook(z, hook, sel=sel_t, ps=ps, hs=hs, src=src, pr=pairs[sel]):
                    z[sel, ps, hs] = src[pr, ps, hs]
                    return z

                hooks.append((f"blocks.{l}.attn.hook_z", hook))
            with tl.hooks(fwd_hooks=hooks):
                resid = tl(base[pairs], stop_at_layer=cfg.n_layers)
                last = tl.unembed(tl.ln_final(resid[:, -1:]))[:, 0]
            k = torch.arange(len(pairs))
            out.append(last[k, a_t[pairs]] - last[k, w_t[pairs]])
        return torch.cat(out).reshape(len(pick), n_pairs)

    want = np.stack(
        [np.asarray(got)[:, cells[i][0], cells[i][1], cells[i][2]] for i in pick]
    )
    note = f"{len(pick)} of {n_cells} cells"
    for label, fn in [
        ("TL run_with_hooks loop over cells", tl_run),
        ("TL 200 rows per forward + last-pos unembed", tl_batched),
    ]:
        out, t = timed(fn)
        diff = float(np.abs(out.numpy() - want).max())
        record(name, "W3", label, len(pick) * n_pairs, t, note=note, diff=diff)


# ----------------------------------------------------------------------------- W4


def w4_attribution(name, model, tl, n_pairs, n_sample):
    cfg = model.cfg
    rng = np.random.default_rng(4)
    clean, corrupt, ans, wrong = prompt_pairs(rng, cfg.d_vocab, n_pairs)
    kw = dict(metric=metrics.logit_diff, metric_args=(ans, wrong), batch_size=8,
              progress_bar=False)  # fmt: skip
    scores, t, c = jax_timed(
        attribution.attribution_patching, model, clean, corrupt, **kw
    )
    scores = scores["mlp.hook_post"]
    flops = n_pairs * 5 * cfg.n_layers * layer_flops(cfg) * 4  # 2 fwd + bwd (2x)
    items = n_pairs
    record(
        name, "W4", "jax attribution (all neurons)", items, t, compile_s=c, flops=flops
    )

    names = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]

    def tl_attr():
        with torch.enable_grad():
            _, src = tl.run_with_cache(
                torch.from_numpy(corrupt), names_filter=lambda x: x in names
            )
            acts, grads = {}, {}
            fwd = [
                (x, lambda a, hook: acts.__setitem__(hook.name, a.detach()))
                for x in names
            ]
            bwd = [
                (x, lambda g, hook: grads.__setitem__(hook.name, g.detach()))
                for x in names
            ]
            with tl.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
                logits = tl(torch.from_numpy(clean))
                r = torch.arange(n_pairs)
                last = logits[:, -1]
                (
                    last[r, torch.from_numpy(ans)] - last[r, torch.from_numpy(wrong)]
                ).sum().backward()
            return torch.stack([(src[x] - acts[x]) * grads[x] for x in names], 1)

    out, t = timed(tl_attr)
    diff = float(np.abs(out.numpy() - np.asarray(scores)).max())
    record(name, "W4", "TL fwd+bwd hooks attribution", items, t, diff=diff)

    # exact per-neuron patching on a sample (last position), and the correlation
    cells = np.stack(
        [rng.integers(0, cfg.n_layers, n_sample), np.full(n_sample, 4),
         rng.integers(0, cfg.d_mlp, n_sample)], 1,
    )  # fmt: skip
    rep, t, c = jax_timed(
        attribution.attribution_vs_exact, model, clean, corrupt, cells,
        metric=metrics.logit_diff, metric_args=(ans, wrong), scores=scores, batch_size=32,
    )  # fmt: skip
    record(name, "W4", "jax exact per-neuron patch_cells", n_sample * n_pairs, t,
           compile_s=c, note=f"pearson(attr, exact) = {rep['pearson']:.3f}")  # fmt: skip
    _, cache = tl.run_with_cache(
        torch.from_numpy(corrupt), names_filter=lambda x: x in names
    )
    base = torch.from_numpy(clean)

    def tl_exact():
        out = []
        for l, p, nn in cells:
            src = cache[names[l]]

            def hook(act, hook, p=p, nn=nn, src=src):
                act[:, p, nn] = src[:, p, nn]
                return act

            last = tl.run_with_hooks(base, fwd_hooks=[(names[l], hook)])[:, -1]
            r = torch.arange(n_pairs)
            out.append(
                last[r, torch.from_numpy(ans)] - last[r, torch.from_numpy(wrong)]
            )
        return torch.stack(out)

    out, t = timed(tl_exact)
    logits = np.asarray(means.answer_logits(model, clean))
    base_m = logits[np.arange(n_pairs), ans] - logits[np.arange(n_pairs), wrong]
    diff = float(np.abs(out.numpy() - base_m[None] - np.asarray(rep["exact"]).T).max())
    record(
        name,
        "W4",
        "TL exact per-neuron run_with_hooks",
        n_sample * n_pairs,
        t,
        diff=diff,
    )


# ----------------------------------------------------------------------------- main


SIZES = {
    True: dict(grid=20, prefix=24, tl_grid=200, tl_grid_prefix=60, sets=8, prompts=200,
               tl_w2=400, pairs=16, tl_cells=60, attr_pairs=8, sample=16),
    False: dict(grid=100, prefix=24, tl_grid=1000, tl_grid_prefix=100, sets=32,
                prompts=2000, tl_w2=1000, pairs=24, tl_cells=120, attr_pairs=16, sample=64),
}  # fmt: skip


def ratio_table() -> list[str]:
    """Each PyTorch row against the JAX row recorded before it for the same workload."""
    lines, last_jax = [], {}
    for r in ROWS:
        key = (r["model"], r["workload"])
        if r["variant"].startswith("jax"):
            last_jax[key] = r
            continue
        j = last_jax[key]
        lines.append(
            f"| {r['model']} | {r['workload']} | {j['variant']} | {r['variant']} | "
            f"{r['per_s']:.1f} | {j['per_s'] / r['per_s']:.1f}x | {r['note']} |"
        )
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, GPT-2 shape only"
    )
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--json", default=None, help="write all rows to this file")
    ap.add_argument("--workloads", nargs="*", default=["W1", "W1p", "W2", "W3", "W4"])
    args = ap.parse_args()
    sz = SIZES[args.quick]
    names = args.models or (
        ["gpt2"] if args.quick else ["gpt2", "pythia-160m", "smollm2-135m"]
    )
    gf = matmul_gflops()
    print(f"float32 matmul peak (2048^2 jnp): {gf:.1f} GFLOP/s; torch threads "
          f"{torch.get_num_threads()}; jax {jax.__version__}; "
          f"torch {torch.__version__}")  # fmt: skip
    for name in names:
        t0 = time.perf_counter()
        model, tl, hf = build(name)
        todo = set(args.workloads)
        if "W1" in todo:
            w1_grid(name, model, tl, hf, sz["grid"], 0, sz["tl_grid"])
        if "W1p" in todo:
            w1_grid(name, model, tl, hf, sz["grid"], sz["prefix"], sz["tl_grid_prefix"])
        if "W2" in todo:
            w2_ablation(name, model, tl, sz["sets"], sz["prompts"], sz["tl_w2"])
        if "W3" in todo:
            w3_patching(name, model, tl, sz["pairs"], sz["tl_cells"])
        if "W4" in todo:
            w4_attribution(name, model, tl, sz["attr_pairs"], sz["sample"])
        print(f"[{name}] done in {time.perf_counter() - t0:.0f}s")
        del model, tl, hf
    print("\n| model | workload | variant | items/s | compile s | "
          "% of matmul peak | max diff | note |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        pct = "" if r["gflops"] is None else f"{100 * r['gflops'] / gf:.0f}%"
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        diff = "" if r["diff"] is None else f"{r['diff']:.1e}"
        print(f"| {r['model']} | {r['workload']} | {r['variant']} | {r['per_s']:.1f} | "
              f"{comp} | {pct} | {diff} | {r['note']} |")  # fmt: skip
    print("\nSpeedups (jax kernel items/s / torch items/s):")
    print(
        "| model | workload | jax kernel | baseline | baseline items/s | speedup | note |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(ratio_table()))
    meta = dict(date=datetime.date.today().isoformat(), machine=platform.platform(),
                cpus=os.cpu_count(), matmul_gflops=gf, quick=args.quick)  # fmt: skip
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=ROWS), f, indent=1)


if __name__ == "__main__":
    main()

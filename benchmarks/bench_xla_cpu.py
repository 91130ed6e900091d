"""XLA:CPU vs PyTorch float32 matmul throughput on the kernels' shapes, and XLA:CPU options.

    .venv/bin/python benchmarks/bench_xla_cpu.py            # full run, about 6 min on 2 cores
    .venv/bin/python benchmarks/bench_xla_cpu.py --quick    # fewer shapes and variants, ~1 min
    .venv/bin/python benchmarks/bench_xla_cpu.py --variants default eigen --no-probe

What it measures, jax (`jax.jit`, float32, `jax.default_matmul_precision("highest")`) next to
torch (CPU, default `torch.get_num_threads()`), on the same float32 inputs:

* matmul GFLOP/s: square 1024^3, and the MLP projections `[rows, d_model] x [d_model, d_mlp]`
  ("up") and `[rows, d_mlp] x [d_mlp, d_model]` ("down") of gpt2 / pythia-160m (768/3072)
  and smollm2-135m (576/1536) for rows in {200, 512, 1280};
* a gated MLP, SmolLM2 shapes: `(silu(x W_gate) * (x W_in)) W_out`, rows 512 and 1280
  (GFLOP/s counts the three matmuls only);
* attention of 2 query tokens per pair over (3 shared + 2 own) key/value positions,
  100 pairs, 12 heads, d_head 64 (einsum in both frameworks; tiny, so overhead-bound);
* in the default variant, user-code forms of the same products: `x @ w`, `einsum`, weights
  stored transposed (`[out, in]`, `dot_general` / `F.linear`), `preferred_element_type`, and
  attention as batched matmul over a broadcast cache.

Torch and jax repeats alternate (the machine is shared and noisy); each figure is the
median of the repeats, and the 1-minute load average is printed at start and end.
`max abs diff` is between the torch and jax outputs; `rel diff vs default` is
max |out - out_default| / max |out_default| against the default variant's jax outputs.

XLA_FLAGS are read once, when the backend starts, so every variant runs in its own child
process (this script re-invoked with `--variant NAME`, the flags in XLA_FLAGS and the name in
BENCH_XLA_CPU_VARIANT), one child at a time. Each variant's speed is given relative to the
default as the geometric mean over shapes of (jax/torch in the variant) / (jax/torch in the
default), which cancels part of the load drift between children; `default_again` repeats the
default flags last, so its figure is the noise floor. Before that, each candidate flag is
probed in a child of its own (an unknown flag aborts the process) and reported as accepted,
unknown or deprecated. The library fusions XLA actually emitted (`__ynn_fusion`,
`__onednn_fusion`, ...) are read from each compiled executable, so a flag that is accepted
but changes nothing shows up as such; a variant that crashes keeps the shapes done before.

Last, the choices that are also per-compilation options (`.lower(...).compile(
compiler_options={...})`) are compiled side by side in ONE child with default flags and
timed interleaved with the default executable and torch, shape by shape: the comparison
least exposed to a shared machine's drift (`--no-interleaved` skips it).
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

ENV_VARIANT = "BENCH_XLA_CPU_VARIANT"

# name -> XLA_FLAGS. The default list of YNN fusion types is "individual_dot" in this
# jaxlib (0.10.2): every dot becomes a `__ynn_fusion` (YNNPACK); an empty list falls back to
# XLA's own dot thunk (Eigen).
VARIANTS: dict[str, str] = {
    "default": "",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_fuse": "--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise",
    "onednn": (
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type= "
        "--xla_cpu_experimental_onednn_fusion_type=dot"
    ),
    "xnn": (
        "--xla_cpu_experimental_ynn_fusion_type= "
        "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise "
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
    ),
    "eigen_1thread": (
        "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_multi_thread_eigen=false"
    ),
    "vec512": "--xla_cpu_prefer_vector_width=512",
    "avx2": "--xla_cpu_max_isa=AVX2",
    "fast_runtime": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "concurrent": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    # same flags as "default", run last: its "speed vs default" is the noise floor
    "default_again": "",
}
# The same choices as per-compilation options (`.lower(...).compile(compiler_options=...)`),
# all compiled in ONE process and timed interleaved with the default and torch, which is
# far less exposed to load drift than comparing separate processes. Enum lists take the
# proto names; oneDNN is applied to the plain matmuls only (it crashes on the gated MLP).
INTERLEAVED: dict[str, dict] = {
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "onednn": {
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_ynn_fusion_type": "",
        "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
    },
    "vec512": {"xla_cpu_prefer_vector_width": 512},
    "fast_runtime": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"},
}
QUICK_INTERLEAVED = ["eigen", "onednn"]
QUICK_VARIANTS = ["default", "eigen", "onednn", "default_again"]
NOT_ADOPTABLE = {"fast_math": "changes accuracy"}

# Probed one per child: accepted / unknown / bad value / deprecated.
PROBE_FLAGS = [
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_mkl_dnn=true",
    "--xla_cpu_enable_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_enable_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
    "--xla_cpu_use_acl=true",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_enable_fast_min_max=true",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_backend_optimization_level=2",
    "--xla_cpu_parallel_codegen_split_count=1",
    "--xla_cpu_max_isa=AVX2",
    "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_enable_custom_matmul_tiling=true",
    "--xla_cpu_strict_dot_conv_math=true",
    "--xla_cpu_use_xla_runtime=true",
    "--xla_cpu_enable_mlir_tiling_and_fusion=true",
    "--xla_cpu_intra_op_parallelism_threads=2",
]
QUICK_PROBE_FLAGS = [
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_use_mkl_dnn=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
]

PROBE_CODE = (
    "import jax, jax.numpy as jnp\n"
    "print(float(jax.jit(lambda a: a @ a)(jnp.ones((4, 4))).sum()))\n"
)

MLP_DIMS = [((768, 3072), "gpt2, pythia-160m"), ((576, 1536), "smollm2-135m")]
ATT = {"pairs": 100, "q": 2, "shared": 3, "heads": 12, "d_head": 64}


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# ---------------------------------------------------------------------------- child


def _shapes(quick: bool) -> list[dict]:
    rows_set = (512,) if quick else (200, 512, 1280)
    dims = MLP_DIMS[:1] if quick else MLP_DIMS
    shapes = [{"name": "square 1024^3", "kind": "mm", "m": 1024, "k": 1024, "n": 1024}]
    for (d, f), _models in dims:
        for rows in rows_set:
            shapes.append(
                {
                    "name": f"up {d}->{f} r{rows}",
                    "kind": "mm",
                    "m": rows,
                    "k": d,
                    "n": f,
                }
            )
            shapes.append(
                {
                    "name": f"down {f}->{d} r{rows}",
                    "kind": "mm",
                    "m": rows,
                    "k": f,
                    "n": d,
                }
            )
    for rows in (512,) if quick else (512, 1280):
        shapes.append(
            {
                "name": f"gated 576/1536 r{rows}",
                "kind": "gated",
                "m": rows,
                "k": 576,
                "n": 1536,
            }
        )
    shapes.append({"name": f"attn {ATT['pairs']}x{ATT['q']}q", "kind": "attn"})
    return shapes


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _inputs(shape: dict) -> dict[str, np.ndarray]:
    rng = _rng(shape["name"])

    def normal(*dims: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * scale).astype(np.float32)

    if shape["kind"] == "mm":
        m, k, n = shape["m"], shape["k"], shape["n"]
        return {"x": normal(m, k), "w": normal(k, n, scale=k**-0.5)}
    if shape["kind"] == "gated":
        m, d, f = shape["m"], shape["k"], shape["n"]
        return {
            "x": normal(m, d),
            "wg": normal(d, f, scale=d**-0.5),
            "wi": normal(d, f, scale=d**-0.5),
            "wo": normal(f, d, scale=f**-0.5),
        }
    p, q, s, h, dh = (ATT[k] for k in ("pairs", "q", "shared", "heads", "d_head"))
    return {
        "q": normal(p, h, q, dh),
        "ks": normal(h, s, dh),
        "vs": normal(h, s, dh),
        "ko": normal(p, h, q, dh),
        "vo": normal(p, h, q, dh),
    }


def _flops(shape: dict) -> float:
    if shape["kind"] == "mm":
        return 2.0 * shape["m"] * shape["k"] * shape["n"]
    if shape["kind"] == "gated":
        return 6.0 * shape["m"] * shape["k"] * shape["n"]
    p, q, s, h, dh = (ATT[k] for k in ("pairs", "q", "shared", "heads", "d_head"))
    return 4.0 * p * h * q * (s + q) * dh


def _jax_fns(jnp, jax) -> dict:
    """Each: (inputs dict) -> output; `lax.dot_general` forms take transposed weights."""
    lax = jax.lax

    def att_einsum(q, ks, vs, ko, vo):
        scale = q.shape[-1] ** -0.5
        s1 = jnp.einsum("phqd,hsd->phqs", q, ks) * scale
        s2 = jnp.einsum("phqd,phkd->phqk", q, ko) * scale
        nq = q.shape[2]
        causal = jnp.tril(jnp.ones((nq, nq), bool))
        s2 = jnp.where(causal, s2, -jnp.inf)
        pr = jax.nn.softmax(jnp.concatenate([s1, s2], -1), axis=-1)
        ns = ks.shape[1]
        return jnp.einsum("phqs,hsd->phqd", pr[..., :ns], vs) + jnp.einsum(
            "phqk,phkd->phqd", pr[..., ns:], vo
        )

    def att_matmul(q, ks, vs, ko, vo):
        scale = q.shape[-1] ** -0.5
        p = q.shape[0]
        k = jnp.concatenate([jnp.broadcast_to(ks, (p, *ks.shape)), ko], 2)
        v = jnp.concatenate([jnp.broadcast_to(vs, (p, *vs.shape)), vo], 2)
        sc = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * scale
        nq, ns = q.shape[2], ks.shape[1]
        vis = jnp.concatenate(
            [jnp.ones((nq, ns), bool), jnp.tril(jnp.ones((nq, nq), bool))], 1
        )
        pr = jax.nn.softmax(jnp.where(vis, sc, -jnp.inf), axis=-1)
        return jnp.matmul(pr, v)

    return {
        "mm": lambda x, w: x @ w,
        "mm_einsum": lambda x, w: jnp.einsum("rd,df->rf", x, w),
        "mm_pref": lambda x, w: jnp.matmul(x, w, preferred_element_type=jnp.float32),
        "mm_wT": lambda x, wt: lax.dot_general(x, wt, (((1,), (1,)), ((), ()))),
        "mm_einsum_wT": lambda x, wt: jnp.einsum("rd,fd->rf", x, wt),
        "gated": lambda x, wg, wi, wo: (jax.nn.silu(x @ wg) * (x @ wi)) @ wo,
        "attn": att_einsum,
        "attn_matmul": att_matmul,
    }


def _torch_fns(torch) -> dict:
    F = torch.nn.functional

    def att_einsum(q, ks, vs, ko, vo):
        scale = q.shape[-1] ** -0.5
        s1 = torch.einsum("phqd,hsd->phqs", q, ks) * scale
        s2 = torch.einsum("phqd,phkd->phqk", q, ko) * scale
        nq = q.shape[2]
        causal = torch.tril(torch.ones((nq, nq), dtype=torch.bool))
        s2 = s2.masked_fill(~causal, float("-inf"))
        pr = torch.softmax(torch.cat([s1, s2], -1), dim=-1)
        ns = ks.shape[1]
        return torch.einsum("phqs,hsd->phqd", pr[..., :ns], vs) + torch.einsum(
            "phqk,phkd->phqd", pr[..., ns:], vo
        )

    def att_matmul(q, ks, vs, ko, vo):
        scale = q.shape[-1] ** -0.5
        p = q.shape[0]
        k = torch.cat([ks.expand(p, *ks.shape), ko], 2)
        v = torch.cat([vs.expand(p, *vs.shape), vo], 2)
        sc = torch.matmul(q, k.transpose(-1, -2)) * scale
        nq, ns = q.shape[2], ks.shape[1]
        vis = torch.cat(
            [
                torch.ones((nq, ns), dtype=torch.bool),
                torch.tril(torch.ones((nq, nq), dtype=torch.bool)),
            ],
            1,
        )
        pr = torch.softmax(sc.masked_fill(~vis, float("-inf")), dim=-1)
        return torch.matmul(pr, v)

    return {
        "mm": lambda x, w: torch.matmul(x, w),
        "mm_linear": lambda x, wt: F.linear(x, wt),
        "gated": lambda x, wg, wi, wo: (F.silu(x @ wg) * (x @ wi)) @ wo,
        "attn": att_einsum,
        "attn_matmul": att_matmul,
    }


def _time_pair(fns: list, reps: int, target: float) -> list[float]:
    """Median seconds per call of each fn; each repeat runs every fn in turn."""
    for fn in fns:  # warm up
        fn()
        fn()
    single = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        single.append(time.perf_counter() - t0)
    n = max(1, math.ceil(target / max(max(single), 1e-7)))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(reps):
        k = r % len(fns)  # rotate, so that each fn runs in each position and after each
        order = list(range(k, len(fns))) + list(range(k))
        for i in order:
            fn = fns[i]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[i].append((time.perf_counter() - t0) / n)
            time.sleep(0.01)  # let the other runtime's spinning threads go idle
    return [statistics.median(t) for t in times]


def _bind(fn, args: list, block: bool = False):
    """A no-argument call of fn(*args) (jax: waits for the result)."""
    if block:
        return lambda: fn(*args).block_until_ready()
    return lambda: fn(*args)


def _fusions(text: str) -> str:
    kinds = re.findall(r'"kind":"(__\w+)"', text)
    kinds += re.findall(r'custom_call_target="([^"]+)"', text)
    if not kinds:
        return "xla_dot" if re.search(r"\bdot\(", text) else "none"
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return " ".join(f"{k.strip('_')}x{c}" for k, c in sorted(counts.items()))


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(a - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def child(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    if args.variant == "interleaved":
        child_interleaved(args)
        return
    expected = VARIANTS[args.variant]
    assert os.environ.get(ENV_VARIANT) == args.variant, "run through the parent"
    assert os.environ.get("XLA_FLAGS", "") == expected, "XLA_FLAGS mismatch"
    load_start = _load()
    jfns = _jax_fns(jnp, jax)
    tfns = _torch_fns(torch)
    reps, target = (3, 0.03) if args.quick else (args.repeats, 0.04)
    ref_dir = args.ref_dir
    save = args.variant == "default"
    result: dict = {
        "variant": args.variant,
        "flags": expected,
        "load_start": load_start,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "rows": [],
        "forms": [],
    }
    t_start = time.perf_counter()

    def compiled(fn, arrays):
        with jax.default_matmul_precision("highest"):
            c = jax.jit(fn).lower(*arrays).compile()
        return c

    def run_form(shape, jkey, tkey, np_in, jarr_fn=None, tarr_fn=None):
        jin = [jnp.asarray(a) for a in (jarr_fn(np_in) if jarr_fn else np_in.values())]
        tin = [
            torch.from_numpy(np.ascontiguousarray(a))
            for a in (tarr_fn(np_in) if tarr_fn else np_in.values())
        ]
        c = compiled(jfns[jkey], jin)
        tfn = tfns[tkey]
        with torch.inference_mode():
            t_out = tfn(*tin).numpy()
            j_out = np.asarray(c(*jin))
            tt, tj = _time_pair(
                [lambda: tfn(*tin), lambda: c(*jin).block_until_ready()], reps, target
            )
        flops = _flops(shape)
        return {
            "t_torch": tt,
            "t_jax": tj,
            "gf_torch": flops / tt / 1e9,
            "gf_jax": flops / tj / 1e9,
            "ratio": tt / tj,
            "maxabs": float(np.max(np.abs(j_out - t_out))),
            "fusions": _fusions(c.as_text()),
        }, j_out

    for shape in _shapes(args.quick):
        np_in = _inputs(shape)
        row, j_out = run_form(shape, shape["kind"], shape["kind"], np_in)
        row["name"] = shape["name"]
        row["flops"] = _flops(shape)
        ref_path = os.path.join(ref_dir, re.sub(r"\W+", "_", shape["name"]) + ".npy")
        if save:
            np.save(ref_path, j_out)
            row["rel_default"] = 0.0
        else:
            row["rel_default"] = _rel(j_out, np.load(ref_path))
        result["rows"].append(row)
        _dump(result, args.out)  # partial results survive a crash in a later shape
        print(
            f"  [{args.variant}] {shape['name']:<22} torch {row['gf_torch']:7.1f}"
            f"  jax {row['gf_jax']:7.1f} GFLOP/s  jax/torch {row['ratio']:.2f}"
            f"  diff {row['maxabs']:.1e}  rel {row['rel_default']:.1e}"
            f"  [{row['fusions']}]",
            file=sys.stderr,
            flush=True,
        )

    if save:  # user-code forms, default flags only

        def transposed(d: dict) -> list:
            return [d["x"], d["w"].T]

        mm_shapes = [s for s in _shapes(args.quick) if s["kind"] == "mm"]
        picks = [s for s in mm_shapes if s["name"].endswith("r512")][:2]
        picks = mm_shapes[:1] + picks
        forms = [
            ("x @ w", "mm", "mm", None, None),
            ("einsum", "mm_einsum", "mm", None, None),
            ("preferred_element_type=f32", "mm_pref", "mm", None, None),
            (
                "w stored [out,in]: dot_general / F.linear",
                "mm_wT",
                "mm_linear",
                transposed,
                transposed,
            ),
            (
                "w stored [out,in]: einsum / F.linear",
                "mm_einsum_wT",
                "mm_linear",
                transposed,
                transposed,
            ),
        ]
        for shape in picks:
            np_in = _inputs(shape)
            for label, jkey, tkey, jf, tf in forms:
                row, _ = run_form(shape, jkey, tkey, np_in, jf, tf)
                row.update(name=shape["name"], form=label)
                result["forms"].append(row)
        att = [s for s in _shapes(args.quick) if s["kind"] == "attn"][0]
        for label, key in (
            ("einsum", "attn"),
            ("broadcast cache + matmul", "attn_matmul"),
        ):
            row, _ = run_form(att, key, key, _inputs(att))
            row.update(name=att["name"], form=label)
            result["forms"].append(row)
        # tiny ops: torch's thread team stalls when the machine is oversubscribed
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        row, _ = run_form(att, "attn", "attn", _inputs(att))
        torch.set_num_threads(threads)
        row.update(name=att["name"], form="einsum, torch.set_num_threads(1)")
        result["forms"].append(row)
    result["load_end"] = _load()
    result["seconds"] = time.perf_counter() - t_start
    result["complete"] = True
    _dump(result, args.out)


def child_interleaved(args: argparse.Namespace) -> None:
    """Default flags; every INTERLEAVED option set compiled next to the default."""
    import jax
    import jax.numpy as jnp
    import torch

    assert os.environ.get(ENV_VARIANT) == "interleaved", "run through the parent"
    assert not os.environ.get("XLA_FLAGS"), "XLA_FLAGS must be empty here"
    names = QUICK_INTERLEAVED if args.quick else list(INTERLEAVED)
    reps, target = (3, 0.02) if args.quick else (args.repeats, 0.03)
    jfns = _jax_fns(jnp, jax)
    tfns = _torch_fns(torch)
    result: dict = {"variant": "interleaved", "load_start": _load(), "rows": []}
    result["variants"] = names
    for shape in _shapes(args.quick):
        np_in = _inputs(shape)
        jin = [jnp.asarray(a) for a in np_in.values()]
        tin = [torch.from_numpy(a) for a in np_in.values()]
        use = [n for n in names if n != "onednn" or shape["kind"] == "mm"]
        fn = jax.jit(jfns[shape["kind"]])
        comp = {}
        with jax.default_matmul_precision("highest"):
            comp["default"] = fn.lower(*jin).compile()
            for n in use:
                comp[n] = fn.lower(*jin).compile(compiler_options=INTERLEAVED[n])
        tfn = tfns[shape["kind"]]
        with torch.inference_mode():
            ref = np.asarray(comp["default"](*jin))
            t_out = tfn(*tin).numpy()
            calls = [_bind(tfn, tin)] + [_bind(c, jin, True) for c in comp.values()]
            times = _time_pair(calls, reps, target)
        flops = _flops(shape)
        row = {
            "name": shape["name"],
            "gf_torch": flops / times[0] / 1e9,
            "maxabs_torch": float(np.max(np.abs(ref - t_out))),
            "gf": {},
            "rel_default": {},
            "fusions": {},
        }
        for k, t in zip(comp, times[1:], strict=True):
            row["gf"][k] = flops / t / 1e9
            row["rel_default"][k] = _rel(np.asarray(comp[k](*jin)), ref)
            row["fusions"][k] = _fusions(comp[k].as_text())
        result["rows"].append(row)
        cells = "  ".join(f"{k} {v:.1f}" for k, v in row["gf"].items())
        print(
            f"  [interleaved] {shape['name']:<22} torch {row['gf_torch']:.1f}  {cells}",
            file=sys.stderr,
            flush=True,
        )
        _dump(result, args.out)
    result["load_end"] = _load()
    result["complete"] = True
    _dump(result, args.out)


def _dump(result: dict, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------- parent


def probe(flag: str) -> tuple[str, str]:
    env = dict(os.environ, XLA_FLAGS=flag)
    env.pop(ENV_VARIANT, None)
    p = subprocess.run(
        [sys.executable, "-c", PROBE_CODE], env=env, capture_output=True, text=True
    )
    err = p.stderr
    if "Unknown flag" in err:
        return "unknown", ""
    if "Couldn't interpret value" in err:
        return "bad value", ""
    if p.returncode != 0:
        last = err.strip().splitlines()[-1:] or [""]
        return f"failed rc={p.returncode}", last[0][:120]
    note = ""
    for pat in ("no longer supported", "Deprecated", "deprecated", "Unknown CPU ISA"):
        m = [ln for ln in err.splitlines() if pat in ln]
        if m:
            note = m[0].split("] ", 1)[-1][:120]
            break
    return "accepted", note


def run_variant(name: str, ref_dir: str, args: argparse.Namespace) -> dict | None:
    """Run one variant's child; a crash keeps the shapes done before it."""
    env = dict(os.environ, XLA_FLAGS=VARIANTS.get(name, ""))
    env[ENV_VARIANT] = name
    out = os.path.join(ref_dir, f"{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", name]
    cmd += ["--out", out, "--ref-dir", ref_dir, "--repeats", str(args.repeats)]
    if args.quick:
        cmd.append("--quick")
    flags = VARIANTS.get(name, "")
    print(f"variant {name}: XLA_FLAGS={flags!r} (load {_load()})", flush=True)
    tail: list[str] = []
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) as p:
        assert p.stderr is not None
        for line in p.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail = (tail + [line.rstrip()])[-5:]
    if not os.path.exists(out):
        print(f"variant {name} failed (rc {p.returncode}) before any shape", flush=True)
        return None
    with open(out) as f:
        res = json.load(f)
    if not res.get("complete"):
        done = {r["name"] for r in res["rows"]}
        failed_at = next(
            s["name"] for s in _shapes(args.quick) if s["name"] not in done
        )
        msg = next((ln for ln in reversed(tail) if ln and "[" + name not in ln), "")
        res["crash"] = f"rc {p.returncode} at {failed_at}: {msg[:80]}"
        res["load_end"] = _load()
        print(f"variant {name} crashed: {res['crash']}", flush=True)
    return res


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _emitted(rows: list[dict]) -> str:
    kinds = {re.sub(r"x\d+$", "", k) for r in rows for k in r["fusions"].split()}
    return ", ".join(sorted(kinds))


def report(results: dict[str, dict], probes: list, meta: dict) -> None:
    print()
    print(f"## XLA:CPU vs PyTorch matmul: {meta['date']}")
    print()
    print(
        f"Command: `{meta['command']}`. {meta['cpu']}, {os.cpu_count()} CPUs; "
        f"jax {meta['jax']}, torch {meta['torch']} ({meta['threads']} threads). "
        f"1-minute load {meta['load_start']} -> {meta['load_end']}; "
        f"{meta['seconds']:.0f} s."
    )
    if probes:
        print()
        print("Flag probes (each in its own process):")
        print()
        rows = [[f"`{f}`", r, n] for f, r, n in probes]
        print(_table(["XLA_FLAGS", "result", "note"], rows))
    default = results["default"]
    print()
    print(f"Default flags (load {default['load_start']} -> {default['load_end']}):")
    print()
    rows = [
        [
            r["name"],
            f"{r['gf_torch']:.1f}",
            f"{r['gf_jax']:.1f}",
            f"{r['ratio']:.2f}",
            f"{r['maxabs']:.1e}",
            r["fusions"],
        ]
        for r in default["rows"]
    ]
    mm = [r["ratio"] for r in default["rows"] if not r["name"].startswith("attn")]
    rows.append(["geomean (matmuls, gated)", "", "", f"{_geomean(mm):.2f}", "", ""])
    head = ["shape", "torch GFLOP/s", "jax GFLOP/s", "jax/torch", "max abs diff"]
    print(_table(head + ["XLA emitted"], rows))
    if len(results) > 1:
        print()
        print(
            "Variants. `vs default`: geometric mean over the matmul and gated-MLP shapes "
            "(attention left out: overhead-bound) of the variant's jax/torch over the "
            "default's (>1: faster; torch measured in the same child cancels load drift); "
            "`raw`: the same of jax GFLOP/s alone; `default_again` (same flags as "
            "default) gives the noise floor."
        )
        print()
        base = {r["name"]: r for r in default["rows"]}
        rows = []
        for name, res in results.items():
            mm = [r for r in res["rows"] if not r["name"].startswith("attn")]
            rel = [r["ratio"] / base[r["name"]]["ratio"] for r in mm]
            raw = [r["gf_jax"] / base[r["name"]]["gf_jax"] for r in mm]
            flags = f"`{res['flags']}`" if res["flags"] else "(none)"
            if name in NOT_ADOPTABLE:
                flags += f" ({NOT_ADOPTABLE[name]})"
            rows.append(
                [
                    name,
                    flags,
                    _emitted(res["rows"]),
                    f"{_geomean(rel):.2f}" if rel else "-",
                    f"{min(rel):.2f}-{max(rel):.2f}" if rel else "-",
                    f"{_geomean(raw):.2f}" if raw else "-",
                    f"{max(r['rel_default'] for r in res['rows']):.1e}",
                    f"{max(r['maxabs'] for r in res['rows']):.1e}",
                    f"{res['load_start']} -> {res['load_end']}",
                    res.get("crash", ""),
                ]
            )
        head = ["variant", "XLA_FLAGS", "XLA emitted", "vs default", "range", "raw"]
        head += ["max rel diff vs default", "max abs diff vs torch", "load", "crash"]
        print(_table(head, rows))
        print()
        print("jax/torch per shape and variant:")
        print()
        names = list(results)
        rows = []
        for r in default["rows"]:
            cells = [r["name"]]
            for n in names:
                got = [x for x in results[n]["rows"] if x["name"] == r["name"]]
                cells.append(f"{got[0]['ratio']:.2f}" if got else "-")
            rows.append(cells)
        cells = ["geomean (matmuls, gated)"]
        for n in names:
            mm = [
                r["ratio"] for r in results[n]["rows"] if not r["name"].startswith("at")
            ]
            cells.append(f"{_geomean(mm):.2f}")
        rows.append(cells)
        print(_table(["shape"] + names, rows))
    if default["forms"]:
        print()
        print(
            "User-code forms, default flags (torch: `torch.matmul`, or `F.linear` "
            "where the weight is stored [out, in]; attention: the same form in both):"
        )
        print()
        rows = [
            [
                r["name"],
                r["form"],
                f"{r['gf_torch']:.1f}",
                f"{r['gf_jax']:.1f}",
                f"{r['ratio']:.2f}",
                f"{r['maxabs']:.1e}",
                r["fusions"],
            ]
            for r in default["forms"]
        ]
        head = ["shape", "form", "torch GFLOP/s", "jax GFLOP/s", "jax/torch"]
        print(_table(head + ["max abs diff", "XLA emitted"], rows))


def report_interleaved(res: dict) -> None:
    print()
    print(
        "Per-compilation options, one process, default flags, timed interleaved with "
        f"the default executable and torch (load {res['load_start']} -> "
        f"{res.get('load_end', '?')}): jax GFLOP/s, and in brackets the speed relative "
        "to the default executable (>1: faster) and max rel diff to its output. "
        + (f"Crashed: {res['crash']}." if res.get("crash") else "")
    )
    print()
    names = ["default"] + res["variants"]
    rows = []
    rel: dict[str, list[float]] = {n: [] for n in names}
    for r in res["rows"]:
        base = r["gf"]["default"]
        cells = [r["name"], f"{r['gf_torch']:.1f}", f"{r['maxabs_torch']:.1e}"]
        for n in names:
            if n not in r["gf"]:
                cells.append("-")
                continue
            x = r["gf"][n] / base
            if not r["name"].startswith("attn"):
                rel[n].append(x)
            cells.append(
                f"{r['gf'][n]:.1f}"
                + ("" if n == "default" else f" ({x:.2f}, {r['rel_default'][n]:.0e})")
            )
        rows.append(cells)
    rows.append(
        ["geomean (matmuls, gated)", "", ""]
        + [f"{_geomean(rel[n]):.2f}" if rel[n] else "-" for n in names]
    )
    head = ["shape", "torch GFLOP/s", "jax-torch max abs diff"]
    print(_table(head + names, rows))
    print()
    for n in res["variants"]:
        emitted = sorted(
            {
                re.sub(r"x\d+$", "", k)
                for r in res["rows"]
                if n in r["fusions"]
                for k in r["fusions"][n].split()
            }
        )
        print(
            f"* `{n}`: `compiler_options={INTERLEAVED[n]}`; emitted {', '.join(emitted)}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and variants")
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="variants to run (default first is added if missing)",
    )
    ap.add_argument("--no-probe", action="store_true", help="skip the flag probes")
    ap.add_argument(
        "--no-interleaved",
        action="store_true",
        help="skip the in-process compiler_options comparison",
    )
    ap.add_argument("--repeats", type=int, default=5, help="repeats per framework")
    ap.add_argument(
        "--variant", choices=[*VARIANTS, "interleaved"], help=argparse.SUPPRESS
    )
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--ref-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        child(args)
        return

    t0 = time.perf_counter()
    load_start = _load()
    print(f"load average (1 min) at start: {load_start}", flush=True)
    names = args.variants or (QUICK_VARIANTS if args.quick else list(VARIANTS))
    names = ["default"] + [n for n in names if n != "default"]
    probes = []
    if not args.no_probe:
        for flag in QUICK_PROBE_FLAGS if args.quick else PROBE_FLAGS:
            res, note = probe(flag)
            print(f"probe {flag}: {res} {note}", flush=True)
            probes.append((flag, res, note))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_xla_cpu_") as ref_dir:
        for name in names:
            res = run_variant(name, ref_dir, args)
            if res is None and name == "default":
                sys.exit("default variant failed")
            if res is not None:
                results[name] = res
        inter = (
            None if args.no_interleaved else run_variant("interleaved", ref_dir, args)
        )
    load_end = _load()
    print(f"load average (1 min) at end: {load_end}", flush=True)
    default = results["default"]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
    except (OSError, StopIteration):
        pass
    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": ".venv/bin/python benchmarks/bench_xla_cpu.py "
        + " ".join(sys.argv[1:]),
        "cpu": cpu,
        "jax": default["jax"],
        "torch": default["torch"],
        "threads": default["torch_threads"],
        "load_start": load_start,
        "load_end": load_end,
        "seconds": time.perf_counter() - t0,
    }
    report(results, probes, meta)
    if inter is not None:
        report_interleaved(inter)


if __name__ == "__main__":
    main()

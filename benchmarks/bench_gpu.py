"""W1-W3 of bench_tl.py on one GPU: jaxinterp's kernels against the strongest PyTorch
variant of each workload, both frameworks on the same device.

    python benchmarks/bench_gpu.py --models gpt2 pythia-160m --workloads W1 W2 W3
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --size 20 --quick  # smoke test

The workloads, weights, batch sizes and output checks are bench_tl.py's own functions
(`w1_grid`, `w2_ablation`, `w3_patching`, `build`), run with their torch tensors on the
chosen device (see `on_device`). Per workload, the table compares:

* W1 operand grid (`mlp.hook_post` of every layer at the last position, 100 x 100 grid):
  jax `operand_grid` (batch 512) vs HF forward pre-hooks on the MLP output projections,
  no `lm_head`, batch 256.
* W2 mean-ablation sweep (32 sets of 64 neurons x 2,000 prompts, target logit + argmax):
  jax `ablation_sweep` vs TransformerLens with the residual at the first edited layer
  computed once per prompt batch, `start_at_layer` there per set, and only the last
  position through `ln_final` and the unembedding.
* W3 head activation patching (`attn.hook_z`, every layer, position and head; 24
  clean/corrupt pairs; logit difference): jax `activation_patching` vs TransformerLens
  with 200 (cell, pair) rows per forward and the last position unembedded.

bench_tl's weaker PyTorch variants run too (their rows are printed as they finish). On a
GPU every PyTorch variant runs on all items; on the CPU on bench_tl's subsets, and times
are extrapolated per item. `--quick`: tiny sizes that only check every path runs.

Needs jax, torch, transformers and TransformerLens; `--device auto` (the default) takes
CUDA when torch and jax both see a GPU. Same random weights everywhere (an HF model from
its config, saved and converted); every output is compared and the run fails before the
tables if any differs from ours by more than 1e-4. JAX runs at float32 with "highest"
matmul precision, torch with TF32 off. Compile time is excluded (bench_tl compiles on a
smaller call of the same batch shapes before the timed one); each PyTorch variant runs
once untimed first. Both times include copying the result to the host.
"""

import argparse
import contextlib
import functools
import os
import platform
import sys
import time
from unittest import mock

import jax
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_threads = torch.get_num_threads()
import bench_tl  # noqa: E402  (sets 2 torch threads for its 2-core machine)

torch.set_num_threads(_threads)
jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
torch.set_grad_enabled(False)

TOL = 1e-4
STRONGEST = {  # bench_tl's label of the strongest PyTorch variant of each workload
    "W1": "HF forward pre-hooks, no lm_head",
    "W2": "TL start_at_layer + last-pos unembed",
    "W3": "TL 200 rows per forward + last-pos unembed",
}
WHAT = {
    "W1": "operand grid, items = prompts",
    "W2": "mean-ablation sweep, items = set x prompt",
    "W3": "head activation patching, items = cell x pair",
}
QUICK = dict(grid=20, sets=4, prompts=64, pairs=8, tl_grid=100, tl_w2=128, tl_cells=24)


# ----------------------------------------------------------------------------- device


class _TorchOn:
    """`torch` as bench_tl's workload functions see it inside `on_device`: tensors made
    from numpy or by the factories they call are on `device`; the rest is torch."""

    def __init__(self, device: str):
        self._device = device
        for f in ("arange", "empty", "ones", "tensor", "zeros"):
            setattr(self, f, functools.partial(getattr(torch, f), device=device))

    def __getattr__(self, name):
        return getattr(torch, name)

    def from_numpy(self, a):
        return torch.from_numpy(a).to(self._device)


def _timed(device: str):
    """bench_tl's `timed` for `device`: waits for the device, counts the copy of the
    result to the host, and times a PyTorch call's second run (the first warms up)."""

    def once(fn, args, kw):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args, **kw)
        out = out.cpu() if isinstance(out, torch.Tensor) else jax.device_get(out)
        return out, time.perf_counter() - t

    def timed(fn, *args, **kw):
        out, t = once(fn, args, kw)
        if isinstance(out, torch.Tensor):
            out, t = once(fn, args, kw)
        return out, t

    return timed


@contextlib.contextmanager
def on_device(device: str):
    """Runs bench_tl's workload functions with their PyTorch side on `device`."""
    with (
        mock.patch.object(bench_tl, "torch", _TorchOn(device)),
        mock.patch.object(bench_tl, "timed", _timed(device)),
    ):
        yield


def pick_device(choice: str) -> str:
    """The device of both frameworks: "cuda", or "cpu" (then jax stays off any GPU)."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        jax.config.update("jax_platforms", "cpu")  # before jax's first computation
        return "cpu"
    gpu = torch.cuda.is_available() and jax.default_backend() == "gpu"
    if choice == "cuda" and not gpu:
        raise SystemExit("--device cuda needs a CUDA torch and a CUDA jax")
    return "cuda" if gpu else "cpu"  # auto: a CPU-only jax computes on the CPU


def environment(device: str) -> None:
    from importlib.metadata import version

    gpu = torch.cuda.get_device_name() if device == "cuda" else "-"
    print(f"device {device}; jax {jax.__version__} {jax.devices()}; torch "
          f"{torch.__version__} (CUDA {torch.version.cuda}, {gpu}); transformers "
          f"{version('transformers')}; TransformerLens "
          f"{version('transformer_lens')}")  # fmt: skip
    print(f"jax matmul precision {jax.config.jax_default_matmul_precision}; torch TF32 "
          f"{torch.backends.cuda.matmul.allow_tf32}, {torch.get_num_threads()} threads; "
          f"{platform.platform()}, {os.cpu_count()} CPUs")  # fmt: skip


# ----------------------------------------------------------------------------- tables


def table(rows: list[dict], workload: str) -> None:
    """One line per model: the jax row against the strongest PyTorch row."""
    print(f"\n{workload} ({WHAT[workload]}): jax vs {STRONGEST[workload]}")
    print("| model | items | jax s | torch s | ratio | max abs diff | note |")
    print("|---|---|---|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if (r["model"], r["workload"]) == (model, workload)]
        if not mine:
            continue
        j = next(r for r in mine if r["variant"].startswith("jax"))
        t = next(r for r in mine if r["variant"] == STRONGEST[workload])
        t_torch = t["seconds"] * j["items"] / t["items"]  # extrapolated on a subset
        note = t["note"] + ("; torch s extrapolated" if t["items"] < j["items"] else "")
        print(f"| {model} | {j['items']} | {j['seconds']:.3f} | {t_torch:.3f} | "
              f"{t_torch / j['seconds']:.2f}x | {t['diff']:.1e} | {note} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["gpt2", "pythia-160m"])
    ap.add_argument("--workloads", nargs="*", default=["W1", "W2", "W3"],
                    choices=["W1", "W2", "W3"])  # fmt: skip
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--size", type=int, default=None, help="W1 grid side (100)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--torch-items", choices=["all", "subset"], default=None,
                    help="PyTorch on all items (default on a GPU) or on bench_tl's "
                    "subsets (default on the CPU)")  # fmt: skip
    args = ap.parse_args()
    device = pick_device(args.device)
    sz = dict(QUICK if args.quick else bench_tl.SIZES[False])
    sz["grid"] = args.size or sz["grid"]
    if (args.torch_items or ("all" if device == "cuda" else "subset")) == "all":
        sz.update(tl_grid=sz["grid"] ** 2, tl_w2=sz["sets"] * sz["prompts"],
                  tl_cells=10**9)  # fmt: skip
    environment(device)
    print({k: sz[k] for k in ("grid", "sets", "prompts", "pairs", "tl_grid", "tl_w2",
                              "tl_cells")})  # fmt: skip
    todo = set(args.workloads)
    for name in args.models:
        t0 = time.perf_counter()
        model, tl, hf = bench_tl.build(name)  # torch on the CPU; logits compared
        hf.to(device)
        tl.to(device, print_details=False)
        with on_device(device):
            if "W1" in todo:
                bench_tl.w1_grid(name, model, tl, hf, sz["grid"], 0, sz["tl_grid"])
            if "W2" in todo:
                bench_tl.w2_ablation(
                    name, model, tl, sz["sets"], sz["prompts"], sz["tl_w2"]
                )
            if "W3" in todo:
                bench_tl.w3_patching(name, model, tl, sz["pairs"], sz["tl_cells"])
        print(f"[{name}] done in {time.perf_counter() - t0:.0f}s")
        del model, tl, hf
        if device == "cuda":
            torch.cuda.empty_cache()

    rows = bench_tl.ROWS
    bad = [r for r in rows if r["diff"] is not None and not r["diff"] <= TOL]
    for r in bad:
        print(f"MISMATCH {r['model']} {r['workload']} {r['variant']}: max abs diff "
              f"{r['diff']:.1e} > {TOL:.0e}")  # fmt: skip
    if bad:
        raise SystemExit(1)
    print(f"\nEvery PyTorch output agrees with jax within {TOL:.0e}. ratio = torch s "
          "/ jax s for the same items (higher: jax faster).")  # fmt: skip
    for w in ("W1", "W2", "W3"):
        if w in todo:
            table(rows, w)


if __name__ == "__main__":
    main()

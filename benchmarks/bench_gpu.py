"""W1 (operand grid, MLP post at the last position, all layers) on one GPU: jaxinterp's
`operand_grid` against HF transformers with forward pre-hooks, both on the GPU.

    python benchmarks/bench_gpu.py [--size 100] [--models gpt2 pythia-160m smollm2-135m]

Needs a CUDA jax and a CUDA torch (no TransformerLens). Same random weights for both (an HF
model from its config, saved and converted); outputs are compared before the table. JAX
runs at float32 with "highest" matmul precision, torch with TF32 off, so both compute full
float32 products. Compile time is excluded (each side runs the whole grid once before the
timed run); both times include copying the `[a * b, layer, d_mlp]` result to the host.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_tl import HF_POST, converted  # noqa: E402

from jaxinterp.kernels import grids  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.set_grad_enabled(False)


def hf_grid(name, hf, prompts, n_layers, d_mlp, batch):
    out = torch.empty(len(prompts), n_layers, d_mlp, device="cuda")
    state = {}

    def pre_hook(l):
        def fn(mod, args):
            s = state["s"]
            out[s : s + args[0].shape[0], l].copy_(args[0][:, -1])

        return fn

    handles = [
        hf.get_submodule(HF_POST[name].format(l)).register_forward_pre_hook(pre_hook(l))
        for l in range(n_layers)
    ]
    try:
        for s in range(0, len(prompts), batch):
            state["s"] = s
            hf.base_model(prompts[s : s + batch])
    finally:
        for h in handles:
            h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument(
        "--models", nargs="*", default=["gpt2", "pythia-160m", "smollm2-135m"]
    )
    args = ap.parse_args()
    print(f"jax {jax.__version__} {jax.devices()}; torch {torch.__version__} "
          f"{torch.cuda.get_device_name()}")  # fmt: skip
    print("| model | variant | pairs/s | speedup | max abs diff |")
    print("|---|---|---|---|---|")
    for name in args.models:
        model, hf = converted(name)
        hf = hf.cuda()
        cfg = model.cfg
        rng = np.random.default_rng(1)
        a, b = (rng.integers(10, cfg.d_vocab, args.size) for _ in range(2))
        kw = dict(prefix=[1], middle=[2], suffix=[3], batch_size=args.batch,
                  progress_bar=False)  # fmt: skip
        grids.operand_grid(
            model, a, b, **kw
        )  # compiles (same shapes as the timed call)
        t = time.perf_counter()
        ours = grids.operand_grid(model, a, b, **kw)
        t_jax = time.perf_counter() - t
        prompts = torch.tensor(
            [[1, x, 2, y, 3] for x in a for y in b], dtype=torch.long, device="cuda"
        )
        hf_grid(name, hf, prompts, cfg.n_layers, cfg.d_mlp, 512)
        torch.cuda.synchronize()
        t = time.perf_counter()
        theirs = hf_grid(name, hf, prompts, cfg.n_layers, cfg.d_mlp, 512).cpu()
        t_hf = time.perf_counter() - t
        diff = np.abs(ours.reshape(theirs.shape) - theirs.numpy()).max()
        n = args.size**2
        print(f"| {name} | jax operand_grid | {n / t_jax:.0f} | {t_hf / t_jax:.1f}x | "
              f"{diff:.1e} |")  # fmt: skip
        print(f"| {name} | HF forward pre-hooks (batch 512) | {n / t_hf:.0f} | | |")
        del model, hf
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

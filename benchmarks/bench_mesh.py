"""Scaling of sharded sweeps over a mesh: one workload at several mesh shapes, side by side.

    .venv/bin/python benchmarks/bench_mesh.py [--simulate 8] [--prompts 256]

Runs an ablation sweep (32 sets of 64 neurons, mean of the target logit, GPT-2-small
shapes, random weights) and an operand grid (48 x 48 pairs, `mlp.hook_post` of every layer,
reduced to its mean on the devices) on meshes `data x model` of 1 x 1, 2 x 1, 4 x 1, 8 x 1
and 4 x 2 (those that fit the devices), and prints the time of each against 1 x 1 and the
largest difference from it. `--simulate N` (the default on a machine without accelerators)
splits the host CPU into N XLA devices (`--xla_force_host_platform_device_count`), which
share the same cores: there the table shows the cost of partitioning, not a speed-up. On a
GPU or TPU host (`--simulate 0`) the devices are real.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--simulate",
        type=int,
        default=8,
        metavar="N",
        help="split the CPU into N simulated devices (0: use the real devices) (8)",
    )
    ap.add_argument("--prompts", type=int, default=256, help="ablation prompts (256)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (3)")
    args = ap.parse_args()
    if args.simulate:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.simulate}"
        )
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import numpy as np

    from jaxinterp import init_transformer, sharding
    from jaxinterp.config import TransformerConfig
    from jaxinterp.kernels import ablation_sweep, metrics, operand_grid

    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = TransformerConfig(
        d_model=768,
        n_layers=12,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        norm="ln",
        eps=1e-5,
        positional="learned",
        rotary_dim=0,
        gated_mlp=False,
    )
    model = init_transformer(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, cfg.d_vocab, (args.prompts, 5))
    answers = rng.integers(10, cfg.d_vocab, args.prompts)
    masks = np.zeros((32, cfg.n_layers, cfg.d_mlp), bool)
    for s in range(32):
        masks[s, rng.integers(0, cfg.n_layers, 64), rng.integers(0, cfg.d_mlp, 64)] = (
            True
        )
    a_tok, b_tok = rng.integers(10, cfg.d_vocab, (2, 48))

    def ablation(m, mesh):
        return ablation_sweep(
            m,
            tokens,
            masks,
            metric=metrics.target_logit,
            metric_args=(answers,),
            batch_size=32,
            progress_bar=False,
            mesh=mesh,
        )

    def grid(m, mesh):
        return operand_grid(
            m,
            a_tok,
            b_tok,
            prefix=[1],
            middle=[2],
            suffix=[3],
            reduce="mean",
            batch_size=384,
            progress_bar=False,
            mesh=mesh,
        )

    n = len(jax.devices())
    shapes = [(d, m) for d, m in [(1, 1), (2, 1), (4, 1), (8, 1), (4, 2)] if d * m <= n]
    print(
        f"{n} {jax.devices()[0].platform} devices"
        f"{' (simulated on the host CPU)' if args.simulate else ''}; "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}"
    )
    print("| workload | mesh (data x model) | s | vs 1 x 1 | max rel diff vs 1 x 1 |")
    print("|---|---|---|---|---|")
    for name, fn in [("ablation_sweep", ablation), ("operand_grid mean", grid)]:
        base = None
        for data, axis in shapes:
            mesh = None if data * axis == 1 else sharding.make_mesh(data, axis)
            m = model if mesh is None else sharding.shard_model(model, mesh)
            out = np.asarray(sharding.gather(fn(m, mesh)))  # compiles
            best = np.inf
            for _ in range(args.repeat):
                start = time.perf_counter()
                np.asarray(sharding.gather(fn(m, mesh)))
                best = min(best, time.perf_counter() - start)
            if base is None:
                base, ref = best, out
            diff = float(np.abs(out - ref).max() / max(1e-30, np.abs(ref).max()))
            print(
                f"| {name} | {data} x {axis} | {best:.2f} | {base / best:.2f}x "
                f"| {diff:.1e} |"
            )
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

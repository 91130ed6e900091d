"""Sweeps on a mesh of 8 simulated CPU devices (`--xla_force_host_platform_device_count`)
equal the single-device results: prompts split over `data`, weights split over `model`
(`sharding.shard_model`, or loaded straight onto the mesh); so do two real processes joined
by `jax.distributed` on localhost, and a killed two-process grid resumes bitwise. The
device count is fixed when JAX starts, so these run in fresh interpreters."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxinterp import init_transformer, sharding

from .helpers import tiny_config

SCRIPT = textwrap.dedent(
    """
    import os, jax, numpy as np
    from jaxinterp import init_transformer, run, sharding
    from jaxinterp.kernels import (ablation_sweep, activation_patching, attribution_patching,
        head_detector, mean_cache, metrics, operand_grid, patch_cells, path_patching)
    from tests.helpers import tiny_config
    from tests.test_kernels import random_model

    assert len(jax.devices()) == 8
    cfg = tiny_config(d_vocab=98)
    model = random_model(cfg)
    mesh = sharding.make_mesh(data=4, model=2)
    sharded = sharding.shard_model(model, mesh)
    spec = sharded.blocks.mlp.W_in.sharding.spec
    assert spec == jax.sharding.PartitionSpec(None, None, "model"), spec
    rng = np.random.default_rng(0)
    n, n_pos = 10, 6
    clean = rng.integers(0, cfg.d_vocab, (n, n_pos))
    corrupt = rng.integers(0, cfg.d_vocab, (n, n_pos))
    answer, wrong = rng.integers(0, cfg.d_vocab, (2, n))
    mask = np.ones((n, n_pos), np.int32)
    mask[3, :2] = 0
    heads = np.zeros((5, cfg.n_layers, cfg.n_heads), bool)
    heads[np.arange(5), np.arange(5) % 2, np.arange(5) % 4] = True
    pair = dict(metric=metrics.logit_diff, metric_args=(answer, wrong), progress_bar=False)
    cases = {
        "run": lambda m, mesh: run(m, clean[:8], attention_mask=mask[:8], mesh=mesh)[0],
        "ablation": lambda m, mesh: ablation_sweep(
            m, clean, heads, tap="attn.hook_z", positions="all", attention_mask=mask,
            batch_size=4, mesh=mesh, **pair),
        "patching": lambda m, mesh: activation_patching(
            m, clean, corrupt, batch_size=4, mesh=mesh, **pair),
        "cells": lambda m, mesh: patch_cells(
            m, clean, corrupt, np.array([[0, 2, 5], [1, 4, 7], [1, 5, 0]]),
            batch_size=4, mesh=mesh, **pair),
        "path": lambda m, mesh: path_patching(
            m, clean, corrupt, heads[:3], heads[3, :, :] | heads[4], batch_size=4,
            mesh=mesh, **pair),
        "attribution": lambda m, mesh: attribution_patching(
            m, clean, corrupt, taps=("mlp.hook_post",), batch_size=4, mesh=mesh,
            **pair)["mlp.hook_post"],
        "means": lambda m, mesh: mean_cache(
            m, clean, ("attn.hook_z",), attention_mask=mask, batch_size=4, mesh=mesh,
            progress_bar=False)["attn.hook_z"],
        "grid": lambda m, mesh: operand_grid(
            m, np.arange(5), np.arange(7), prefix=[1], middle=[2], suffix=[3],
            batch_size=6, mesh=mesh, progress_bar=False),
        "grid zarr": lambda m, mesh: operand_grid(
            m, np.arange(5), np.arange(7), prefix=[1], middle=[2], suffix=[3],
            batch_size=6, mesh=mesh, progress_bar=False,
            out=os.path.join(os.environ["OUT"], f"grid-{mesh is None}.zarr")),
        "grid mean": lambda m, mesh: operand_grid(
            m, np.arange(5), np.arange(7), prefix=[1], middle=[2], suffix=[3],
            reduce="mean", batch_size=6, mesh=mesh, progress_bar=False),
        "heads": lambda m, mesh: head_detector(
            m, clean, ("previous_token",), attention_mask=mask, batch_size=4, mesh=mesh,
            progress_bar=False)["previous_token"],
    }
    # two checkpoints stacked on a leading axis, sharded like one model
    other = jax.tree.map(lambda a: a * 0.9, model)
    stack = jax.tree.map(lambda *a: jax.numpy.stack(a), model, other)
    cases["stacked ablation"] = lambda m, mesh: ablation_sweep(
        stack if mesh is None else sharding.shard_model(stack, mesh), clean, heads,
        tap="attn.hook_z", positions="all", attention_mask=mask, batch_size=4,
        stacked=True, mesh=mesh, **pair)
    # loading straight onto the mesh: a store, and a conversion from HF tensors
    from jaxinterp import store
    from converters.hf import from_hf_dict, to_hf_dict
    from converters.loading import load
    llama = init_transformer(tiny_config(d_vocab=98, d_mlp=96, n_heads=4), jax.random.key(1))
    store.save_model(llama, os.path.join(os.environ["OUT"], "store"))
    loaded = {
        "store": load(os.path.join(os.environ["OUT"], "store"), mesh=mesh),
        "hf": from_hf_dict(*to_hf_dict(llama, "LlamaForCausalLM"), mesh=mesh),
    }
    for how, got in loaded.items():
        for a, b, want in zip(jax.tree.leaves(got), jax.tree.leaves(llama),
                              jax.tree.leaves(sharding.model_shardings(llama, mesh))):
            assert a.sharding.is_equivalent_to(want, a.ndim), (how, a.sharding, want)
            assert np.array_equal(np.asarray(a), np.asarray(b)), how
        assert got.blocks.mlp.W_in.addressable_shards[0].data.shape[-1] == 48
        print("load", how, "ok", 0.0)
    for name, f in cases.items():
        want = np.asarray(f(model, None))
        got = f(sharded, mesh)
        if name == "ablation":  # results stay split over the data axis
            assert len(got.sharding.device_set) == 8, got.sharding
        got = np.asarray(got)
        scale = max(1.0, float(np.abs(want).max()))
        err = float(np.abs(got - want).max()) / scale
        assert got.shape == want.shape and err <= 1e-5, (name, err)
        print(name, "ok", err)
    """
)


def test_sweeps_on_a_mesh_equal_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["OUT"] = str(tmp_path)
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok ") == 14, done.stdout


def test_model_specs_split_heads_neurons_and_vocabulary():
    cfg = tiny_config(d_vocab=98, n_kv_heads=1)
    model = init_transformer(cfg, jax.random.key(0))
    mesh = sharding.make_mesh(data=1, model=1)
    assert all(s == P() for s in jax.tree.leaves(sharding.model_specs(model, mesh)))

    specs = sharding.model_specs(model, AbstractMesh((1, 2), ("data", "model")))
    assert specs.blocks.attn.W_Q == P(None, "model", None, None)
    assert specs.blocks.attn.W_K == P()  # one kv head: not divisible, replicated
    assert specs.blocks.mlp.W_out == P(None, "model", None)
    assert specs.embed.W_E == P("model", None)
    assert specs.unembed.W_U == P(None, "model")
    assert specs.ln_final.w == P()


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.make_mesh(data=4, model=1, devices=jax.devices()[:1])
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="does not split"):
        sharding.shard_rows(np.zeros((3, 2)), AbstractMesh((2, 1), ("data", "model")))
    assert sharding.rows_multiple(5, None) == 5
    assert sharding.rows_multiple(5, AbstractMesh((4, 1), ("data", "model"))) == 8
    assert mesh.shape["data"] == len(jax.devices())


WORKER = textwrap.dedent(
    """
    import os, numpy as np
    from jaxinterp import sharding
    sharding.initialize()  # from JAXINTERP_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID
    import jax
    from tests.test_sharding import two_process_sweeps
    assert jax.process_count() == 2 and len(jax.devices()) == 2
    mesh = sharding.make_mesh(data=2)
    out = {k: sharding.gather(v) for k, v in two_process_sweeps(mesh).items()}
    if jax.process_index() == 0:
        np.savez(os.environ["OUT"] + "/out.npz", **out)
    """
)


def two_process_sweeps(mesh) -> dict:
    """An ablation sweep and an activation-patching sweep (results `[prompt, ...]`)."""
    from jaxinterp.kernels import ablation_sweep, activation_patching, metrics

    from .test_kernels import random_model

    cfg = tiny_config(d_vocab=98)
    model = random_model(cfg)
    rng = np.random.default_rng(0)
    clean, corrupt = rng.integers(0, cfg.d_vocab, (2, 10, 6))
    answer, wrong = rng.integers(0, cfg.d_vocab, (2, 10))
    heads = np.zeros((5, cfg.n_layers, cfg.n_heads), bool)
    heads[np.arange(5), np.arange(5) % 2, np.arange(5) % 4] = True
    kw = dict(
        metric=metrics.logit_diff,
        metric_args=(answer, wrong),
        batch_size=4,
        progress_bar=False,
        mesh=mesh,
    )
    return {
        "ablation": ablation_sweep(
            model, clean, heads, tap="attn.hook_z", positions="all", **kw
        ),
        "patching": activation_patching(model, clean, corrupt, **kw),
    }


def launch(script: str, tmp_path, **env) -> list[tuple[int, str]]:
    """Runs `script` in two processes joined by `jax.distributed` on localhost; returns
    each one's exit code and output. When one fails, the other is killed (it would wait
    for its peer until the coordination service times out)."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAXINTERP_COORDINATOR=f"localhost:{port}",
        JAXINTERP_NUM_PROCESSES="2",
        OUT=str(tmp_path),
        **env,
    )
    env.pop("XLA_FLAGS", None)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=root,
            env=dict(env, JAXINTERP_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        if any(w.poll() not in (None, 0) for w in workers):
            break
        time.sleep(0.1)
    for w in workers:
        w.kill()
    logs = [w.communicate()[0] for w in workers]
    return [(w.returncode, log) for w, log in zip(workers, logs, strict=True)]


def test_two_processes_equal_one(tmp_path):
    ran = launch(WORKER, tmp_path)
    assert all(rc == 0 for rc, _ in ran), ran
    got = np.load(tmp_path / "out.npz")
    for name, want in two_process_sweeps(None).items():
        want = np.asarray(want)
        assert got[name].shape == want.shape
        np.testing.assert_allclose(
            got[name], want, rtol=0, atol=1e-5 * max(1, abs(want).max())
        )


GRID_WORKER = textwrap.dedent(
    """
    import json, os, signal, time, numpy as np
    from jaxinterp import results, sharding
    sharding.initialize()
    import jax
    from jaxinterp.kernels import operand_grid
    from tests.helpers import tiny_config
    from tests.test_kernels import random_model

    me, out = jax.process_index(), os.environ["OUT"]
    kill_after = int(os.environ.get("KILL_AFTER", 0))  # process 1 dies after it
    commit, commits = results.ShardedResult.commit, []

    def logged(self, stop):  # process 1: kill -9 once process 0 is 2 blocks ahead
        commit(self, stop)
        commits.append(stop)
        with open(os.path.join(out, f"commits-{me}.json.tmp"), "w") as f:
            json.dump(commits, f)
        os.replace(f.name, f.name[:-4])
        if me == 1 and len(commits) == kill_after:
            ahead = os.path.join(out, "commits-0.json")
            for _ in range(600):
                if os.path.exists(ahead) and len(json.load(open(ahead))) > kill_after + 1:
                    break
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)

    results.ShardedResult.commit = logged
    model = random_model(tiny_config(d_vocab=98))
    mesh = sharding.make_mesh(data=2)
    kw = dict(prefix=[1], middle=[2], suffix=[3], batch_size=7, mesh=mesh,
              progress_bar=False)
    grid = operand_grid(model, np.arange(6), np.arange(7), out=out + "/grid.zarr", **kw)
    results.ShardedResult.commit = commit
    whole = sharding.gather(operand_grid(model, np.arange(6), np.arange(7), **kw))
    if me == 0:
        np.savez(out + "/grids.npz", zarr=np.asarray(grid), memory=whole)
    """
)


def test_killed_multi_process_grid_resumes_bitwise(tmp_path):
    """Two processes write an operand grid to a zarr directory (one row of 7 pairs per
    block, 6 blocks), each only the columns of its device. Process 1 is killed (-9) after
    recording 2 blocks (once process 0 has recorded 4), then process 0; rerun, both resume
    at block 3 (the first that some process had not recorded), and the result is bitwise
    the grid the same processes compute in memory."""
    ran = launch(GRID_WORKER, tmp_path, KILL_AFTER="2")
    assert [rc for rc, _ in ran] == [-9, -9], ran
    partial = tmp_path / "grid.zarr.partial"
    assert not (tmp_path / "grid.zarr").exists() and partial.is_dir()
    done = [
        json.loads((partial / "progress" / f"{i}-of-2.json").read_text())["done"]
        for i in range(2)
    ]
    assert done[1] == 2 * 7 and done[0] >= 4 * 7, done

    ran = launch(GRID_WORKER, tmp_path)
    assert all(rc == 0 for rc, _ in ran), ran
    resumed = [
        json.loads((tmp_path / f"commits-{i}.json").read_text()) for i in range(2)
    ]
    assert resumed == [[21, 28, 35, 42]] * 2  # blocks 3-6 only
    assert not partial.exists()
    got = np.load(tmp_path / "grids.npz")
    assert got["zarr"].shape == (6, 7, 2, 96)
    np.testing.assert_array_equal(got["zarr"], got["memory"])


def test_initialize_needs_every_setting(monkeypatch):
    monkeypatch.setenv("JAXINTERP_COORDINATOR", "localhost:1")
    monkeypatch.delenv("JAXINTERP_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAXINTERP_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="number of processes"):
        sharding.initialize()


CLI_WORKER = textwrap.dedent(
    """
    import os, sys
    from jaxinterp_cli.main import main
    sys.exit(main(["grid", "--op", "*", "--max-op", "12", "--layers", "0,2",
                   "--mesh", "2,1", "--distributed", "--out", os.environ["OUT"] + "/g"]))
    """
)


def test_grid_command_on_two_processes(tmp_path):
    """`jaxinterp grid --distributed --mesh 2,1` run by two processes (settings from the
    JAXINTERP_* variables) writes the grid that one process writes alone."""
    from jaxinterp_cli.main import main

    ran = launch(CLI_WORKER, tmp_path)
    assert all(rc == 0 for rc, _ in ran), ran
    assert "[12, 12, 2, 512]" in ran[0][1] and "2 process(es)" in ran[0][1]
    one = str(tmp_path / "one")
    assert (
        main(["grid", "--op", "*", "--max-op", "12", "--layers", "0,2", "--out", one])
        == 0
    )
    import tensorstore as ts

    got, want = (
        ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{d}/array"}}
        )
        .result()
        .read()
        .result()
        for d in (tmp_path / "g", one)
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1, abs(want).max()))

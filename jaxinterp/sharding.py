"""Sweeps over several devices with JAX's own SPMD: a `("data", "model")` mesh.

* The swept axis (prompts; cells for `patch_cells`) is split over `data`: every kernel and
  `run` take `mesh=`, and each batch goes to the devices already split
  (`batching.stream`), so each device runs its share of the prompts.
* The weights are replicated on every device, or split over `model` with `shard_model`
  (the Megatron layout: attention heads, MLP neurons and the vocabulary); XLA inserts the
  collectives. A dimension that the `model` axis does not divide stays replicated.

Results come back as arrays split over `data`; they stay on the devices until read
(`gather` brings one to the host, from every process). `make_mesh` builds meshes whose
axes let XLA propagate shardings (`AxisType.Auto`), which the kernels (written for one
example, vmapped) rely on.

Several processes (hosts) run the same program on their own devices: call `initialize`
first in each, then build the mesh over `jax.devices()` (every process's devices). Each
process gives the kernels the same inputs and transfers only the rows of its own devices.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .model import Transformer

__all__ = [
    "DATA",
    "MODEL",
    "initialize",
    "barrier",
    "gather",
    "make_mesh",
    "model_specs",
    "model_shardings",
    "place",
    "shard_model",
    "shard_rows",
]

DATA, MODEL = "data", "model"

# parameter path suffix -> the axis split over `model`, counted from the end of the array
# (blocks are stacked: a leading layer axis comes first)
_SPLIT = {
    "attn.W_Q": -3,  # [head_index, d_model, d_head]
    "attn.W_K": -3,
    "attn.W_V": -3,
    "attn.W_O": -3,  # [head_index, d_head, d_model]
    "attn.b_Q": -2,
    "attn.b_K": -2,
    "attn.b_V": -2,
    "mlp.W_in": -1,  # [d_model, d_mlp]
    "mlp.W_gate": -1,
    "mlp.b_in": -1,
    "mlp.W_out": -2,  # [d_mlp, d_model]
    "embed.W_E": -2,  # [d_vocab, d_model]
    "unembed.W_U": -1,  # [d_model, d_vocab]
    "unembed.b_U": -1,
}


ENV = ("JAXINTERP_COORDINATOR", "JAXINTERP_NUM_PROCESSES", "JAXINTERP_PROCESS_ID")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`); call it before any other
    JAX call in every process.

    Arguments default to the environment variables `JAXINTERP_COORDINATOR` (`host:port`
    of process 0), `JAXINTERP_NUM_PROCESSES` and `JAXINTERP_PROCESS_ID`; when none is
    set, JAX detects the cluster itself (TPU pods, SLURM, Open MPI, Kubernetes). On CPUs the
    processes exchange data through gloo.
    """
    coordinator = coordinator or os.environ.get(ENV[0])
    if num_processes is None and os.environ.get(ENV[1]):
        num_processes = int(os.environ[ENV[1]])
    if process_id is None and os.environ.get(ENV[2]):
        process_id = int(os.environ[ENV[2]])
    given = (coordinator, num_processes, process_id)
    if any(v is not None for v in given) and any(v is None for v in given):
        raise ValueError(
            "a multi-process run needs the coordinator, the number of processes and "
            f"this process's id (arguments or {', '.join(ENV)}), got {given}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def barrier(name: str) -> None:
    """Waits until every process of a multi-process run reaches the barrier `name` (a
    no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(x) -> np.ndarray:
    """A (possibly multi-process) array as one host array, the same in every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A `("data", "model")` mesh of `data * model` devices.

    Arguments:
        data: devices along `data` (default: all devices over `model`).
        model: devices along `model` (1: weights replicated).
        devices: the devices (default `jax.devices()`, every process's on a multi-process
            run).

    Returns:
        The mesh, with `AxisType.Auto` axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model={model} must divide the {len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data < 1 or data * model > len(devices):
        raise ValueError(
            f"a {data} x {model} mesh needs {data * model} devices, have {len(devices)}"
        )
    grid = np.array(devices[: data * model]).reshape(data, model)
    return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def model_specs(model: Transformer, mesh: Mesh | AbstractMesh) -> Transformer:
    """The `PartitionSpec` of every parameter (a pytree like `model`): heads, neurons and
    vocabulary split over `model` where its size divides them, the rest replicated."""
    n = mesh.shape[MODEL]

    def spec(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        split = [a for k, a in _SPLIT.items() if name == k or name.endswith("." + k)]
        if n == 1 or not split or leaf.shape[split[0]] % n:
            return P()
        parts = [None] * leaf.ndim
        parts[leaf.ndim + split[0]] = MODEL
        return P(*parts)

    return jax.tree_util.tree_map_with_path(spec, model)


def model_shardings(model: Transformer, mesh: Mesh) -> Transformer:
    """The `NamedSharding` of every parameter on `mesh` (a pytree like `model`, which may
    be abstract, e.g. from `eqx.filter_eval_shape`), as `model_specs` says."""
    return jax.tree.map(
        lambda _, spec: NamedSharding(mesh, spec), model, model_specs(model, mesh)
    )


def shard_model(model: Transformer, mesh: Mesh) -> Transformer:
    """`model` placed on the mesh: split over `model` as `model_specs` says, replicated
    over `data`. Works on stacked checkpoints too (the extra leading axis is kept whole)."""
    return jax.tree.map(place, model, model_shardings(model, mesh))


def shard_rows(tree, mesh: Mesh | AbstractMesh | None):
    """Every leaf split over `data` along its leading axis (whose size it must divide);
    without a mesh, every leaf as a JAX array on the default device."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    n = mesh.shape[DATA]

    def put(a):
        if np.ndim(a) == 0 or np.shape(a)[0] % n:
            raise ValueError(
                f"a leading axis of {np.shape(a)[:1]} does not split over {n} devices"
            )
        return place(a, NamedSharding(mesh, P(DATA)))

    return jax.tree.map(put, tree)


def place(value, sharding: jax.sharding.Sharding) -> jax.Array:
    """`value` (a host or single-device array, the same in every process) laid out as
    `sharding`: each device receives only its part, and on a multi-process run each
    process transfers only the parts of its own devices (without `jax.device_put`'s check
    that every process passed equal values, a collective per call)."""
    if jax.process_count() == 1 or not getattr(value, "is_fully_addressable", True):
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def rows_multiple(batch_size: int, mesh: Mesh | AbstractMesh | None) -> int:
    """`batch_size` rounded up to a multiple of the `data` axis (unchanged without mesh)."""
    if mesh is None:
        return batch_size
    n = mesh.shape[DATA]
    return math.ceil(batch_size / n) * n

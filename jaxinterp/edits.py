"""Interventions as data.

An edit is a small frozen pytree of arrays that maps a tap's value to a new value. Because it
is data, not a callback, a forward with edits jits once per *structure* of the edits dict (the
set of tap names and edit classes); the arrays themselves are traced, so a whole sweep runs in
one compiled program, `vmap` runs over edit values (which head, which neuron, which layer) and
`grad` differentiates with respect to them (attribution through `Add(delta=0)` or
`Scale(factor=1)`).

Every array of an edit must broadcast to the tap's unbatched shape (see `jaxinterp.taps.TAPS`)
without enlarging it: `Scale(factor)` with `factor` of shape `[1, head_index, 1]` knocks out
heads of `attn.hook_z` at every position; `Replace(value, where)` with `where` of shape
`[pos, 1]` patches chosen positions of `mlp.hook_post`. An edit keyed by a stacked tap name
(`blocks.*.mlp.hook_post`, see `taps.every_layer`) carries one extra leading `layer` axis, so a
layer sweep is a `vmap` over that axis of the same edit instead of a new compile per layer.

Every field is converted to an array on construction (with a strong dtype), so `Scale(0.5)`
and `Scale(0.25)` are the same structure with different values: a new value never recompiles.

All classes are final (abstract/final pattern); write a new edit by subclassing
`AbstractEdit` and implementing `apply`.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from ._typing import Array, ArrayLike

__all__ = ["AbstractEdit", "Replace", "Add", "Scale"]


class AbstractEdit(eqx.Module):
    """Maps the value of one tap to its edited value (same shape and dtype)."""

    @abc.abstractmethod
    def apply(self, x: Array) -> Array:
        """Returns the edited activation.

        Arguments:
            x: the tap's value, unbatched, of the tap's shape.

        Returns:
            An array of the same shape and dtype as `x`.
        """


def as_array(x: ArrayLike) -> Array:
    """`jnp.asarray` with a strong dtype: a Python scalar and an array of the same dtype
    then trace identically (weak types are part of the traced signature)."""
    x = jnp.asarray(x)
    return jax.lax.convert_element_type(x, x.dtype) if x.weak_type else x


def _optional_array(x: ArrayLike | None) -> Array | None:
    return None if x is None else as_array(x)


def _fit(arr: Array, x: Array, what: str) -> Array:
    """Casts `arr` to `x`'s dtype and broadcasts it to `x`'s shape, or raises ValueError."""
    if not jnp.can_cast(arr.dtype, x.dtype, casting="same_kind"):
        raise ValueError(
            f"{what} of dtype {arr.dtype} cannot be cast safely to the tap's dtype {x.dtype}"
        )
    try:
        shape = jnp.broadcast_shapes(arr.shape, x.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"{what} of shape {arr.shape} does not broadcast to the tap shape {x.shape}"
        )
    return jnp.broadcast_to(arr.astype(x.dtype), x.shape)


def _fit_mask(where: Array | None, x: Array) -> Array | None:
    if where is None:
        return None
    if where.dtype != jnp.bool_:
        raise ValueError(f"`where` must be a boolean mask, got dtype {where.dtype}")
    return _fit(where, jnp.zeros(x.shape, jnp.bool_), "`where` mask")


class Replace(AbstractEdit):
    """Overwrites the activation with `value` where `where` is true (everywhere if None).

    Used for activation patching (value = the corrupt run's activation), mean ablation
    (value = a dataset mean) and resample ablation.

    Attributes:
        value: replacement, broadcastable to the tap's shape.
        where: optional boolean mask, broadcastable to the tap's shape.
    """

    value: Array = eqx.field(converter=as_array)
    where: Array | None = eqx.field(default=None, converter=_optional_array)

    def apply(self, x: Array) -> Array:
        value = _fit(self.value, x, "Replace.value")
        where = _fit_mask(self.where, x)
        return value if where is None else jnp.where(where, value, x)


class Add(AbstractEdit):
    """Adds `delta` (steering vectors; zero deltas give gradients for attribution patching).

    Attributes:
        delta: broadcastable to the tap's shape.
    """

    delta: Array = eqx.field(converter=as_array)

    def apply(self, x: Array) -> Array:
        return x + _fit(self.delta, x, "Add.delta")


class Scale(AbstractEdit):
    """Multiplies by `factor` (0 zero-ablates; a 0/1 mask knocks out heads or neurons).

    Attributes:
        factor: broadcastable to the tap's shape.
    """

    factor: Array = eqx.field(converter=as_array)

    def apply(self, x: Array) -> Array:
        return x * _fit(self.factor, x, "Scale.factor")

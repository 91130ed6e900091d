"""Tap names, their shapes, and the recorder that captures and edits them in a forward.

Names are exactly TransformerLens's hook names (`blocks.3.mlp.hook_post`), and each tap's
unbatched shape is TransformerLens's shape without the leading `batch`:

| tap                                   | dims                             | exists for            |
|---------------------------------------|----------------------------------|-----------------------|
| hook_embed                            | pos d_model                      | all                   |
| hook_pos_embed                        | pos d_model                      | learned positions     |
| blocks.{l}.hook_resid_pre             | pos d_model                      | all                   |
| blocks.{l}.ln1.hook_scale / ln2       | pos 1                            | all                   |
| blocks.{l}.ln1.hook_normalized / ln2  | pos d_model                      | all                   |
| blocks.{l}.attn.hook_q                | pos head_index d_head            | all (pre-rotary)      |
| blocks.{l}.attn.hook_k / hook_v       | pos kv_head_index d_head         | all (pre-rotary)      |
| blocks.{l}.attn.hook_rot_q            | pos head_index d_head            | rotary                |
| blocks.{l}.attn.hook_rot_k            | pos kv_head_index d_head         | rotary                |
| blocks.{l}.attn.hook_attn_scores      | head_index query_pos key_pos     | all (scaled, masked)  |
| blocks.{l}.attn.hook_pattern          | head_index query_pos key_pos     | all                   |
| blocks.{l}.attn.hook_z                | pos head_index d_head            | all                   |
| blocks.{l}.attn.hook_result           | pos head_index d_model           | all (on demand)       |
| blocks.{l}.hook_attn_out              | pos d_model                      | all                   |
| blocks.{l}.hook_resid_mid             | pos d_model                      | serial residual       |
| blocks.{l}.mlp.hook_pre               | pos d_mlp                        | all (gate for gated)  |
| blocks.{l}.mlp.hook_pre_linear        | pos d_mlp                        | gated MLP             |
| blocks.{l}.mlp.hook_post              | pos d_mlp                        | all                   |
| blocks.{l}.hook_mlp_out               | pos d_model                      | all                   |
| blocks.{l}.hook_resid_post            | pos d_model                      | all                   |
| ln_final.hook_scale / hook_normalized | pos 1 / pos d_model              | all                   |

Stacked names: `blocks.*.<suffix>` names one tap in every layer. As a capture it records a
`[layer, *shape]` array (the layers run: all of them in a full forward); as an edit key it
takes an edit whose arrays carry a leading `layer` axis of size `n_layers`. A capture may also
be a TransformerLens-style `names_filter` callable (`name -> bool`) over the per-layer names
(resolved by `resolve_capture`, which `run` applies).

How capture works under `lax.scan` over layers: a block tap captured in every layer of a
block range comes out of the scan as its stacked output; one captured in some layers only gets
a buffer `[n_captured, *shape]` carried through the scan, where each captured layer writes its
slot (a one-slot dynamic update), so memory is proportional to the number of captured layers,
not to depth. Edits keyed by one layer apply where the traced layer index equals it; stacked
edits are sliced by the scan. The recorder lives only inside the traced function and never
escapes it; its `records` are a plain dict.
"""

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, get_args

import jax
import jax.numpy as jnp

from ._typing import Array
from .config import TransformerConfig
from .edits import AbstractEdit

BlockTap = Literal[
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
]
TopTap = Literal[
    "hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"
]

_PD = ("pos", "d_model")
_QHEADS = ("pos", "head_index", "d_head")
_KVHEADS = ("pos", "kv_head_index", "d_head")
_GRID = ("head_index", "query_pos", "key_pos")

# suffix -> (dims, which models have it: None = all)
BLOCK_TAPS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "hook_resid_pre": (_PD, None),
    "ln1.hook_scale": (("pos", "1"), None),
    "ln1.hook_normalized": (_PD, None),
    "attn.hook_q": (_QHEADS, None),
    "attn.hook_k": (_KVHEADS, None),
    "attn.hook_v": (_KVHEADS, None),
    "attn.hook_rot_q": (_QHEADS, "rotary"),
    "attn.hook_rot_k": (_KVHEADS, "rotary"),
    "attn.hook_attn_scores": (_GRID, None),
    "attn.hook_pattern": (_GRID, None),
    "attn.hook_z": (_QHEADS, None),
    "attn.hook_result": (("pos", "head_index", "d_model"), None),
    "hook_attn_out": (_PD, None),
    "hook_resid_mid": (_PD, "serial"),
    "ln2.hook_scale": (("pos", "1"), None),
    "ln2.hook_normalized": (_PD, None),
    "mlp.hook_pre": (("pos", "d_mlp"), None),
    "mlp.hook_pre_linear": (("pos", "d_mlp"), "gated"),
    "mlp.hook_post": (("pos", "d_mlp"), None),
    "hook_mlp_out": (_PD, None),
    "hook_resid_post": (_PD, None),
}
TOP_TAPS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "hook_embed": (_PD, None),
    "hook_pos_embed": (_PD, "learned"),
    "ln_final.hook_scale": (("pos", "1"), None),
    "ln_final.hook_normalized": (_PD, None),
}
assert set(BLOCK_TAPS) == set(get_args(BlockTap))
assert set(TOP_TAPS) == set(get_args(TopTap))


def tap_name(suffix: BlockTap | TopTap, layer: int | None = None) -> str:
    """`tap_name("mlp.hook_post", layer=3) -> "blocks.3.mlp.hook_post"`."""
    if layer is None:
        if suffix not in TOP_TAPS:
            raise ValueError(f"{suffix!r} is a block tap: pass layer=")
        return suffix
    if suffix not in BLOCK_TAPS:
        raise ValueError(f"{suffix!r} is not a block tap; known: {sorted(BLOCK_TAPS)}")
    return f"blocks.{layer}.{suffix}"


def all_layers(suffix: BlockTap, n_layers: int) -> tuple[str, ...]:
    """The names of one block tap in every layer, in layer order."""
    return tuple(tap_name(suffix, layer) for layer in range(n_layers))


def every_layer(suffix: BlockTap) -> str:
    """The stacked name `blocks.*.<suffix>`: a `[layer, ...]` capture, or the key of an edit
    whose arrays have a leading `layer` axis."""
    tap_name(suffix, 0)
    return f"blocks.*.{suffix}"


def _exists(requirement: str | None, cfg: TransformerConfig) -> bool:
    return {
        None: True,
        "rotary": cfg.positional == "rotary",
        "learned": cfg.positional == "learned",
        "serial": not cfg.parallel_residual,
        "gated": cfg.gated_mlp,
    }[requirement]


def available_taps(cfg: TransformerConfig) -> tuple[str, ...]:
    """Every tap name that exists for this architecture."""
    top = [n for n, (_, req) in TOP_TAPS.items() if _exists(req, cfg)]
    block = [s for s, (_, req) in BLOCK_TAPS.items() if _exists(req, cfg)]
    return (
        tuple(n for n in top if not n.startswith("ln_final"))
        + tuple(f"blocks.{l}.{s}" for l in range(cfg.n_layers) for s in block)
        + tuple(n for n in top if n.startswith("ln_final"))
    )


def parse(name: str, cfg: TransformerConfig) -> tuple[int | str | None, str]:
    """Splits a tap name into (layer, suffix); layer is None for top-level taps and "*"
    for stacked names (`blocks.*.<suffix>`). Raises ValueError naming close matches for
    unknown names."""
    if name in TOP_TAPS and _exists(TOP_TAPS[name][1], cfg):
        return None, name
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks":
        _, layer, suffix = parts
        if suffix in BLOCK_TAPS and _exists(BLOCK_TAPS[suffix][1], cfg):
            if layer == "*":
                return "*", suffix
            if layer.isdigit() and int(layer) < cfg.n_layers:
                return int(layer), suffix
            if layer.isdigit():
                raise ValueError(
                    f"tap {name!r}: layer {layer} out of range for a model with "
                    f"{cfg.n_layers} layers"
                )
    close = difflib.get_close_matches(name, available_taps(cfg), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown tap name {name!r} for this model{hint}")


def tap_dims(name: str, cfg: TransformerConfig) -> tuple[str, ...]:
    """The dimension names of a tap (`("layer", ...)` for a stacked name)."""
    layer, suffix = parse(name, cfg)
    dims = (TOP_TAPS if layer is None else BLOCK_TAPS)[suffix][0]
    return ("layer", *dims) if layer == "*" else dims


def tap_shape(
    name: str, cfg: TransformerConfig, n_pos: int, n_past: int = 0
) -> tuple[int, ...]:
    """Unbatched shape of a tap for `n_pos` tokens (continuing `n_past` cached ones)."""
    sizes = {
        "layer": cfg.n_layers,
        "pos": n_pos,
        "query_pos": n_pos,
        "key_pos": n_past + n_pos,
        "d_model": cfg.d_model,
        "head_index": cfg.n_heads,
        "kv_head_index": cfg.n_kv_heads,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "1": 1,
    }
    return tuple(sizes[d] for d in tap_dims(name, cfg))


def resolve_capture(
    capture: Iterable[str] | Callable[[str], bool], cfg: TransformerConfig
) -> frozenset[str]:
    """The set of names a `capture` argument asks for: names as given (validated), or every
    per-layer name a `names_filter` callable accepts."""
    if isinstance(capture, str):
        raise TypeError("capture takes a collection of names, not a single string")
    if callable(capture):
        return frozenset(n for n in available_taps(cfg) if capture(n))
    names = frozenset(capture)
    for name in names:
        parse(name, cfg)
    return names


class _View:
    """A scope of a recorder: `view("hook_z", z)` visits `<prefix>hook_z`."""

    def __init__(self, root, prefix: str):
        self._root = root
        self._prefix = prefix

    def __call__(self, name: str, x: Array) -> Array:
        """Applies the edits registered for this tap, records it if captured, returns it."""
        return self._root.visit(self._prefix + name, x)

    def scope(self, sub: str) -> "_View":
        return _View(self._root, f"{self._prefix}{sub}.")

    def wants(self, name: str) -> bool:
        """Whether this tap is captured or edited (for taps computed only on demand)."""
        return self._root.wants(self._prefix + name)


class Taps(_View):
    """Root recorder for one (unbatched) forward trace.

    Arguments:
        cfg: the model's config (to validate names).
        capture: TL names to record; `blocks.*.<suffix>` records `[layer, ...]`.
        edits: TL name (or `blocks.*.<suffix>` stacked key) -> edit.
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        capture: Iterable[str] = frozenset(),
        edits: Mapping[str, AbstractEdit] | None = None,
    ):
        super().__init__(self, "")
        self.cfg = cfg
        self._top_capture: set[str] = set()
        self._top_edits: dict[str, AbstractEdit] = {}
        self._top_records: dict[str, Array] = {}
        self._named: dict[str, set[int]] = {}  # suffix -> layers captured by name
        self._stacked: set[str] = set()  # suffixes captured as blocks.*.<suffix>
        self.block_edits: dict[str, list[tuple[int, AbstractEdit]]] = {}
        self.stacked_edits: dict[str, AbstractEdit] = {}
        self._pieces: dict[str, list[tuple[tuple[int, ...], Array]]] = {}
        for name in sorted(capture):  # a fixed order: the same program in every process
            layer, suffix = parse(name, cfg)
            if layer is None:
                self._top_capture.add(name)
            elif layer == "*":
                self._stacked.add(suffix)
            else:
                self._named.setdefault(suffix, set()).add(layer)
        for name, edit in (edits or {}).items():
            if not isinstance(edit, AbstractEdit):
                raise TypeError(f"edit for {name!r} is not an AbstractEdit: {edit!r}")
            layer, suffix = parse(name, cfg)
            if layer is None:
                self._top_edits[name] = edit
            elif layer == "*":
                self.stacked_edits[suffix] = edit
            else:
                self.block_edits.setdefault(suffix, []).append((layer, edit))

    def visit(self, name: str, x: Array) -> Array:
        if name in self._top_edits:
            x = _apply(self._top_edits[name], x, name)
        if name in self._top_capture:
            self._top_records[name] = x
        return x

    def wants(self, name: str) -> bool:
        return name in self._top_capture or name in self._top_edits

    def captured_layers(self, suffix: str, start: int, stop: int) -> tuple[int, ...]:
        """The layers in `[start, stop)` in which block tap `suffix` is captured."""
        if suffix in self._stacked:
            return tuple(range(start, stop))
        return tuple(
            l for l in sorted(self._named.get(suffix, ())) if start <= l < stop
        )

    def block_range(
        self, start: int, stop: int, n_pos: int, n_key: int, dtype
    ) -> "BlockRange":
        """The plan for scanning blocks `[start, stop)`: capture buffers and edits."""
        return BlockRange(self, start, stop, n_pos, n_key, dtype)

    @property
    def records(self) -> dict[str, Array]:
        """Every captured value so far: per-layer names, and `blocks.*.<suffix>` stacked over
        the layers run (in order)."""
        out = dict(self._top_records)
        for suffix, pieces in self._pieces.items():
            layers = [l for piece_layers, _ in pieces for l in piece_layers]
            if len(set(layers)) != len(layers):
                raise ValueError(
                    f"tap {suffix!r} was captured twice in one layer (layers {layers}): "
                    "use one recorder per run of a layer"
                )
            arrays = [a for _, a in pieces]
            stack = arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays)
            if suffix in self._stacked:
                out[f"blocks.*.{suffix}"] = stack
            for i, layer in enumerate(layers):
                if layer in self._named.get(suffix, ()):
                    out[f"blocks.{layer}.{suffix}"] = stack[i]
        return out


def _apply(edit: AbstractEdit, x: Array, name: str) -> Array:
    try:
        y = edit.apply(x)
    except ValueError as e:
        raise ValueError(f"edit for tap {name!r}: {e}") from None
    if y.shape != x.shape or y.dtype != x.dtype:
        raise ValueError(
            f"edit for tap {name!r} returned {y.shape} {y.dtype}, expected "
            f"{x.shape} {x.dtype}"
        )
    return y


class BlockRange:
    """Capture buffers and edits for one `lax.scan` over blocks `[start, stop)`.

    A tap captured in every layer of the range is a stacked output of the scan; one captured
    in some layers only has a buffer with one slot per captured layer."""

    def __init__(
        self, root: Taps, start: int, stop: int, n_pos: int, n_key: int, dtype
    ):
        self.root = root
        self.start, self.stop = start, stop
        cfg = root.cfg
        suffixes = sorted(set(root._stacked) | set(root._named))
        self.layers = {s: root.captured_layers(s, start, stop) for s in suffixes}
        self.layers = {s: ls for s, ls in self.layers.items() if ls}
        full = tuple(range(start, stop))
        self.stacked_outputs = {s for s, ls in self.layers.items() if ls == full}
        self.buffers, self.slots = {}, {}
        for suffix, layers in self.layers.items():
            if suffix in self.stacked_outputs:
                continue
            shape = tap_shape(f"blocks.0.{suffix}", cfg, n_pos, n_key - n_pos)
            self.buffers[suffix] = jnp.zeros((len(layers), *shape), dtype)
            slots = [-1] * (stop - start)
            for i, layer in enumerate(layers):
                slots[layer - start] = i
            self.slots[suffix] = jnp.asarray(slots, jnp.int32)
        for suffix, edit in root.stacked_edits.items():
            for leaf in jax.tree_util.tree_leaves(edit):
                if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != cfg.n_layers:
                    raise ValueError(
                        f"stacked edit 'blocks.*.{suffix}' needs a leading layer axis "
                        f"of size {cfg.n_layers}; got an array of shape {jnp.shape(leaf)}"
                    )
        self.stacked_edits = {
            s: jax.tree.map(lambda a: a[start:stop], e)
            for s, e in root.stacked_edits.items()
        }
        self.block_edits = {
            s: [(l, e) for l, e in edits if start <= l < stop]
            for s, edits in root.block_edits.items()
        }

    def enter(self, layer: Array, stacked_edits: dict, buffers: dict) -> "LayerTaps":
        """A recorder for one block, given the traced layer index and scan slices."""
        return LayerTaps(self, layer, stacked_edits, dict(buffers))

    def finish(self, buffers: dict[str, Array], outputs: dict[str, Array]) -> None:
        """Hands the filled buffers and stacked outputs to the root recorder."""
        for suffix, layers in self.layers.items():
            value = outputs[suffix] if suffix in outputs else buffers[suffix]
            self.root._pieces.setdefault(suffix, []).append((layers, value))


class LayerTaps(_View):
    """Recorder for one block inside the scan: `buffers` holds the updated partial
    captures and `outputs` the values captured in every layer of the range."""

    def __init__(self, plan: BlockRange, layer: Array, stacked_edits: dict, buffers):
        super().__init__(self, "")
        self.plan = plan
        self.layer = layer
        self.stacked_edits = stacked_edits
        self.buffers = buffers
        self.outputs: dict[str, Array] = {}

    def wants(self, suffix: str) -> bool:
        plan = self.plan
        return (
            suffix in plan.layers
            or bool(plan.block_edits.get(suffix))
            or suffix in plan.stacked_edits
        )

    def visit(self, suffix: str, x: Array) -> Array:
        plan = self.plan
        for layer, edit in plan.block_edits.get(suffix, ()):
            x = jnp.where(
                self.layer == layer, _apply(edit, x, f"blocks.{layer}.{suffix}"), x
            )
        if suffix in self.stacked_edits:
            x = _apply(self.stacked_edits[suffix], x, f"blocks.*.{suffix}")
        if suffix in plan.stacked_outputs:
            self.outputs[suffix] = x
        elif suffix in self.buffers:
            slot = plan.slots[suffix][self.layer - plan.start]
            buf = self.buffers[suffix]
            safe = jnp.maximum(slot, 0)
            keep = jax.lax.dynamic_index_in_dim(buf, safe, keepdims=False)
            new = jnp.where(slot >= 0, x.astype(buf.dtype), keep)
            self.buffers[suffix] = jax.lax.dynamic_update_index_in_dim(
                buf, new, safe, 0
            )
        return x

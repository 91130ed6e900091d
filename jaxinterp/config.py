"""Architecture facts of a decoder-only transformer.

`TransformerConfig` holds only what decides the forward computation. Everything else (dtype
policy, capture set, edits, sharding, tokenizer, weight processing) is a call argument where
it is used.
"""

import dataclasses
import math
import numbers
from typing import Any, Literal

import numpy as np

ActFn = Literal["gelu", "gelu_new", "silu", "relu"]


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3 frequency-dependent RoPE rescaling (HF `rope_type: "llama3"`).

    Attributes:
        factor: wavelength stretch applied to low frequencies.
        low_freq_factor: wavelengths above `original_max_position / low_freq_factor` are
            stretched fully.
        high_freq_factor: wavelengths below `original_max_position / high_freq_factor` are
            left alone; in between, the two are interpolated.
        original_max_position: context length the model was pre-trained with.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int

    def __post_init__(self):
        where = "Llama3RopeScaling"
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            _set(self, name, _positive_float(where, name, getattr(self, name)))
        _set(
            self,
            "original_max_position",
            _int(where, "original_max_position", self.original_max_position, 1),
        )
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"{where}.high_freq_factor={self.high_freq_factor} must be greater than "
                f"low_freq_factor={self.low_freq_factor}"
            )


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a decoder-only transformer (GPT-2, GPT-NeoX, GPT-J, Llama, Qwen2).

    Attributes:
        d_model: width of the residual stream.
        n_layers: number of blocks.
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads (`n_heads` for MHA, 1 for MQA, else GQA).
        d_head: width of one head.
        d_mlp: hidden width of the MLP.
        d_vocab: vocabulary size (rows of `W_E`, columns of `W_U`).
        n_ctx: maximum sequence length (rows of `W_pos` for learned positions).
        act_fn: MLP nonlinearity: exact `"gelu"` (erf), `"gelu_new"` (tanh approximation),
            `"silu"` or `"relu"`.
        norm: `"ln"` (LayerNorm, with bias) or `"rms"` (RMSNorm).
        eps: epsilon of every norm.
        positional: `"learned"` absolute positions added to the embedding, or `"rotary"`.
        rotary_dim: number of leading dims of each q/k head that are rotated (partial rotary
            when `< d_head`). Ignored for learned positions.
        rotary_base: RoPE base (theta).
        rotary_interleaved: rotate adjacent pairs (0,1),(2,3),... (GPT-J) instead of the two
            halves of the rotary dims (NeoX, Llama).
        rope_scaling: Llama-3 frequency rescaling, or None.
        parallel_residual: attention and MLP both read the block input and their outputs are
            added together (NeoX `use_parallel_residual`, GPT-J).
        gated_mlp: SwiGLU-style MLP `act(x W_gate) * (x W_in)` (Llama, Qwen2).
        tied_embeddings: the checkpoint ties `W_U` to `W_E.T` (only matters for export; the
            model stores `W_U` on its own).

    Raises:
        ValueError: naming the field, for any impossible value: a size that is not a
            positive integer (bools and floats such as `64.0` are refused too), `eps` or
            `rotary_base` not finite and positive, a flag that is not a bool, an unknown
            act_fn / norm / positional, or inconsistent head counts / rotary settings.
            Integer and float fields are normalised to plain `int` / `float`.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: ActFn
    norm: Literal["ln", "rms"]
    eps: float
    positional: Literal["learned", "rotary"]
    n_kv_heads: int | None = None
    rotary_dim: int = 0
    rotary_base: float = 10000.0
    rotary_interleaved: bool = False
    rope_scaling: Llama3RopeScaling | None = None
    parallel_residual: bool = False
    gated_mlp: bool = False
    tied_embeddings: bool = False

    def __post_init__(self):
        # Every field is checked (and numbers normalised to int / float) here, so no
        # impossible config reaches the model code, whatever built it.
        where = "TransformerConfig"
        for name in _SIZES:
            _set(self, name, _int(where, name, getattr(self, name), 1))
        if self.n_kv_heads is None:
            _set(self, "n_kv_heads", self.n_heads)
        _set(self, "n_kv_heads", _int(where, "n_kv_heads", self.n_kv_heads, 1))
        _set(self, "rotary_dim", _int(where, "rotary_dim", self.rotary_dim, 0))
        _set(self, "eps", _positive_float(where, "eps", self.eps))
        _set(
            self, "rotary_base", _positive_float(where, "rotary_base", self.rotary_base)
        )
        for name in (
            "rotary_interleaved",
            "parallel_residual",
            "gated_mlp",
            "tied_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{where}.{name} must be a bool, got {value!r}")
            _set(self, name, bool(value))
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.act_fn not in ("gelu", "gelu_new", "silu", "relu"):
            raise ValueError(f"unknown act_fn {self.act_fn!r}")
        if self.norm not in ("ln", "rms"):
            raise ValueError(f"unknown norm {self.norm!r}")
        if self.positional not in ("learned", "rotary"):
            raise ValueError(f"unknown positional {self.positional!r}")
        if self.rope_scaling is not None and not isinstance(
            self.rope_scaling, Llama3RopeScaling
        ):
            raise ValueError(
                f"{where}.rope_scaling must be a Llama3RopeScaling or None, got "
                f"{self.rope_scaling!r}"
            )
        if self.positional == "learned" and (
            self.rotary_dim or self.rotary_interleaved or self.rope_scaling is not None
        ):
            raise ValueError("rotary settings given for a model with learned positions")
        if self.positional == "rotary":
            if not 0 < self.rotary_dim <= self.d_head or self.rotary_dim % 2:
                raise ValueError(
                    f"rotary_dim={self.rotary_dim} must be even and in (0, d_head="
                    f"{self.d_head}]"
                )

    @property
    def n_query_per_kv(self) -> int:
        """Query heads sharing one key/value head (1 for MHA)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; inverse of `from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a TransformerConfig dict must be a dict, got {d!r}")
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        }
        missing = required - set(d)
        if missing:
            raise ValueError(f"missing TransformerConfig fields: {sorted(missing)}")
        scaling = d.get("rope_scaling")
        if scaling is not None:
            fields = {f.name for f in dataclasses.fields(Llama3RopeScaling)}
            if not isinstance(scaling, dict) or set(scaling) != fields:
                raise ValueError(
                    f"TransformerConfig.rope_scaling must be a dict with keys "
                    f"{sorted(fields)}, got {scaling!r}"
                )
            d["rope_scaling"] = Llama3RopeScaling(**scaling)
        return cls(**d)


_SIZES = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # the dataclasses are frozen


def _int(where: str, name: str, value: Any, minimum: int) -> int:
    """`value` as an int >= `minimum`; bools and floats (even 64.0) are refused."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{where}.{name} must be an integer, got {value!r}")
    if value < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{where}.{name} must be {what}, got {value}")
    return int(value)


def _positive_float(where: str, name: str, value: Any) -> float:
    """`value` as a finite float > 0."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}.{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}.{name} must be finite and positive, got {value}")
    return float(value)

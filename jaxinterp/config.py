"""Architecture facts of a decoder-only transformer.

`TransformerConfig` holds only what decides the forward computation. Everything else (dtype
policy, capture set, edits, sharding, tokenizer, weight processing) is a call argument where
it is used.
"""

import dataclasses
from typing import Literal

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
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
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
        if self.positional == "learned" and (
            self.rotary_dim or self.rotary_interleaved
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
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = Llama3RopeScaling(**d["rope_scaling"])
        return cls(**d)

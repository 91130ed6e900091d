"""The transformer, top to bottom: norms, attention, MLP, block, model.

Conventions (see `_typing.py` for the axis legend):
* Modules process **one example**: `tokens` is `[pos]`; batch with `jax.vmap` at the call site.
* Parameter names and layouts are TransformerLens's: `W_Q [head_index d_model d_head]`,
  `W_O [head_index d_head d_model]`, `W_in [d_model d_mlp]`, `W_out [d_mlp d_model]`,
  `W_U [d_model d_vocab]`; norms hold `w` and `b`. Every bias exists (zeros where the
  checkpoint has none) so that weight processing (`process.py`) can fold into them.
* Blocks are stacked: every array of `Transformer.blocks` has a leading `layer` axis, and the
  forward scans over it, so compile time does not grow with depth.
* Every activation passes through `taps(name, x)`, which applies edits and records captures
  (see `taps.py`). With no taps requested it is the identity and costs nothing.
* Precision: parameters keep their dtype; norms and softmax compute in float32 and cast back.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._typing import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray
from .config import TransformerConfig
from .taps import Taps, _View

_ACT = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def _f32(x: Array) -> Array:
    """Upcasts to float32 (float64 stays float64)."""
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


class Norm(eqx.Module):
    """LayerNorm (`kind="ln"`) or RMSNorm (`kind="rms"`, `b` stays zero)."""

    w: Float[Array, " d_model"]
    b: Float[Array, " d_model"]
    kind: str = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __call__(
        self, x: Float[Array, "pos d_model"], taps: _View
    ) -> Float[Array, "pos d_model"]:
        h = _f32(x)
        if self.kind == "ln":
            h = h - h.mean(-1, keepdims=True)
        scale = jnp.sqrt((h * h).mean(-1, keepdims=True) + self.eps)
        if taps.wants("hook_scale"):
            scale = _f32(taps("hook_scale", scale.astype(x.dtype)))
        h = h / scale
        if self.kind == "rms":
            # HF casts the normalized value back before the weight multiply.
            out = h.astype(x.dtype) * self.w[None]
        else:
            out = (h * _f32(self.w)[None] + _f32(self.b)[None]).astype(x.dtype)
        return taps("hook_normalized", out)


def _inv_freq(cfg: TransformerConfig) -> np.ndarray:
    """Rotary inverse frequencies in float32, computed as HF does (incl. Llama-3 scaling)."""
    dim = cfg.rotary_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (np.float32(1.0) / np.float32(cfg.rotary_base) ** exponent).astype(np.float32)
    s = cfg.rope_scaling
    if s is not None:
        low_wavelen = s.original_max_position / s.low_freq_factor
        high_wavelen = s.original_max_position / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rotate(
    x: Float[Array, "pos n d_head"],
    positions: Int[Array, " pos"],
    cfg: TransformerConfig,
) -> Float[Array, "pos n d_head"]:
    """Applies rotary embeddings to the first `rotary_dim` dims of every head."""
    r = cfg.rotary_dim
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(_inv_freq(cfg))[None]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    rot, rest = x[..., :r], x[..., r:]
    if cfg.rotary_interleaved:  # GPT-J: pairs (0,1), (2,3), ...
        cos, sin = jnp.repeat(cos, 2, axis=-1), jnp.repeat(sin, 2, axis=-1)
        turned = jnp.stack([-rot[..., 1::2], rot[..., 0::2]], axis=-1).reshape(
            rot.shape
        )
    else:  # NeoX / Llama: the two halves of the rotary dims
        cos, sin = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
        half = r // 2
        turned = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    out = rot * cos[:, None].astype(x.dtype) + turned * sin[:, None].astype(x.dtype)
    return jnp.concatenate([out, rest], axis=-1)


class Span(eqx.Module):
    """The positions one call runs: their position ids and the keys each of them may read.

    Keys are the `n_slots` cached positions of `past` (if any) followed by the positions
    being run. Built by `Transformer.span`; every block of one forward shares it.

    Attributes:
        positions: position ids `[pos]` (rotary angles, rows of `W_pos`).
        attend: `[pos, key_pos]`, True where query `q` may attend to key `k`.
    """

    positions: Int[Array, " pos"]
    attend: Bool[Array, "pos key_pos"]

    def split(self, p: int) -> tuple["Span", "Span"]:
        """The spans of positions `[:p]` and `[p:]`: the first reads only the cached keys
        and its own; the second reads every key, so it continues a cache of the first."""
        n_slots = self.attend.shape[1] - self.attend.shape[0]
        head = Span(self.positions[:p], self.attend[:p, : n_slots + p])
        return head, Span(self.positions[p:], self.attend[p:])


class Attention(eqx.Module):
    """Causal multi-head attention with MHA/MQA/GQA (query head h reads kv head h // g)."""

    W_Q: Float[Array, "head_index d_model d_head"]
    W_K: Float[Array, "kv_head_index d_model d_head"]
    W_V: Float[Array, "kv_head_index d_model d_head"]
    W_O: Float[Array, "head_index d_head d_model"]
    b_Q: Float[Array, "head_index d_head"]
    b_K: Float[Array, "kv_head_index d_head"]
    b_V: Float[Array, "kv_head_index d_head"]
    b_O: Float[Array, " d_model"]
    cfg: TransformerConfig = eqx.field(static=True)

    def __call__(
        self,
        x: Float[Array, "pos d_model"],
        taps: _View,
        span: Span,
        past: tuple[Array, Array] | None = None,
    ) -> Float[Array, "pos d_model"]:
        """Attention of `x`'s positions over `past` keys/values (if any) and themselves.

        `past` holds the keys (rotated, as `hook_rot_k`; `hook_k` for learned positions) and
        values (`hook_v`) of `n_slots` earlier positions, each `[n_slots, kv_head_index,
        d_head]`; the score/pattern taps are then `[head_index, pos, n_slots + pos]`.
        `span.attend` says which of those keys each position reads.
        """
        cfg = self.cfg
        n_pos = x.shape[0]
        q = taps("hook_q", jnp.einsum("pm,hmd->phd", x, self.W_Q) + self.b_Q[None])
        k = taps("hook_k", jnp.einsum("pm,hmd->phd", x, self.W_K) + self.b_K[None])
        v = taps("hook_v", jnp.einsum("pm,hmd->phd", x, self.W_V) + self.b_V[None])
        if cfg.positional == "rotary":
            q = taps("hook_rot_q", rotate(q, span.positions, cfg))
            k = taps("hook_rot_k", rotate(k, span.positions, cfg))
        if past is not None:
            k = jnp.concatenate([past[0].astype(k.dtype), k])
            v = jnp.concatenate([past[1].astype(v.dtype), v])
        n_key = k.shape[0]
        g = cfg.n_query_per_kv
        q = q.reshape(n_pos, cfg.n_kv_heads, g, cfg.d_head)
        scores = jnp.einsum("qkgd,Kkd->kgqK", q, k).reshape(cfg.n_heads, n_pos, n_key)
        scores = scores / math.sqrt(cfg.d_head)
        scores = taps(
            "hook_attn_scores", jnp.where(span.attend[None], scores, -jnp.inf)
        )
        pattern = jax.nn.softmax(_f32(scores), axis=-1).astype(x.dtype)
        pattern = taps("hook_pattern", pattern)
        grouped = pattern.reshape(cfg.n_kv_heads, g, n_pos, n_key)
        z = jnp.einsum("kgqK,Kkd->qkgd", grouped, v).reshape(
            n_pos, cfg.n_heads, cfg.d_head
        )
        z = taps("hook_z", z)
        if taps.wants("hook_result"):
            result = taps("hook_result", jnp.einsum("phd,hdm->phm", z, self.W_O))
            return result.sum(1) + self.b_O[None]
        return jnp.einsum("phd,hdm->pm", z, self.W_O) + self.b_O[None]


class MLP(eqx.Module):
    """`act(x W_in + b_in) W_out + b_out`, or gated `(act(x W_gate) * x W_in + b_in) W_out`."""

    W_in: Float[Array, "d_model d_mlp"]
    b_in: Float[Array, " d_mlp"]
    W_out: Float[Array, "d_mlp d_model"]
    b_out: Float[Array, " d_model"]
    W_gate: Float[Array, "d_model d_mlp"] | None
    act_fn: str = eqx.field(static=True)

    def __call__(
        self, x: Float[Array, "pos d_model"], taps: _View
    ) -> Float[Array, "pos d_model"]:
        act = _ACT[self.act_fn]
        if self.W_gate is not None:
            pre = taps("hook_pre", x @ self.W_gate)
            pre_linear = taps("hook_pre_linear", x @ self.W_in)
            post = taps("hook_post", act(pre) * pre_linear + self.b_in[None])
        else:
            pre = taps("hook_pre", x @ self.W_in + self.b_in[None])
            post = taps("hook_post", act(pre))
        return post @ self.W_out + self.b_out[None]


class Block(eqx.Module):
    """Pre-norm block, serial (`x + attn`, then `+ mlp`) or parallel (`x + attn + mlp`)."""

    ln1: Norm
    attn: Attention
    ln2: Norm
    mlp: MLP
    parallel_residual: bool = eqx.field(static=True)

    def __call__(
        self,
        x: Float[Array, "pos d_model"],
        taps: _View,
        span: Span,
        past: tuple[Array, Array] | None = None,
    ) -> Float[Array, "pos d_model"]:
        x = taps("hook_resid_pre", x)
        attn_in = self.ln1(x, taps.scope("ln1"))
        attn = self.attn(attn_in, taps.scope("attn"), span, past)
        attn_out = taps("hook_attn_out", attn)
        if self.parallel_residual:
            mlp_in = self.ln2(x, taps.scope("ln2"))
            mlp_out = taps("hook_mlp_out", self.mlp(mlp_in, taps.scope("mlp")))
            return taps("hook_resid_post", x + attn_out + mlp_out)
        x = taps("hook_resid_mid", x + attn_out)
        mlp_out = taps(
            "hook_mlp_out", self.mlp(self.ln2(x, taps.scope("ln2")), taps.scope("mlp"))
        )
        return taps("hook_resid_post", x + mlp_out)


class Embed(eqx.Module):
    W_E: Float[Array, "d_vocab d_model"]


class PosEmbed(eqx.Module):
    W_pos: Float[Array, "n_ctx d_model"]


class Unembed(eqx.Module):
    W_U: Float[Array, "d_model d_vocab"]
    b_U: Float[Array, " d_vocab"]


class Transformer(eqx.Module):
    """A decoder-only transformer whose activations are TransformerLens-named taps.

    Attributes:
        embed, pos_embed (None for rotary models), blocks (stacked over `layer`), ln_final,
        unembed: parameters, named and laid out as in TransformerLens.
        cfg: the architecture.
    """

    embed: Embed
    pos_embed: PosEmbed | None
    blocks: Block
    ln_final: Norm
    unembed: Unembed
    cfg: TransformerConfig = eqx.field(static=True)

    def span(
        self,
        n_pos: int,
        *,
        n_slots: int = 0,
        past_len: Int[Array, ""] | None = None,
        attention_mask: Bool[ArrayLike, " key_pos"] | None = None,
    ) -> Span:
        """Positions and attention of `n_pos` tokens continuing `n_slots` cached ones.

        Arguments:
            n_pos: number of tokens run (static).
            n_slots: number of cached positions before them (static).
            past_len: with a preallocated cache, the number of valid slots (traced: one
                compiled decode step serves every length); tokens then sit at positions
                `past_len, past_len + 1, ...`.
            attention_mask: HF semantics, `[n_slots + n_pos]`, 1 (True) for real tokens and
                0 for padding, cached positions included. Position ids count real tokens
                only (left padding shifts nothing), and no position reads a padded key. A
                padded position reads only itself, so its values stay finite (and unused).

        Returns:
            The `Span` every block of the forward uses.
        """
        # with a preallocated cache (past_len) the caller checks the positions it uses
        n_used = n_slots + n_pos if past_len is None else 0
        if self.cfg.positional == "learned" and n_used > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {n_slots + n_pos} tokens exceeds n_ctx={self.cfg.n_ctx}"
            )
        key = jnp.arange(n_slots + n_pos)[None, :]
        query = jnp.arange(n_pos)[:, None]
        valid_past = n_slots if past_len is None else past_len
        causal = jnp.where(key < n_slots, key < valid_past, key - n_slots <= query)
        if attention_mask is None:
            return Span(valid_past + jnp.arange(n_pos), causal)
        if past_len is not None:
            raise ValueError("attention_mask and past_len cannot be combined")
        mask = jnp.asarray(attention_mask)
        if mask.shape != (n_slots + n_pos,):
            raise ValueError(
                f"attention_mask must cover the {n_slots} cached and {n_pos} new "
                f"positions, got shape {mask.shape}"
            )
        mask = mask.astype(bool)
        positions = jnp.maximum(jnp.cumsum(mask) - 1, 0)[n_slots:]
        attend = (causal & mask[None]) | (key - n_slots == query)
        return Span(positions, attend)

    def embed_tokens(
        self, tokens: Int[Array, " pos"], span: Span, taps: _View
    ) -> Float[Array, "pos d_model"]:
        """Stage 1: the residual stream entering block 0 (`hook_embed` + `hook_pos_embed`).

        Token ids are not checked here: `run` and every kernel validate them on the host
        (`inputs.check_tokens`). A check inside the traced program would be a host
        callback, and JAX never writes such programs to its persistent compilation cache.
        """
        x = taps("hook_embed", self.embed.W_E[tokens])
        if self.pos_embed is not None:
            x = x + taps("hook_pos_embed", self.pos_embed.W_pos[span.positions])
        return x

    def run_blocks(
        self,
        x: Float[Array, "pos d_model"],
        span: Span,
        taps: Taps,
        start: int = 0,
        stop: int | None = None,
        past: tuple[Array, Array] | None = None,
    ) -> Float[Array, "pos d_model"]:
        """Stage 2: blocks `[start, stop)` on the residual stream entering block `start`.

        Taps keep their global names (`blocks.{l}.X` with `start <= l < stop`); a stacked
        edit `blocks.*.X` has a leading axis over all `n_layers`, of which this range is
        used. Scanned over the stacked block parameters, so compile time does not grow
        with depth.

        Arguments:
            x: `blocks.{start}.hook_resid_pre`, `[pos, d_model]`.
            span: positions and attention of `x` (see `span`).
            taps: the forward's recorder.
            start, stop: the layer range (static; `stop` defaults to `n_layers`).
            past: cache of earlier positions for these layers, keys and values each
                `[stop - start, n_slots, kv_head_index, d_head]`.

        Returns:
            The residual stream leaving block `stop - 1`, `[pos, d_model]`.
        """
        cfg = self.cfg
        stop = cfg.n_layers if stop is None else stop
        if not 0 <= start <= stop <= cfg.n_layers:
            raise ValueError(f"bad layer range [{start}, {stop}) of {cfg.n_layers}")
        if start == stop:
            return x
        plan = taps.block_range(start, stop, x.shape[0], span.attend.shape[1], x.dtype)
        params, static = eqx.partition(self.blocks, eqx.is_array)
        if (start, stop) != (0, cfg.n_layers):
            params = jax.tree.map(lambda a: a[start:stop], params)

        def body(carry, xs):
            x, buffers = carry
            block_params, layer, stacked_edits, past = xs
            block_taps = plan.enter(layer, stacked_edits, buffers)
            x = eqx.combine(block_params, static)(x, block_taps, span, past)
            return (x, block_taps.buffers), block_taps.outputs

        xs = (params, jnp.arange(start, stop), plan.stacked_edits, past)
        (x, buffers), outputs = jax.lax.scan(body, (x, plan.buffers), xs)
        plan.finish(buffers, outputs)
        return x

    def unembed_resid(
        self, x: Float[Array, "pos d_model"], taps: _View
    ) -> Float[Array, "pos d_vocab"]:
        """Stage 3: final norm and unembedding."""
        x = self.ln_final(x, taps.scope("ln_final"))
        return x @ self.unembed.W_U + self.unembed.b_U[None]

    def __call__(
        self,
        tokens: Int[Array, " pos"],
        taps: Taps | None = None,
        past_kv: tuple[Array, Array] | None = None,
        past_len: Int[Array, ""] | None = None,
        attention_mask: Bool[ArrayLike, " key_pos"] | None = None,
    ) -> Float[Array, "pos d_vocab"]:
        """Logits for every position of one token sequence: the three stages composed.

        Arguments:
            tokens: token ids, `[pos]`.
            taps: a recorder built inside the traced function (see `kernels.run`); None runs
                the plain forward.
            past_kv: optional cache of an earlier prefix: keys and values, each
                `[layer, n_slots, kv_head_index, d_head]`, as captured from the prefix's
                `blocks.*.attn.hook_rot_k` (`hook_k` for learned positions) and
                `blocks.*.attn.hook_v` (see `kernels.run.prefix_cache`). `tokens` then
                continue that prefix.
            past_len: with a preallocated `past_kv`, the number of valid cache slots.
            attention_mask: `[n_slots + pos]`, 1 for real tokens, 0 for padding (HF).

        Returns:
            Logits `[pos, d_vocab]`.
        """
        taps = Taps(self.cfg) if taps is None else taps
        n_slots = 0 if past_kv is None else past_kv[0].shape[1]
        span = self.span(
            tokens.shape[0],
            n_slots=n_slots,
            past_len=past_len,
            attention_mask=attention_mask,
        )
        x = self.embed_tokens(tokens, span, taps)
        x = self.run_blocks(x, span, taps, past=past_kv)
        return self.unembed_resid(x, taps)


def init_transformer(
    cfg: TransformerConfig, key: PRNGKeyArray, *, dtype=jnp.float32, std: float = 0.02
) -> Transformer:
    """A randomly initialised model (GPT-2 style: N(0, std), output projections scaled by
    `1/sqrt(2 n_layers)`, zero biases, unit norm weights).

    Use `eqx.filter_eval_shape(init_transformer, cfg, key)` for an abstract skeleton that a
    converter fills without allocating random weights.
    """
    d, h, kv, dh, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp
    out_std = std / math.sqrt(2 * cfg.n_layers)

    def normal(key, shape, s=std):
        return (s * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    def zeros(*shape):
        return jnp.zeros(shape, dtype)

    def norm():
        return Norm(jnp.ones((d,), dtype), zeros(d), kind=cfg.norm, eps=cfg.eps)

    def block(key):
        kq, kk, kv_, ko, ki, kg, kout = jax.random.split(key, 7)
        attn = Attention(
            W_Q=normal(kq, (h, d, dh)),
            W_K=normal(kk, (kv, d, dh)),
            W_V=normal(kv_, (kv, d, dh)),
            W_O=normal(ko, (h, dh, d), out_std),
            b_Q=zeros(h, dh),
            b_K=zeros(kv, dh),
            b_V=zeros(kv, dh),
            b_O=zeros(d),
            cfg=cfg,
        )
        mlp = MLP(
            W_in=normal(ki, (d, f)),
            b_in=zeros(f),
            W_out=normal(kout, (f, d), out_std),
            b_out=zeros(d),
            W_gate=normal(kg, (d, f)) if cfg.gated_mlp else None,
            act_fn=cfg.act_fn,
        )
        return Block(norm(), attn, norm(), mlp, parallel_residual=cfg.parallel_residual)

    k_embed, k_pos, k_blocks, k_unembed = jax.random.split(key, 4)
    W_E = normal(k_embed, (cfg.d_vocab, d))
    return Transformer(
        embed=Embed(W_E),
        pos_embed=PosEmbed(normal(k_pos, (cfg.n_ctx, d), 0.01))
        if cfg.positional == "learned"
        else None,
        blocks=eqx.filter_vmap(block)(jax.random.split(k_blocks, cfg.n_layers)),
        ln_final=norm(),
        unembed=Unembed(
            W_E.T if cfg.tied_embeddings else normal(k_unembed, (d, cfg.d_vocab)),
            zeros(cfg.d_vocab),
        ),
        cfg=cfg,
    )

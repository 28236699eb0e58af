"""The bidirectional masked-diffusion transformer of every model family (SPEC §1), in Flax NNX.

One Llama-style architecture serves LLaDA and Dream (a family = a preset of
`TransformerConfig` + a conversion mapping table; `models/llada.py`, `models/dream.py`).
Block (no causal mask):
    n1 = attn_norm(x);  h = x + attn_out(Attn(RoPE(q_proj n1 [+ q_bias]), RoPE(k_proj n1 [+ k_bias]),
                                              v_proj n1 [+ v_bias]))
    n2 = ff_norm(h);    y = h + ff_out(silu(ff_proj n2) * up_proj n2)
    logits = lm_head(ln_f(h_L))

The family switches (set by the presets and by `convert/`, never by samplers or losses):
  qkv_bias        q/k/v projections have biases (Dream, Qwen2-style).
  logits_shift    the checkpoint predicts token i from position i - 1 (Dream, trained from an
                  AR model). The model's *contract* is that output position i scores token i,
                  so `hidden()` (and every method below) returns the states shifted right by
                  one, the first position copied: h'[:, 0] = h[:, 0], h'[:, i] = h[:, i - 1].
                  Samplers and likelihoods therefore never special-case a family.
  pad_positions   with a padding mask, RoPE positions count real tokens only
                  (`cumsum(mask) - 1`, pads at 1): Dream's `tok_idx`. LLaDA keeps absolute
                  positions (its released code ignores the mask).

Parameters of the `n_layers` blocks are *stacked* on a leading layer axis and run with
one `jax.lax.scan` (one compiled layer), optionally under `jax.checkpoint` (remat).
Kernels are stored `[in, out]` (torch Linear weights are `[out, in]`).

LoRA (optional, `lora_rank > 0`): for every target projection `t`, `nnx.LoRAParam`s
`lora_a[t] [N, in, r]` and `lora_b[t] [N, r, out]` add `(x @ A @ B) * alpha / r` to the
projection. `lora_b` starts at zero, so a fresh adapter leaves the model unchanged. The
factors are stored in `lora_dtype` (fp32 by default, as PEFT upcasts adapters of a bf16
model: they are the optimiser's master weights) and cast to the compute dtype in the forward.

KV cache (for the sampler's approximate block cache, sampling/loop.py): `hidden_and_kv` is
`hidden` that also returns every layer's post-RoPE keys/values `[N, B, T, Hkv, hd]`;
`hidden_with_cache` recomputes a window `[start, start + W)` only, its queries attending to
the window's fresh keys/values and the cached ones everywhere else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import attention

# Per-layer projections: name -> (input dim attr, output dim attr).
PROJECTIONS = {
    "q_proj": ("d_model", "d_model"),
    "k_proj": ("d_model", "kv_dim"),
    "v_proj": ("d_model", "kv_dim"),
    "attn_out": ("d_model", "d_model"),
    "ff_proj": ("d_model", "mlp_hidden"),  # gate (silu applied)
    "up_proj": ("d_model", "mlp_hidden"),
    "ff_out": ("mlp_hidden", "d_model"),  # down
}
LAYER_NORMS = ("attn_norm", "ff_norm")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


FAMILIES = ("llada", "dream")
QKV_BIASES = ("q_bias", "k_bias", "v_bias")  # per-layer [N, out] when qkv_bias


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture + numerics of one model (field names follow SPEC §1; defaults = LLaDA-8B).

    family: 'llada' | 'dream' - which conversion table / tokenizer conventions apply;
    qkv_bias, logits_shift, pad_positions: the family switches (module docstring)."""

    family: str = "llada"
    qkv_bias: bool = False
    logits_shift: bool = False
    pad_positions: bool = False
    vocab_size: int = 126464  # embedding rows
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    mlp_hidden: int = 12288
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    eot_token_id: int = 126348
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    lora_dtype: str = "float32"  # LoRA factors are master weights: bf16 would round away most AdamW updates
    remat: str = "none"  # one of REMAT_POLICIES
    attention_impl: str = "auto"  # models/attention.py: auto (per backend) | xla | cudnn | splash
    lora_rank: int = 0
    lora_alpha: float = 64.0
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")

    def __post_init__(self):
        errors = []
        if self.family not in FAMILIES:
            errors.append(f"family={self.family!r}: choose one of {FAMILIES}")
        if self.d_model % self.n_heads:
            errors.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            errors.append(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            errors.append("head_dim must be even for rotate-half RoPE")
        if not 0 <= self.mask_token_id < self.vocab_size:
            errors.append(f"mask_token_id={self.mask_token_id} must lie in [0, vocab_size={self.vocab_size})")
        if (self.attention_impl or "auto") not in attention.ATTENTION_IMPLS:
            errors.append(f"attention_impl={self.attention_impl!r}: choose one of {attention.ATTENTION_IMPLS}")
        if self.remat not in REMAT_POLICIES:
            errors.append(f"remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        bad = set(self.lora_targets) - set(PROJECTIONS)
        if bad:
            errors.append(f"lora_targets has unknown names {sorted(bad)}; valid: {sorted(PROJECTIONS)}")
        if errors:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **kw) -> "TransformerConfig":
        return dataclasses.replace(self, **kw)

    def param_count(self) -> int:
        per_layer = sum(getattr(self, i) * getattr(self, o) for i, o in PROJECTIONS.values()) + 2 * self.d_model
        if self.qkv_bias:
            per_layer += self.d_model + 2 * self.kv_dim
        return per_layer * self.n_layers + 2 * self.vocab_size * self.d_model + self.d_model


# ----------------------------------------------------------------------------- functions


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * w, statistics in fp32, result in x.dtype. x [..., D]."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return xf.astype(x.dtype) * weight.astype(x.dtype)


def rope_tables(positions, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin fp32 for `positions`: an int (= positions 0..L-1 -> `[L, hd]`) or an int array
    `[L]` / `[B, L]` (-> `[..., hd]`); halves repeated (rotate-half layout)."""
    if isinstance(positions, int):
        positions = jnp.arange(positions)
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x `[B, L, H, hd]` -> x*cos + rotate_half(x)*sin, computed in fp32, returned in x.dtype.
    cos/sin `[L, hd]` (shared positions) or `[B, L, hd]` (per-row positions)."""
    xf = x.astype(jnp.float32)
    half = xf.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    cos, sin = (t[None, :, None, :] if t.ndim == 2 else t[:, :, None, :] for t in (cos, sin))
    out = xf * cos + rotated * sin
    return out.astype(x.dtype)


def positions_of(cfg: TransformerConfig, length: int, padding_mask: Optional[jax.Array]):
    """RoPE positions: `length` (absolute 0..L-1), or with `cfg.pad_positions` and a padding
    mask `[B, L]` the per-row `[B, L]` int32 count of real tokens before each one (Dream's
    `tok_idx = cumsum(mask) - 1`, pads set to 1)."""
    if not cfg.pad_positions or padding_mask is None:
        return length
    mask = padding_mask.astype(bool)
    return jnp.where(mask, jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, 1)


def shift_right(h: jax.Array) -> jax.Array:
    """`[B, L, ...]` -> h'[:, 0] = h[:, 0], h'[:, i] = h[:, i - 1] (a family whose position i - 1
    predicts token i; the first position copied, as Dream's generation code does)."""
    return jnp.concatenate([h[:, :1], h[:, :-1]], axis=1)


def _project(name: str, x: jax.Array, layer: dict, cfg: TransformerConfig, lora_on: bool) -> jax.Array:
    """x @ W (+ LoRA delta). x `[B, L, in]`, W `[in, out]`."""
    dt = x.dtype
    y = x @ layer[name].astype(dt)
    if lora_on and f"lora_a.{name}" in layer:
        scale = cfg.lora_alpha / cfg.lora_rank
        y = y + ((x @ layer[f"lora_a.{name}"].astype(dt)) @ layer[f"lora_b.{name}"].astype(dt)) * scale
    return y


def _qkv(n1: jax.Array, layer: dict, cfg: TransformerConfig, cos, sin, lora_on: bool):
    """Post-RoPE q `[B, L, H, hd]`, k and v `[B, L, Hkv, hd]` from the normed input n1 `[B, L, D]`
    (+ q/k/v biases when cfg.qkv_bias; LoRA deltas add to the biased projection as in PEFT)."""
    b, n, _ = n1.shape
    hd = cfg.head_dim
    q, k, v = (_project(name, n1, layer, cfg, lora_on) for name in ("q_proj", "k_proj", "v_proj"))
    if cfg.qkv_bias:
        q, k, v = (y + layer[bias].astype(y.dtype) for y, bias in zip((q, k, v), QKV_BIASES))
    q = q.reshape(b, n, cfg.n_heads, hd)
    k = k.reshape(b, n, cfg.n_kv_heads, hd)
    v = v.reshape(b, n, cfg.n_kv_heads, hd)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def _attend_mlp(x: jax.Array, q, k, v, layer: dict, cfg: TransformerConfig, key_mask, lora_on: bool) -> jax.Array:
    """Rest of a block: x `[B, Lq, D]` + attention of q `[B, Lq, H, hd]` over k, v `[B, Lk, Hkv, hd]`, then MLP."""
    b, n, _ = x.shape
    att = attention.attention(q, k, v, key_mask, 1.0 / math.sqrt(cfg.head_dim), cfg.attention_impl)
    h = x + _project("attn_out", att.reshape(b, n, cfg.d_model), layer, cfg, lora_on)
    n2 = rms_norm(h, layer["ff_norm"], cfg.rms_norm_eps)
    ff = jax.nn.silu(_project("ff_proj", n2, layer, cfg, lora_on)) * _project("up_proj", n2, layer, cfg, lora_on)
    return h + _project("ff_out", ff, layer, cfg, lora_on)


def block_forward(x: jax.Array, layer: dict, cfg: TransformerConfig, cos, sin, key_mask, lora_on: bool,
                  return_kv: bool = False):
    """One block. x `[B, L, D]` (compute dtype); `layer` holds one layer's params.
    return_kv: also return this layer's post-RoPE k, v `[B, L, Hkv, hd]` (for a KV cache)."""
    n1 = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
    q, k, v = _qkv(n1, layer, cfg, cos, sin, lora_on)
    y = _attend_mlp(x, q, k, v, layer, cfg, key_mask, lora_on)
    return (y, k, v) if return_kv else y


def block_forward_cached(x: jax.Array, layer: dict, cfg: TransformerConfig, cos, sin, key_mask, lora_on: bool,
                         cache_k: jax.Array, cache_v: jax.Array, start) -> jax.Array:
    """One block for a window of W positions `[start, start + W)` against a KV cache.

    x `[B, W, D]`; cos/sin `[W, hd]` or `[B, W, hd]` for the window's positions; cache_k/v
    `[B, T, Hkv, hd]` (this layer's cached post-RoPE keys / values of the whole sequence). The
    window's fresh k, v replace the cache rows `[start, start + W)`; the W queries attend to all T keys:
        Attn(q_win, K), K = cache_k with K[start:start+W] = k_win   (V likewise).
    """
    n1 = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
    q, k, v = _qkv(n1, layer, cfg, cos, sin, lora_on)
    keys = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), start, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), start, axis=1)
    return _attend_mlp(x, q, keys.astype(q.dtype), values.astype(v.dtype), layer, cfg, key_mask, lora_on)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_saveable,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    return jax.checkpoint(fn, policy=policies[policy], prevent_cse=False)


# ----------------------------------------------------------------------------- module


def _init(rngs: nnx.Rngs, shape, dtype, std):
    return (jax.random.normal(rngs.params(), shape, jnp.float32) * std).astype(dtype)


class Transformer(nnx.Module):
    """The masked-diffusion transformer as an NNX module (LLaDA, Dream: `cfg.family`).

    Params (N = n_layers, D = d_model, H = mlp_hidden, V = vocab_size):
      embed [V, D]; blocks[name] [N, in, out] for name in PROJECTIONS;
      blocks[attn_norm|ff_norm] [N, D]; with cfg.qkv_bias blocks[q_bias] [N, D],
      blocks[k_bias|v_bias] [N, kv_dim]; ln_f [D]; lm_head [D, V];
      optional lora_a[name] [N, in, r], lora_b[name] [N, r, out] (nnx.LoRAParam).
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd, ld = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.lora_dtype)
        std = 0.02
        self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.d_model), pd, std))
        self.blocks = nnx.Dict()
        for name, (i, o) in PROJECTIONS.items():
            self.blocks[name] = nnx.Param(_init(rngs, (cfg.n_layers, getattr(cfg, i), getattr(cfg, o)), pd, std))
        for name in LAYER_NORMS:
            self.blocks[name] = nnx.Param(jnp.ones((cfg.n_layers, cfg.d_model), pd))
        if cfg.qkv_bias:
            for name, proj in zip(QKV_BIASES, ("q_proj", "k_proj", "v_proj")):
                self.blocks[name] = nnx.Param(jnp.zeros((cfg.n_layers, getattr(cfg, PROJECTIONS[proj][1])), pd))
        self.ln_f = nnx.Param(jnp.ones((cfg.d_model,), pd))
        self.lm_head = nnx.Param(_init(rngs, (cfg.d_model, cfg.vocab_size), pd, std))
        self.lora_a = nnx.Dict()
        self.lora_b = nnx.Dict()
        if cfg.lora_rank > 0:
            for name in cfg.lora_targets:
                i, o = PROJECTIONS[name]
                din, dout = getattr(cfg, i), getattr(cfg, o)
                a = _init(rngs, (cfg.n_layers, din, cfg.lora_rank), ld, 1.0 / math.sqrt(din))
                self.lora_a[name] = nnx.LoRAParam(a)
                self.lora_b[name] = nnx.LoRAParam(jnp.zeros((cfg.n_layers, cfg.lora_rank, dout), ld))

    # -- forward ---------------------------------------------------------------------------

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """tokens `[B, L]` int32 -> embeddings `[B, L, D]` in the compute dtype."""
        table = shd.constrain(self.embed[...], (None, None))  # FSDP: gather the table, then look up
        x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(self.cfg.compute_dtype))
        return shd.constrain(x, ("batch", "length", "act_embed"))

    def _layers(self, lora: bool) -> tuple[dict, bool]:
        """Stacked per-layer params (+ LoRA factors when on) for lax.scan, and whether LoRA is on."""
        layers = {k: v[...] for k, v in self.blocks.items()}
        lora_on = lora and self.cfg.lora_rank > 0
        if lora_on:
            for name in self.lora_a:
                layers[f"lora_a.{name}"] = self.lora_a[name][...]
                layers[f"lora_b.{name}"] = self.lora_b[name][...]
        return layers, lora_on

    @staticmethod
    def _key_mask(padding_mask: Optional[jax.Array]) -> Optional[jax.Array]:
        """`[B, Lk]` bool key mask (True = real key) for `attention.attention`, or None."""
        return None if padding_mask is None else padding_mask.astype(bool)

    def _out(self, h: jax.Array) -> jax.Array:
        """Final norm, then the family's output alignment (`shift_right` when cfg.logits_shift)."""
        h = rms_norm(h, self.ln_f[...], self.cfg.rms_norm_eps)
        return shift_right(h) if self.cfg.logits_shift else h

    def hidden(self, tokens: jax.Array, padding_mask: Optional[jax.Array] = None, *, lora: bool = True) -> jax.Array:
        """Final hidden states after ln_f, position i scoring token i. tokens `[B, L]` int32 ->
        `[B, L, D]` compute dtype.

        padding_mask `[B, L]` bool (True = real token) masks padded *keys* (and, with
        cfg.pad_positions, sets the RoPE positions); None = everything attends to everything,
        padding included (LLaDA's released behaviour).
        `lora=False` runs the base model (the RL reference policy) without a weight copy.
        """
        cfg = self.cfg
        x = self._embed(tokens)
        cos, sin = rope_tables(positions_of(cfg, tokens.shape[1], padding_mask), cfg.head_dim, cfg.rope_theta)
        key_mask = self._key_mask(padding_mask)
        layers, lora_on = self._layers(lora)

        def body(h, layer):
            h = block_forward(h, layer, cfg, cos, sin, key_mask, lora_on)
            return shd.constrain(h, ("batch", "length", "act_embed")), None

        x, _ = jax.lax.scan(_remat(body, cfg.remat), x, layers)
        return self._out(x)

    # -- KV cache (approximate block caching for the sampler; see sampling/loop.py) ----------

    def hidden_and_kv(self, tokens: jax.Array, padding_mask: Optional[jax.Array] = None, *,
                      lora: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`hidden()` plus every layer's post-RoPE keys and values, in one forward.

        tokens `[B, T]` int32 -> (h `[B, T, D]`, k `[N, B, T, Hkv, hd]`, v `[N, B, T, Hkv, hd]`),
        all in the compute dtype; h equals `hidden(tokens, padding_mask, lora=lora)`.
        """
        cfg = self.cfg
        x = self._embed(tokens)
        cos, sin = rope_tables(positions_of(cfg, tokens.shape[1], padding_mask), cfg.head_dim, cfg.rope_theta)
        key_mask = self._key_mask(padding_mask)
        layers, lora_on = self._layers(lora)
        kv_axes = ("batch", "length", "heads", None)

        def body(h, layer):
            h, k, v = block_forward(h, layer, cfg, cos, sin, key_mask, lora_on, return_kv=True)
            kv = (shd.constrain(k, kv_axes), shd.constrain(v, kv_axes))
            return shd.constrain(h, ("batch", "length", "act_embed")), kv

        x, (k, v) = jax.lax.scan(_remat(body, cfg.remat), x, layers)
        return self._out(x), k, v

    def hidden_with_cache(self, tokens: jax.Array, start, width: int, cache_k: jax.Array, cache_v: jax.Array,
                          padding_mask: Optional[jax.Array] = None, *, lora: bool = True) -> jax.Array:
        """Hidden states of the window `[start, start + width)` of the sequence, the rest read
        from a KV cache.

        tokens `[B, T]` int32: the whole current sequence; `start` (int or scalar int32 array,
        the same for every row; start + width <= T, and start >= 1 when cfg.logits_shift);
        `width` a static int. cache_k / cache_v `[N, B, T, Hkv, hd]` from `hidden_and_kv`
        (possibly of an older sequence). In every layer the recomputed positions' fresh k, v
        replace their cached rows and their queries attend to all T keys
        (`block_forward_cached`); other positions are not recomputed. The recomputed positions
        are the window, plus with cfg.logits_shift the one before it (its state scores the
        window's first token): `[start - 1, start + width)`. padding_mask `[B, T]` bool as in
        `hidden()`. Returns `[B, width, D]`: exact (= `hidden(tokens)[:, start:start+width]`)
        when the cache came from the same tokens, an approximation otherwise (the cached
        positions do not see the window's new tokens).
        """
        cfg = self.cfg
        ctx = 1 if cfg.logits_shift else 0
        first = start - ctx
        part = jax.lax.dynamic_slice_in_dim(tokens, first, width + ctx, axis=1)
        x = self._embed(part)
        positions = positions_of(cfg, tokens.shape[1], padding_mask)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        axis = cos.ndim - 2
        cos = jax.lax.dynamic_slice_in_dim(cos, first, width + ctx, axis=axis)
        sin = jax.lax.dynamic_slice_in_dim(sin, first, width + ctx, axis=axis)
        key_mask = self._key_mask(padding_mask)
        layers, lora_on = self._layers(lora)

        def body(h, xs):
            layer, ck, cv = xs
            h = block_forward_cached(h, layer, cfg, cos, sin, key_mask, lora_on, ck, cv, first)
            return shd.constrain(h, ("batch", "length", "act_embed")), None

        x, _ = jax.lax.scan(_remat(body, cfg.remat), x, (layers, cache_k, cache_v))
        return rms_norm(x, self.ln_f[...], cfg.rms_norm_eps)[:, :width]

    def logits_from_hidden(self, h: jax.Array, out_dtype=jnp.float32) -> jax.Array:
        """`[..., D]` -> `[..., V]` (the untied LM head): h's dtype in, fp32
        accumulation, `out_dtype` out. The fp32 default keeps log-probs and the sampler's
        confidences free of bf16 rounding of the logits (~0.01 nats at LLaDA's scale, as large
        as a step's log-ratio), at no extra matmul cost."""
        return jnp.matmul(h, self.lm_head[...].astype(h.dtype), preferred_element_type=jnp.float32).astype(out_dtype)

    def __call__(self, tokens, padding_mask=None, *, lora: bool = True, return_hidden: bool = False):
        """tokens `[B, L]` int32 -> logits `[B, L, V]` (compute dtype), or hidden `[B, L, D]`;
        position i scores token i for every family."""
        h = self.hidden(tokens, padding_mask, lora=lora)
        return h if return_hidden else self.logits_from_hidden(h, h.dtype)

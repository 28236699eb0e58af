"""LLaDA: a Llama-style *bidirectional* transformer (SPEC §1), as a Flax NNX module.

Block (no causal mask):
    n1 = attn_norm(x);  h = x + attn_out(Attn(RoPE(q_proj n1), RoPE(k_proj n1), v_proj n1))
    n2 = ff_norm(h);    y = h + ff_out(silu(ff_proj n2) * up_proj n2)
    logits = lm_head(ln_f(h_L))

Parameters of the `n_layers` blocks are *stacked* on a leading layer axis and run with
one `jax.lax.scan` (one compiled layer), optionally under `jax.checkpoint` (remat).
Kernels are stored `[in, out]` (torch Linear weights are `[out, in]`).

LoRA (optional, `lora_rank > 0`): for every target projection `t`, `nnx.LoRAParam`s
`lora_a[t] [N, in, r]` and `lora_b[t] [N, r, out]` add `(x @ A @ B) * alpha / r` to the
projection. `lora_b` starts at zero, so a fresh adapter leaves the model unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from diffpo_jax import sharding as shd

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


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
    """Architecture + numerics of a LLaDA model (field names follow SPEC §1)."""

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
    remat: str = "none"  # one of REMAT_POLICIES
    attention_impl: Optional[str] = None  # None (XLA picks) | "xla" | "cudnn"
    lora_rank: int = 0
    lora_alpha: float = 64.0
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")

    def __post_init__(self):
        errors = []
        if self.d_model % self.n_heads:
            errors.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            errors.append(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            errors.append("head_dim must be even for rotate-half RoPE")
        if not 0 <= self.mask_token_id < self.vocab_size:
            errors.append(f"mask_token_id={self.mask_token_id} must lie in [0, vocab_size={self.vocab_size})")
        if self.remat not in REMAT_POLICIES:
            errors.append(f"remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        bad = set(self.lora_targets) - set(PROJECTIONS)
        if bad:
            errors.append(f"lora_targets has unknown names {sorted(bad)}; valid: {sorted(PROJECTIONS)}")
        if errors:
            raise ValueError("LLaDAConfig: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **kw) -> "LLaDAConfig":
        return dataclasses.replace(self, **kw)

    def param_count(self) -> int:
        per_layer = sum(getattr(self, i) * getattr(self, o) for i, o in PROJECTIONS.values()) + 2 * self.d_model
        return per_layer * self.n_layers + 2 * self.vocab_size * self.d_model + self.d_model


def llada_8b_instruct(**kw) -> LLaDAConfig:
    """GSAI-ML/LLaDA-8B-Instruct (SPEC §1); bf16 params by default."""
    return LLaDAConfig(**{"param_dtype": "bfloat16", **kw})


def tiny(**kw) -> LLaDAConfig:
    """A 2-layer model for tests (vocab 320, mask id 300 inside the vocab)."""
    base = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=128,
                rope_theta=10000.0, max_sequence_length=512, mask_token_id=300, eos_token_id=301,
                pad_token_id=301, eot_token_id=302, compute_dtype="float32")
    return LLaDAConfig(**{**base, **kw})


PRESETS = {"llada_8b_instruct": llada_8b_instruct, "tiny": tiny}


def get_preset(name: str, **kw) -> LLaDAConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kw)


# ----------------------------------------------------------------------------- functions


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * w, statistics in fp32, result in x.dtype. x [..., D]."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return xf.astype(x.dtype) * weight.astype(x.dtype)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin `[L, head_dim]` fp32 for positions 0..L-1 (halves repeated: rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x `[B, L, H, hd]` -> x*cos + rotate_half(x)*sin, computed in fp32, returned in x.dtype."""
    xf = x.astype(jnp.float32)
    half = xf.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.astype(x.dtype)


def _project(name: str, x: jax.Array, layer: dict, cfg: LLaDAConfig, lora_on: bool) -> jax.Array:
    """x @ W (+ LoRA delta). x `[B, L, in]`, W `[in, out]`."""
    dt = x.dtype
    y = x @ layer[name].astype(dt)
    if lora_on and f"lora_a.{name}" in layer:
        scale = cfg.lora_alpha / cfg.lora_rank
        y = y + ((x @ layer[f"lora_a.{name}"].astype(dt)) @ layer[f"lora_b.{name}"].astype(dt)) * scale
    return y


def block_forward(x: jax.Array, layer: dict, cfg: LLaDAConfig, cos, sin, attn_mask, lora_on: bool) -> jax.Array:
    """One LLaDA block. x `[B, L, D]` (compute dtype); `layer` holds one layer's params."""
    b, n, _ = x.shape
    hd = cfg.head_dim
    n1 = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
    q = _project("q_proj", n1, layer, cfg, lora_on).reshape(b, n, cfg.n_heads, hd)
    k = _project("k_proj", n1, layer, cfg, lora_on).reshape(b, n, cfg.n_kv_heads, hd)
    v = _project("v_proj", n1, layer, cfg, lora_on).reshape(b, n, cfg.n_kv_heads, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    att = jax.nn.dot_product_attention(q, k, v, mask=attn_mask, scale=1.0 / math.sqrt(hd),
                                       implementation=cfg.attention_impl)
    h = x + _project("attn_out", att.reshape(b, n, cfg.d_model), layer, cfg, lora_on)
    n2 = rms_norm(h, layer["ff_norm"], cfg.rms_norm_eps)
    ff = jax.nn.silu(_project("ff_proj", n2, layer, cfg, lora_on)) * _project("up_proj", n2, layer, cfg, lora_on)
    return h + _project("ff_out", ff, layer, cfg, lora_on)


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


class LLaDA(nnx.Module):
    """LLaDA as an NNX module.

    Params (N = n_layers, D = d_model, H = mlp_hidden, V = vocab_size):
      embed [V, D]; blocks[name] [N, in, out] for name in PROJECTIONS;
      blocks[attn_norm|ff_norm] [N, D]; ln_f [D]; lm_head [D, V];
      optional lora_a[name] [N, in, r], lora_b[name] [N, r, out] (nnx.LoRAParam).
    """

    def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        std = 0.02
        self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.d_model), pd, std))
        self.blocks = nnx.Dict()
        for name, (i, o) in PROJECTIONS.items():
            self.blocks[name] = nnx.Param(_init(rngs, (cfg.n_layers, getattr(cfg, i), getattr(cfg, o)), pd, std))
        for name in LAYER_NORMS:
            self.blocks[name] = nnx.Param(jnp.ones((cfg.n_layers, cfg.d_model), pd))
        self.ln_f = nnx.Param(jnp.ones((cfg.d_model,), pd))
        self.lm_head = nnx.Param(_init(rngs, (cfg.d_model, cfg.vocab_size), pd, std))
        self.lora_a = nnx.Dict()
        self.lora_b = nnx.Dict()
        if cfg.lora_rank > 0:
            for name in cfg.lora_targets:
                i, o = PROJECTIONS[name]
                din, dout = getattr(cfg, i), getattr(cfg, o)
                a = _init(rngs, (cfg.n_layers, din, cfg.lora_rank), pd, 1.0 / math.sqrt(din))
                self.lora_a[name] = nnx.LoRAParam(a)
                self.lora_b[name] = nnx.LoRAParam(jnp.zeros((cfg.n_layers, cfg.lora_rank, dout), pd))

    # -- forward ---------------------------------------------------------------------------

    def hidden(self, tokens: jax.Array, padding_mask: Optional[jax.Array] = None, *, lora: bool = True) -> jax.Array:
        """Final hidden states after ln_f. tokens `[B, L]` int32 -> `[B, L, D]` compute dtype.

        padding_mask `[B, L]` bool (True = real token) masks padded *keys*; None = LLaDA's
        released behaviour (everything attends to everything, padding included).
        `lora=False` runs the base model (the RL reference policy) without a weight copy.
        """
        cfg = self.cfg
        dt = jnp.dtype(cfg.compute_dtype)
        table = shd.constrain(self.embed[...], (None, None))  # FSDP: gather the table, then look up
        x = jnp.take(table, tokens, axis=0).astype(dt)
        x = shd.constrain(x, ("batch", "length", "act_embed"))
        cos, sin = rope_tables(tokens.shape[1], cfg.head_dim, cfg.rope_theta)
        attn_mask = None
        if padding_mask is not None:
            attn_mask = padding_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, Lk] broadcasts over q
        layers = {k: v[...] for k, v in self.blocks.items()}
        lora_on = lora and cfg.lora_rank > 0
        if lora_on:
            for name in self.lora_a:
                layers[f"lora_a.{name}"] = self.lora_a[name][...]
                layers[f"lora_b.{name}"] = self.lora_b[name][...]

        def body(h, layer):
            h = block_forward(h, layer, cfg, cos, sin, attn_mask, lora_on)
            return shd.constrain(h, ("batch", "length", "act_embed")), None

        x, _ = jax.lax.scan(_remat(body, cfg.remat), x, layers)
        return rms_norm(x, self.ln_f[...], cfg.rms_norm_eps)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """`[..., D]` -> `[..., V]` in h's dtype (the untied LM head, HF `ff_out`)."""
        return h @ self.lm_head[...].astype(h.dtype)

    def __call__(self, tokens, padding_mask=None, *, lora: bool = True, return_hidden: bool = False):
        """tokens `[B, L]` int32 -> logits `[B, L, V]` (compute dtype), or hidden `[B, L, D]`."""
        h = self.hidden(tokens, padding_mask, lora=lora)
        return h if return_hidden else self.logits_from_hidden(h)

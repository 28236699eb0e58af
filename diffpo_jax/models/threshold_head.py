"""Threshold head: a per-prompt EB sampler threshold γ (SPEC §5, reconstructed).

    f      = mean over non-padding prompt positions of the final hidden states of [p, M…M]
             (stop-gradient into the LLM)                                          `[B, D]`
    x      = f / rms(f)   (parameter-free; makes the init independent of the hidden-state scale)
    u      = W2 · gelu(W1 x + b1) + b2                                             `[B]`
    μ_φ(p) = γ_max · sigmoid(u)
Init: b2 = logit(γ_init / γ_max) and small W2, so μ ≈ γ_init for every prompt.
Rollouts draw γ_g = clip(μ + σ ε_g, 0, γ_max), ε ~ N(0, 1), G per prompt; evaluation uses μ.

`Policy(llm, head)` bundles the LLM and the head so that one optimiser trains LoRA + head:
the head's parameters are `nnx.Param`s under the path `head` (replicated by sharding.py),
and `trainable_filter(joint=True)` selects `nnx.LoRAParam` and everything under `head`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from diffpo_jax import storage


class ThresholdHead(nnx.Module):
    """MLP D → hidden → 1 (GELU), output μ = γ_max·sigmoid(u). Params fp32."""

    def __init__(self, d_model: int, *, gamma_max: float, gamma_init: float, hidden: int = 256,
                 last_init_std: float = 1e-3, rngs: nnx.Rngs):
        if not 0.0 < gamma_init < gamma_max:
            raise ValueError(f"ThresholdHead: gamma_init={gamma_init} must lie strictly inside (0, gamma_max={gamma_max})")
        self.gamma_max = float(gamma_max)
        k1, k2 = rngs.params(), rngs.params()
        self.w1 = nnx.Param(jax.random.normal(k1, (d_model, hidden), jnp.float32) / math.sqrt(d_model))
        self.b1 = nnx.Param(jnp.zeros((hidden,), jnp.float32))
        self.w2 = nnx.Param(jax.random.normal(k2, (hidden, 1), jnp.float32) * last_init_std)
        frac = gamma_init / gamma_max
        self.b2 = nnx.Param(jnp.full((1,), math.log(frac / (1.0 - frac)), jnp.float32))

    def __call__(self, features: jax.Array) -> jax.Array:
        """features `[B, D]` -> μ `[B] f32` in (0, γ_max)."""
        x = features.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        u = jax.nn.gelu(x @ self.w1[...] + self.b1[...]) @ self.w2[...] + self.b2[...]
        return self.gamma_max * jax.nn.sigmoid(u[:, 0])


HEAD_PARAMS = ("w1", "b1", "w2", "b2")


def save_threshold_head(head: ThresholdHead, out_dir: str) -> list[str]:
    """Write the head for use outside JAX: `threshold_head.safetensors` (w1 `[D, H]`, b1 `[H]`,
    w2 `[H, 1]`, b2 `[1]`, fp32) + `threshold_head.json` (γ_max and the formula). Process 0 writes."""
    if jax.process_index() != 0:
        return []
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: np.ascontiguousarray(np.asarray(jax.device_get(getattr(head, k)[...]), np.float32))
               for k in HEAD_PARAMS}
    meta = {"gamma_max": head.gamma_max, "d_model": int(tensors["w1"].shape[0]), "hidden": int(tensors["w1"].shape[1]),
            "formula": "f = mean of the final hidden states over the prompt's real tokens, from one forward of "
                       "[prompt, MASK x gen_length]; x = f / sqrt(mean(f^2) + 1e-6); "
                       "mu = gamma_max * sigmoid(gelu_tanh(x @ w1 + b1) @ w2 + b2)  (torch: gelu(approximate='tanh'))"}
    storage.write_atomic(os.path.join(out_dir, "threshold_head.safetensors"), lambda tmp: save_file(tensors, tmp))
    storage.write_text(os.path.join(out_dir, "threshold_head.json"), json.dumps(meta, indent=2))
    return ["threshold_head.safetensors", "threshold_head.json"]


def load_threshold_head(out_dir: str) -> ThresholdHead:
    """The head `save_threshold_head` wrote to `out_dir`."""
    with open(os.path.join(out_dir, "threshold_head.json")) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(out_dir, "threshold_head.safetensors"))
    head = ThresholdHead(meta["d_model"], gamma_max=meta["gamma_max"], gamma_init=meta["gamma_max"] / 2,
                         hidden=meta["hidden"], rngs=nnx.Rngs(0))
    for k in HEAD_PARAMS:
        getattr(head, k)[...] = jnp.asarray(tensors[k])
    return head


def prompt_features(hidden_prompt: jax.Array, prompt_mask: jax.Array) -> jax.Array:
    """stop_grad(mean over positions with prompt_mask of hidden_prompt). `[B, P, D]`, `[B, P]` -> `[B, D] f32`."""
    m = prompt_mask.astype(jnp.float32)[..., None]
    mean = (hidden_prompt.astype(jnp.float32) * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    return jax.lax.stop_gradient(mean)


def llm_prompt_features(llm, prompt: jax.Array, prompt_mask: jax.Array, gen_length: int, *,
                        use_padding_mask: bool = False, lora: bool = True) -> jax.Array:
    """Head input from one forward of `[p, M…M]` (the sampler's first forward). -> `[B, D] f32`."""
    b = prompt.shape[0]
    tokens = jnp.concatenate([prompt, jnp.full((b, gen_length), llm.cfg.mask_token_id, prompt.dtype)], axis=1)
    pm = None
    if use_padding_mask:
        pm = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, gen_length), bool)], axis=1)
    h = llm.hidden(tokens, pm, lora=lora)[:, : prompt.shape[1]]
    return prompt_features(h, prompt_mask)


def sample_gamma(mu: jax.Array, sigma: float, key: jax.Array, group_size: int, gamma_max: float):
    """Per-completion γ for a rollout. mu `[N]` (one per prompt) -> (γ `[N·G]` clipped to
    [0, γ_max], raw draws `[N·G]` = μ + σ ε, unclipped; REINFORCE uses the raw draw).
    Rows are grouped consecutively: rows g·G … g·G+G−1 belong to prompt g."""
    mu_rows = jnp.repeat(mu.astype(jnp.float32), group_size)
    raw = mu_rows + sigma * jax.random.normal(key, mu_rows.shape, jnp.float32)
    return jnp.clip(raw, 0.0, gamma_max), raw


class Policy(nnx.Module):
    """The trained policy: the LLM (LoRA trainable, base frozen) and an optional threshold head."""

    def __init__(self, llm: nnx.Module, head: Optional[ThresholdHead] = None):
        self.llm = llm
        self.head = head


def trainable_filter(joint: bool = True):
    """nnx filter of the trained parameters: LoRA (+ everything under `head` when joint)."""
    return nnx.Any(nnx.LoRAParam, nnx.PathContains("head")) if joint else nnx.LoRAParam

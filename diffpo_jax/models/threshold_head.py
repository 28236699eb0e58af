"""Threshold head: the EB sampler's threshold γ, per prompt (SPEC §5, reconstructed) or per
decoding step (`rl.head='step'`, beyond the paper: its open question 2).

    f      = mean over non-padding prompt positions of the final hidden states of [p, M…M]
             (stop-gradient into the LLM)                                          `[B, D]`
             = the sampler's own first forward, whose input is exactly [p, M…M]: the
             sampler computes f there (`HeadGamma`), so the head costs no extra NFE
    x      = f / rms(f)   (parameter-free; makes the init independent of the hidden-state scale)
    prompt head (n_step_features = 0):
      u      = W2 · gelu(W1 x + b1) + b2                                           `[B]`
      μ_φ(p) = γ_max · sigmoid(u)
    step head (n_step_features = F = len(STEP_FEATURES)):
      s_t    = the decoding state before step t's selection (`step_state_features`) `[B, F]`
      u_t    = W2 · gelu(W1 [x; s_t] + b1) + b2,  μ_φ(p, s_t) = γ_max · sigmoid(u_t)
Init: b2 = logit(γ_init / γ_max) and small W2, so μ ≈ γ_init for every prompt and state.
Draws (ε ~ N(0, 1)): the prompt head gives each completion one γ = clip(μ + σ ε, 0, γ_max) for
all its steps; the step head a fresh γ_t = clip(μ_t + σ ε_t, 0, γ_max) at every step, a
Gaussian policy whose log-density over a completion is Σ_{t < T_b} log N(raw_t; μ_t, σ²)
(T_b = the completion's decoding steps). Evaluation uses σ = 0 (γ = μ).

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
from flax import nnx, struct
from safetensors.numpy import load_file, save_file

from diffpo_jax import storage


HEAD_KINDS = ("prompt", "step")
STEP_FEATURES = ("steps taken / the sampler's static step bound", "masked fraction of the completion",
                 "masked fraction of the current block", "mean entropy of the block's masked positions / log V",
                 "least entropy of the block's masked positions / log V",
                 "mean confidence (max probability) of the block's masked positions")


class ThresholdHead(nnx.Module):
    """MLP (D [+ F]) → hidden → 1 (GELU), output μ = γ_max·sigmoid(u). Params fp32.
    n_step_features = 0: the prompt head; len(STEP_FEATURES): the step head."""

    def __init__(self, d_model: int, *, gamma_max: float, gamma_init: float, hidden: int = 256,
                 last_init_std: float = 1e-3, n_step_features: int = 0, rngs: nnx.Rngs):
        if not 0.0 < gamma_init < gamma_max:
            raise ValueError(f"ThresholdHead: gamma_init={gamma_init} must lie strictly inside (0, gamma_max={gamma_max})")
        if n_step_features not in (0, len(STEP_FEATURES)):
            raise ValueError(f"ThresholdHead: n_step_features={n_step_features}: 0 (prompt head) or "
                             f"{len(STEP_FEATURES)} (step head: {STEP_FEATURES})")
        self.gamma_max = float(gamma_max)
        self.n_step_features = int(n_step_features)
        k1, k2 = rngs.params(), rngs.params()
        d_in = d_model + n_step_features
        self.w1 = nnx.Param(jax.random.normal(k1, (d_in, hidden), jnp.float32) / math.sqrt(d_in))
        self.b1 = nnx.Param(jnp.zeros((hidden,), jnp.float32))
        self.w2 = nnx.Param(jax.random.normal(k2, (hidden, 1), jnp.float32) * last_init_std)
        frac = gamma_init / gamma_max
        self.b2 = nnx.Param(jnp.full((1,), math.log(frac / (1.0 - frac)), jnp.float32))

    @property
    def kind(self) -> str:
        return "step" if self.n_step_features else "prompt"

    def __call__(self, features: jax.Array, step_features: Optional[jax.Array] = None) -> jax.Array:
        """features `[..., D]` (prompt features), step_features `[..., F]` (step head only; the
        leading dims broadcast against features') -> μ `[...] f32` in (0, γ_max)."""
        x = features.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        if self.n_step_features:
            if step_features is None:
                raise ValueError("ThresholdHead: the step head needs step_features [..., F]")
            s = step_features.astype(jnp.float32)
            lead = jnp.broadcast_shapes(x.shape[:-1], s.shape[:-1])
            x = jnp.concatenate([jnp.broadcast_to(x, lead + x.shape[-1:]), jnp.broadcast_to(s, lead + s.shape[-1:])], -1)
        u = jax.nn.gelu(x @ self.w1[...] + self.b1[...]) @ self.w2[...] + self.b2[...]
        return self.gamma_max * jax.nn.sigmoid(u[..., 0])


def step_state_features(entropy: jax.Array, confidence: jax.Array, eligible: jax.Array, steps_taken: jax.Array,
                        completion_masked: jax.Array, *, max_steps: int, completion_length: int,
                        vocab_size: int) -> jax.Array:
    """The step head's decoding-state input s_t (`STEP_FEATURES`, in that order), from the
    current forward's block: entropy, confidence `[B, N]` f32 (of the untempered softmax),
    eligible `[B, N]` bool (the block's masked positions), steps_taken `[B]` int32 (the row's
    decoding steps before this one), completion_masked `[B]` int32 (masks left in the
    completion). -> `[B, F]` f32, each in [0, 1] (entropies over log V, their largest value; a
    row with no masked position gets 0 for the block's statistics)."""
    n_elig = jnp.sum(eligible, axis=-1)
    any_elig = n_elig > 0
    denom = jnp.maximum(n_elig, 1).astype(jnp.float32)
    log_v = math.log(max(int(vocab_size), 2))
    h = entropy.astype(jnp.float32) / log_v
    least = jnp.where(any_elig, jnp.min(jnp.where(eligible, h, jnp.inf), axis=-1), 0.0)
    return jnp.stack([
        steps_taken.astype(jnp.float32) / float(max_steps),
        completion_masked.astype(jnp.float32) / float(completion_length),
        n_elig.astype(jnp.float32) / float(eligible.shape[-1]),
        jnp.sum(jnp.where(eligible, h, 0.0), axis=-1) / denom,
        least,
        jnp.sum(jnp.where(eligible, confidence.astype(jnp.float32), 0.0), axis=-1) / denom,
    ], axis=-1)


HEAD_PARAMS = ("w1", "b1", "w2", "b2")


def save_threshold_head(head: ThresholdHead, out_dir: str) -> list[str]:
    """Write the head for use outside JAX: `threshold_head.safetensors` (w1 `[D, H]`, b1 `[H]`,
    w2 `[H, 1]`, b2 `[1]`, fp32) + `threshold_head.json` (γ_max and the formula). Process 0 writes."""
    if jax.process_index() != 0:
        return []
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: np.ascontiguousarray(np.asarray(jax.device_get(getattr(head, k)[...]), np.float32))
               for k in HEAD_PARAMS}
    f = head.n_step_features
    meta = {"gamma_max": head.gamma_max, "d_model": int(tensors["w1"].shape[0]) - f, "hidden": int(tensors["w1"].shape[1]),
            "kind": head.kind, "n_step_features": f,
            "formula": "f = mean of the final hidden states over the prompt's real tokens, from one forward of "
                       "[prompt, MASK x gen_length]; x = f / sqrt(mean(f^2) + 1e-6); "
                       + ("mu = gamma_max * sigmoid(gelu_tanh(x @ w1 + b1) @ w2 + b2)" if not f else
                          "at every decoding step, with s = step_features: mu = gamma_max * "
                          "sigmoid(gelu_tanh(concat(x, s) @ w1 + b1) @ w2 + b2)")
                       + "  (torch: gelu(approximate='tanh'))"}
    if f:
        meta["step_features"] = list(STEP_FEATURES)
    storage.write_atomic(os.path.join(out_dir, "threshold_head.safetensors"), lambda tmp: save_file(tensors, tmp))
    storage.write_text(os.path.join(out_dir, "threshold_head.json"), json.dumps(meta, indent=2))
    return ["threshold_head.safetensors", "threshold_head.json"]


def load_threshold_head(out_dir: str) -> ThresholdHead:
    """The head `save_threshold_head` wrote to `out_dir`."""
    with open(os.path.join(out_dir, "threshold_head.json")) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(out_dir, "threshold_head.safetensors"))
    head = ThresholdHead(meta["d_model"], gamma_max=meta["gamma_max"], gamma_init=meta["gamma_max"] / 2,
                         hidden=meta["hidden"], n_step_features=int(meta.get("n_step_features", 0)), rngs=nnx.Rngs(0))
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


class HeadGamma(struct.PyTreeNode):
    """The threshold head as the sampler runs it: `sampler(..., head=HeadGamma.of(head, sigma))`.

    The sampler computes the prompt features f from its first forward ([p, M…M], the head's
    input; no extra NFE), then draws γ = clip(μ + σ ε, 0, γ_max): once per row (prompt head) or
    at every step from μ(f, s_t) (step head). σ = 0 decodes with γ = μ (evaluation). The head's
    graph is static (one compile per head structure); its parameters and σ are array inputs."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    state: nnx.State
    sigma: jax.Array  # [] f32

    @classmethod
    def of(cls, head: ThresholdHead, sigma: float = 0.0) -> "HeadGamma":
        graphdef, state = nnx.split(head)
        return cls(graphdef, state, jnp.asarray(sigma, jnp.float32))

    def module(self) -> ThresholdHead:
        return nnx.merge(self.graphdef, self.state)


class HeadDraws(struct.PyTreeNode):
    """What a sampler with a head recorded (B rows, S = the sampler's static step bound):
    features `[B, D]` f32 (prompt features), gamma `[B]` f32 (the γ the row decoded with; the
    step head: its mean over the row's steps), gamma_raw `[B]` (prompt head) or `[B, S]` (step
    head: step t's draw at index t, 0 after the row's last step) f32, the unclipped μ + σ ε;
    step_features `[B, S, F]` f32 (step head; else None)."""

    features: jax.Array
    gamma: jax.Array
    gamma_raw: jax.Array
    step_features: Optional[jax.Array] = None


class Policy(nnx.Module):
    """The trained policy: the LLM (LoRA trainable, base frozen) and an optional threshold head."""

    def __init__(self, llm: nnx.Module, head: Optional[ThresholdHead] = None):
        self.llm = llm
        self.head = head


def trainable_filter(joint: bool = True):
    """nnx filter of the trained parameters: LoRA (+ everything under `head` when joint)."""
    return nnx.Any(nnx.LoRAParam, nnx.PathContains("head")) if joint else nnx.LoRAParam

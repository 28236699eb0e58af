"""LLaDA's masked-diffusion SFT objective (the step d1 runs before RL).

Per sequence b draw `t_b = (1 − ε)·u_b + ε`, `u_b ~ U(0, 1)`, ε = 1e-3; replace each completion
token with MASK independently with probability `t_b` (the prompt stays clean); then

    loss = (1/B) Σ_b [ Σ_{i masked} −log p_θ(o_bi | x̃_b) / t_b ] / n_b

where `n_b` is the number of completion positions counted for row b (LLaDA counts the EOS
padding of the answer too: padding is predicted, which is how the model learns to stop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffpo_jax.models.llada import LLaDA


def masked_diffusion_inputs(completion: jax.Array, weights: jax.Array, key: jax.Array, mask_id: int,
                            eps: float = 1e-3):
    """Noise a completion `[B, L] int32`.

    Returns (noisy completion `[B, L] int32`, masked `[B, L] bool`, t `[B] f32`). Only positions
    with `weights > 0` may be masked.
    """
    k_t, k_m = jax.random.split(key)
    t = (1.0 - eps) * jax.random.uniform(k_t, (completion.shape[0],)) + eps
    masked = (jax.random.uniform(k_m, completion.shape) < t[:, None]) & (weights > 0)
    return jnp.where(masked, mask_id, completion), masked, t


def sft_loss(model: LLaDA, prompt: jax.Array, completion: jax.Array, weights: jax.Array, key: jax.Array,
             eps: float = 1e-3) -> tuple[jax.Array, dict]:
    """The objective above. prompt `[B, P] int32`, completion `[B, L] int32`, weights `[B, L]`
    (1 = a counted completion position, 0 = ignored). Returns (scalar f32 loss, metrics)."""
    noisy, masked, t = masked_diffusion_inputs(completion, weights, key, model.cfg.mask_token_id, eps)
    tokens = jnp.concatenate([prompt, noisy], axis=1)
    hidden = model.hidden(tokens)[:, prompt.shape[1]:]
    logits = model.logits_from_hidden(hidden).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), completion[..., None], -1)[..., 0]
    w = weights.astype(jnp.float32)
    n = jnp.maximum(w.sum(-1), 1.0)
    per_row = (nll * masked * w).sum(-1) / t / n
    acc = ((jnp.argmax(logits, -1) == completion) * masked).sum() / jnp.maximum(masked.sum(), 1)
    return per_row.mean(), {"sft_loss": per_row.mean(), "masked_acc": acc, "mask_frac": masked.mean()}

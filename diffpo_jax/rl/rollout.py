"""Rollout: prompts -> G completions each (the configured sampler) -> rewards -> RL batch.

    batch, info = rollout(policy, sampler, prompt [N, P], prompt_mask [N, P], items, reward_fn,
                          key, cfg, tokenizer)

Rows are grouped consecutively: rows g·G … g·G+G−1 are prompt g's completions (the layout
`rl.losses.group_advantages` expects). With `cfg.joint_sampler`, the threshold head gives
μ(p) from the first forward `[p, M…M]` (prompt features), and each row decodes with its own
γ_g = clip(μ + σ ε_g, 0, γ_max) (SPEC §5); the raw draws go into the batch for REINFORCE.
The returned batch satisfies the `rl.train_step` contract.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffpo_jax.models.threshold_head import Policy, llm_prompt_features, sample_gamma
from diffpo_jax.rl.config import RLConfig
from diffpo_jax.sampling import Sampler


def decode_completions(tokenizer, completion: np.ndarray, completion_mask: np.ndarray) -> list[str]:
    """Text of each row's valid completion tokens (`[B, L]`, up to and including the first EOS),
    special tokens kept so format rewards see `<|eot_id|>` like d1's parsers do."""
    return [tokenizer.decode([int(t) for t in row[m]], skip_special_tokens=False)
            for row, m in zip(completion, completion_mask)]


def head_mu(policy: Policy, prompt: jax.Array, prompt_mask: jax.Array, gen_length: int,
            use_padding_mask: bool = False) -> jax.Array:
    """μ_φ(p) `[N] f32` from the threshold head (evaluation γ; rollout centre)."""
    feats = llm_prompt_features(policy.llm, prompt, prompt_mask, gen_length, use_padding_mask=use_padding_mask)
    return policy.head(feats)


_head_mu_jit = nnx.jit(head_mu, static_argnums=(3, 4))


def rollout(policy: Policy, sampler: Sampler, prompt: np.ndarray, prompt_mask: np.ndarray,
            items: Sequence[dict], reward_fn: Callable[[str, dict], dict], key: jax.Array, cfg: RLConfig,
            tokenizer, temperature: Optional[float] = None) -> tuple[dict, dict]:
    """One GRPO rollout (see module doc). prompt `[N, P] int32` left-padded, items: N task items;
    reward_fn(text, item) -> {component: value} (summed into the reward). Returns (batch, info)
    where info holds the texts, per-component rewards `[N·G]` and the γ used."""
    g = cfg.num_generations
    k_gamma, k_sample = jax.random.split(key)
    rows_prompt = np.repeat(np.asarray(prompt, np.int32), g, axis=0)
    rows_mask = np.repeat(np.asarray(prompt_mask, bool), g, axis=0)
    gamma = gamma_raw = None
    if cfg.joint_sampler:
        mu = _head_mu_jit(policy, jnp.asarray(prompt, jnp.int32), jnp.asarray(prompt_mask, bool),
                          sampler.cfg.gen_length, cfg.use_padding_mask)
        gamma, gamma_raw = sample_gamma(mu, cfg.sigma, k_gamma, g, cfg.gamma_max)
    _, llm_state = nnx.split(policy.llm)
    out = sampler(llm_state, rows_prompt, rows_mask, k_sample, gamma=gamma, temperature=temperature)
    p_len = rows_prompt.shape[1]
    completion = np.asarray(out.tokens)[:, p_len:]
    cmask = np.asarray(out.completion_mask)
    texts = decode_completions(tokenizer, completion, cmask)
    comps = [reward_fn(text, items[i // g]) for i, text in enumerate(texts)]
    names = sorted({k for c in comps for k in c})
    per_comp = {k: np.array([c.get(k, 0.0) for c in comps], np.float32) for k in names}
    rewards = np.sum([per_comp[k] for k in names], axis=0).astype(np.float32)
    batch = {
        "prompt": jnp.asarray(rows_prompt), "prompt_mask": jnp.asarray(rows_mask),
        "completion": jnp.asarray(completion, jnp.int32), "completion_mask": jnp.asarray(cmask),
        "unmask_step": out.unmask_step, "behaviour_logp": out.behaviour_logp, "nfe": out.nfe,
        "rewards": jnp.asarray(rewards),
    }
    if cfg.joint_sampler:
        batch["gamma_raw"] = gamma_raw
    info = {"texts": texts, "reward_components": per_comp, "nfe": np.asarray(out.nfe),
            "gamma": None if gamma is None else np.asarray(gamma)}
    return batch, info

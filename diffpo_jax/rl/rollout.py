"""Rollout: a GRPO prompt batch -> G completions per prompt (the configured sampler) -> rewards
-> the RL batch of `rl.train_step`.

    batch, info = rollout(policy, sampler, prompt_rows [B, P], mask_rows [B, P], items_rows,
                          reward_fn, key, cfg, tokenizer, mesh=mesh)

Rows come grouped as `tasks.data.grpo_dataset` makes them: rows g·G … g·G+G−1 are prompt g's
G copies (the layout `rl.losses.group_advantages` expects). With `cfg.joint_sampler` the
threshold head gives μ_φ(p) from one forward of `[p, M…M]` per prompt (prompt features,
computed with the rollout-time LoRA, i.e. θ_old), and each row decodes with its own
γ = clip(μ + σ ε, 0, γ_max) (SPEC §5); the raw draws and the features go into the batch
(`gamma_raw [B]`, `head_features [B, D]`) so the head's PPO ratio is a function of φ alone.
That prompt forward is counted in the reported NFE (`RLConfig.head_nfe`). The batch records the
rollout temperature `[B]` and the behaviour log-probs of the distribution sampled
(`behaviour_logp`).

Multi-host: each process passes ITS rows (`[B_local, P]`, from a per-process data shard);
the arrays of the returned batch are global (`[B_local · n_proc, …]`, sharded over
('data', 'fsdp')); rewards are computed by each process for its own rows.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffpo_jax.distributed import global_batch, host_value, local_rows
from diffpo_jax.models.threshold_head import Policy, llm_prompt_features
from diffpo_jax.rl.config import RLConfig
from diffpo_jax.sampling import Sampler


def decode_completions(tokenizer, completion: np.ndarray, completion_mask: np.ndarray) -> list[str]:
    """Text of each row's valid completion tokens (`[B, L]`, up to and including the first EOS).
    Special tokens are dropped, as d1's trainer decodes before its training rewards
    (`batch_decode(..., skip_special_tokens=True)`): with `<|eot_id|>` kept, GSM8K's strict
    format reward (`...</answer>\\n$`) could never fire. (Evaluation keeps them, as d1's eval
    parsers see them: `evaluate.run_eval`.)"""
    return [tokenizer.decode([int(t) for t in row[m]], skip_special_tokens=True)
            for row, m in zip(completion, completion_mask)]


def behaviour_logp(out, temperature: float, cfg: RLConfig) -> jax.Array:
    """The behaviour log-probs `[B, L] f32` the likelihoods are compared with: the tempered
    `log softmax(f/T)[o]` the sampler drew from when T > 0 and cfg.likelihood_temperature ==
    'sampler'; the untempered ones at T = 0 (greedy: the likelihoods then score at T = 1) or
    under d1's convention ('none')."""
    if temperature > 0 and cfg.likelihood_temperature == "sampler":
        return out.behaviour_logp_tempered
    return out.behaviour_logp


def head_mu(policy: Policy, prompt: jax.Array, prompt_mask: jax.Array, gen_length: int,
            use_padding_mask: bool = False) -> tuple[jax.Array, jax.Array]:
    """(μ_φ(p) `[B] f32`, prompt features `[B, D] f32`) for prompt rows `[B, P]`."""
    feats = llm_prompt_features(policy.llm, prompt, prompt_mask, gen_length, use_padding_mask=use_padding_mask)
    return policy.head(feats), feats


_head_mu_jit = nnx.jit(head_mu, static_argnums=(3, 4))


def adaptive_gamma_fn(policy: Policy, gen_length: int, use_padding_mask: bool = False):
    """The adaptive sampler's γ for `evaluate.run_eval(gamma_fn=...)`: (prompt `[b, P]`,
    prompt_mask `[b, P]`) -> μ_φ(p) `[b] f32` (evaluation uses μ, no exploration noise)."""
    return lambda p, m: _head_mu_jit(policy, jnp.asarray(p), jnp.asarray(m), gen_length, use_padding_mask)[0]


@nnx.jit(static_argnums=(3, 4, 5))
def _draw_gamma(policy: Policy, prompt_rows: jax.Array, mask_rows: jax.Array, gen_length: int, group: int,
                use_padding_mask: bool, key: jax.Array, sigma: jax.Array, gamma_max: jax.Array):
    """Per-row γ for a grouped batch: μ and features from each group's first row (one forward per
    prompt), repeated over its G rows; raw = μ + σ ε, γ = clip(raw, 0, γ_max). -> (γ, raw, feats)."""
    mu, feats = head_mu(policy, prompt_rows[::group], mask_rows[::group], gen_length, use_padding_mask)
    mu, feats = jnp.repeat(mu, group, axis=0), jnp.repeat(feats, group, axis=0)
    raw = mu + sigma * jax.random.normal(key, mu.shape, jnp.float32)
    return jnp.clip(raw, 0.0, gamma_max), raw, feats


def rollout(policy: Policy, sampler: Sampler, prompt_rows: np.ndarray, mask_rows: np.ndarray,
            items_rows: Sequence[dict], reward_fn: Callable[[str, dict], dict], key: jax.Array, cfg: RLConfig,
            tokenizer, temperature: Optional[float] = None,
            mesh: Optional[jax.sharding.Mesh] = None) -> tuple[dict, dict]:
    """One GRPO rollout (see module doc).

    prompt_rows `[B, P] int32` left-padded, G consecutive copies per prompt; mask_rows `[B, P] bool`;
    items_rows: B task items (one per row); reward_fn(text, item) -> {component: value} (summed into
    the reward). Returns (batch, info): batch per the `rl.train_step` contract; info holds this
    process's texts and, over ALL rows (every process), the per-component rewards, rewards,
    NFE, completion lengths and γ (numpy).
    """
    g = cfg.num_generations
    if len(prompt_rows) % g or len(items_rows) != len(prompt_rows):
        raise ValueError(f"rollout: {len(prompt_rows)} prompt rows / {len(items_rows)} items: need one item per "
                         f"row and a multiple of num_generations={g} rows")
    k_gamma, k_sample = jax.random.split(key)
    prompt = global_batch(np.asarray(prompt_rows, np.int32), mesh)
    pmask = global_batch(np.asarray(mask_rows, bool), mesh)
    gamma = gamma_raw = feats = None
    if cfg.joint_sampler:
        gamma, gamma_raw, feats = _draw_gamma(policy, prompt, pmask, sampler.cfg.gen_length, g, cfg.use_padding_mask,
                                              k_gamma, jnp.float32(cfg.sigma), jnp.float32(cfg.gamma_max))
    _, llm_state = nnx.split(policy.llm)
    out = sampler(llm_state, prompt, pmask, k_sample, gamma=gamma, temperature=temperature)
    p_len = prompt.shape[1]
    completion = out.tokens[:, p_len:]
    comp_local, cmask_local = local_rows(completion, mesh), local_rows(out.completion_mask, mesh)
    texts = decode_completions(tokenizer, comp_local, cmask_local)
    comps = [reward_fn(text, items_rows[i]) for i, text in enumerate(texts)]
    names = sorted({k for c in comps for k in c})
    per_comp = {k: np.array([c.get(k, 0.0) for c in comps], np.float32) for k in names}
    rewards = np.sum([per_comp[k] for k in names], axis=0).astype(np.float32)
    rewards_global = global_batch(rewards, mesh)
    temp = float(sampler.cfg.temperature if temperature is None else temperature)
    batch = {
        "prompt": prompt, "prompt_mask": pmask, "completion": completion.astype(jnp.int32),
        "completion_mask": out.completion_mask, "unmask_step": out.unmask_step,
        "behaviour_logp": behaviour_logp(out, temp, cfg), "nfe": out.nfe, "rewards": rewards_global,
        "temperature": jnp.full(out.nfe.shape, temp, jnp.float32),
    }
    if cfg.joint_sampler:
        batch["gamma_raw"], batch["head_features"] = gamma_raw, feats
    everyone = lambda x: host_value(global_batch(x, mesh))  # noqa: E731  (all processes' rows)
    info = {"texts": texts, "reward_components": {k: everyone(v) for k, v in per_comp.items()},
            "rewards": host_value(rewards_global), "nfe": host_value(out.nfe) + cfg.head_nfe,
            "completion_length": host_value(out.completion_length),
            "gamma": None if gamma is None else host_value(gamma)}
    return batch, info

"""Rollout: a GRPO prompt batch -> G completions per prompt (the configured sampler) -> rewards
-> the RL batch of `rl.train_step`.

    batch, info = rollout(policy, sampler, prompt_rows [B, P], mask_rows [B, P], items_rows,
                          reward_fn, key, cfg, tokenizer, mesh=mesh)

Rows come grouped as `tasks.data.grpo_dataset` makes them: rows g·G … g·G+G−1 are prompt g's
G copies (the layout `rl.losses.group_advantages` expects). With `cfg.joint_sampler` the
sampler runs the threshold head (`HeadGamma`, σ = cfg.sigma): its prompt features come from the
sampler's first forward `[p, M…M]` (with the rollout-time LoRA, i.e. θ_old; no extra NFE), and
each row decodes with its own γ = clip(μ + σ ε, 0, γ_max) (SPEC §5; `rl.head='step'`: a fresh
γ_t at each step from μ(f, s_t)); the raw draws and the features go into the batch
(`gamma_raw [B]` or `[B, S]`, `head_features [B, D]`, step head: `step_features [B, S, F]`) so
the head's PPO ratio is a function of φ alone. The batch records the rollout temperature `[B]`
and the behaviour log-probs of the distribution sampled (`behaviour_logp`).

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
from diffpo_jax.models.threshold_head import HeadGamma, Policy
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


def rollout(policy: Policy, sampler: Sampler, prompt_rows: np.ndarray, mask_rows: np.ndarray,
            items_rows: Sequence[dict], reward_fn: Callable[[str, dict], dict], key: jax.Array, cfg: RLConfig,
            tokenizer, temperature: Optional[float] = None,
            mesh: Optional[jax.sharding.Mesh] = None) -> tuple[dict, dict]:
    """One GRPO rollout (see module doc).

    prompt_rows `[B, P] int32` left-padded, G consecutive copies per prompt; mask_rows `[B, P] bool`;
    items_rows: B task items (one per row); reward_fn(text, item) -> {component: value} (summed into
    the reward). Returns (batch, info): batch per the `rl.train_step` contract; info holds this
    process's texts and, over ALL rows (every process), the per-component rewards, rewards,
    NFE (= model forwards: the head reads the first decoding forward), completion lengths and
    γ (numpy; the step head: each row's mean γ over its steps).
    """
    g = cfg.num_generations
    if len(prompt_rows) % g or len(items_rows) != len(prompt_rows):
        raise ValueError(f"rollout: {len(prompt_rows)} prompt rows / {len(items_rows)} items: need one item per "
                         f"row and a multiple of num_generations={g} rows")
    _, k_sample = jax.random.split(key)
    prompt = global_batch(np.asarray(prompt_rows, np.int32), mesh)
    pmask = global_batch(np.asarray(mask_rows, bool), mesh)
    head = HeadGamma.of(policy.head, cfg.sigma) if cfg.joint_sampler else None
    if head is not None and sampler.cfg.use_padding_mask != cfg.use_padding_mask:
        raise ValueError(f"rollout: the sampler's use_padding_mask={sampler.cfg.use_padding_mask} differs from "
                         f"RLConfig.use_padding_mask={cfg.use_padding_mask}: the head's features would change meaning")
    _, llm_state = nnx.split(policy.llm)
    out = sampler(llm_state, prompt, pmask, k_sample, temperature=temperature, head=head)
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
    if head is not None:
        batch["gamma_raw"], batch["head_features"] = out.head.gamma_raw, out.head.features
        if out.head.step_features is not None:
            batch["step_features"] = out.head.step_features
    everyone = lambda x: host_value(global_batch(x, mesh))  # noqa: E731  (all processes' rows)
    info = {"texts": texts, "reward_components": {k: everyone(v) for k, v in per_comp.items()},
            "rewards": host_value(rewards_global), "nfe": host_value(out.nfe),
            "completion_length": host_value(out.completion_length),
            "gamma": None if head is None else host_value(out.head.gamma)}
    return batch, info

"""RL core of DiFFPO: surrogate likelihoods, losses, the train step and diagnostics (SPEC §3–5)."""

from diffpo_jax.rl.config import RLConfig
from diffpo_jax.rl.likelihood import (draw_tau, inner_key, latent_at, mask_prompt, mf_logps, surrogate_logps,
                                      token_logprobs, two_stage_logps)
from diffpo_jax.rl.losses import (LossOut, Weighted, diffpo_policy_loss, gaussian_log_density, get_policy_loss,
                                  group_advantages, head_loss, is_weights, kl_k3, sampler_reward)
from diffpo_jax.rl.train_step import TrainState, init_train_state, make_optimizer, make_score_fn, make_train_step

__all__ = [
    "RLConfig", "draw_tau", "inner_key", "latent_at", "mask_prompt", "mf_logps", "surrogate_logps",
    "token_logprobs", "two_stage_logps", "LossOut", "Weighted", "diffpo_policy_loss", "gaussian_log_density",
    "get_policy_loss", "group_advantages", "head_loss", "is_weights", "kl_k3", "sampler_reward", "TrainState",
    "init_train_state", "make_optimizer", "make_score_fn", "make_train_step",
]

"""The DiFFPO / d1 objective (SPEC §4) and the threshold-head loss (SPEC §5).

Every loss returns an *unreduced* sum and its denominator (`LossOut`), so micro-batch
accumulation is exact: total loss = Σ_mb loss_sum / Σ_mb denom. Metrics are `Weighted`
(total, count) pairs, reduced the same way, plus maxima.

Per valid completion token i of row b (advantage A_b):
    ρ_i  = exp(lp_i − lp_old_i)                                  (log-ratio clamped to ±20)
    w_i  = stop_grad(min(C, exp(lp_old_i − lp_beh_i)))            (IS methods; else w = 1)
    pg_i = −w_i · min(ρ_i A_b, clip(ρ_i, 1−ε, 1+ε) A_b)
    kl_i = exp(r_i) − r_i − 1,  r_i = lp_ref_i − lp_i              (k3, outside the IS weight;
                                                                  r clamped to ±20 like the ratio)
    ℓ_i  = pg_i + β · kl_i
token mean: Σ m ℓ / Σ m (d1);  sequence mean: (1/#rows) Σ_b Σ_i m ℓ / Σ_i m.

Clipping metrics (token means over valid tokens; the head's are means over rows):
    clip_frac         = mean[ρ A < clip(ρ, 1−ε, 1+ε) A]   d1's / TRL's `is_clipped`
                        (per_token_loss1 < per_token_loss2): ρ is outside the trust region on
                        the pessimistic side (A > 0, ρ < 1−ε or A < 0, ρ > 1+ε), so the min keeps
                        the unclipped term and the gradient flows; comparable with d1's clip_ratio.
    clip_active_frac  = mean[clip(ρ, 1−ε, 1+ε) A < ρ A]   the min keeps the clipped term: the
                        tokens whose policy gradient clipping zeroes (A > 0, ρ > 1+ε or A < 0,
                        ρ < 1−ε). Tokens inside [1−ε, 1+ε] (or with A = 0) count in neither.
    head_clip_frac / head_clip_active_frac: the same two for the threshold head's ratio.
surrogate_kl = mean over rows of Σ_i m_i (lp_beh_i − lp_old_i): with o drawn from the sampler and
    lp_beh its own log-probs (RLConfig.likelihood_temperature='sampler'; no KV cache, CFG or
    logits_eos_inf), a Monte-Carlo estimate of the sequence-level KL(π_θold ‖ π̃_θold) between the
    sampled policy and the surrogate that scores it (DiFFPO Fig. 2c's gap, per training step);
    ≈ 0 for method 'exact'.
ratio_unit='step': tokens sharing an unmask_step form one action: log ρ_s = Σ_{i∈s} (lp − lp_old),
log w_s = Σ_{i∈s} (lp_old − lp_beh), and each of the s's n_s tokens carries pg_s / n_s, so a step
counts once and on-policy gradients equal the token unit's.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

LOG_RATIO_CLAMP = 20.0


class Weighted(NamedTuple):
    """A mean kept as (total, count) so it can be summed over micro-batches."""

    total: jax.Array
    count: jax.Array


class LossOut(NamedTuple):
    loss_sum: jax.Array  # scalar f32, unreduced
    denom: jax.Array  # scalar f32
    metrics: dict  # name -> Weighted
    maxima: dict  # name -> scalar


# ----------------------------------------------------------------------------- rewards


def group_advantages(rewards: jax.Array, group_size: int, std_normalize: bool = False) -> jax.Array:
    """A_g = r_g − mean_group(r) (d1), optionally / (std_group(r) + 1e-4) with the unbiased
    (ddof = 1) std of torch's `.std()`, as d1's / TRL's GRPO trainers (groups of one: 0).

    rewards `[B] f32`, consecutive groups of `group_size` rows. Returns `[B] f32`.
    """
    b = rewards.shape[0]
    if b % group_size:
        raise ValueError(f"batch of {b} rows is not a whole number of groups of num_generations={group_size}")
    r = rewards.astype(jnp.float32).reshape(b // group_size, group_size)
    adv = r - r.mean(axis=1, keepdims=True)
    if std_normalize:
        adv = adv / (r.std(axis=1, keepdims=True, ddof=1 if group_size > 1 else 0) + 1e-4)
    return adv.reshape(b)


def sampler_reward(rewards: jax.Array, nfe: jax.Array, nfe_lambda: float, nfe_ref: float) -> jax.Array:
    """r^s = r − λ · NFE / NFE_ref (SPEC §5). rewards `[B]`, nfe `[B]` -> `[B] f32`."""
    return rewards.astype(jnp.float32) - nfe_lambda * nfe.astype(jnp.float32) / nfe_ref


# ----------------------------------------------------------------------------- pieces


def kl_k3(ref_logp: jax.Array, logp: jax.Array) -> jax.Array:
    """k3 estimator of KL(π_θ ‖ π_ref): exp(r) − r − 1 with r = lp_ref − lp_θ (elementwise).

    r is clamped to ±LOG_RATIO_CLAMP first (the clamp the policy ratio uses), so a huge or
    infinite log-prob difference gives a finite value (at most e^20 − 21) instead of inf/NaN;
    like the ratio, the gradient is zero where the clamp binds. |r| ≤ 20 is unchanged.
    """
    r = jnp.clip(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.exp(r) - r - 1.0


def clip_sides(ratio: jax.Array, adv: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Elementwise f32 indicators (d1_clipped, clip_active) of the module docstring:
    d1_clipped = [ρA < clip(ρ)A] (d1's / TRL's is_clipped), clip_active = [clip(ρ)A < ρA]
    (the min takes the clipped term, so the gradient is zero)."""
    unclipped, clipped = ratio * adv, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv
    return (unclipped < clipped).astype(jnp.float32), (clipped < unclipped).astype(jnp.float32)


def is_weights(old_logp: jax.Array, behaviour_logp: jax.Array, clamp_c: float) -> jax.Array:
    """w = stop_grad(min(C, exp(lp_old − lp_beh))): clamped from above only, no gradient."""
    log_w = jnp.minimum(old_logp - behaviour_logp, math.log(clamp_c))
    return jax.lax.stop_gradient(jnp.exp(log_w))


def clipped_objective(ratio: jax.Array, adv: jax.Array, epsilon: float) -> jax.Array:
    """PPO objective min(ρA, clip(ρ, 1−ε, 1+ε)A) (to be maximised), elementwise."""
    return jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv)


def same_step(unmask_step: jax.Array, mask: jax.Array) -> jax.Array:
    """`[B, L, L]` f32: S[b, i, j] = 1 if valid token j was revealed at the same step as token i."""
    eq = unmask_step[:, :, None] == unmask_step[:, None, :]
    return (eq & mask.astype(bool)[:, None, :]).astype(jnp.float32)


def per_step_sum(x: jax.Array, unmask_step: jax.Array, mask: jax.Array) -> jax.Array:
    """For every token i, Σ_j x_j over the valid tokens j sharing i's unmask_step. `[B, L]`."""
    return jnp.einsum("bij,bj->bi", same_step(unmask_step, mask), x * mask)


def gaussian_log_density(x: jax.Array, mu: jax.Array, sigma: float) -> jax.Array:
    """log N(x; μ, σ²) = −(x−μ)²/(2σ²) − log σ − ½ log 2π, elementwise."""
    return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- policy loss

POLICY_LOSSES: dict[str, Callable] = {}


def register_policy_loss(name: str):
    def wrap(fn):
        POLICY_LOSSES[name] = fn
        return fn
    return wrap


def get_policy_loss(method: str) -> Callable:
    if method not in POLICY_LOSSES:
        raise ValueError(f"method={method!r}: registered policy losses are {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[method]


def diffpo_policy_loss(logp, old_logp, ref_logp, behaviour_logp, advantages, completion_mask, unmask_step, cfg,
                       *, use_is: bool) -> LossOut:
    """The per-token objective of the module docstring.

    logp `[B, L]` (θ, with gradient), old_logp / ref_logp / behaviour_logp `[B, L]` (no gradient;
    ref_logp may be None when cfg.beta == 0), advantages `[B]`, completion_mask `[B, L]` bool,
    unmask_step `[B, L]` int32, cfg: RLConfig (epsilon, beta, clamp_c, loss_agg, ratio_unit).
    """
    m = completion_mask.astype(jnp.float32)
    # Positions outside the completion are zeroed before any arithmetic: masking by `* m`
    # afterwards would turn an inf there (a -inf log-prob after EOS) into NaN (inf · 0).
    valid = completion_mask.astype(bool)
    logp, old_logp, behaviour_logp = (jnp.where(valid, x, 0.0) for x in (logp, old_logp, behaviour_logp))
    ref_logp = None if ref_logp is None else jnp.where(valid, ref_logp, 0.0)
    adv = advantages.astype(jnp.float32)[:, None]
    old_logp = jax.lax.stop_gradient(old_logp)
    log_ratio = (logp - old_logp) * m
    log_w = (old_logp - behaviour_logp) * m if use_is else None
    n_step = jnp.ones_like(m)
    if cfg.ratio_unit == "step":
        log_ratio = per_step_sum(log_ratio, unmask_step, m)
        log_w = per_step_sum(log_w, unmask_step, m) if use_is else None
        n_step = jnp.maximum(per_step_sum(jnp.ones_like(m), unmask_step, m), 1.0)
    ratio = jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    w = is_weights(log_w, jnp.zeros_like(log_w), cfg.clamp_c) if use_is else jnp.ones_like(m)
    pg = -w * clipped_objective(ratio, adv, cfg.epsilon) / n_step
    per_token = pg
    kl = None
    if cfg.beta > 0:
        kl = kl_k3(jax.lax.stop_gradient(ref_logp), logp)
        per_token = per_token + cfg.beta * kl
    n_tok = m.sum()
    if cfg.loss_agg == "token":
        loss_sum, denom = (per_token * m).sum(), n_tok
    else:
        n_row = m.sum(axis=1)
        loss_sum = ((per_token * m).sum(axis=1) / jnp.maximum(n_row, 1.0)).sum()
        denom = (n_row > 0).sum().astype(jnp.float32)
    ratio_ng = jax.lax.stop_gradient(ratio)
    d1_clipped, clip_active = clip_sides(ratio_ng, adv, cfg.epsilon)
    metrics = {
        "ratio_mean": Weighted((ratio_ng * m).sum(), n_tok),
        "clip_frac": Weighted((d1_clipped * m).sum(), n_tok),
        "clip_active_frac": Weighted((clip_active * m).sum(), n_tok),
        "pg_loss": Weighted(jax.lax.stop_gradient(pg * n_step * m).sum(), n_tok),
        "is_weight_mean": Weighted((w * m).sum(), n_tok),
        "is_clamp_frac": Weighted(((w >= cfg.clamp_c * (1 - 1e-6)) * m).sum() if use_is else 0.0 * n_tok, n_tok),
        "tokens": Weighted(n_tok, jnp.float32(completion_mask.shape[0])),
        "surrogate_kl": Weighted(jax.lax.stop_gradient((behaviour_logp - old_logp) * m).sum(),
                                 jnp.float32(completion_mask.shape[0])),
    }
    maxima = {"ratio_max": jnp.max(jnp.where(m > 0, ratio_ng, 0.0)),
              "is_weight_max": jnp.max(jnp.where(m > 0, w, 0.0))}
    if kl is not None:
        metrics["kl"] = Weighted(jax.lax.stop_gradient(kl * m).sum(), n_tok)
    return LossOut(loss_sum, denom, metrics, maxima)


for _name, _is in (("d1", False), ("2mf", False), ("mf_is", True), ("2mf_is", True), ("exact", False)):
    register_policy_loss(_name)(lambda *a, _is=_is, **k: diffpo_policy_loss(*a, use_is=_is, **k))


def policy_loss_denominator(completion_mask: jax.Array, loss_agg: str) -> jax.Array:
    """The denominator `diffpo_policy_loss` returns, from the mask alone (parameter-free)."""
    m = completion_mask.astype(jnp.float32)
    if loss_agg == "token":
        return m.sum()
    return (m.sum(axis=1) > 0).sum().astype(jnp.float32)


# ----------------------------------------------------------------------------- head loss


def head_loss(log_density: jax.Array, old_log_density: jax.Array, advantages: jax.Array, group_size: int,
              epsilon: float) -> LossOut:
    """Threshold-head REINFORCE/PPO loss (SPEC §5): per prompt −Σ_g min(ρ_g A^s_g, clip(ρ_g) A^s_g),
    ρ_g = exp(log N(γ_g; μ_φ, σ²) − log N(γ_g; μ_φold, σ²)); on-policy (ρ = 1) its gradient is
    −Σ_g A^s_g ∇ log N(γ_g; μ_φ(p), σ²). Mean over prompts: denominator = rows / G.

    log_density / old_log_density / advantages `[B] f32` (γ_g the unclipped draw).
    """
    old = jax.lax.stop_gradient(old_log_density)
    ratio = jnp.exp(jnp.clip(log_density - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = advantages.astype(jnp.float32)
    obj = clipped_objective(ratio, adv, epsilon)
    b = jnp.float32(log_density.shape[0])
    d1_clipped, clip_active = clip_sides(jax.lax.stop_gradient(ratio), adv, epsilon)
    metrics = {"head_ratio_mean": Weighted(jax.lax.stop_gradient(ratio).sum(), b),
               "head_clip_frac": Weighted(d1_clipped.sum(), b),
               "head_clip_active_frac": Weighted(clip_active.sum(), b)}
    return LossOut(-obj.sum(), b / group_size, metrics, {})

"""Per-step pieces of every sampler, as pure functions on one block (SPEC §2).

Shapes: B rows, N = block positions, V = vocab. `eligible [B, N] bool` marks the masked
positions of each row's current block; only they can be selected. Every selection
breaks ties by the *lower position index* (so results are deterministic and match the
NumPy reference in tests/reference_generate.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


class Proposal(NamedTuple):
    """What one forward proposes for each position (all `[B, N]`)."""

    tokens: jax.Array  # int32 x0 = argmax(logits / T + Gumbel), plain argmax at T = 0
    confidence: jax.Array  # f32 softmax(logits)[x0] (untempered)
    logp: jax.Array  # f32 log_softmax(logits)[x0] (untempered)
    logp_tempered: jax.Array  # f32 log_softmax(logits / T)[x0]; 0 at T = 0 (a point mass)
    entropy: jax.Array  # f32 -sum_v p_v log p_v, p = softmax(logits) (untempered)


def propose(logits: jax.Array, key: jax.Array, temperature: jax.Array, never: Optional[int] = None) -> Proposal:
    """Gumbel-max proposals. logits `[B, N, V]` (any float dtype; computed in fp32),
    temperature `[B]` f32 (0 = greedy). argmax(logits/T + g), g ~ Gumbel(0, 1), samples
    from softmax(logits / T), as LLaDA's float64 `exp(logits) / (-log u)^T` does. The noise is
    drawn with `mode="high"`: fp32 Gumbels from a 23-bit uniform stop at ≈ 15.9, which never
    samples a token more than ~16 logits below the leader (with a 126k vocabulary such tails
    hold ~1% of the mass); LLaDA uses float64 for the same reason (arXiv 2409.02908).

    `never` (the mask id): a token id that is never proposed. Revealing M would leave the
    position masked, so it could be "revealed" again or stall a threshold / EB block
    (LLaDA's code has no such guard). The proposal is the argmax over the other ids; its
    log-prob, confidence and the entropy still come from the full softmax, the distribution
    the surrogate likelihoods score (rl/likelihood.py)."""
    lf = logits.astype(jnp.float32)
    t = temperature.astype(jnp.float32)[:, None, None]
    greedy = t <= 0
    safe_t = jnp.where(greedy, 1.0, t)
    gumbel = jax.lax.cond(jnp.any(~greedy), lambda: jax.random.gumbel(key, lf.shape, jnp.float32, mode="high"),
                          lambda: jnp.zeros(lf.shape, jnp.float32))  # all-greedy batches draw no noise
    noisy = jnp.where(greedy, lf, lf / safe_t + gumbel)
    if never is not None and 0 <= never < lf.shape[-1]:
        noisy = noisy.at[..., never].set(-jnp.inf)
    x0 = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
    lsm = jax.nn.log_softmax(lf, axis=-1)
    logp = jnp.take_along_axis(lsm, x0[..., None], axis=-1)[..., 0]
    p = jnp.exp(lsm)
    entropy = -jnp.sum(jnp.where(p > 0, p * lsm, 0.0), axis=-1)
    lsm_t = jax.nn.log_softmax(lf / safe_t, axis=-1)
    logp_t = jnp.take_along_axis(lsm_t, x0[..., None], axis=-1)[..., 0]
    logp_t = jnp.where(greedy[..., 0], 0.0, logp_t)
    return Proposal(x0, jnp.exp(logp), logp, logp_t, entropy)


def _order(key: jax.Array, eligible: jax.Array) -> jax.Array:
    """Positions sorted by `key` ascending, eligible first, ties by lower index. `[B, N]`."""
    return jnp.argsort(jnp.where(eligible, key, jnp.inf), axis=-1, stable=True)


def _rank(order: jax.Array) -> jax.Array:
    """Inverse permutation: rank[b, order[b, r]] = r."""
    return jnp.argsort(order, axis=-1).astype(jnp.int32)


def rank_by_score(score: jax.Array, eligible: jax.Array) -> jax.Array:
    """`[B, N]` int32 rank of each position by `score` descending among eligible ones
    (ties: lower index first); ineligible positions rank after all eligible ones."""
    return _rank(_order(-score.astype(jnp.float32), eligible))


def select_topk(score: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
    """The `k [B]` highest-`score` eligible positions of each row. `[B, N]` bool."""
    return eligible & (rank_by_score(score, eligible) < jnp.asarray(k)[..., None])


def select_threshold(confidence: jax.Array, eligible: jax.Array, threshold: jax.Array) -> jax.Array:
    """Fast-dLLM: the most confident eligible position, plus every eligible one with
    `confidence >= threshold [B]`. `[B, N]` bool (empty only for a row with no eligible)."""
    top1 = rank_by_score(confidence, eligible) == 0
    return eligible & (top1 | (confidence >= threshold[:, None]))


def select_eb(entropy: jax.Array, eligible: jax.Array, gamma: jax.Array) -> jax.Array:
    """Entropy-bounded: with eligible entropies sorted ascending H_(1) <= H_(2) <= ...,
    take the first `k = #{j : cumsum(H)_j - cummax(H)_j <= gamma}` of them, clipped to
    [1, #eligible]. gamma `[B]` f32. `[B, N]` bool."""
    n = entropy.shape[-1]
    order = _order(entropy.astype(jnp.float32), eligible)
    n_elig = jnp.sum(eligible, axis=-1)
    in_range = jnp.arange(n)[None, :] < n_elig[:, None]
    h = jnp.where(in_range, jnp.take_along_axis(entropy.astype(jnp.float32), order, axis=-1), 0.0)
    excess = jnp.cumsum(h, axis=-1) - jax.lax.cummax(h, axis=h.ndim - 1)
    count = jnp.sum(in_range & (excess <= gamma[:, None]), axis=-1)
    count = jnp.minimum(jnp.maximum(count, 1), n_elig)
    return eligible & (_rank(order) < count[:, None])


def fixed_schedule(n_masks: jax.Array, steps: int, step: jax.Array) -> jax.Array:
    """LLaDA's `num_transfer_tokens`: the block's `n_masks [B]` split evenly over `steps`,
    remainder to the first steps: `k_s = m // S + (s < m % S)`. step `[B]` or scalar."""
    return n_masks // steps + (step < n_masks % steps).astype(n_masks.dtype)

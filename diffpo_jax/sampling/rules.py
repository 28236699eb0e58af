"""Per-step pieces of every sampler, as pure functions on one block (SPEC §2).

Shapes: B rows, N = block positions, V = vocab. `eligible [B, N] bool` marks the masked
positions of each row's current block; only they can be selected. Every selection
breaks ties by the *lower position index* (so results are deterministic and match the
NumPy reference in tests/reference_generate.py).

Dream's rules (`rule='dream'`, Dream-org's `diffusion_generate`): `dream_timesteps` /
`dream_transfer_fraction` / `dream_schedule` (how many to reveal), `dream_confidence` (its
three scores), `select_dream` / `select_origin` (which); `filter_logits` is its top-p / top-k.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class Proposal(NamedTuple):
    """What one forward proposes for each position (all `[B, N]`)."""

    tokens: jax.Array  # int32 x0 = argmax(logits / T + Gumbel), plain argmax at T = 0
    confidence: jax.Array  # f32 softmax(logits)[x0] (untempered)
    logp: jax.Array  # f32 log_softmax(logits)[x0] (untempered)
    logp_tempered: jax.Array  # f32 log_softmax(filter(logits / T))[x0] (the law sampled); 0 at T = 0
    entropy: jax.Array  # f32 -sum_v p_v log p_v, p = softmax(logits) (untempered)
    probs: jax.Array  # f32 [B, N, V] softmax(filter(logits / T)); T = 0: softmax(filter(logits)), Dream's p


def filter_logits(z: jax.Array, top_p: float = 1.0, top_k: int = 0) -> jax.Array:
    """Dream's `sample_tokens` filters on z `[..., V]` f32 (the tempered logits), removed
    tokens set to -inf; top-p first, then top-k (both static; top_p >= 1 / top_k <= 0 = off).

    top-p: with the tokens sorted by z descending and q = softmax of the sorted values, keep
      token j iff `sum_{i<j} q_i <= top_p` (the mass *before* it), so the top-1 always stays.
      Kept = every token with z >= the smallest kept value (ties at the cut all stay).
    top-k: keep every token with z >= the k-th largest z (k = min(top_k, V); ties stay).
    """
    if top_p < 1.0:
        desc = -jnp.sort(-z, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(desc, axis=-1), axis=-1)
        n_keep = 1 + jnp.sum(cum[..., :-1] <= top_p, axis=-1, keepdims=True)  # cum[j-1] <= top_p, j >= 1
        cut = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
        z = jnp.where(z >= cut, z, -jnp.inf)
    if top_k > 0:
        kth = jax.lax.top_k(z, min(top_k, z.shape[-1]))[0][..., -1:]
        z = jnp.where(z >= kth, z, -jnp.inf)
    return z


def propose(logits: jax.Array, key: jax.Array, temperature: jax.Array, never: Optional[int] = None,
            top_p: float = 1.0, top_k: int = 0) -> Proposal:
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
    the surrogate likelihoods score (rl/likelihood.py).

    `top_p` / `top_k` (static): sample from softmax(filter_logits(logits / T)) instead, as
    Dream's `sample_tokens`; logp_tempered and `probs` are then of that filtered distribution
    (confidence / logp / entropy stay those of the plain softmax). At T = 0 the proposal is
    still the argmax (a filter always keeps it), so only `probs` changes. The filter sees the
    whole vocabulary, `never` included (as Dream's); should it keep `never` alone, the best
    other token is kept as well, so there is always something to propose."""
    lf = logits.astype(jnp.float32)
    t = temperature.astype(jnp.float32)[:, None, None]
    greedy = t <= 0
    safe_t = jnp.where(greedy, 1.0, t)
    z = lf / safe_t  # the tempered logits (= lf in greedy rows)
    has_never = never is not None and 0 <= never < lf.shape[-1]
    if top_p < 1.0 or top_k > 0:
        kept = filter_logits(z, top_p, top_k)
        if has_never:
            best = jnp.argmax(lf.at[..., never].set(-jnp.inf), axis=-1)
            kept = jnp.where(jnp.arange(lf.shape[-1]) == best[..., None], z, kept)
        z = kept
    gumbel = jax.lax.cond(jnp.any(~greedy), lambda: jax.random.gumbel(key, lf.shape, jnp.float32, mode="high"),
                          lambda: jnp.zeros(lf.shape, jnp.float32))  # all-greedy batches draw no noise
    noisy = jnp.where(greedy, lf, z + gumbel)
    if has_never:
        noisy = noisy.at[..., never].set(-jnp.inf)
    x0 = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
    lsm = jax.nn.log_softmax(lf, axis=-1)
    logp = jnp.take_along_axis(lsm, x0[..., None], axis=-1)[..., 0]
    p = jnp.exp(lsm)
    entropy = -jnp.sum(jnp.where(p > 0, p * lsm, 0.0), axis=-1)
    lsm_t = jax.nn.log_softmax(z, axis=-1)
    logp_t = jnp.take_along_axis(lsm_t, x0[..., None], axis=-1)[..., 0]
    logp_t = jnp.where(greedy[..., 0], 0.0, logp_t)
    return Proposal(x0, jnp.exp(logp), logp, logp_t, entropy, jax.nn.softmax(z, axis=-1))


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


# ----------------------------------------------------------------------------- Dream's rules


def _round_f32(x: Fraction) -> np.float32:
    """The float32 nearest to the exact rational x (ties to an even mantissa)."""
    near = np.float32(float(x))
    around = (np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf)))
    return min(around, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.uint32)) & 1))


@functools.lru_cache(maxsize=64)
def dream_timesteps(steps: int, eps: float) -> np.ndarray:
    """`torch.linspace(1, eps, steps + 1)` in float32, bit for bit (as torch's CPU kernel):
    n = steps + 1 points, d = fl32((fl32(eps) - 1) / steps); point i is the exact
    `1 + d*i` (i < n // 2) or `eps - d*(n - 1 - i)` (the others) rounded once to float32
    (the kernel's multiply-add is fused). `[steps + 1]` f32, from 1 down to eps."""
    n, start, end = steps + 1, np.float32(1.0), np.float32(eps)
    d = Fraction(float(np.float32((end - start) / np.float32(steps))))
    exact = [Fraction(1) + d * i if i < n // 2 else Fraction(float(end)) - d * (n - 1 - i) for i in range(n)]
    return np.array([_round_f32(x) for x in exact], np.float32)


def dream_transfer_fraction(steps: int, eps: float) -> np.ndarray:
    """`[steps]` f32: at step i (t = timesteps[i], s = timesteps[i + 1]) the share of the
    masks Dream reveals, `1 - s / t` computed in float32; 1 at the last step."""
    ts = dream_timesteps(steps, eps)
    frac = np.float32(1.0) - ts[1:] / ts[:-1]
    frac[-1] = 1.0
    return frac.astype(np.float32)


def dream_schedule(n_masks: jax.Array, fraction: jax.Array, step: jax.Array) -> jax.Array:
    """Dream's reveal count `k = int(n * (1 - s/t))` (all n at the last step, where the
    fraction is 1): n_masks `[B]` int (masks left now), fraction `[S]` f32
    (`dream_transfer_fraction`), step `[B]` int (0-based, < S). The product is float32, as
    in Dream (exact for n < 2**24). `[B]` int32."""
    fraction = jnp.asarray(fraction, jnp.float32)
    frac = fraction[jnp.clip(step, 0, fraction.shape[0] - 1)]
    return jnp.floor(n_masks.astype(jnp.float32) * frac).astype(jnp.int32)


def dream_confidence(probs: jax.Array, tokens: jax.Array, alg: str) -> jax.Array:
    """Dream's per-position score `[B, N]` f32 from p = probs `[B, N, V]` (the tempered,
    filtered softmax, `Proposal.probs`) and the proposal tokens `[B, N]`:
      maskgit_plus  p[x0]
      topk_margin   p_(1) - p_(2), the two largest probabilities
      entropy       sum_v p_v log(p_v + 1e-10), the negative entropy (larger = surer)."""
    if alg == "maskgit_plus":
        return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    if alg == "topk_margin":
        top2 = jax.lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]
    if alg == "entropy":
        return jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
    raise ValueError(f"dream_confidence: alg={alg!r} has no confidence; use maskgit_plus, topk_margin or entropy")


def select_dream(score: jax.Array, eligible: jax.Array, k: jax.Array, key: jax.Array, alg_temp: float) -> jax.Array:
    """Dream's choice of `k [B]` eligible positions by `score [B, N]`: the top k (alg_temp
    = 0), or (alg_temp > 0) k drawn without replacement from softmax(score / alg_temp) over the
    eligible ones, as Gumbel-top-k: the top k of `score / alg_temp + g`, g ~ Gumbel(0, 1).
    `[B, N]` bool."""
    if alg_temp > 0:
        score = score / alg_temp + jax.random.gumbel(key, score.shape, jnp.float32, mode="high")
    return select_topk(score, eligible, k)


def select_origin(eligible: jax.Array, p_transfer: jax.Array, key: jax.Array) -> jax.Array:
    """Dream's 'origin': each eligible position independently with probability
    `p_transfer [B]` f32 (`u < p`, u ~ U[0, 1); p = 1 reveals them all). `[B, N]` bool."""
    return eligible & (jax.random.uniform(key, eligible.shape, jnp.float32) < p_transfer[:, None])

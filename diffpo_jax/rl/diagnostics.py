"""Per-timestep KL between surrogate conditionals and the sampler's own conditionals
(SPEC §3, research/algorithms.md §4.5, DiFFPO Fig. 2c).

For a rollout (tokens, unmask_step, T_b) and every step t, at each position j revealed at t:
    p_true = softmax f(p, z_{t−1})_j                 (the distribution the sampler used; z_0 = all M)
    p_MF   = softmax f(p̃, z_0)_j                     (d1's mean-field; p̃ masked at p_mask)
    p_2MF  = softmax f(p̃, z_0)_j if t ≤ τ, else softmax f(p, z_τ)_j
KL(p_true ‖ p_sur) and KL(p_sur ‖ p_true) are averaged over positions (and prompts) per t and per
relative time t / T_b (n_bins equal bins of (0, 1]). Costs one forward per step t (as many as the
rollout itself) plus one per surrogate context. Meant for notebooks: returns numpy arrays.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffpo_jax.rl.likelihood import _completion_hidden, latent_at, mask_prompt


def conditional_kl(model, h_p: jax.Array, h_q: jax.Array, chunk: int = 64) -> tuple[jax.Array, jax.Array]:
    """(KL(p ‖ q), KL(q ‖ p)) `[B, L] f32` per position, p = softmax(lm(h_p)), q = softmax(lm(h_q)).

    h_p, h_q `[B, L, D]`; the vocabulary axis is only materialised for `chunk` positions at a time.
    """
    b, length, d = h_p.shape
    c = max(1, min(int(chunk), length))
    n = math.ceil(length / c)
    pad = n * c - length

    def chunks(h):
        return jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)

    def one(args):
        hp, hq = args
        lp = jax.nn.log_softmax(model.logits_from_hidden(hp).astype(jnp.float32), -1)
        lq = jax.nn.log_softmax(model.logits_from_hidden(hq).astype(jnp.float32), -1)
        return (jnp.exp(lp) * (lp - lq)).sum(-1), (jnp.exp(lq) * (lq - lp)).sum(-1)

    kpq, kqp = jax.lax.map(one, (chunks(h_p), chunks(h_q)))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * c)[:, :length]
    return unchunk(kpq), unchunk(kqp)


def surrogate_kl_by_step(model, prompt, prompt_mask, completion, unmask_step, nfe, completion_mask=None, *,
                         tau_fracs: Sequence[float] = (0.5,), tau_abs: Sequence[int] = (), p_mask: float = 0.0,
                         key: Optional[jax.Array] = None, chunk: int = 64, n_bins: int = 10,
                         use_padding_mask: bool = False, lora: bool = True) -> dict:
    """KL between the true per-step conditionals and MF / 2-MF surrogates, see module docstring.

    prompt/prompt_mask `[B, P]`, completion/unmask_step `[B, L]` (1-based reveal steps), nfe `[B]`;
    completion_mask `[B, L]` bool restricts the positions (default: all). 2-MF variants: τ_b =
    floor(f · T_b) for each f in tau_fracs (named '2mf@f<f>') and τ_b = min(τ, T_b − 1) for each τ in
    tau_abs ('2mf@t<τ>'). Returns numpy arrays: 't' [T], 'count' [T], 'rel_bins' [n_bins] (bin
    centres), 'rel_count' [n_bins], and for each surrogate s in ('mf', '2mf@…'):
    '<s>/kl_true_sur', '<s>/kl_sur_true' [T] and '<s>/rel_kl_true_sur', '<s>/rel_kl_sur_true' [n_bins].
    """
    mask_id = model.cfg.mask_token_id
    nfe_np = np.asarray(nfe).astype(np.int64)
    t_max = int(nfe_np.max())
    valid = jnp.ones(completion.shape, bool) if completion_mask is None else jnp.asarray(completion_mask, bool)
    p_tilde = mask_prompt(prompt, prompt_mask, key if key is not None else jax.random.key(0), p_mask, mask_id)

    graphdef, params = nnx.split(model)  # the weights go in as arguments, never as compiled-in constants

    def hidden_of(params, prompt_in, completion_in):
        return _completion_hidden(nnx.merge(graphdef, params), prompt_in, completion_in, prompt_mask,
                                  use_padding_mask, lora)

    hidden = jax.jit(hidden_of)
    h_mf = hidden(params, p_tilde, jnp.full_like(completion, mask_id))
    taus = {f"2mf@f{f:g}": np.minimum(np.floor(f * nfe_np), np.maximum(nfe_np - 1, 0)) for f in tau_fracs}
    taus.update({f"2mf@t{t}": np.minimum(t, np.maximum(nfe_np - 1, 0)) for t in tau_abs})
    taus = {k: jnp.asarray(v, jnp.int32) for k, v in taus.items()}
    h_tau = {k: hidden(params, prompt, latent_at(completion, unmask_step, tau, mask_id)) for k, tau in taus.items()}
    names = ["mf"] + list(taus)

    @jax.jit
    def step_sums(params, t, h_mf, h_tau, taus, prompt, completion, unmask_step, valid):
        before_t = jnp.full(completion.shape[:1], t - 1, jnp.int32)
        h_true = hidden_of(params, prompt, latent_at(completion, unmask_step, before_t, mask_id))
        sel = ((unmask_step == t) & valid).astype(jnp.float32)
        out = {"count": sel.sum(1)}
        for name in names:
            h_sur = h_mf if name == "mf" else jnp.where((t <= taus[name])[:, None, None], h_mf, h_tau[name])
            k_ts, k_st = conditional_kl(nnx.merge(graphdef, params), h_true, h_sur, chunk)
            out[f"{name}/kl_true_sur"] = (k_ts * sel).sum(1)
            out[f"{name}/kl_sur_true"] = (k_st * sel).sum(1)
        return out

    per_t = {k: np.zeros(t_max) for k in ["count"] + [f"{n}/{d}" for n in names for d in ("kl_true_sur", "kl_sur_true")]}
    per_bin = {k: np.zeros(n_bins) for k in per_t}
    for t in range(1, t_max + 1):
        sums = jax.device_get(step_sums(params, jnp.int32(t), h_mf, h_tau, taus, prompt, completion, unmask_step, valid))
        rel = t / np.maximum(nfe_np, 1)
        bins = np.clip(np.ceil(rel * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        for k, v in sums.items():
            per_t[k][t - 1] += v.sum()
            np.add.at(per_bin[k], bins, np.where(rel <= 1.0, v, 0.0))
    result = {"t": np.arange(1, t_max + 1), "count": per_t["count"],
              "rel_bins": (np.arange(n_bins) + 0.5) / n_bins, "rel_count": per_bin["count"]}
    for k in per_t:
        if k != "count":
            result[k] = per_t[k] / np.maximum(per_t["count"], 1)
            result[k.replace("/", "/rel_")] = per_bin[k] / np.maximum(per_bin["count"], 1)
    return result

"""Surrogate likelihoods of a completion under a masked diffusion LM (SPEC §3).

The true dLLM likelihood is intractable; RL optimises a factorised surrogate
`log π̃_θ(o | p) = Σ_i log q_θ(o_i | context_i)`, one term per completion token:

* mean-field (d1):  context_i = [p̃, M…M] for every i (one forward).
* two-stage MF (DiFFPO 2-MF): with τ ~ UniformInt[0, T_b) per sequence,
      context_i = [p̃, M…M]   if unmask_step_i ≤ τ   (stage 1)
      context_i = [p, z_τ]    otherwise              (stage 2)
  where z_τ = where(unmask_step ≤ τ, o, M) is the sampler's latent after τ steps.

* exact (the oracle the surrogates approximate): the sampler's own trajectory likelihood
      log π_θ(o | p) = Σ_t Σ_{j revealed at t} log softmax(f(p, z_{t−1}) / T)_j[o_j],
  one forward per decoding step (`exact_logps`).

Temperature: with `temperature [B]` (the rollout's T; ≤ 0 = greedy, scored at T = 1) every
likelihood scores `log softmax(f / T)`, the distribution the sampler drew from, so ratios and
IS weights compare against the behaviour policy actually sampled (RLConfig.likelihood_temperature
= 'sampler'). d1 scores `log softmax(f)` although it samples at T = 0.9 ('none').

`p̃` is the prompt with each position replaced by M with probability p_mask (d1 masks every
prompt position, left padding included; we follow d1). Randomness is per *row*: row r of the
batch uses `fold_in(key, row_id[r])`, so the draws for a row do not depend on how the batch is
split into micro-batches or shards. For inner iteration k the caller passes
`key = inner_key(rollout_key, k)` to θ, θ_old and the reference alike (same p̃ and τ).

All functions return fp32 `[B, L]` log-probs for every completion position; invalid positions
(padding, after the first EOS) are masked out downstream by `completion_mask`.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

SURROGATES = ("mf", "2mf", "exact")


def inner_key(key: jax.Array, k) -> jax.Array:
    """Key of inner iteration k: `fold_in(key, k)` (shared by θ, θ_old and the reference)."""
    return jax.random.fold_in(key, k)


def _row_keys(key: jax.Array, batch: int, row_ids: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Per-row (prompt-mask key, τ key), each `[B]` keys, from fold_in(key, row_id)."""
    rows = jnp.arange(batch, dtype=jnp.int32) if row_ids is None else row_ids.astype(jnp.int32)
    keys = jax.vmap(lambda r: jax.random.split(jax.random.fold_in(key, r)))(rows)
    return keys[:, 0], keys[:, 1]


def mask_prompt(prompt: jax.Array, prompt_mask: jax.Array, key: jax.Array, p_mask: float, mask_id: int,
                *, row_ids: Optional[jax.Array] = None, include_padding: bool = True) -> jax.Array:
    """p̃: each prompt position replaced by `mask_id` independently with probability p_mask.

    prompt `[B, P] int32`, prompt_mask `[B, P] bool` (True = real token). d1 masks padding
    positions too (`include_padding=True`, the default); False masks real tokens only.
    Returns `[B, P] int32`.
    """
    if p_mask <= 0.0:
        return prompt
    mask_keys, _ = _row_keys(key, prompt.shape[0], row_ids)
    u = jax.vmap(lambda k: jax.random.uniform(k, prompt.shape[1:]))(mask_keys)
    hit = u < p_mask
    if not include_padding:
        hit = hit & prompt_mask.astype(bool)
    return jnp.where(hit, mask_id, prompt)


def draw_tau(key: jax.Array, nfe: jax.Array, *, row_ids: Optional[jax.Array] = None) -> jax.Array:
    """τ_b ~ UniformInt[0, T_b) per row; nfe `[B] int32` (T_b). Returns `[B] int32` (0 if T_b ≤ 1)."""
    _, tau_keys = _row_keys(key, nfe.shape[0], row_ids)
    hi = jnp.maximum(nfe.astype(jnp.int32), 1)
    return jax.vmap(lambda k, h: jax.random.randint(k, (), 0, h, dtype=jnp.int32))(tau_keys, hi)


def latent_at(completion: jax.Array, unmask_step: jax.Array, tau: jax.Array, mask_id: int) -> jax.Array:
    """z_τ = where(unmask_step ≤ τ, completion, M). completion/unmask_step `[B, L]`, tau `[B]`."""
    return jnp.where(unmask_step <= tau[:, None], completion, mask_id)


def _logit_temperature(temperature: Optional[jax.Array], batch: int) -> jax.Array:
    """`[B, 1, 1]` f32 divisor T of the logits (T ≤ 0 or None: 1, i.e. untempered), as the
    sampler's `rules.propose` divides them."""
    if temperature is None:
        return jnp.ones((batch, 1, 1), jnp.float32)
    t = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (batch,))
    return jnp.where(t > 0, t, 1.0)[:, None, None]


def token_logprobs(model, hidden: jax.Array, targets: jax.Array, chunk: int,
                   temperature: Optional[jax.Array] = None) -> jax.Array:
    """log softmax(model.logits_from_hidden(hidden) / T)[targets] without a full `[B, L, V]` buffer.

    hidden `[B, L, D]`, targets `[B, L] int32`, temperature `[B] f32` or None (T ≤ 0 / None:
    untempered) -> `[B, L] f32` = target logit − logsumexp, with
    fp32 logits (LLaDA's `logits_from_hidden` accumulates and returns fp32: nothing is rounded
    to bf16). The sequence is processed in chunks of `chunk` positions by `lax.map`; each chunk
    is rematerialised in the backward pass, so at most one `[B, chunk, V]` fp32 logits buffer
    is live at a time (forward and backward).
    """
    b, length, d = hidden.shape
    c = max(1, min(int(chunk), length))
    n = math.ceil(length / c)
    pad = n * c - length
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)
    t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)
    temp = _logit_temperature(temperature, b)

    @jax.checkpoint
    def one_chunk(args):
        hc, tc = args
        logits = model.logits_from_hidden(hc).astype(jnp.float32) / temp
        target = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return target - jax.nn.logsumexp(logits, axis=-1)

    out = jax.lax.map(one_chunk, (h, t))
    return out.swapaxes(0, 1).reshape(b, n * c)[:, :length]


def _padding_mask(prompt_mask: jax.Array, length: int, use: bool) -> Optional[jax.Array]:
    if not use:
        return None
    return jnp.concatenate([prompt_mask.astype(bool), jnp.ones((prompt_mask.shape[0], length), bool)], axis=1)


def _completion_hidden(model, prompt, completion_input, prompt_mask, use_padding_mask, lora):
    """Final hidden states `[B, L, D]` at the completion positions of `[prompt, completion_input]`."""
    tokens = jnp.concatenate([prompt, completion_input], axis=1)
    pm = _padding_mask(prompt_mask, completion_input.shape[1], use_padding_mask)
    return model.hidden(tokens, pm, lora=lora)[:, prompt.shape[1]:]


def mf_logps(model, prompt: jax.Array, prompt_mask: jax.Array, completion: jax.Array, key: jax.Array, *,
             p_mask: float, chunk: int, row_ids: Optional[jax.Array] = None, use_padding_mask: bool = False,
             lora: bool = True, temperature: Optional[jax.Array] = None) -> jax.Array:
    """d1 mean-field: `log q(o_i | [p̃, M…M])` for every completion position, one forward.

    prompt `[B, P]`, prompt_mask `[B, P]`, completion `[B, L]` int32, temperature `[B]` f32 or
    None (see the module doc) -> `[B, L] f32`.
    """
    mask_id = model.cfg.mask_token_id
    p_tilde = mask_prompt(prompt, prompt_mask, key, p_mask, mask_id, row_ids=row_ids)
    h = _completion_hidden(model, p_tilde, jnp.full_like(completion, mask_id), prompt_mask, use_padding_mask, lora)
    return token_logprobs(model, h, completion, chunk, temperature)


def two_stage_logps(model, prompt: jax.Array, prompt_mask: jax.Array, completion: jax.Array,
                    unmask_step: jax.Array, nfe: jax.Array, key: jax.Array, *, p_mask: float, stages: str,
                    chunk: int, row_ids: Optional[jax.Array] = None, use_padding_mask: bool = False,
                    lora: bool = True, tau: Optional[jax.Array] = None,
                    temperature: Optional[jax.Array] = None) -> jax.Array:
    """DiFFPO 2-MF: tokens with unmask_step ≤ τ scored from stage 1 `[p₁, M…M]`, the others
    from stage 2 `[p₂, z_τ]`; τ ~ UniformInt[0, T_b) from `key` unless given (`[B] int32`).

    stages: 'stage1' (p₁ = p̃, p₂ = p), 'both' (p₁ = p₂ = p̃, the same draw), 'none' (p₁ = p₂ = p).
    Both forwards run as one `[2B, P+L]` batch; the LM head runs once on the selected hidden
    states. Shapes as `mf_logps`; unmask_step `[B, L]`, nfe `[B]` int32. Note: with
    stages='stage1', τ = 0 scores everything from `[p, M…M]` (the un-masked prompt).
    """
    if stages not in ("stage1", "both", "none"):
        raise ValueError(f"prompt_mask_stages={stages!r}: choose one of ('stage1', 'both', 'none')")
    mask_id = model.cfg.mask_token_id
    if tau is None:
        tau = draw_tau(key, nfe, row_ids=row_ids)
    p_tilde = mask_prompt(prompt, prompt_mask, key, p_mask if stages != "none" else 0.0, mask_id, row_ids=row_ids)
    p1 = p_tilde
    p2 = p_tilde if stages == "both" else prompt
    b = prompt.shape[0]
    tokens_prompt = jnp.concatenate([p1, p2], axis=0)
    tokens_completion = jnp.concatenate([jnp.full_like(completion, mask_id),
                                         latent_at(completion, unmask_step, tau, mask_id)], axis=0)
    h = _completion_hidden(model, tokens_prompt, tokens_completion, jnp.concatenate([prompt_mask] * 2, 0),
                           use_padding_mask, lora)
    stage1 = (unmask_step <= tau[:, None])[..., None]
    return token_logprobs(model, jnp.where(stage1, h[:b], h[b:]), completion, chunk, temperature)


def exact_logps(model, prompt: jax.Array, prompt_mask: jax.Array, completion: jax.Array, unmask_step: jax.Array,
                *, chunk: int, use_padding_mask: bool = False, lora: bool = True,
                temperature: Optional[jax.Array] = None) -> jax.Array:
    """The sampler's exact trajectory likelihood, per token: token j revealed at step t gets
    `log softmax(f(p, z_{t−1}) / T)_j[o_j]` with z_{t−1} = where(unmask_step < t, o, M); the
    row's sum is the paper's log π_θ(o | p) of the decoding trajectory: the token factors.
    The probability of the reveal *order* (which positions the rule picked at each step, which
    depends on θ through the proposals it discarded) is not part of it, as in the paper; the
    sampler's `behaviour_logp(_tempered)` records exactly these token factors.

    prompt `[B, P]`, prompt_mask `[B, P]`, completion / unmask_step `[B, L]` int32 (1-based
    steps, as the sampler records them), temperature `[B]` f32 or None -> `[B, L] f32`.

    One forward of `[p, z]` per distinct reveal step: iteration i scores, in every row, the
    tokens of that row's i-th distinct step (steps that revealed nothing, e.g. rule='fixed'
    with more steps than masks, have no tokens and need no forward). The loop is a `lax.scan`
    of static length L (no row has more than L distinct steps); iterations past the batch's
    most distinct steps are skipped by `lax.cond`, so the cost is max_b(#steps_b) forwards,
    each rematerialised in the backward pass (memory: one forward's activations at a time).
    Rule-exact for the sampler without a KV cache or CFG (which change the logits it used).
    """
    mask_id = model.cfg.mask_token_id
    b, length = completion.shape
    steps = unmask_step.astype(jnp.int32)
    big = jnp.iinfo(jnp.int32).max

    def score_step(t):
        """Log-probs `[B, L]` of every position from the latent before step t `[B]`."""
        z = jnp.where(steps < t[:, None], completion, mask_id)
        h = _completion_hidden(model, prompt, z, prompt_mask, use_padding_mask, lora)
        return token_logprobs(model, h, completion, chunk, temperature)

    @jax.checkpoint
    def body(carry, _):
        prev, out = carry
        t = jnp.min(jnp.where(steps > prev[:, None], steps, big), axis=1)  # each row's next step
        live = t < big
        lp = jax.lax.cond(jnp.any(live), lambda: score_step(jnp.where(live, t, 0)),
                          lambda: jnp.zeros((b, length), jnp.float32))
        out = jnp.where(steps == jnp.where(live, t, -1)[:, None], lp, out)
        return (jnp.where(live, t, prev), out), None

    init = (jnp.zeros((b,), jnp.int32), jnp.zeros((b, length), jnp.float32))
    (_, out), _ = jax.lax.scan(body, init, None, length=length)
    return out


def uses_key(cfg) -> bool:
    """Whether `surrogate_logps(cfg.method, ..., key, cfg)` depends on `key`: 2-MF draws τ, MF
    masks the prompt when cfg.p_mask > 0; exact (and MF at p_mask 0) is a fixed function of the
    batch, so θ_old's log-probs are the same at every inner iteration and are scored once."""
    return not (cfg.surrogate == "exact" or (cfg.surrogate == "mf" and cfg.p_mask == 0))


def surrogate_logps(surrogate: str, model, batch: dict, key: jax.Array, cfg, *, lora: bool = True) -> jax.Array:
    """Dispatch on `surrogate` ('mf' | '2mf' | 'exact', or a method name of RLConfig) -> `[B, L] f32`.

    batch: dict with prompt, prompt_mask, completion, unmask_step, nfe (see the trajectory
    contract), optional row_id `[B] int32` and temperature `[B] f32` (the rollout's T, used when
    cfg.likelihood_temperature == 'sampler'). cfg: an `RLConfig` (p_mask, prompt_mask_stages,
    logprob_chunk, use_padding_mask, likelihood_temperature). key: the inner-iteration key.
    """
    kind = {"mf": "mf", "d1": "mf", "mf_is": "mf", "exact": "exact"}.get(
        surrogate, "2mf" if surrogate.startswith("2mf") else None)
    if kind is None:
        raise ValueError(f"surrogate={surrogate!r}: choose one of {SURROGATES} or an RLConfig method")
    temperature = batch.get("temperature") if cfg.likelihood_temperature == "sampler" else None
    if kind == "exact":
        return exact_logps(model, batch["prompt"], batch["prompt_mask"], batch["completion"], batch["unmask_step"],
                           chunk=cfg.logprob_chunk, use_padding_mask=cfg.use_padding_mask, lora=lora,
                           temperature=temperature)
    common = dict(p_mask=cfg.p_mask, chunk=cfg.logprob_chunk, row_ids=batch.get("row_id"),
                  use_padding_mask=cfg.use_padding_mask, lora=lora, temperature=temperature)
    if kind == "mf":
        return mf_logps(model, batch["prompt"], batch["prompt_mask"], batch["completion"], key, **common)
    return two_stage_logps(model, batch["prompt"], batch["prompt_mask"], batch["completion"], batch["unmask_step"],
                           batch["nfe"], key, stages=cfg.prompt_mask_stages, **common)

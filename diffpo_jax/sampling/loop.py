"""The decoding loop: semi-autoregressive blocks, one `lax.while_loop`, per-row progress.

`decode(model, cfg, prompt_tokens, prompt_mask, key, gamma, threshold, temperature)` is a
pure traced function (no jit here; `api.make_sampler` compiles it). One loop iteration =
one forward of the whole batch `[B, P + L]` = one NFE for every row still decoding.

Rows advance through their blocks independently: a row whose current block has no masks
left moves on to its next block at the next forward (the semi-AR semantics of each row are
unchanged: positions outside a row's current block are never unmasked, earlier blocks are
complete, later ones fully masked). A batch therefore costs `max_b NFE_b` forwards, not
`sum over blocks of max_b`. A row with nothing left to decode is a no-op: its tokens and
counters do not change. The loop stops when every row is done, or at the static bound
`cfg.max_steps` (which no rule can exceed: 'fixed' / 'dream' run exactly their steps, every
step of the others reveals >= 1 token).

Per-row bookkeeping: `nfe [B]` counts the forwards in which the row had eligible masks
(for rules 'fixed' / 'dream' every forward until its last block ends, so NFE = steps exactly,
as in LLaDA and Dream); the tokens revealed at a row's n-th counted forward get `unmask_step = n`
(1-based), so the latent after step t is `where(unmask_step <= t, tokens, MASK)`.

Only the current block's logits are formed: the model's final hidden states `[B, P+L, D]`
are cut to each row's block `[B, Lb, D]` before the LM head, so `[B, Lb, V]` (not
`[B, P+L, V]`) is materialised per step.

KV cache (`cfg.kv_cache` 'prefix' | 'dual', Fast-dLLM's approximate cache): the loop runs
one iteration per block; it starts with the full forward above, which also returns every
layer's post-RoPE keys and values `[N, B, P+L, Hkv, hd]` (`Transformer.hidden_and_kv`), and an inner
`lax.while_loop` then runs the block's later steps with `Transformer.hidden_with_cache` on a window
only: 'prefix' = the current block and everything after it (`L - j*Lb` positions in block j;
one `lax.switch` branch per block, so each has a static width), 'dual' = the current block
alone (`Lb`). Inside such a forward the window's fresh keys/values replace the cached ones;
the cache itself is closed over by the inner loop (never carried or copied) and is rebuilt by
the next block's full forward. NFE: one model call = 1 NFE, full or partial (a row's NFE
counts its steps exactly as without a cache; `forwards` counts batched calls, `n_blocks` of
them full). With a cache the rows move through the blocks in lockstep, as in Fast-dLLM: one
full forward serves every row, so a row that fills its block early idles (a no-op, NFE not
counted) until every row has filled it. A row's tokens therefore do not depend on the other
rows (at T = 0), but a batch costs `sum over blocks of max_b` steps. Rules 'fixed', 'dream'
and 'topk' take the same number of steps in every row anyway.

Padding (`cfg.use_padding_mask`): off by default = LLaDA's released code and d1, whose
model ignores `attention_mask` (left pads are EOS tokens that every position attends to);
these are the numbers we reproduce. On = `[prompt_mask, ones(L)]` is passed as the key
padding mask, so a left-padded row decodes as if it were alone and unpadded.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import struct

from diffpo_jax.models.threshold_head import HeadDraws, HeadGamma, prompt_features, step_state_features
from diffpo_jax.sampling import rules
from diffpo_jax.sampling.config import STEPPED_RULES, SamplerConfig


class SampleOutput(struct.PyTreeNode):
    """Sampler result (B rows, P prompt length, L = gen_length).

    tokens `[B, P+L]` int32: prompt (as given, left-padded) + completion.
    unmask_step `[B, L]` int32: 1-based per-row step at which each completion token was
      revealed (counted across blocks; never 0: the mask id is never proposed, so every
      revealed position holds a real token and every block fills).
    behaviour_logp `[B, L]` f32: log softmax of the untempered logits (after CFG and
      logits_eos_inf, i.e. what the sampler used) at the reveal step, of the revealed token.
    behaviour_logp_tempered `[B, L]` f32: the same under softmax(logits / T); 0 where T = 0
      (greedy decoding is a point mass).
    nfe `[B]` int32: forwards that did work for the row (= max(unmask_step) unless
      rule 'fixed' / 'dream' has steps that reveal nothing).
    completion_mask `[B, L]` bool: positions up to and including the first EOS (all if none).
    completion_length `[B]` int32: completion_mask.sum(-1).
    forwards `[]` int32: batched forwards actually run (= max(nfe) without a KV cache; with one,
      the sum over blocks of the block's most steps in any row).
    cfg_guided (static): True if every forward was a CFG pair (still 1 NFE per step).
    head: `HeadDraws` when decoded with a threshold head (`decode(head=...)`), else None.
    """

    tokens: jax.Array
    unmask_step: jax.Array
    behaviour_logp: jax.Array
    behaviour_logp_tempered: jax.Array
    nfe: jax.Array
    completion_mask: jax.Array
    completion_length: jax.Array
    forwards: jax.Array
    cfg_guided: bool = struct.field(pytree_node=False, default=False)
    head: Optional[HeadDraws] = None


class _State(NamedTuple):
    comp: jax.Array  # [B, L] int32 completion tokens (MASK where hidden)
    blk: jax.Array  # [B] int32 current block (n_blocks = done)
    block_step: jax.Array  # [B] int32 steps taken in the current block
    block_masks: jax.Array  # [B] int32 masks in the current block at its start (fixed rule)
    nfe: jax.Array  # [B] int32
    unmask_step: jax.Array  # [B, L] int32
    logp: jax.Array  # [B, L] f32
    logp_t: jax.Array  # [B, L] f32
    it: jax.Array  # [] int32 forwards run
    block_over: jax.Array  # [] bool, KV cache only: every row has finished the current block
    head: Optional[tuple] = None  # with a threshold head: (features [B, D] f32, the latest draw [B], the step
    #   head's draws [B, S] and features [B, S, F] by step index (None for the prompt head), Σ of γ used [B])


def completion_mask(completion: jax.Array, eos_id: int) -> jax.Array:
    """`[B, L]` bool: True up to and including the first `eos_id`; all True if none."""
    is_eos = completion == eos_id
    first = jnp.where(jnp.any(is_eos, axis=-1), jnp.argmax(is_eos, axis=-1), completion.shape[-1])
    return jnp.arange(completion.shape[-1])[None, :] <= first[:, None]


def _take_block(a: jax.Array, onehot: jax.Array) -> jax.Array:
    """a `[B, nb*Lb, ...]`, onehot `[B, nb]` -> the selected block `[B, Lb, ...]` (exact;
    zeros for a row whose onehot is all False)."""
    b, nb = onehot.shape
    blocks = a.reshape(b, nb, a.shape[1] // nb, *a.shape[2:])
    sel = onehot.reshape(b, nb, *([1] * (blocks.ndim - 2)))
    return jnp.sum(jnp.where(sel, blocks, jnp.zeros((), a.dtype)), axis=1)


def _model_rows(cfg: SamplerConfig, x, padding_mask, prompt_len: int, mask_id: int):
    """The rows the model runs on: x `[B, T]`, or under CFG `[x; x with the prompt masked]`
    `[2B, T]` (LLaDA masks every prompt position), and the padding mask to match."""
    if not cfg.uses_cfg:
        return x, padding_mask
    x = jnp.concatenate([x, x.at[:, :prompt_len].set(mask_id)], axis=0)
    if padding_mask is not None:
        padding_mask = jnp.concatenate([padding_mask, padding_mask], axis=0)
    return x, padding_mask


def _guide(cfg: SamplerConfig, logits: jax.Array, b: int) -> jax.Array:
    """fp32 logits `[B, Lb, V]`: under CFG `u + (w+1)(c-u)` of the `[2B, ...]` pair."""
    logits = logits.astype(jnp.float32)
    if cfg.uses_cfg:
        cond, uncond = logits[:b], logits[b:]
        logits = uncond + (cfg.cfg_scale + 1.0) * (cond - uncond)
    return logits


def _features(h, b: int, prompt_len: int, feats_mask):
    """The threshold head's prompt features `[B, D]` f32 from a full forward's hidden states
    (the conditional rows under CFG), or None when no head reads them (feats_mask None)."""
    return None if feats_mask is None else prompt_features(h[:b, :prompt_len], feats_mask)


def _block_logits(model, cfg: SamplerConfig, x, padding_mask, onehot, prompt_len: int, mask_id: int,
                  feats_mask=None):
    """(fp32 logits `[B, Lb, V]` of each row's current block (with CFG if configured), the
    head's prompt features `[B, D]` or None: `_features`)."""
    b = x.shape[0]
    x, padding_mask = _model_rows(cfg, x, padding_mask, prompt_len, mask_id)
    if cfg.uses_cfg:
        onehot = jnp.concatenate([onehot, onehot], axis=0)
    feats = None
    if hasattr(model, "hidden"):
        h = model.hidden(x, padding_mask, lora=cfg.lora)
        logits = model.logits_from_hidden(_take_block(h[:, prompt_len:], onehot))
        feats = _features(h, b, prompt_len, feats_mask)
    else:  # any model returning full logits
        logits = _take_block(model(x, padding_mask, lora=cfg.lora)[:, prompt_len:], onehot)
    return _guide(cfg, logits, b), feats


def _full_logits_and_cache(model, cfg: SamplerConfig, x, padding_mask, onehot, prompt_len: int, mask_id: int,
                           feats_mask=None):
    """A block's first forward with a KV cache: (fp32 logits `[B, Lb, V]` of the current block,
    (k, v) `[N, B', P+L, Hkv, hd]` of every layer; B' = 2B under CFG, prompt features or None)."""
    b = x.shape[0]
    x, padding_mask = _model_rows(cfg, x, padding_mask, prompt_len, mask_id)
    if cfg.uses_cfg:
        onehot = jnp.concatenate([onehot, onehot], axis=0)
    h, k, v = model.hidden_and_kv(x, padding_mask, lora=cfg.lora)
    logits = _guide(cfg, model.logits_from_hidden(_take_block(h[:, prompt_len:], onehot)), b)
    return logits, (k, v), _features(h, b, prompt_len, feats_mask)


def _window_logits(model, cfg: SamplerConfig, x, padding_mask, blk, cache, prompt_len: int, mask_id: int):
    """A later forward of block `blk` ([] int32, the same for every row) against `cache`: fp32
    logits `[B, Lb, V]` from the window 'prefix' = block..end (one `lax.switch` branch per block,
    each with a static width) or 'dual' = the block."""
    b, lb, nb = x.shape[0], cfg.block_length, cfg.n_blocks
    x, padding_mask = _model_rows(cfg, x, padding_mask, prompt_len, mask_id)

    def window(start, width):
        h = model.hidden_with_cache(x, start, width, cache[0], cache[1], padding_mask, lora=cfg.lora)
        return model.logits_from_hidden(h[:, :lb])

    if cfg.kv_cache == "dual":
        logits = window(prompt_len + blk * lb, lb)
    else:
        branches = [lambda j=j: window(prompt_len + j * lb, (nb - j) * lb) for j in range(nb)]
        logits = jax.lax.switch(jnp.clip(blk, 0, nb - 1).astype(jnp.int32), branches)
    return _guide(cfg, logits, b)


def _select(cfg: SamplerConfig, prop: rules.Proposal, eligible, st: _State, key, gamma, threshold):
    """`[B, Lb]` bool positions to reveal this step, by cfg.rule."""
    if cfg.rule == "dream":  # fractions: static f32 constants, as Dream's torch.linspace
        fraction = rules.dream_transfer_fraction(cfg.max_steps_per_block, cfg.eps)
        if cfg.dream_alg == "origin":
            return rules.select_origin(eligible, jnp.asarray(fraction)[st.block_step], key)
        k = rules.dream_schedule(jnp.sum(eligible, axis=-1), fraction, st.block_step)
        score = rules.dream_confidence(prop.probs, prop.tokens, cfg.dream_alg)
        return rules.select_dream(score, eligible, k, key, cfg.alg_temp)
    if cfg.rule in ("fixed", "topk"):
        score = prop.confidence
        if cfg.remasking == "random":
            score = jax.random.uniform(key, eligible.shape, jnp.float32)
        if cfg.rule == "fixed":
            k = rules.fixed_schedule(st.block_masks, cfg.max_steps_per_block, st.block_step)
        else:
            k = jnp.full(eligible.shape[:1], cfg.k, jnp.int32)
        return rules.select_topk(score, eligible, k)
    if cfg.rule == "threshold":
        return rules.select_threshold(prop.confidence, eligible, threshold)
    return rules.select_eb(prop.entropy, eligible, gamma)


def decode(model, cfg: SamplerConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array, key: jax.Array,
           gamma: jax.Array, threshold: jax.Array, temperature: jax.Array,
           head: Optional[HeadGamma] = None) -> SampleOutput:
    """Decode `cfg.gen_length` tokens after left-padded `prompt_tokens [B, P]` int32.

    prompt_mask `[B, P]` bool (True = real token; used only with cfg.use_padding_mask);
    gamma, threshold, temperature `[B]` f32 (used by rule eb / threshold / all rules).
    head: the threshold head (rule 'eb' only) replaces `gamma`: the prompt features come from the
    first forward (the non-padding prompt positions' final hidden states of [p, M…M]); the
    prompt head draws γ = clip(μ(f) + σ ε, 0, γ_max) there, once per row; the step head draws
    γ_t = clip(μ(f, s_t) + σ ε_t, 0, γ_max) at each of the row's steps, s_t =
    `step_state_features` of that forward's block before the selection. Noise: its own stream
    (`fold_in(key, 2**31 - 1)`, then the forward index), so the proposals are those without a head.
    """
    mcfg = getattr(model, "cfg", None)
    if head is not None and cfg.rule != "eb":
        raise ValueError(f"decode: a threshold head sets EB's gamma; rule={cfg.rule!r} has none (use rule='eb')")
    if head is not None and not hasattr(model, "hidden"):
        raise ValueError(f"decode: a threshold head reads the model's hidden states; {type(model).__name__} has no "
                         "hidden()")
    if cfg.uses_cache and not (hasattr(model, "hidden_and_kv") and hasattr(model, "hidden_with_cache")):
        raise ValueError(f"SamplerConfig.kv_cache={cfg.kv_cache!r} needs a model with hidden_and_kv() and "
                         f"hidden_with_cache() (diffpo_jax.models.transformer.Transformer); {type(model).__name__} has "
                         "not; use kv_cache='none'")
    mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else mcfg.mask_token_id
    eos_id = cfg.eos_token_id if cfg.eos_token_id is not None else mcfg.eos_token_id
    b, p = prompt_tokens.shape
    nb, lb, n_len = cfg.n_blocks, cfg.block_length, cfg.gen_length
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    padding_mask = None
    if cfg.use_padding_mask:
        padding_mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, n_len), bool)], axis=1)

    def onehot_of(blk):
        return blk[:, None] == jnp.arange(nb, dtype=jnp.int32)[None, :]

    def masks_in_block(comp, blk):
        return jnp.sum(_take_block(comp == mask_id, onehot_of(blk)), axis=-1).astype(jnp.int32)

    per_step = head is not None and head.module().n_step_features > 0
    feats_mask = None if head is None else prompt_mask.astype(bool)
    head_key = jax.random.fold_in(key, 2**31 - 1)

    def head_gamma(st: _State, feats_new, prop: rules.Proposal, eligible):
        """(the head's carry with this step's features / draw, γ `[B]` to decode with, s_t `[B, F]` or None)."""
        feats, raw, s_raw, s_feats, g_sum = st.head
        module = head.module()
        if feats_new is not None:  # the first forward ([p, M…M]) gives the features
            feats = jnp.where(st.it == 0, feats_new, feats)
        eps = jax.random.normal(jax.random.fold_in(head_key, st.it), (b,), jnp.float32)
        if not per_step:
            raw = jnp.where(st.it == 0, module(feats) + head.sigma * eps, raw)
            return (feats, raw, s_raw, s_feats, g_sum), jnp.clip(raw, 0.0, module.gamma_max), None
        s_t = step_state_features(prop.entropy, prop.confidence, eligible, st.nfe,
                                  jnp.sum(st.comp == mask_id, axis=-1), max_steps=cfg.max_steps,
                                  completion_length=n_len, vocab_size=prop.probs.shape[-1])
        raw = module(feats, s_t) + head.sigma * eps
        return (feats, raw, s_raw, s_feats, g_sum), jnp.clip(raw, 0.0, module.gamma_max), s_t

    def record_step(carry: tuple, st: _State, active, gamma_t, s_t) -> tuple:
        """Step head: file this step's draw and features at the row's step index (if it decoded)."""
        feats, raw, s_raw, s_feats, g_sum = carry
        write = (jnp.arange(cfg.max_steps)[None, :] == st.nfe[:, None]) & active[:, None]
        return (feats, raw, jnp.where(write, raw[:, None], s_raw), jnp.where(write[..., None], s_t[:, None], s_feats),
                g_sum + jnp.where(active, gamma_t, 0.0))

    def step(st: _State, logits: jax.Array, feats_new=None) -> _State:
        """Reveal tokens from this forward's block logits `[B, Lb, V]` f32; one loop iteration."""
        onehot = onehot_of(st.blk)
        live = st.blk < nb
        if cfg.logits_eos_inf:
            logits = logits.at[..., eos_id].set(-jnp.inf)
        k_noise, k_select = jax.random.split(jax.random.fold_in(key, st.it))
        prop = rules.propose(logits, k_noise, temperature, never=mask_id, top_p=cfg.top_p, top_k=cfg.top_k)
        eligible = (_take_block(st.comp, onehot) == mask_id) & live[:, None]
        gamma_t, head_carry, s_t = gamma, st.head, None
        if head is not None:
            head_carry, gamma_t, s_t = head_gamma(st, feats_new, prop, eligible)
        select = _select(cfg, prop, eligible, st, k_select, gamma_t, threshold)
        active = live if cfg.rule in STEPPED_RULES else jnp.any(eligible, axis=-1)
        if per_step:
            head_carry = record_step(head_carry, st, active, gamma_t, s_t)
        nfe = st.nfe + active.astype(jnp.int32)
        in_block = jnp.repeat(onehot, lb, axis=1)  # [B, L]
        reveal = jnp.tile(select, (1, nb)) & in_block
        comp = jnp.where(reveal, jnp.tile(prop.tokens, (1, nb)), st.comp)
        block_step = st.block_step + active.astype(jnp.int32)
        if cfg.rule in STEPPED_RULES:
            block_done = live & (block_step >= cfg.max_steps_per_block)
        else:
            block_done = live & ~jnp.any(eligible & ~select, axis=-1)
        block_over = st.block_over
        if cfg.uses_cache:  # lockstep: the block ends when every live row has filled it
            block_over = jnp.all(block_done | ~live)
            block_done = live & block_over
        blk = st.blk + block_done.astype(jnp.int32)
        return _State(
            comp=comp, blk=blk,
            block_step=jnp.where(block_done, 0, block_step),
            block_masks=jnp.where(block_done, masks_in_block(comp, blk), st.block_masks),
            nfe=nfe,
            unmask_step=jnp.where(reveal, nfe[:, None], st.unmask_step),
            logp=jnp.where(reveal, jnp.tile(prop.logp, (1, nb)), st.logp),
            logp_t=jnp.where(reveal, jnp.tile(prop.logp_tempered, (1, nb)), st.logp_t),
            it=st.it + 1, block_over=block_over, head=head_carry)

    def seq(st: _State) -> jax.Array:
        return jnp.concatenate([prompt_tokens, st.comp], axis=1)

    def body(st: _State) -> _State:  # no cache: one full forward per iteration
        return step(st, *_block_logits(model, cfg, seq(st), padding_mask, onehot_of(st.blk), p, mask_id, feats_mask))

    def block_body(st: _State) -> _State:
        """KV cache: one whole block (rows in lockstep). The full forward's cache is closed over
        by the inner loop, not carried, so the window steps never copy it."""
        logits, cache, feats = _full_logits_and_cache(model, cfg, seq(st), padding_mask, onehot_of(st.blk), p, mask_id,
                                                      feats_mask)
        st = step(st, logits, feats)
        blk = jnp.min(st.blk)  # the same for every row while the block runs

        def window_body(s: _State) -> _State:
            return step(s, _window_logits(model, cfg, seq(s), padding_mask, blk, cache, p, mask_id))  # features kept

        return jax.lax.while_loop(lambda s: ~s.block_over & (s.it < cfg.max_steps), window_body, st)

    def cond(st: _State):
        return (st.it < cfg.max_steps) & jnp.any(st.blk < nb)

    comp0 = jnp.full((b, n_len), mask_id, jnp.int32)
    zeros_b = jnp.zeros((b,), jnp.int32)
    st = _State(comp=comp0, blk=zeros_b, block_step=zeros_b, block_masks=masks_in_block(comp0, zeros_b),
                nfe=zeros_b, unmask_step=jnp.zeros((b, n_len), jnp.int32),
                logp=jnp.zeros((b, n_len), jnp.float32), logp_t=jnp.zeros((b, n_len), jnp.float32),
                it=jnp.zeros((), jnp.int32), block_over=jnp.zeros((), bool), head=_head_carry0(head, model, b, cfg))
    st = jax.lax.while_loop(cond, block_body if cfg.uses_cache else body, st)
    cmask = completion_mask(st.comp, eos_id)
    return SampleOutput(
        tokens=jnp.concatenate([prompt_tokens, st.comp], axis=1), unmask_step=st.unmask_step,
        behaviour_logp=st.logp, behaviour_logp_tempered=st.logp_t, nfe=st.nfe,
        completion_mask=cmask, completion_length=jnp.sum(cmask, axis=-1).astype(jnp.int32),
        forwards=st.it, cfg_guided=cfg.uses_cfg, head=_head_draws(head, st))


def _head_carry0(head: Optional[HeadGamma], model, b: int, cfg: SamplerConfig) -> Optional[tuple]:
    """The head's initial loop carry (see `_State.head`); None without a head."""
    if head is None:
        return None
    module, d = head.module(), model.cfg.d_model
    zeros = jnp.zeros((b,), jnp.float32)
    if not module.n_step_features:
        return (jnp.zeros((b, d), jnp.float32), zeros, None, None, zeros)
    s = cfg.max_steps
    return (jnp.zeros((b, d), jnp.float32), zeros, jnp.zeros((b, s), jnp.float32),
            jnp.zeros((b, s, module.n_step_features), jnp.float32), zeros)


def _head_draws(head: Optional[HeadGamma], st: _State) -> Optional[HeadDraws]:
    if head is None:
        return None
    feats, raw, s_raw, s_feats, g_sum = st.head
    gamma_max = head.module().gamma_max
    if s_raw is None:
        return HeadDraws(features=feats, gamma=jnp.clip(raw, 0.0, gamma_max), gamma_raw=raw)
    return HeadDraws(features=feats, gamma=g_sum / jnp.maximum(st.nfe, 1).astype(jnp.float32), gamma_raw=s_raw,
                     step_features=s_feats)


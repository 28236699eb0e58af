"""Straightforward NumPy re-statements of the samplers, for token-exact tests (T = 0).

Written from SPEC §2 / research/llada.md (LLaDA's generate()), not from our JAX code:
  * `llada_generate`: LLaDA's batched loop: per block, the mask count split evenly over
    the block's steps (remainder first); each step the k_s most confident masked
    positions of the current block are committed (confidence = -inf elsewhere).
  * `row_generate`: one row at a time; inside each block, step until no mask is left,
    choosing by rule 'topk' | 'threshold' | 'eb'; one model call per step (= 1 NFE).
  * `dream_generate`: Dream's `diffusion_generate` (written from its equations, see
    diffpo_jax/sampling/config.py), batched, per block: S = steps / n_blocks steps with
    timesteps torch.linspace(1, eps, S + 1); at step i reveal the k = int(n (1 - s/t))
    best-scoring masked positions of the row's block (torch float32 arithmetic).
Both break confidence / entropy ties by the lower position index (stable sorts).
`logits_fn(x [b, T] int) -> [b, T, V]` is the model; every call is counted in `calls`.
Each returns dict(tokens [B, P+L], unmask_step [B, L], logp [B, L], nfe [B]).
"""

from __future__ import annotations

import numpy as np


def transfer_counts(n_masks: int, steps: int) -> np.ndarray:
    """LLaDA's get_num_transfer_tokens for one row: n_masks spread over steps."""
    counts = np.full(steps, n_masks // steps, np.int64)
    counts[: n_masks % steps] += 1
    return counts


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


class CountingModel:
    """Wraps logits_fn; `calls` counts forwards (a CFG pair is one call)."""

    def __init__(self, logits_fn, mask_id, cfg_scale=0.0, eos_inf_id=None, padding_mask=None):
        self.fn, self.mask_id, self.cfg_scale, self.eos_inf_id = logits_fn, mask_id, cfg_scale, eos_inf_id
        self.padding_mask = padding_mask
        self.calls = 0

    def __call__(self, x: np.ndarray, prompt_len: int, padding_mask=None) -> np.ndarray:
        self.calls += 1
        if self.cfg_scale > 0:
            uncond = x.copy()
            uncond[:, :prompt_len] = self.mask_id
            both = np.asarray(self.fn(np.concatenate([x, uncond]), None if padding_mask is None else
                                      np.concatenate([padding_mask, padding_mask])), np.float64)
            cond, unc = both[: len(x)], both[len(x):]
            logits = unc + (self.cfg_scale + 1) * (cond - unc)
        else:
            logits = np.asarray(self.fn(x, padding_mask), np.float64)
        if self.eos_inf_id is not None:
            logits[..., self.eos_inf_id] = -np.inf
        return logits


def _argmax_not(logits, token_id):
    """argmax over the vocabulary except `token_id` (diffpo_jax never proposes the mask id;
    LLaDA's code would, leaving that position masked)."""
    return np.where(np.arange(logits.shape[-1]) == token_id, -np.inf, logits).argmax(-1)


def llada_generate(model: CountingModel, prompt, gen_length, block_length, steps, padding_mask=None):
    prompt = np.asarray(prompt)
    b, p = prompt.shape
    mask_id = model.mask_id
    x = np.full((b, p + gen_length), mask_id, np.int64)
    x[:, :p] = prompt
    pm = None if padding_mask is None else np.concatenate([padding_mask, np.ones((b, gen_length), bool)], 1)
    unmask_step = np.zeros((b, gen_length), np.int64)
    logp_out = np.zeros((b, gen_length))
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    for blk in range(n_blocks):
        end = p + (blk + 1) * block_length
        counts = [transfer_counts(int((x[i, end - block_length:end] == mask_id).sum()), per_block) for i in range(b)]
        for s in range(per_block):
            is_mask = x == mask_id
            logits = model(x, p, pm)
            x0 = _argmax_not(logits, mask_id)
            lsm = _log_softmax(logits)
            x0_logp = np.take_along_axis(lsm, x0[..., None], -1)[..., 0]
            conf = np.exp(x0_logp)
            conf[:, end:] = -np.inf
            conf = np.where(is_mask, conf, -np.inf)
            for i in range(b):
                chosen = np.argsort(-conf[i], kind="stable")[: counts[i][s]]
                x[i, chosen] = x0[i, chosen]
                unmask_step[i, chosen - p] = blk * per_block + s + 1
                logp_out[i, chosen - p] = x0_logp[i, chosen]
    return dict(tokens=x, unmask_step=unmask_step, logp=logp_out, nfe=np.full(b, steps))


def _choose(rule, conf, entropy, k, threshold, gamma):
    """Indices (into the eligible list) to reveal; conf / entropy over eligible positions."""
    if rule == "topk":
        return np.argsort(-conf, kind="stable")[:k]
    if rule == "threshold":
        order = np.argsort(-conf, kind="stable")
        return np.array(sorted({order[0], *np.nonzero(conf >= threshold)[0]}))
    if rule == "eb":
        order = np.argsort(entropy, kind="stable")
        h = entropy[order].astype(np.float32)
        total, biggest, count = np.float32(0), np.float32(0), 0
        for j in range(len(h)):  # prefix U_j qualifies iff sum(H_U) - max(H_U) <= gamma
            total, biggest = np.float32(total + h[j]), max(biggest, h[j])
            count += int(np.float32(total - biggest) <= np.float32(gamma))
        return order[: min(max(count, 1), len(h))]
    raise ValueError(rule)


def row_generate(model: CountingModel, prompt, gen_length, block_length, rule, k=2, threshold=0.9, gamma=0.1,
                 padding_mask=None):
    prompt = np.asarray(prompt)
    b, p = prompt.shape
    mask_id = model.mask_id
    out = dict(tokens=np.zeros((b, p + gen_length), np.int64), unmask_step=np.zeros((b, gen_length), np.int64),
               logp=np.zeros((b, gen_length)), nfe=np.zeros(b, np.int64))
    gamma, threshold = np.broadcast_to(gamma, (b,)), np.broadcast_to(threshold, (b,))
    for i in range(b):
        x = np.concatenate([prompt[i], np.full(gen_length, mask_id)])[None]
        pm = None if padding_mask is None else np.concatenate([padding_mask[i], np.ones(gen_length, bool)])[None]
        calls_before = model.calls
        for blk in range(gen_length // block_length):
            lo, hi = p + blk * block_length, p + (blk + 1) * block_length
            while (x[0, lo:hi] == mask_id).any():
                logits = model(x, p, pm)[0, lo:hi]
                step = model.calls - calls_before
                lsm = _log_softmax(logits)
                x0 = _argmax_not(logits, mask_id)
                x0_logp = np.take_along_axis(lsm, x0[:, None], -1)[:, 0]
                entropy = -np.where(np.exp(lsm) > 0, np.exp(lsm) * lsm, 0).sum(-1)
                elig = np.nonzero(x[0, lo:hi] == mask_id)[0]
                pick = elig[_choose(rule, np.exp(x0_logp[elig]), entropy[elig], k, threshold[i], gamma[i])]
                x[0, lo + pick] = x0[pick]
                out["unmask_step"][i, lo - p + pick] = step
                out["logp"][i, lo - p + pick] = x0_logp[pick]
        out["tokens"][i] = x[0]
        out["nfe"][i] = model.calls - calls_before
    return out


def dream_filter(z: np.ndarray, top_p: float = 1.0, top_k: int = 0) -> np.ndarray:
    """Dream's top-p then top-k on z `[..., V]`, as a removal mask scattered back through the
    sort (the way Dream's code does it): top-p removes sorted token j >= 1 when the
    probability mass of the tokens before it exceeds top_p; top-k removes z < the k-th
    largest. Removed entries become -inf."""
    z = np.array(z, np.float32)
    if top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")
        srt = np.take_along_axis(z, order, -1)
        q = np.exp(srt - srt[..., :1])
        cum = np.cumsum(q / q.sum(-1, keepdims=True), -1)
        remove = np.zeros(z.shape, bool)
        remove[..., 1:] = cum[..., :-1] > top_p
        scattered = np.zeros(z.shape, bool)
        np.put_along_axis(scattered, order, remove, -1)
        z = np.where(scattered, -np.inf, z)
    if top_k > 0:
        kth = np.sort(z, -1)[..., -min(top_k, z.shape[-1])][..., None]
        z = np.where(z < kth, -np.inf, z)
    return z


def dream_scores(logits: np.ndarray, x0: np.ndarray, alg: str, top_p: float = 1.0, top_k: int = 0) -> np.ndarray:
    """Dream's score per position, in float32, from p = softmax(dream_filter(logits)) (T = 0)."""
    z = dream_filter(np.asarray(logits, np.float32), top_p, top_k)
    e = np.exp(z - z.max(-1, keepdims=True))
    p = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    if alg == "maskgit_plus":
        return np.take_along_axis(p, x0[..., None], -1)[..., 0]
    if alg == "topk_margin":
        srt = -np.sort(-p, -1)
        return srt[..., 0] - srt[..., 1]
    if alg == "entropy":
        return np.sum(p * np.log(p + np.float32(1e-10)), -1, dtype=np.float32)
    raise ValueError(alg)


def dream_counts(n_masks: int, steps: int, eps: float) -> list:
    """How many Dream reveals at each of `steps` steps starting from n_masks masks, with its
    own torch float32 arithmetic: k_i = int(n_i * (1 - s/t)), all at the last step."""
    import torch

    ts = torch.linspace(1, eps, steps + 1)
    counts, n = [], n_masks
    for i in range(steps):
        k = int(torch.tensor(n, dtype=torch.float32) * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else n
        counts.append(k)
        n -= k
    return counts


def dream_generate(model: CountingModel, prompt, gen_length, block_length, steps, alg, eps=1e-3, top_p=1.0,
                   top_k=0):
    """Dream's diffusion_generate at T = 0 and alg_temp = 0 (one block = Dream's own loop).
    alg 'origin' is random unless each block has one step; only that case is supported."""
    import torch

    prompt = np.asarray(prompt)
    b, p = prompt.shape
    mask_id = model.mask_id
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    if alg == "origin" and per_block != 1:
        raise ValueError("dream_generate: 'origin' is random for more than one step per block")
    ts = torch.linspace(1, eps, per_block + 1)
    x = np.full((b, p + gen_length), mask_id, np.int64)
    x[:, :p] = prompt
    unmask_step = np.zeros((b, gen_length), np.int64)
    logp_out = np.zeros((b, gen_length))
    for blk in range(n_blocks):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length
        for i in range(per_block):
            logits = model(x, p)[:, lo:hi]
            x0 = _argmax_not(logits, mask_id)
            x0_logp = np.take_along_axis(_log_softmax(logits), x0[..., None], -1)[..., 0]
            score = None if alg == "origin" else dream_scores(logits, x0, alg, top_p, top_k)
            for r in range(b):
                masked = x[r, lo:hi] == mask_id
                n = int(masked.sum())
                if alg == "origin":
                    chosen = np.nonzero(masked)[0]
                else:
                    k = int(torch.tensor(n, dtype=torch.float32) * (1 - ts[i + 1] / ts[i])) if i < per_block - 1 else n
                    chosen = np.argsort(-np.where(masked, score[r], -np.inf), kind="stable")[:k]
                x[r, lo + chosen] = x0[r, chosen]
                unmask_step[r, lo - p + chosen] = blk * per_block + i + 1
                logp_out[r, lo - p + chosen] = x0_logp[r, chosen]
    return dict(tokens=x, unmask_step=unmask_step, logp=logp_out, nfe=np.full(b, steps))


def make_test_model(seed: int = 0, **cfg_overrides):
    """Tiny LLaDA with weights rescaled so that logits are peaked and position-dependent
    (confidence gaps ~1e-4 or more, argmax margins ~5e-3): ties cannot flip under fp32
    rounding, so token-exact comparisons are meaningful."""
    from flax import nnx

    from diffpo_jax.models import llada

    model = llada.LLaDA(llada.tiny(**cfg_overrides), rngs=nnx.Rngs(seed))
    for name, scale in (("q_proj", 8), ("k_proj", 8), ("v_proj", 4), ("attn_out", 4), ("ff_proj", 4),
                        ("up_proj", 4), ("ff_out", 4)):
        model.blocks[name][...] = model.blocks[name][...] * scale
    model.lm_head[...] = model.lm_head[...] * 20
    return model

"""`SamplerConfig`: the static description of one compiled sampler (SPEC §2).

Everything in this dataclass is *static*: changing a field compiles a new sampler. The
per-call knobs that the RL loop varies (`gamma [B]`, `threshold [B]`, `temperature [B]`)
are array inputs of the compiled function; the `gamma` / `threshold` / `temperature`
fields here are only their defaults for callers that pass nothing.

Rules (all decode `gen_length` tokens in `gen_length / block_length` blocks, left to right):
  fixed      LLaDA `generate()`: `steps` in total, `steps / n_blocks` per block; at block
             step s unmask `k_s = m // S + (s < m % S)` positions (m = masks in the block
             at its start, S = steps per block). `remasking='low_confidence'` ranks by the
             untempered probability of the proposal, `'random'` by uniform noise.
             NFE = steps exactly (LLaDA calls the model every step).
  topk       unmask the `k` most confident (or random, with remasking='random') per step,
             until the block is full. NFE = n_blocks * ceil(block_length / k).
  threshold  Fast-dLLM: the most confident position, plus every other one with `c >= tau`.
  eb         Entropy-bounded (Ben-Hamu et al.): sort by entropy ascending, take the largest
             prefix U with `sum_U H - max_U H <= gamma` (at least one).
  dream      Dream's `diffusion_generate` (Dream-org/Dream-v0, `dream_alg`): `steps` in total,
             S = steps / n_blocks per block (block_length == gen_length is exactly Dream's
             single-canvas loop; with blocks the schedule restarts in each block). Timesteps
             t_0..t_S = torch.linspace(1, eps, S + 1) in float32 (bit for bit as torch's CPU
             kernel computes it, `rules.dream_timesteps`); at block step i
             (t = t_i, s = t_{i+1}), with n masks left in the row's block:
               maskgit_plus / topk_margin / entropy: reveal `k = int(n * (1 - s/t))` (float32;
                 all n at the last step), the k highest-scoring; scores from p = the tempered,
                 top-p / top-k filtered softmax (at T = 0 the untempered filtered one):
                 p[x0] | p_(1) - p_(2) | sum_v p_v log(p_v + 1e-10) (negative entropy).
                 alg_temp > 0 draws the k positions without replacement from
                 softmax(score / alg_temp) (Gumbel-top-k) instead.
               origin: each masked position independently with probability 1 - s/t (1 at
                 the last step), holding its proposal; random even at T = 0 unless S = 1
                 (alg_temp is not used).
             NFE = steps exactly (Dream calls the model every step, even one revealing 0).
             Two departures from Dream's code, as for every rule: the mask id is never
             proposed (Dream's argmax may pick it, leaving the position masked), and ties
             go to the lower position (torch.topk leaves them unspecified). Dream counts the
             masks of the whole batch divided by B; here each row counts its own (the same
             without padding, where every row has the same count).
Adaptive sampling (DiFFPO) is `threshold` or `eb` with a different tau / gamma per row.

Proposals (every rule): x0 ~ softmax(logits / T) by Gumbel-max (argmax at T = 0); `top_p` /
`top_k` (Dream's `sample_tokens` filters, top-p then top-k, on logits / T) restrict the
sampled distribution, and `behaviour_logp_tempered` is the log-prob under the filtered one.
At T = 0 the filters change no proposal, so they change nothing for the rules other than
'dream' (whose scores Dream computes from the filtered probabilities even at T = 0).
Defaults (top_p = 1, top_k = 0) switch them off.

KV cache (`kv_cache`, Fast-dLLM's approximate block cache; any rule):
  none    every step is a full forward of `[prompt, completion]` (exact).
  prefix  each block starts with one full forward that also stores every layer's keys and
          values; the block's later steps recompute only the current block and everything
          after it, reading the prefix (prompt + finished blocks) keys/values from the cache.
  dual    as prefix, but the later steps recompute only the current block; the suffix
          (later, still masked blocks) is read from the cache too.
  Approximate: cached positions do not see the tokens revealed since the block started
  (attention is bidirectional, so even the prompt's keys depend on the completion). Every
  forward, full or partial, is 1 NFE. Rows move through the blocks in lockstep (a row that
  fills its block early idles, NFE not counted, until the others finish it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

RULES = ("fixed", "topk", "threshold", "eb", "dream")
STEPPED_RULES = ("fixed", "dream")  # rules that run exactly `steps` forwards
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
REMASKING = ("low_confidence", "random")
KV_CACHES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampler settings. See the module docstring for the rules.

    rule: one of RULES.             gen_length: completion length L.
    block_length: semi-AR block Lb (L % Lb == 0; Lb == L is fully parallel decoding).
    steps: total steps for rules 'fixed' and 'dream' (a multiple of n_blocks; None =
      gen_length // 2, d1's choice); ignored by the other rules, which stop when the block is
      full (for them a set value is only checked to be positive, not to be a multiple of n_blocks).
    k: tokens per step for rule='topk'.
    threshold / gamma / temperature: defaults for the per-call arrays (tau, gamma, T).
    cfg_scale: classifier-free guidance w > 0 runs a second, prompt-masked copy in the
      same forward (`u + (w+1)(c-u)`); still counted as 1 NFE per step.
    remasking: 'low_confidence' | 'random' (fixed and topk rules only).
    use_padding_mask: pass `[prompt_mask, ones]` to the model as its key padding mask.
    logits_eos_inf: set the EOS logit to -inf before proposing (LLaDA option).
    lora: run the model with its LoRA adapter on (the policy) or off (the base model).
    mask_token_id / eos_token_id: None = take them from the model's config.
    kv_cache: 'none' | 'prefix' | 'dual' (see the module docstring; approximate when not 'none').
    dream_alg: rule='dream' only: one of DREAM_ALGS (default 'entropy', the setting of Dream's
      README; Dream's own config default is 'origin').
    eps: rule='dream': the last timestep, in (0, 1) (Dream's default 1e-3).
    alg_temp: rule='dream' (maskgit_plus / topk_margin / entropy): 0 = reveal the top k;
      > 0 = sample the k positions from softmax(score / alg_temp).
    top_p: nucleus filter of the sampled distribution, in (0, 1]; 1 = off (every rule).
    top_k: keep the top_k tokens of the sampled distribution; 0 = off (every rule).
    """

    rule: str = "fixed"
    gen_length: int = 256
    block_length: int = 32
    steps: Optional[int] = None
    k: int = 2
    threshold: float = 0.9
    gamma: float = 0.1
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    use_padding_mask: bool = False
    logits_eos_inf: bool = False
    lora: bool = True
    mask_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    kv_cache: str = "none"
    dream_alg: str = "entropy"
    eps: float = 1e-3
    alg_temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        errors = []
        if self.rule not in RULES:
            errors.append(f"rule={self.rule!r}: choose one of {RULES}")
        if self.gen_length <= 0:
            errors.append(f"gen_length={self.gen_length} must be positive")
        if self.block_length <= 0:
            errors.append(f"block_length={self.block_length} must be positive")
        elif self.gen_length % self.block_length:
            errors.append(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}")
        if self.steps is not None and self.steps <= 0:
            errors.append(f"steps={self.steps} must be positive")
        elif self.steps is not None and self.rule in STEPPED_RULES and self.block_length > 0 and (
                self.steps % max(1, self.gen_length // self.block_length)):
            errors.append(f"steps={self.steps} must be a positive multiple of the number of blocks "
                          f"gen_length/block_length={self.gen_length // self.block_length} for rule={self.rule!r}")
        elif self.steps is None and self.rule in STEPPED_RULES and self.block_length > 0 and (
                (self.gen_length // 2) % max(1, self.gen_length // self.block_length) or self.gen_length < 2):
            errors.append(f"steps=None means gen_length // 2 = {self.gen_length // 2}, which is not a positive "
                          f"multiple of the {self.gen_length // self.block_length} blocks; set steps")
        if self.k <= 0:
            errors.append(f"k={self.k} must be >= 1")
        if not 0.0 <= self.threshold <= 1.0:
            errors.append(f"threshold={self.threshold} must lie in [0, 1]")
        if self.gamma < 0:
            errors.append(f"gamma={self.gamma} must be >= 0")
        if self.temperature < 0:
            errors.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.cfg_scale < 0:
            errors.append(f"cfg_scale={self.cfg_scale} must be >= 0 (0 = no guidance)")
        if self.remasking not in REMASKING:
            errors.append(f"remasking={self.remasking!r}: choose one of {REMASKING}")
        elif self.remasking == "random" and self.rule not in ("fixed", "topk"):
            errors.append(f"remasking='random' only applies to rule 'fixed' or 'topk', not {self.rule!r}")
        if self.kv_cache not in KV_CACHES:
            errors.append(f"kv_cache={self.kv_cache!r}: choose one of {KV_CACHES} "
                          "('none' = exact, 'prefix' / 'dual' = Fast-dLLM's approximate caches)")
        if self.dream_alg not in DREAM_ALGS:
            errors.append(f"dream_alg={self.dream_alg!r}: choose one of {DREAM_ALGS}")
        if not 0.0 < self.eps < 1.0:
            errors.append(f"eps={self.eps} must lie in (0, 1) (Dream's last timestep; its default is 1e-3)")
        if self.alg_temp < 0:
            errors.append(f"alg_temp={self.alg_temp} must be >= 0 (0 = reveal the most confident)")
        if not 0.0 < self.top_p <= 1.0:
            errors.append(f"top_p={self.top_p} must lie in (0, 1] (1 = no nucleus filter)")
        if self.top_k < 0:
            errors.append(f"top_k={self.top_k} must be >= 0 (0 = no top-k filter)")
        if errors:
            raise ValueError("SamplerConfig: " + "; ".join(errors))

    def replace(self, **kw) -> "SamplerConfig":
        return dataclasses.replace(self, **kw)

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def fixed_steps(self) -> int:
        """Total steps of rules 'fixed' / 'dream' (`steps`, or gen_length // 2 when None)."""
        return self.steps if self.steps is not None else self.gen_length // 2

    @property
    def max_steps_per_block(self) -> int:
        """Static bound on the steps one block can take (every non-fixed step reveals >= 1)."""
        if self.rule in STEPPED_RULES:
            return self.fixed_steps // self.n_blocks
        if self.rule == "topk":
            return math.ceil(self.block_length / self.k)
        return self.block_length

    @property
    def max_steps(self) -> int:
        """Static bound on the forwards of one call (= every row's NFE for rules 'fixed' / 'dream')."""
        return self.n_blocks * self.max_steps_per_block

    @property
    def uses_cache(self) -> bool:
        return self.kv_cache != "none"

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 0

    @property
    def uses_filter(self) -> bool:
        """True if top_p / top_k restrict the sampled distribution."""
        return self.top_p < 1.0 or self.top_k > 0

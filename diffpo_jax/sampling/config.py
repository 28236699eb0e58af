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
Adaptive sampling (DiFFPO) is `threshold` or `eb` with a different tau / gamma per row.

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

RULES = ("fixed", "topk", "threshold", "eb")
REMASKING = ("low_confidence", "random")
KV_CACHES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampler settings. See the module docstring for the rules.

    rule: one of RULES.             gen_length: completion length L.
    block_length: semi-AR block Lb (L % Lb == 0; Lb == L is fully parallel decoding).
    steps: total steps for rule='fixed' (a multiple of n_blocks; None = gen_length // 2, d1's
      choice); ignored by the other rules, which stop when the block is full (for them a set
      value is only checked to be positive, not to be a multiple of n_blocks).
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
        elif self.steps is not None and self.rule == "fixed" and self.block_length > 0 and (
                self.steps % max(1, self.gen_length // self.block_length)):
            errors.append(f"steps={self.steps} must be a positive multiple of the number of blocks "
                          f"gen_length/block_length={self.gen_length // self.block_length} for rule='fixed'")
        elif self.steps is None and self.rule == "fixed" and self.block_length > 0 and (
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
        if errors:
            raise ValueError("SamplerConfig: " + "; ".join(errors))

    def replace(self, **kw) -> "SamplerConfig":
        return dataclasses.replace(self, **kw)

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def fixed_steps(self) -> int:
        """Total steps of rule='fixed' (`steps`, or gen_length // 2 when None)."""
        return self.steps if self.steps is not None else self.gen_length // 2

    @property
    def max_steps_per_block(self) -> int:
        """Static bound on the steps one block can take (every non-fixed step reveals >= 1)."""
        if self.rule == "fixed":
            return self.fixed_steps // self.n_blocks
        if self.rule == "topk":
            return math.ceil(self.block_length / self.k)
        return self.block_length

    @property
    def max_steps(self) -> int:
        """Static bound on the forwards of one call (= every row's NFE for rule='fixed')."""
        return self.n_blocks * self.max_steps_per_block

    @property
    def uses_cache(self) -> bool:
        return self.kv_cache != "none"

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 0

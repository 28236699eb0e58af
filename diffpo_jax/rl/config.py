"""`RLConfig`: every knob of the DiFFPO / d1 objective (SPEC §3–5), validated on creation.

Defaults are d1's (SPEC §4, research/algorithms.md §3.4); fields marked *(reconstructed)*
follow SPEC's reconstruction of the unread parts of the DiFFPO paper and are switches.
"""

from __future__ import annotations

import dataclasses

METHODS = ("d1", "mf_is", "2mf", "2mf_is", "exact")
LIKELIHOOD_TEMPERATURES = ("sampler", "none")
PROMPT_MASK_STAGES = ("stage1", "both", "none")
LOSS_AGG = ("token", "sequence")
RATIO_UNITS = ("token", "step")
MODEL_REWARDS = ("task", "task_minus_nfe")
HEADS = ("prompt", "step")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Objective, optimiser and threshold-head settings.

    method:            surrogate + weighting. `d1` = mean-field, w=1; `mf_is` = mean-field with the
                       clamped IS weight; `2mf` = two-stage mean-field, w=1; `2mf_is` = 2-MF + IS;
                       `exact` = the sampler's exact trajectory likelihood (one forward per decoding
                       step, the oracle the surrogates approximate), w=1.
    likelihood_temperature: `sampler` (default): every likelihood scores log softmax(f/T) with the
                       rollout's T and the behaviour log-probs are the tempered ones the sampler drew
                       from, so ρ and w compare against the distribution actually sampled; `none`:
                       d1's convention, log softmax(f) for both although rollouts sample at T.
    joint_sampler:     also train the threshold head (SPEC §5) with one optimiser.
    head:              `prompt` (SPEC §5: one γ per completion, μ_φ(p)) | `step` (beyond the paper: a
                       Gaussian γ_t per decoding step, μ_φ(p, s_t) from the prompt features and the
                       decoding state, log-density summed over the completion's steps).
    num_generations:   G, completions per prompt (consecutive rows form a group).
    p_mask:            prompt-token masking probability of the MF / stage-1 input (d1: 0.15).
    prompt_mask_stages: which 2-MF forwards see the masked prompt: stage1 | both | none.
    epsilon:           PPO clip ε (ratio clipped to [1−ε, 1+ε]).
    beta:              k3 KL coefficient to the reference (base model, LoRA off).
    clamp_c:           C, upper clamp of the IS weight (reconstructed; sweep {1, 2, 5}).
    std_normalize:     divide group advantages by the unbiased group std + 1e-4 (TRL's; d1: False).
    loss_agg:          token mean over the batch (d1) | per-sequence mean then batch mean.
    ratio_unit:        token (d1) | step: one ratio / IS weight per decoding step (reconstructed).
    num_inner:         μ, inner gradient steps per rollout (driven by the caller).
    micro_batches:     the batch is split into this many micro-batches (gradients summed exactly).
    lr, grad_clip, weight_decay, adam_b1, adam_b2, warmup_steps: AdamW + global-norm clipping.
    use_padding_mask:  pass the prompt padding mask to the model (False = LLaDA/d1 behaviour).
    logprob_chunk:     sequence chunk of the chunked log-softmax (bounds the [B, c, V] fp32 buffer).
    gamma_max, gamma_init, sigma, head_hidden: threshold head μ = γ_max·sigmoid(u), init μ≈γ_init,
                       exploration noise σ, MLP width.
    nfe_lambda, nfe_ref: sampler reward r − λ·NFE/NFE_ref.
    head_coef:         weight of the head loss in the joint loss.
    head_lr_scale:     the head's learning rate is head_lr_scale · lr (same AdamW otherwise).
    model_reward:      the model's advantage uses r (task) or r − λ·NFE/NFE_ref (task_minus_nfe).
    """

    method: str = "d1"
    likelihood_temperature: str = "sampler"
    joint_sampler: bool = False
    head: str = "prompt"
    num_generations: int = 6
    p_mask: float = 0.15
    prompt_mask_stages: str = "stage1"
    epsilon: float = 0.5
    beta: float = 0.04
    clamp_c: float = 2.0
    std_normalize: bool = False
    loss_agg: str = "token"
    ratio_unit: str = "token"
    num_inner: int = 12
    micro_batches: int = 1
    lr: float = 3e-6
    grad_clip: float = 0.2
    weight_decay: float = 0.1
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    warmup_steps: int = 0
    use_padding_mask: bool = False
    logprob_chunk: int = 64
    gamma_max: float = 1.0
    gamma_init: float = 0.1
    sigma: float = 0.1
    head_hidden: int = 256
    nfe_lambda: float = 0.1
    nfe_ref: float = 256.0
    head_coef: float = 1.0
    head_lr_scale: float = 1.0
    model_reward: str = "task"

    def __post_init__(self):
        errors = []

        def choice(name, options):
            if getattr(self, name) not in options:
                errors.append(f"{name}={getattr(self, name)!r}: choose one of {options}")

        choice("method", METHODS)
        choice("likelihood_temperature", LIKELIHOOD_TEMPERATURES)
        choice("prompt_mask_stages", PROMPT_MASK_STAGES)
        choice("loss_agg", LOSS_AGG)
        choice("ratio_unit", RATIO_UNITS)
        choice("model_reward", MODEL_REWARDS)
        choice("head", HEADS)
        for name in ("num_generations", "num_inner", "micro_batches", "logprob_chunk", "head_hidden"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.p_mask < 1.0:
            errors.append(f"p_mask={self.p_mask} must lie in [0, 1)")
        if not 0.0 < self.epsilon < 1.0:
            errors.append(f"epsilon={self.epsilon} must lie in (0, 1)")
        for name in ("beta", "weight_decay", "nfe_lambda", "head_coef", "warmup_steps"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("clamp_c", "lr", "grad_clip", "gamma_max", "sigma", "nfe_ref", "head_lr_scale"):
            if not getattr(self, name) > 0:
                errors.append(f"{name}={getattr(self, name)} must be > 0")
        if not 0.0 < self.gamma_init < self.gamma_max:
            errors.append(f"gamma_init={self.gamma_init} must lie strictly inside (0, gamma_max={self.gamma_max})")
        if errors:
            raise ValueError("RLConfig: " + "; ".join(errors))

    @property
    def uses_is(self) -> bool:
        """True for the methods with the clamped importance weight (mf_is, 2mf_is)."""
        return self.method.endswith("_is")

    @property
    def surrogate(self) -> str:
        """'mf' (d1, mf_is), '2mf' (2mf, 2mf_is) or 'exact'."""
        if self.method == "exact":
            return "exact"
        return "2mf" if self.method.startswith("2mf") else "mf"

    def replace(self, **kw) -> "RLConfig":
        return dataclasses.replace(self, **kw)

"""Semi-AR block samplers for masked diffusion LMs (SPEC §2): LLaDA fixed-step
(low-confidence / random remasking), top-k, Fast-dLLM threshold, entropy-bounded (EB),
adaptive per-row gamma / threshold and Dream's remasking rules (origin, maskgit_plus,
topk_margin, entropy), with optional top-p / top-k filtering of the proposals;
jit-compiled with static shapes, NFE per row.

    from diffpo_jax.sampling import SamplerConfig, make_sampler, generate
"""

from diffpo_jax.sampling.api import Sampler, generate, left_pad, make_sampler
from diffpo_jax.sampling.config import DREAM_ALGS, REMASKING, RULES, SamplerConfig
from diffpo_jax.sampling.loop import SampleOutput, completion_mask, decode

__all__ = ["DREAM_ALGS", "REMASKING", "RULES", "SampleOutput", "Sampler", "SamplerConfig", "completion_mask",
           "decode", "generate", "left_pad", "make_sampler"]

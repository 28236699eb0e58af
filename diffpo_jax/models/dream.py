"""Dream (Dream-org/Dream-v0-Instruct-7B, arXiv 2508.15487): the `dream` family's presets.

Dream is Qwen2.5-7B turned into a masked diffusion LM: the same bidirectional transformer
as LLaDA (`models/transformer.py`) with grouped-query attention, q/k/v biases
(`qkv_bias`), RMSNorm eps 1e-6, RoPE theta 1e6, an untied LM head, and two conventions
inherited from its AR initialisation, both part of the family's config, not of any caller:
  logits_shift   position i - 1 predicts token i (Dream's generate shifts the logits right
                 by one, copying the first); our model's outputs are already aligned.
  pad_positions  with a padding mask the RoPE positions count real tokens (`tok_idx`).
Its HF tensor names (Qwen2 layout) are `convert/mapping.DREAM_RULES`; config.json keys are
read by `convert/hf_config.dream_config_from_hf`.

Dream-v0-Instruct-7B (config.json of the released checkpoint): hidden 3584, 28 layers,
28 heads / 4 KV heads (head_dim 128), intermediate 18944, vocab 152064, rope_theta 1e6,
rms_norm_eps 1e-6, mask id 151666, pad = eos = 151643 (<|endoftext|>), <|im_end|> 151645.
"""

from __future__ import annotations

from diffpo_jax.models.transformer import TransformerConfig

DREAM_FAMILY = dict(family="dream", qkv_bias=True, logits_shift=True, pad_positions=True)


def dream_7b_instruct(**kw) -> TransformerConfig:
    """Dream-org/Dream-v0-Instruct-7B; bf16 params by default."""
    base = dict(DREAM_FAMILY, vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                mlp_hidden=18944, rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_sequence_length=131072,
                mask_token_id=151666, eos_token_id=151643, pad_token_id=151643, eot_token_id=151645,
                param_dtype="bfloat16")
    return TransformerConfig(**{**base, **kw})


def tiny(**kw) -> TransformerConfig:
    """A 2-layer Dream-architecture model for tests (GQA 4/2 heads, vocab 320, mask id 300)."""
    base = dict(DREAM_FAMILY, vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128,
                rope_theta=10000.0, rms_norm_eps=1e-6, max_sequence_length=512, mask_token_id=300,
                eos_token_id=301, pad_token_id=301, eot_token_id=302, compute_dtype="float32")
    return TransformerConfig(**{**base, **kw})

"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, SPEC §1): the `llada` family's presets.

The architecture is `models/transformer.py` (Llama-style, bidirectional, no q/k/v biases,
output position i scores token i, absolute RoPE positions); its HF tensor names are
`convert/mapping.LLADA_RULES`. `LLaDAConfig` / `LLaDA` are the generic `TransformerConfig`
/ `Transformer` under the names the rest of the code base (and users' scripts) know.
"""

from __future__ import annotations

from diffpo_jax.models.transformer import (  # noqa: F401  (re-exported: the model API)
    LAYER_NORMS, PROJECTIONS, QKV_BIASES, REMAT_POLICIES, Transformer, TransformerConfig,
    apply_rope, block_forward, block_forward_cached, positions_of, rms_norm, rope_tables, shift_right,
)

LLaDAConfig = TransformerConfig
LLaDA = Transformer


def llada_8b_instruct(**kw) -> TransformerConfig:
    """GSAI-ML/LLaDA-8B-Instruct (SPEC §1); bf16 params by default."""
    return TransformerConfig(**{"param_dtype": "bfloat16", **kw})


def tiny(**kw) -> TransformerConfig:
    """A 2-layer model for tests (vocab 320, mask id 300 inside the vocab)."""
    base = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=128,
                rope_theta=10000.0, max_sequence_length=512, mask_token_id=300, eos_token_id=301,
                pad_token_id=301, eot_token_id=302, compute_dtype="float32")
    return TransformerConfig(**{**base, **kw})


def _dream_presets():
    from diffpo_jax.models import dream  # the second family's presets live in models/dream.py
    return {"dream_7b_instruct": dream.dream_7b_instruct, "dream_tiny": dream.tiny}


PRESETS = {"llada_8b_instruct": llada_8b_instruct, "tiny": tiny}


def get_preset(name: str, **kw) -> TransformerConfig:
    """A model preset of any family by name (LLaDA's here, Dream's from models/dream.py)."""
    presets = {**PRESETS, **_dream_presets()}
    if name not in presets:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
    return presets[name](**kw)

"""The demo's tiny dLLMs: a 4-layer LLaDA (d 128, ~0.85M parameters) on the char tokenizer
in diffpo_jax/assets/tiny_tokenizer, and the same shapes in the Dream architecture (GQA 4/2
heads, q/k/v biases, the logit shift) on diffpo_jax/assets/tiny_tokenizer_dream (ChatML);
both tokenizers use ids eos = pad 0, eot 4, mask 5. Shared by the SFT recipe that made the
shipped checkpoints and by the demo configs."""

import ml_collections

TINY_LLADA = dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden=384,
                  max_sequence_length=128, mask_token_id=5, eos_token_id=0, pad_token_id=0, eot_token_id=4)


TINY_DREAM = dict(TINY_LLADA, n_kv_heads=2)
PRESETS = {"llada": ("tiny", TINY_LLADA), "dream": ("dream_tiny", TINY_DREAM)}


def apply(c: ml_collections.ConfigDict, *, from_preset: bool, family: str = "llada") -> None:
    """Point `c.model` at the tiny model of `family` (random init from the preset, or a
    checkpoint's config; the tokenizer follows the preset's family)."""
    if family not in PRESETS:
        raise ValueError(f"configs/tiny_model.py: family={family!r}; choose one of {sorted(PRESETS)}")
    preset, shapes = PRESETS[family]
    c.model.preset = preset
    c.model.family = family
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.overrides = ml_collections.ConfigDict(dict(shapes) if from_preset else {"eot_token_id": 4})

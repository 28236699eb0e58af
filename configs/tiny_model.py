"""The demo's tiny dLLM: a 4-layer LLaDA (d 128, ~0.85M parameters) on the char tokenizer
in diffpo_jax/assets/tiny_tokenizer (ids: eos = pad 0, eot 4, mask 5). Shared by the SFT
recipe that made the shipped checkpoint and by the demo configs."""

import ml_collections

TINY_LLADA = dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden=384,
                  max_sequence_length=128, mask_token_id=5, eos_token_id=0, pad_token_id=0, eot_token_id=4)


def apply(c: ml_collections.ConfigDict, *, from_preset: bool) -> None:
    """Point `c.model` at the tiny model (random init from the preset, or a checkpoint's config)."""
    c.model.preset = "tiny"
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.overrides = ml_collections.ConfigDict(dict(TINY_LLADA) if from_preset else {"eot_token_id": 4})

"""Dream-family NNX forward vs PyTorch, fp32, on CPU.

In CI: against tests/torch_dream.py (our own reference, written from the architecture).
Locally, also against Dream's *released* modeling code (NVlabs/Fast-dLLM `dream/model/`,
modified from the Dream authors' file; never shipped here): set
`DIFFPO_DREAM_REF=/path/to/Fast-dLLM/dream/model` and the `released` tests run.
Weights go Flax -> torch through `torch_dream.state_from_flax`, written independently of
diffpo_jax.convert.
"""
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from diffpo_jax.models import dream, transformer
from torch_dream import state_from_flax, torch_config_of, torch_from_flax

TOL = 1e-4
CFG = dream.tiny(n_layers=3, vocab_size=384, mask_token_id=380, eos_token_id=381, pad_token_id=381,
                 eot_token_id=382)


def make_model(cfg=CFG, seed=0) -> transformer.Transformer:
    """Random weights, random (non-unit) norms and non-zero q/k/v biases."""
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 100)
    for i, name in enumerate(transformer.LAYER_NORMS + transformer.QKV_BIASES):
        shape = model.blocks[name][...].shape
        base = 1.0 if name in transformer.LAYER_NORMS else 0.0
        model.blocks[name][...] = base + 0.1 * jax.random.normal(jax.random.fold_in(key, i), shape)
    model.ln_f[...] = 1.0 + 0.1 * jax.random.normal(jax.random.fold_in(key, 9), model.ln_f[...].shape)
    return model


@nnx.jit(static_argnames=("lora",))
def forward(model, tokens, padding_mask=None, lora=True):
    return model(tokens, padding_mask, lora=lora)


def rand_tokens(seed, b, n, vocab=CFG.vocab_size):
    return np.random.RandomState(seed).randint(0, vocab, (b, n)).astype(np.int32)


def left_padding(b, n, pads):
    return np.arange(n)[None, :] >= np.asarray(pads)[:, None]


@pytest.fixture(scope="module")
def pair():
    model = make_model()
    return model, torch_from_flax(model)


def torch_logits(tm, tokens, padding_mask=None, shifted=True):
    with torch.no_grad():
        pm = None if padding_mask is None else torch.from_numpy(np.asarray(padding_mask))
        return tm(torch.from_numpy(np.asarray(tokens, np.int64)), pm, shifted=shifted).numpy()


def test_dream_preset_shapes():
    c = dream.dream_7b_instruct()
    assert (c.family, c.qkv_bias, c.logits_shift, c.pad_positions) == ("dream", True, True, True)
    assert (c.head_dim, c.kv_dim, c.mask_token_id) == (128, 512, 151666)
    assert 7.5e9 < c.param_count() < 7.7e9  # Dream-v0-7B: 7.62e9 parameters (untied head)


def test_forward_matches_torch_reference(pair):
    model, tm = pair
    tokens = rand_tokens(0, 2, 24)
    ours = np.asarray(forward(model, jnp.asarray(tokens)))
    ref = torch_logits(tm, tokens)
    assert np.abs(ours - ref).max() <= TOL


def test_output_position_i_scores_token_i(pair):
    """The family's shift lives in the model: our logits = the raw head shifted right by one
    (the first position copied)."""
    model, tm = pair
    tokens = rand_tokens(1, 2, 16)
    raw = torch_logits(tm, tokens, shifted=False)
    ours = np.asarray(forward(model, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours[:, 1:], raw[:, :-1], atol=TOL)
    np.testing.assert_allclose(ours[:, 0], raw[:, 0], atol=TOL)


def test_padding_positions_and_mask_match_reference(pair):
    """Left padding: RoPE positions count real tokens, padded keys are masked; every real
    position equals the reference, and a padded row equals the same row unpadded."""
    model, tm = pair
    tokens = rand_tokens(2, 3, 20)
    pm = left_padding(3, 20, [0, 3, 7])
    ours = np.asarray(forward(model, jnp.asarray(tokens), jnp.asarray(pm)))
    ref = torch_logits(tm, tokens, pm)
    assert np.abs(np.where(pm[..., None], ours - ref, 0.0)).max() <= TOL
    alone = np.asarray(forward(model, jnp.asarray(tokens[2:, 7:])))
    np.testing.assert_allclose(ours[2, 8:], alone[0, 1:], atol=TOL)  # position 7 copies itself when alone


def test_lora_merged_matches_reference():
    model = make_model(CFG.replace(lora_rank=4, lora_alpha=8.0))
    for name in model.lora_b:  # non-zero adapters
        model.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.key(7), model.lora_b[name][...].shape)
    tm = torch_from_flax(model, merge_lora=True)
    tokens = rand_tokens(3, 2, 16)
    assert np.abs(np.asarray(forward(model, jnp.asarray(tokens))) - torch_logits(tm, tokens)).max() <= TOL
    base = torch_from_flax(model, merge_lora=False)
    np.testing.assert_allclose(np.asarray(forward(model, jnp.asarray(tokens), lora=False)),
                               torch_logits(base, tokens), atol=TOL)


def test_kv_cache_window_is_exact_for_a_fresh_cache(pair):
    """hidden_with_cache of the same tokens = hidden() on the window, for a shifted family
    (it recomputes the position before the window), with and without padding."""
    model = pair[0]
    tokens = jnp.asarray(rand_tokens(4, 2, 24))
    for pm in (None, jnp.asarray(left_padding(2, 24, [0, 5]))):
        h = model.hidden(tokens, pm)
        _, k, v = model.hidden_and_kv(tokens, pm)
        for start, width in [(1, 23), (8, 8), (16, 8)]:
            win = model.hidden_with_cache(tokens, start, width, k, v, pm)
            np.testing.assert_allclose(win, h[:, start:start + width], atol=TOL)


def test_sharded_forward_matches_single_device():
    from diffpo_jax import sharding as shd

    mesh = shd.make_mesh(data=2, fsdp=2, tp=2)
    model = shd.create_sharded(lambda: make_model(), mesh)
    assert model.blocks["q_bias"][...].sharding.spec == jax.sharding.PartitionSpec(None, "tp")
    tokens = rand_tokens(5, 4, 16)
    with shd.use_mesh(mesh):
        ours = np.asarray(forward(model, jnp.asarray(tokens)))
    ref = np.asarray(forward(make_model(), jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, ref, atol=TOL)


# ----------------------------------------------------------------------------- released code

REF_DIR = os.environ.get("DIFFPO_DREAM_REF", "")
released = pytest.mark.skipif(not os.path.isfile(os.path.join(REF_DIR, "modeling_dream.py")),
                              reason="set DIFFPO_DREAM_REF to Dream's released model code (Fast-dLLM dream/model)")


def load_released(model):
    """Dream's released DreamModel (fp32, SDPA) holding `model`'s weights."""
    pkg = "dream_ref"
    if pkg not in sys.modules:
        spec = importlib.util.spec_from_file_location(pkg, os.path.join(REF_DIR, "__init__.py"),
                                                      submodule_search_locations=[REF_DIR])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[pkg] = mod
        spec.loader.exec_module(mod)
    from dream_ref import modeling_dream
    from dream_ref.configuration_dream import DreamConfig
    from dream_ref.modeling_dream import DreamModel

    if "default" not in modeling_dream.ROPE_INIT_FUNCTIONS:  # written for transformers 4.46; 5.x dropped it
        def default_rope(config, device=None, **_):
            hd = config.hidden_size // config.num_attention_heads
            return 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)), 1.0

        modeling_dream.ROPE_INIT_FUNCTIONS["default"] = default_rope

    t = torch_config_of(model.cfg)
    cfg = DreamConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                      num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
                      rope_theta=t.rope_theta, max_position_embeddings=t.max_position_embeddings,
                      mask_token_id=t.mask_token_id, pad_token_id=t.pad_token_id, attn_implementation="sdpa")
    ref = DreamModel(cfg).float().eval()
    missing, unexpected = ref.load_state_dict(state_from_flax(model), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return ref


@released
def test_forward_matches_released_dream(pair):
    model = pair[0]
    ref = load_released(model)
    tokens = rand_tokens(6, 2, 24)
    with torch.no_grad():
        logits = ref(torch.from_numpy(tokens.astype(np.int64)), "full").logits.numpy()
    shifted = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)  # as its diffusion_generate does
    assert np.abs(np.asarray(forward(model, jnp.asarray(tokens))) - shifted).max() <= TOL


@released
def test_padding_matches_released_dream(pair):
    """With left padding Dream's generate passes a [B, 1, L, L] query-and-key mask. The
    Fast-dLLM copy of the model overwrites the position ids it is given with 0..L-1 (the
    authors' original honours `tok_idx`, the line survives there as a comment), so this copy
    is compared against our model with `pad_positions=False`; the mask semantics are checked."""
    model = pair[0]
    ref = load_released(model)
    tokens = rand_tokens(7, 3, 20)
    pm = left_padding(3, 20, [0, 3, 7])
    m = torch.from_numpy(pm)
    mask4 = torch.logical_and(m[:, None, None, :], m[:, None, :, None])
    with torch.no_grad():
        logits = ref(torch.from_numpy(tokens.astype(np.int64)), mask4).logits.numpy()
    shifted = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
    absolute = transformer.Transformer(model.cfg.replace(pad_positions=False), rngs=nnx.Rngs(0))
    nnx.update(absolute, nnx.state(model))
    ours = np.asarray(forward(absolute, jnp.asarray(tokens), jnp.asarray(pm)))
    real = pm & np.concatenate([pm[:, :1], pm[:, :-1]], axis=1)  # shifted from a real position
    assert np.abs(np.where(real[..., None], ours - shifted, 0.0)).max() <= TOL

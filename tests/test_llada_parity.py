"""LLaDA NNX forward vs the PyTorch reference (tests/torch_llada.py), fp32, on CPU.

Weights go Flax -> torch through `torch_from_flax` below, written independently of
diffpo_jax.convert (the converter has its own tests), so both mappings are checked.
"""
import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
from flax import nnx

from diffpo_jax.models import llada
from torch_llada import TorchLLaDA, TorchLLaDAConfig

TOL = 1e-4
# 3 layers, GQA (4 query heads share 2 kv heads), vocab 384 with the mask id inside.
CFG = llada.tiny(n_layers=3, n_kv_heads=2, vocab_size=384, mask_token_id=380, eos_token_id=381,
                 pad_token_id=381, eot_token_id=382)


def make_model(cfg=CFG, seed=0) -> llada.LLaDA:
    """A model with random weights *and* random (non-unit) norm weights."""
    model = llada.LLaDA(cfg, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 100)
    for i, name in enumerate(llada.LAYER_NORMS):
        shape = model.blocks[name][...].shape
        model.blocks[name][...] = 1.0 + 0.1 * jax.random.normal(jax.random.fold_in(key, i), shape)
    model.ln_f[...] = 1.0 + 0.1 * jax.random.normal(jax.random.fold_in(key, 9), model.ln_f[...].shape)
    return model


def torch_from_flax(model: llada.LLaDA, merge_lora: bool = False) -> TorchLLaDA:
    """The torch reference holding the same weights (HF layout: Linear weights are [out, in])."""
    c = model.cfg
    tm = TorchLLaDA(TorchLLaDAConfig(vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers,
                                     n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, mlp_hidden_size=c.mlp_hidden,
                                     rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps))
    f32 = lambda x: torch.from_numpy(np.array(x, dtype=np.float32))
    pre = "model.transformer."
    sd = {pre + "wte.weight": f32(model.embed[...]), pre + "ln_f.weight": f32(model.ln_f[...]),
          pre + "ff_out.weight": f32(model.lm_head[...]).T}
    for i in range(c.n_layers):
        for name in llada.LAYER_NORMS:
            sd[f"{pre}blocks.{i}.{name}.weight"] = f32(model.blocks[name][...][i])
        for name in llada.PROJECTIONS:
            w = f32(model.blocks[name][...][i])  # [in, out]
            if merge_lora and name in model.lora_a:
                a, b = f32(model.lora_a[name][...][i]), f32(model.lora_b[name][...][i])
                w = w + a @ b * (c.lora_alpha / c.lora_rank)
            sd[f"{pre}blocks.{i}.{name}.weight"] = w.T
    tm.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True)
    return tm.eval()


def torch_logits(tm, tokens, padding_mask=None):
    with torch.no_grad():
        pm = None if padding_mask is None else torch.from_numpy(np.asarray(padding_mask))
        return tm(torch.from_numpy(np.asarray(tokens, np.int64)), pm).numpy()


@nnx.jit(static_argnames=("lora", "return_hidden"))
def forward(model, tokens, padding_mask=None, lora=True, return_hidden=False):
    return model(tokens, padding_mask, lora=lora, return_hidden=return_hidden)


def graphdef_of(cfg):
    """The module structure for `cfg` (no weights computed), to re-merge an existing state."""
    return nnx.graphdef(nnx.eval_shape(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(0))))


def rand_tokens(seed, b, n, vocab=CFG.vocab_size):
    return np.random.RandomState(seed).randint(0, vocab, (b, n)).astype(np.int32)


@pytest.fixture(scope="module")
def pair():
    model = make_model()
    return model, torch_from_flax(model)


@pytest.mark.parametrize("length", [1, 8, 37])
def test_logits_match_torch_no_padding_mask(pair, length):
    model, tm = pair
    tokens = rand_tokens(length, 2, length)
    tokens[0, -3:] = CFG.mask_token_id  # masked positions are ordinary tokens to the network
    out = np.asarray(forward(model, jnp.asarray(tokens)))
    assert out.dtype == np.float32 and out.shape == (2, length, CFG.vocab_size)
    np.testing.assert_allclose(out, torch_logits(tm, tokens), atol=TOL, rtol=0)


@pytest.mark.parametrize("length", [8, 37])
def test_logits_match_torch_with_padding_mask(pair, length):
    model, tm = pair
    tokens = rand_tokens(length + 1, 3, length)
    mask = np.ones((3, length), bool)
    mask[1, :3] = False  # left padding
    mask[2, : length // 2] = False
    tokens[~mask] = CFG.pad_token_id
    out = np.asarray(forward(model, jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(out, torch_logits(tm, tokens, mask), atol=TOL, rtol=0)
    # The default (None) is the released behaviour: padding is attended to, so the result differs.
    unmasked = np.asarray(forward(model, jnp.asarray(tokens)))
    np.testing.assert_allclose(unmasked, torch_logits(tm, tokens), atol=TOL, rtol=0)
    assert np.abs(unmasked[1] - out[1]).max() > 1e-3
    np.testing.assert_allclose(unmasked[0], out[0], atol=1e-5, rtol=0)  # an all-real row is unchanged


def test_left_padded_row_equals_unpadded_row_when_masked(pair):
    model, _ = pair
    real = rand_tokens(5, 1, 12)
    pad = 7
    padded = np.concatenate([np.full((1, pad), CFG.pad_token_id, np.int32), real], axis=1)
    mask = np.concatenate([np.zeros((1, pad), bool), np.ones((1, 12), bool)], axis=1)
    out_padded = np.asarray(forward(model, jnp.asarray(padded), jnp.asarray(mask)))[0, pad:]
    out_plain = np.asarray(forward(model, jnp.asarray(real)))[0]
    np.testing.assert_allclose(out_padded, out_plain, atol=TOL, rtol=0)
    out_nomask = np.asarray(forward(model, jnp.asarray(padded)))[0, pad:]
    assert np.abs(out_nomask - out_plain).max() > 1e-3  # without the mask padding leaks in


def test_remat_policies_give_same_logits_and_grads(pair):
    model, _ = pair
    tokens = jnp.asarray(rand_tokens(3, 2, 16))
    state = nnx.state(model)
    ref_logits, ref_grad = None, None
    for policy in llada.REMAT_POLICIES:
        m = nnx.merge(graphdef_of(CFG.replace(remat=policy)), state)

        def loss(m):
            return jnp.mean(jax.nn.log_softmax(m(tokens))[..., 0])

        val, grad = nnx.jit(nnx.value_and_grad(loss))(m)
        grad = grad["blocks"]["q_proj"][...]
        logits = np.asarray(forward(m, tokens))
        if ref_logits is None:
            ref_logits, ref_val, ref_grad = logits, val, np.asarray(grad)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0, err_msg=policy)
        np.testing.assert_allclose(np.asarray(grad), ref_grad, atol=1e-6, rtol=1e-5, err_msg=policy)


def test_return_hidden_then_logits_from_hidden_equals_logits(pair):
    model, _ = pair
    tokens = jnp.asarray(rand_tokens(4, 2, 10))
    hidden = forward(model, tokens, return_hidden=True)
    assert hidden.shape == (2, 10, CFG.d_model)
    logits = forward(model, tokens)
    np.testing.assert_allclose(np.asarray(model.logits_from_hidden(hidden)), np.asarray(logits), atol=1e-6)


def test_lora_zero_b_equals_base_and_lora_false_ignores_adapter():
    cfg = CFG.replace(lora_rank=4, lora_alpha=8.0)
    model = make_model(cfg)
    base = make_model(CFG)  # same seed: same base weights (LoRA init draws after the base params)
    tokens = jnp.asarray(rand_tokens(6, 2, 12))
    base_logits = np.asarray(forward(base, tokens))
    np.testing.assert_array_equal(np.asarray(model.blocks["q_proj"][...]), np.asarray(base.blocks["q_proj"][...]))
    np.testing.assert_allclose(np.asarray(forward(model, tokens)), base_logits, atol=1e-6)  # lora_b == 0
    key = jax.random.key(1)
    for i, name in enumerate(cfg.lora_targets):
        b = model.lora_b[name][...]
        model.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.fold_in(key, i), b.shape)
    with_lora = np.asarray(forward(model, tokens))
    assert np.abs(with_lora - base_logits).max() > 1e-3
    np.testing.assert_allclose(np.asarray(forward(model, tokens, lora=False)), base_logits, atol=1e-6)
    # LoRA forward == torch with merged weights W + A @ B * alpha / r.
    np.testing.assert_allclose(with_lora, torch_logits(torch_from_flax(model, merge_lora=True), tokens),
                               atol=TOL, rtol=0)


def test_bf16_compute_is_finite_and_close_to_fp32(pair):
    model, _ = pair
    tokens = jnp.asarray(rand_tokens(7, 2, 24))
    f32 = np.asarray(forward(model, tokens))
    m16 = nnx.merge(graphdef_of(CFG.replace(compute_dtype="bfloat16")), nnx.state(model))
    bf = forward(m16, tokens)
    assert bf.dtype == jnp.bfloat16
    bf = np.asarray(bf, np.float32)
    assert np.isfinite(bf).all()
    scale = np.abs(f32).max()
    assert np.abs(bf - f32).max() <= 0.05 * scale, (np.abs(bf - f32).max(), scale)
    assert (bf.argmax(-1) == f32.argmax(-1)).mean() > 0.9

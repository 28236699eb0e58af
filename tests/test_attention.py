"""Attention implementations (models/attention.py): the per-backend choice, and the splash
kernel (run by the Pallas interpreter on CPU) against XLA attention, alone, on meshes, with
grouped-query heads, key masks, unpadded lengths and inside the LLaDA forward / KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import attention, llada


@pytest.mark.parametrize("impl, dtype, head_dim, masked, backend, expected", [
    ("auto", jnp.bfloat16, 128, False, "gpu-T4", "xla"),  # compute capability 7.5: no cuDNN flash attention
    ("auto", jnp.float32, 64, False, "cpu", "xla"),
    (None, jnp.bfloat16, 128, False, "cpu", "xla"),
    ("auto", jnp.bfloat16, 128, False, "tpu", "splash"),
    ("auto", jnp.bfloat16, 64, False, "tpu", "xla"),      # splash wants lane-sized heads
    ("auto", jnp.bfloat16, 128, True, "tpu", "splash"),   # key masks are segment ids
    ("auto", jnp.bfloat16, 128, False, "gpu", "cudnn"),
    ("auto", jnp.float16, 64, False, "gpu", "cudnn"),
    ("auto", jnp.float32, 128, False, "gpu", "xla"),      # cuDNN flash attention is half precision
    ("auto", jnp.bfloat16, 256, False, "gpu", "xla"),
    ("auto", jnp.bfloat16, 128, True, "gpu", "xla"),      # left-padded key mask
    ("cudnn", jnp.float32, 64, True, "cpu", "cudnn"),     # explicit choices pass through
    ("splash", jnp.float32, 16, False, "gpu", "splash"),
    ("xla", jnp.bfloat16, 128, False, "tpu", "xla"),
])
def test_resolve_impl(impl, dtype, head_dim, masked, backend, expected):
    capability = 7.5 if backend == "gpu-T4" else 9.0
    backend = backend.split("-")[0]
    assert attention.resolve_impl(impl, dtype, head_dim, masked, backend, capability) == expected


def test_unknown_impl_is_a_config_error():
    with pytest.raises(ValueError, match="attention_impl='flash'.*choose one of"):
        llada.tiny(attention_impl="flash")
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        attention.resolve_impl("flash", jnp.float32, 64)


def _qkv(b=8, lq=100, lk=100, h=4, hkv=2, hd=16, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, lq, h, hd))
    k = jax.random.normal(ks[1], (b, lk, hkv, hd))
    v = jax.random.normal(ks[2], (b, lk, hkv, hd))
    mask = jnp.arange(lk)[None, :] >= jnp.arange(b)[:, None] * 7  # left padding, row i: 7i pads
    return q, k, v, mask


def _loss(impl):
    return lambda q, k, v, m: jnp.sum(attention.attention(q, k, v, m, 0.25, impl) ** 2)


@pytest.mark.parametrize("mesh_shape", [None, (1, 8, 1), (1, 2, 4)])
def test_splash_matches_xla_values_and_grads(mesh_shape):
    q, k, v, mask = _qkv()
    ref = attention.attention(q, k, v, mask, 0.25, "xla")
    ref_grads = jax.grad(_loss("xla"), argnums=(0, 1, 2))(q, k, v, mask)
    mesh = shd.make_mesh(*mesh_shape) if mesh_shape else None
    with shd.use_mesh(mesh):
        out = jax.jit(lambda *a: attention.attention(*a, 0.25, "splash"))(q, k, v, mask)
        grads = jax.jit(jax.grad(_loss("splash"), argnums=(0, 1, 2)))(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4)


def test_splash_without_mask_and_rectangular():
    """No key mask (LLaDA parity mode) and a query window shorter than the keys (KV cache)."""
    q, k, v, _ = _qkv(b=2, lq=24, lk=150, h=2, hkv=2)
    out = attention.attention(q, k, v, None, 0.25, "splash")
    ref = attention.attention(q, k, v, None, 0.25, "xla")
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)


def test_llada_forward_and_cache_window_with_splash():
    cfg = llada.tiny(n_layers=2, lora_rank=4)
    model = llada.LLaDA(cfg, rngs=nnx.Rngs(0))
    model.lora_b["q_proj"][...] = jnp.full_like(model.lora_b["q_proj"][...], 0.05)
    splash = llada.LLaDA(cfg.replace(attention_impl="splash"), rngs=nnx.Rngs(0))
    nnx.update(splash, nnx.state(model))
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 300)
    pmask = jnp.arange(40)[None, :] >= jnp.array([[0], [6]])
    np.testing.assert_allclose(np.asarray(splash(tokens, pmask)), np.asarray(model(tokens, pmask)), atol=1e-4)
    _, ck, cv = model.hidden_and_kv(tokens)
    win = model.hidden_with_cache(tokens, 16, 8, ck, cv)
    win_splash = splash.hidden_with_cache(tokens, 16, 8, ck, cv)
    np.testing.assert_allclose(np.asarray(win_splash), np.asarray(win), atol=1e-4)


def test_auto_hands_cudnn_to_jax_on_a_gpu_backend(monkeypatch):
    """The dispatch itself: with the backend reported as 'gpu', a bf16 call without a key mask
    reaches jax.nn.dot_product_attention with implementation='cudnn'; with a key mask, 'xla'."""
    seen = []

    def spy(q, k, v, mask=None, *, scale=None, implementation=None):
        seen.append((implementation, None if mask is None else mask.shape))
        return q

    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attention, "gpu_compute_capability", lambda: 9.0)
    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", spy)
    q, k, v, mask = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in _qkv(b=2, lq=8, lk=8, hd=64))
    attention.attention(q, k, v, None, 0.125)
    attention.attention(q, k, v, mask, 0.125)
    assert seen == [("cudnn", None), ("xla", (2, 1, 1, 8))]

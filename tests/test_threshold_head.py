"""Threshold head (SPEC §5): init, features, γ draws, trainable filter, sharding, learning direction."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada
from diffpo_jax.models.threshold_head import (Policy, ThresholdHead, llm_prompt_features, prompt_features,
                                              trainable_filter)
from diffpo_jax.rl import losses as L


def test_init_near_gamma_init():
    head = ThresholdHead(64, gamma_max=2.0, gamma_init=0.3, rngs=nnx.Rngs(0))
    mu = head(jax.random.normal(jax.random.key(1), (16, 64)) * 3)
    assert mu.shape == (16,) and mu.dtype == jnp.float32
    np.testing.assert_allclose(mu, 0.3, atol=0.02)  # ≈ γ_init, any feature scale
    with pytest.raises(ValueError, match="gamma_init"):
        ThresholdHead(8, gamma_max=1.0, gamma_init=1.0, rngs=nnx.Rngs(0))


def test_prompt_features_ignore_padding_and_stop_gradient():
    h = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    pm = jnp.array([[False, True, True], [True, True, True]])
    f = prompt_features(h, pm)
    np.testing.assert_allclose(f, [h[0, 1:].mean(0), h[1].mean(0)])
    assert float(jnp.abs(jax.grad(lambda x: prompt_features(x, pm).sum())(h)).max()) == 0.0


def test_llm_prompt_features_shape():
    m = llada.LLaDA(llada.tiny(lora_rank=2), rngs=nnx.Rngs(0))
    prompt = jnp.ones((2, 5), jnp.int32)
    f = llm_prompt_features(m, prompt, jnp.ones((2, 5), bool), 4)
    h = m.hidden(jnp.concatenate([prompt, jnp.full((2, 4), 300)], 1))
    np.testing.assert_allclose(f, h[:, :5].mean(1), atol=1e-6)


def test_policy_trainable_filter_and_sharding():
    llm = llada.LLaDA(llada.tiny(lora_rank=2), rngs=nnx.Rngs(0))
    pol = Policy(llm, ThresholdHead(64, gamma_max=1.0, gamma_init=0.1, hidden=8, rngs=nnx.Rngs(1)))
    _, tr, fr = nnx.split(pol, trainable_filter(True), ...)
    paths = ["/".join(str(getattr(k, "key", k)) for k in p[:-1]) for p, _ in jax.tree_util.tree_leaves_with_path(tr)]
    assert sum(p.startswith("head/") for p in paths) == 4
    assert all(p.startswith("head/") or "/lora_" in p for p in paths)
    fr_paths = ["/".join(str(getattr(k, "key", k)) for k in p[:-1]) for p, _ in jax.tree_util.tree_leaves_with_path(fr)]
    assert "llm/lm_head" in fr_paths and not any("lora" in p or p.startswith("head") for p in fr_paths)
    _, tr_lora, _ = nnx.split(pol, trainable_filter(False), ...)
    assert len(jax.tree.leaves(tr_lora)) == len(jax.tree.leaves(tr)) - 4
    mesh = shd.make_mesh(2, 2, 2)
    specs = shd.state_shardings(tr, mesh)
    head_specs = [s.spec for p, s in jax.tree_util.tree_leaves_with_path(specs) if str(getattr(p[0], "key", "")) == "head"]
    assert head_specs and all(all(a is None for a in s) for s in head_specs)


def test_head_gradient_moves_mu_toward_good_gammas():
    head = ThresholdHead(16, gamma_max=1.0, gamma_init=0.3, hidden=8, rngs=nnx.Rngs(0))
    feats = jax.random.normal(jax.random.key(2), (2, 16))
    graphdef, params = nnx.split(head)
    mu0 = head(feats)
    gamma_raw = jnp.repeat(mu0, 4) + jnp.array([0.1, -0.1, 0.2, -0.2] * 2)
    adv = jnp.where(gamma_raw > jnp.repeat(mu0, 4), 1.0, -1.0)  # larger γ was better

    def loss(p):
        mu = jnp.repeat(nnx.merge(graphdef, p)(feats), 4)
        d = L.gaussian_log_density(gamma_raw, mu, 0.1)
        out = L.head_loss(d, jax.lax.stop_gradient(d), adv, 4, 0.2)
        return out.loss_sum / out.denom

    tx = optax.sgd(1e-2)
    opt = tx.init(params)
    for _ in range(3):
        updates, opt = tx.update(jax.grad(loss)(params), opt, params)
        params = optax.apply_updates(params, updates)
    mu1 = nnx.merge(graphdef, params)(feats)
    assert (np.asarray(mu1) > np.asarray(mu0) + 1e-4).all()

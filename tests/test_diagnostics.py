"""Per-timestep surrogate-vs-true KL diagnostic (research/algorithms.md §4.5) on a tiny LLaDA."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffpo_jax.models import llada
from diffpo_jax.rl.diagnostics import conditional_kl, surrogate_kl_by_step

B, P, L = 3, 4, 6


def test_conditional_kl_matches_numpy_and_is_zero_on_itself():
    m = llada.LLaDA(llada.tiny(), rngs=nnx.Rngs(0))
    k1, k2 = jax.random.split(jax.random.key(0))
    hp, hq = jax.random.normal(k1, (2, 5, 64)) * 3, jax.random.normal(k2, (2, 5, 64)) * 3
    kpq, kqp = conditional_kl(m, hp, hq, chunk=2)
    lp = np.asarray(jax.nn.log_softmax(m.logits_from_hidden(hp), -1), np.float64)
    lq = np.asarray(jax.nn.log_softmax(m.logits_from_hidden(hq), -1), np.float64)
    np.testing.assert_allclose(kpq, (np.exp(lp) * (lp - lq)).sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kqp, (np.exp(lq) * (lq - lp)).sum(-1), rtol=1e-4, atol=1e-6)
    same, _ = conditional_kl(m, hp, hp, chunk=3)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_kl_by_step_limits():
    m = llada.LLaDA(llada.tiny(), rngs=nnx.Rngs(1))
    m.lm_head[...] = m.lm_head[...] * 10.0  # peaked conditionals so context changes show up in the KL
    k = jax.random.split(jax.random.key(2), 3)
    prompt = jax.random.randint(k[0], (B, P), 0, 290)
    completion = jax.random.randint(k[1], (B, L), 0, 290)
    order = jax.vmap(lambda kk: jax.random.permutation(kk, L))(jax.random.split(k[2], B))
    steps = jnp.stack([order[0] // 2 + 1, order[1] // 2 + 1, order[2] + 1]).astype(jnp.int32)  # T = 3, 3, 6
    nfe = jnp.array([3, 3, 6], jnp.int32)
    out = surrogate_kl_by_step(m, prompt, jnp.ones((B, P), bool), completion, steps, nfe, tau_fracs=(0.5,),
                               tau_abs=(100,), chunk=4, n_bins=3)
    assert out["t"].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(out["count"], [5, 5, 5, 1, 1, 1])
    assert out["rel_count"].sum() == B * L
    # t = 1: the true context z_0 is the MF context (no prompt masking) -> KL exactly 0
    for d in ("kl_true_sur", "kl_sur_true"):
        np.testing.assert_allclose(out[f"mf/{d}"][0], 0.0, atol=1e-5)
        np.testing.assert_allclose(out[f"2mf@t100/{d}"][0], 0.0, atol=1e-5)
    # MF drifts from the truth later on; τ = T−1 makes the last step exact for every row
    assert out["mf/kl_true_sur"][1:].min() > 1e-4
    assert out["2mf@t100/kl_true_sur"][5] < 1e-5
    assert out["2mf@t100/kl_sur_true"][5] < 1e-5
    assert out["2mf@t100/kl_true_sur"][2] < out["mf/kl_true_sur"][2]  # rows 0, 1 end at t = 3: exact there
    # relative-time bins (t / T_b in thirds): first bin holds t=1 of rows 0, 1 and t=1, 2 of row 2
    assert out["rel_count"].tolist() == [2 + 2 + 2, 2 + 2 + 2, 2 + 2 + 2]
    assert np.isfinite(out["mf/rel_kl_true_sur"]).all()

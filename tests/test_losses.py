"""GRPO / IS / KL / head losses (SPEC §4–5) against a NumPy re-statement and gradient identities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffpo_jax.rl import RLConfig, losses as L

B, T = 4, 6


def np_policy_loss(lp, old, ref, beh, adv, mask, steps, cfg, use_is):
    """Straight NumPy re-statement of SPEC §4, one token / step at a time."""
    total, rows = 0.0, []
    for b in range(lp.shape[0]):
        row = 0.0
        for i in range(lp.shape[1]):
            if not mask[b, i]:
                continue
            if cfg.ratio_unit == "token":
                lr, lw, n = lp[b, i] - old[b, i], old[b, i] - beh[b, i], 1
            else:
                same = [j for j in range(lp.shape[1]) if mask[b, j] and steps[b, j] == steps[b, i]]
                lr = sum(lp[b, j] - old[b, j] for j in same)
                lw = sum(old[b, j] - beh[b, j] for j in same)
                n = len(same)
            rho = math.exp(lr)
            w = min(cfg.clamp_c, math.exp(lw)) if use_is else 1.0
            pg = -w * min(rho * adv[b], min(max(rho, 1 - cfg.epsilon), 1 + cfg.epsilon) * adv[b]) / n
            r = ref[b, i] - lp[b, i]
            row += pg + cfg.beta * (math.exp(r) - r - 1)
        rows.append((row, mask[b].sum()))
        total += row
    if cfg.loss_agg == "token":
        return total / mask.sum()
    return np.mean([r / n for r, n in rows])


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    lp = rng.normal(-2, 0.5, (B, T))
    old = lp + rng.normal(0, 0.4, (B, T))
    ref = lp + rng.normal(0, 0.3, (B, T))
    beh = old + rng.normal(0, 1.0, (B, T))
    adv = rng.normal(0, 1, B)
    mask = np.ones((B, T), bool)
    mask[1, 4:] = False
    mask[3, 1:] = False
    steps = np.array([[1, 1, 2, 2, 3, 3]] * B, np.int32)
    return lp, old, ref, beh, adv, mask, steps


@pytest.mark.parametrize("method", ["d1", "2mf", "mf_is", "2mf_is"])
@pytest.mark.parametrize("agg,unit", [("token", "token"), ("sequence", "token"), ("token", "step")])
def test_policy_loss_matches_numpy(method, agg, unit):
    lp, old, ref, beh, adv, mask, steps = make_inputs()
    cfg = RLConfig(method=method, loss_agg=agg, ratio_unit=unit, epsilon=0.2, beta=0.04, clamp_c=2.0)
    out = L.get_policy_loss(method)(*map(jnp.asarray, (lp, old, ref, beh, adv, mask, steps)), cfg)
    want = np_policy_loss(lp, old, ref, beh, adv, mask, steps, cfg, use_is=method.endswith("_is"))
    np.testing.assert_allclose(out.loss_sum / out.denom, want, rtol=1e-5)
    np.testing.assert_allclose(out.denom, L.policy_loss_denominator(jnp.asarray(mask), agg))
    # ε = 0.2 with these ratios clips some tokens (gradient zeroed: clip_active_frac)
    assert float(out.metrics["clip_active_frac"].total) > 0
    assert float(out.metrics["clip_frac"].count) == float(out.metrics["clip_active_frac"].count) == mask.sum()


def test_clip_frac_is_d1s_side_and_clip_active_frac_the_zero_gradient_side():
    eps = 0.2
    cfg = RLConfig(method="d1", beta=0.0, epsilon=eps)
    # row 0 (A = +1): ρ 1.5, 1.3 > 1+ε -> clipped term is the min (active); 0.5 < 1−ε -> d1's side
    # row 1 (A = −1): ρ 1.5 -> d1's side; 0.5 -> active; 0.9 inside; 4th token masked (ρ 0.1)
    # row 2 (A = 0): nothing counts, whatever ρ
    rho = np.array([[1.5, 0.5, 1.3, 1.0], [1.5, 0.5, 0.9, 0.1], [1.5, 0.5, 1.5, 0.5]])
    adv = jnp.array([1.0, -1.0, 0.0])
    mask = np.ones(rho.shape, bool)
    mask[1, 3] = False
    old = jnp.zeros(rho.shape)
    steps = jnp.broadcast_to(jnp.arange(1, 5, dtype=jnp.int32), rho.shape)

    def loss(lp):
        out = L.diffpo_policy_loss(lp, old, None, old, adv, jnp.asarray(mask), steps, cfg, use_is=False)
        return out.loss_sum, out

    grad, out = jax.grad(loss, has_aux=True)(jnp.log(jnp.asarray(rho)))
    frac = {k: float(out.metrics[k].total / out.metrics[k].count) for k in ("clip_frac", "clip_active_frac")}
    np.testing.assert_allclose(frac["clip_frac"], 2 / 11, rtol=1e-6)  # (0,1) and (1,0)
    np.testing.assert_allclose(frac["clip_active_frac"], 3 / 11, rtol=1e-6)  # (0,0), (0,2), (1,1)
    # clip_active_frac counts exactly the valid tokens with A != 0 whose gradient clipping zeroes
    g = np.asarray(grad)
    active = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    flows = ~active & mask & (np.asarray(adv) != 0)[:, None]  # the 4 other valid tokens of rows 0, 1
    assert (g[active] == 0).all() and flows.sum() == 4 and (g[flows] != 0).all()
    # the head: ρ 1.5, 1.4 (A > 0) and 0.6 (A < 0) active; 0.5 (A > 0) d1's side; 1.0 neither
    h_rho = jnp.array([1.5, 1.4, 0.5, 0.6, 1.0])
    h = L.head_loss(jnp.log(h_rho), jnp.zeros(5), jnp.array([1.0, 1.0, 1.0, -1.0, -1.0]), 5, eps)
    np.testing.assert_allclose(h.metrics["head_clip_frac"].total / h.metrics["head_clip_frac"].count, 1 / 5)
    np.testing.assert_allclose(h.metrics["head_clip_active_frac"].total / h.metrics["head_clip_active_frac"].count,
                               3 / 5)


def test_infinite_log_probs_outside_the_completion_do_not_poison_the_loss():
    lp, old, ref, beh, adv, mask, steps = make_inputs()
    bad = ~mask
    lp_bad, ref_bad, beh_bad = (np.where(bad, v, x) for x, v in ((lp, -np.inf), (ref, -5.0), (beh, -np.inf)))
    cfg = RLConfig(method="2mf_is", epsilon=0.2, beta=0.04, clamp_c=2.0)
    args = lambda p: tuple(map(jnp.asarray, (p, old, ref_bad, beh_bad, adv, mask, steps)))  # noqa: E731
    loss = lambda p: (lambda o: o.loss_sum / o.denom)(L.get_policy_loss("2mf_is")(*args(p), cfg))  # noqa: E731
    value, grad = jax.value_and_grad(loss)(jnp.asarray(lp_bad))
    want = np_policy_loss(lp, old, ref, beh, adv, mask, steps, cfg, use_is=True)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad)[bad].any()


def test_group_advantages():
    r = jnp.array([1.0, 0.0, 0.5, 2.0, 2.0, 2.0])
    np.testing.assert_allclose(L.group_advantages(r, 3), [0.5, -0.5, 0.0, 0, 0, 0], atol=1e-6)
    a = L.group_advantages(r, 3, std_normalize=True)
    np.testing.assert_allclose(a[:3], np.array([0.5, -0.5, 0]) / (np.std([1, 0, 0.5], ddof=1) + 1e-4), rtol=1e-5)
    np.testing.assert_allclose(a[3:], 0.0)
    with pytest.raises(ValueError, match="num_generations"):
        L.group_advantages(r, 4)
    np.testing.assert_allclose(L.sampler_reward(jnp.array([1.0]), jnp.array([64]), 0.5, 256.0), [0.875])


def test_on_policy_gradient_is_policy_gradient():
    lp, _, ref, beh, adv, mask, steps = make_inputs(1)
    cfg = RLConfig(method="d1", beta=0.0)
    m = jnp.asarray(mask)

    for unit in ("token", "step"):
        c = cfg.replace(ratio_unit=unit)

        def loss(x):
            out = L.diffpo_policy_loss(x, jax.lax.stop_gradient(x), None, beh, adv, m, steps, c, use_is=False)
            return out.loss_sum / out.denom

        g = jax.grad(loss)(jnp.asarray(lp))
        want = -adv[:, None] * mask / mask.sum()  # ∇ of −Σ A log π / N
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-9)


def test_clipping_zeroes_gradient_outside_trust_region():
    eps = 0.2
    cfg = RLConfig(method="d1", beta=0.0, epsilon=eps)
    old = jnp.zeros((1, 1))
    one = jnp.ones((1, 1), bool)
    steps = jnp.ones((1, 1), jnp.int32)

    def grad_at(log_ratio, a):
        f = lambda x: L.diffpo_policy_loss(x, old, None, old, jnp.array([a]), one, steps, cfg, use_is=False).loss_sum
        return float(jax.grad(f)(jnp.full((1, 1), log_ratio))[0, 0])

    hi, lo, inside = math.log(1 + 2 * eps), math.log(1 - 2 * eps), math.log(1 + eps / 2)
    assert grad_at(hi, 1.0) == 0.0  # A > 0, ρ > 1+ε: clipped, no push further
    assert grad_at(lo, -1.0) == 0.0  # A < 0, ρ < 1−ε: clipped
    assert grad_at(hi, -1.0) > 0  # A < 0, ρ > 1+ε: unclipped (pessimistic branch), pushes ρ down
    assert grad_at(lo, 1.0) < 0  # A > 0, ρ < 1−ε: unclipped, pushes ρ up
    assert grad_at(inside, 1.0) < 0 and grad_at(inside, -1.0) > 0


def test_is_weights_clamp_and_no_gradient():
    old = jnp.array([0.0, 0.0, 0.0])
    beh = jnp.array([0.0, -0.5, -5.0])
    w = L.is_weights(old, beh, 2.0)
    np.testing.assert_allclose(w, [1.0, math.exp(0.5), 2.0], rtol=1e-6)
    g = jax.grad(lambda o, b: L.is_weights(o, b, 2.0).sum(), argnums=(0, 1))(old, beh)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in g)
    # clamp fraction metric counts the pinned weight
    cfg = RLConfig(method="mf_is", beta=0.0, clamp_c=2.0)
    out = L.diffpo_policy_loss(old[None], old[None], None, beh[None], jnp.ones(1), jnp.ones((1, 3), bool),
                               jnp.ones((1, 3), jnp.int32) * jnp.arange(1, 4), cfg, use_is=True)
    np.testing.assert_allclose(out.metrics["is_clamp_frac"].total / out.metrics["is_clamp_frac"].count, 1 / 3)
    np.testing.assert_allclose(out.maxima["is_weight_max"], 2.0, rtol=1e-6)


def test_kl_zero_with_zero_gradient_at_reference():
    lp = jnp.array([[-1.0, -2.0, -0.3]])
    np.testing.assert_allclose(L.kl_k3(lp, lp), 0.0)
    g = jax.grad(lambda x: L.kl_k3(lp, x).sum())(lp)
    np.testing.assert_allclose(g, 0.0)
    assert float(L.kl_k3(lp, lp + 0.3).min()) > 0
    # KL sits outside the IS weight: with A = 0 the loss is exactly β·KL whatever w is
    cfg = RLConfig(method="2mf_is", beta=0.5, clamp_c=5.0)
    x = lp + 0.2
    out = L.diffpo_policy_loss(x, x, lp, x - 3.0, jnp.zeros(1), jnp.ones((1, 3), bool), jnp.ones((1, 3), jnp.int32),
                               cfg, use_is=True)
    np.testing.assert_allclose(out.loss_sum / out.denom, 0.5 * L.kl_k3(lp, x).mean(), rtol=1e-6)


def test_step_ratio_is_product_of_token_ratios():
    lp, old, ref, beh, adv, mask, steps = make_inputs(2)
    got = L.per_step_sum(jnp.asarray(lp - old), jnp.asarray(steps), jnp.asarray(mask))
    for b in range(B):
        for i in range(T):
            if mask[b, i]:
                same = mask[b] & (steps[b] == steps[b, i])
                np.testing.assert_allclose(got[b, i], (lp - old)[b][same].sum(), rtol=1e-6)


def test_gaussian_log_density_and_head_loss_direction():
    x, mu, s = jnp.array([0.3, 0.7]), jnp.array([0.5, 0.5]), 0.2
    want = -0.5 * ((x - mu) / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(L.gaussian_log_density(x, mu, s), want, rtol=1e-6)
    # γ = 0.7 has positive advantage, γ = 0.3 negative: descending the loss moves μ up (toward 0.7)
    adv = jnp.array([-1.0, 1.0])

    def loss(m):
        d = L.gaussian_log_density(x, m, s)
        out = L.head_loss(d, jax.lax.stop_gradient(d), adv, 2, 0.2)
        return out.loss_sum / out.denom

    g = jax.grad(loss)(mu)
    assert float(g.sum()) < 0  # so μ − lr·g increases
    want = -(adv * (x - mu) / s**2)  # REINFORCE: −A ∇_μ log N
    np.testing.assert_allclose(g, want, rtol=1e-5)
    # PPO ratio on the density clips once μ has moved far enough
    out = L.head_loss(L.gaussian_log_density(x, mu + 0.3, s), L.gaussian_log_density(x, mu, s), adv, 2, 0.2)
    assert float(out.metrics["head_clip_frac"].total + out.metrics["head_clip_active_frac"].total) > 0


def test_kl_k3_is_clamped_like_the_ratio():
    c = L.LOG_RATIO_CLAMP
    lp = jnp.array([-1.0, -2.0, -0.3, -7.0])
    ref = jnp.array([-1.2, -1.0, -0.3, -7.0 + c])  # r = −0.2, 1, 0, 20 (the clamp itself): unchanged
    r = np.asarray(ref - lp, np.float64)
    np.testing.assert_allclose(L.kl_k3(ref, lp), np.exp(r) - r - 1, rtol=1e-6)
    # huge differences (and infinities) saturate at the clamp instead of overflowing to inf / NaN
    big = L.kl_k3(jnp.array([0.0, -1e4, 0.0, -jnp.inf]), jnp.array([-1e4, 0.0, -jnp.inf, 0.0]))
    assert np.isfinite(np.asarray(big)).all()
    np.testing.assert_allclose(big, [math.exp(c) - c - 1, math.exp(-c) + c - 1] * 2, rtol=1e-6)
    g = jax.grad(lambda x: L.kl_k3(jnp.zeros(2), x).sum())(jnp.array([-1e4, 1e4]))
    assert np.isfinite(np.asarray(g)).all()
    # inside the policy loss the KL metric stays finite too
    cfg = RLConfig(method="d1", beta=0.04)
    one = jnp.ones((1, 1), bool)
    out = L.diffpo_policy_loss(jnp.full((1, 1), -1e4), jnp.full((1, 1), -1e4), jnp.zeros((1, 1)),
                               jnp.full((1, 1), -1e4), jnp.ones(1), one, jnp.ones((1, 1), jnp.int32), cfg,
                               use_is=False)
    assert np.isfinite(float(out.loss_sum)) and np.isfinite(float(out.metrics["kl"].total))

"""The threshold head inside the sampler (`HeadGamma`), and the step-level head (`rl.head='step'`).

* The prompt features the sampler takes from its first forward equal the head's own
  definition (one forward of [p, M…M], `llm_prompt_features`), with and without a KV cache or
  a padding mask: the head adds no NFE and reads what it always read.
* The prompt head decodes with γ = clip(μ + σε): at σ = 0 its tokens are those of the fixed-γ
  sampler at γ = μ(p).
* The step head's REINFORCE gradient (the density `train_step.head_log_density` sums over a
  completion's steps, through the train step's head loss) matches a central finite difference
  of the expected reward E[−NFE] along several parameter directions, within Monte-Carlo error;
  the same estimate with the density summed over every slot (steps never taken included) does
  not, so the test can see a wrong density.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffpo_jax.models import llada
from diffpo_jax.models.threshold_head import (STEP_FEATURES, HeadGamma, Policy, ThresholdHead, llm_prompt_features,
                                              load_threshold_head, save_threshold_head)
from diffpo_jax.rl import RLConfig
from diffpo_jax.rl import losses as L
from diffpo_jax.rl.train_step import head_log_density, init_train_state, make_grad_fn, make_score_fn
from diffpo_jax.sampling import SamplerConfig, make_sampler
from test_learning import tiny_llm

F = len(STEP_FEATURES)


def _head(d_model, kind, seed=1, last_init_std=1.0):
    return ThresholdHead(d_model, gamma_max=16.0, gamma_init=2.0, hidden=16, last_init_std=last_init_std,
                         n_step_features=F if kind == "step" else 0, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("kind,kv_cache,padding", [("prompt", "none", False), ("step", "none", True),
                                                   ("step", "prefix", False)])
def test_sampler_features_are_the_prompt_forward(kind, kv_cache, padding):
    llm = llada.LLaDA(llada.tiny(lora_rank=2), rngs=nnx.Rngs(0))
    prompt = jnp.array([[0, 0, 7, 8], [9, 10, 11, 12]], jnp.int32)
    pm = jnp.array([[False, False, True, True], [True] * 4])
    scfg = SamplerConfig(rule="eb", gen_length=8, block_length=4, temperature=1.0, kv_cache=kv_cache,
                         use_padding_mask=padding)
    out = make_sampler(nnx.split(llm)[0], scfg)(nnx.split(llm)[1], prompt, pm, jax.random.key(0),
                                                head=HeadGamma.of(_head(64, kind), 0.5))
    want = llm_prompt_features(llm, prompt, pm, 8, use_padding_mask=padding)
    np.testing.assert_allclose(out.head.features, want, atol=1e-5)
    if kind == "step":
        assert out.head.gamma_raw.shape == (2, scfg.max_steps) and out.head.step_features.shape == (2, scfg.max_steps, F)
        steps = np.arange(scfg.max_steps)[None, :]
        nfe = np.asarray(out.nfe)[:, None]
        np.testing.assert_array_equal(np.asarray(out.head.gamma_raw)[steps >= nfe], 0.0)  # slots after the last step
        np.testing.assert_allclose(np.asarray(out.head.step_features)[:, :, 0], np.where(steps < nfe, steps / 8, 0.0))
        masked = np.asarray(out.head.step_features)[:, :, 1]
        assert masked[0, 0] == 1.0 and np.all(np.diff(masked[0, : nfe[0, 0]]) < 0)  # fewer masks at every step
        assert np.all((np.asarray(out.head.step_features) >= 0) & (np.asarray(out.head.step_features) <= 1))


def test_prompt_head_at_sigma_zero_is_the_fixed_sampler_at_mu():
    llm, _ = tiny_llm()
    g, st = nnx.split(llm)
    sampler = make_sampler(g, SamplerConfig(rule="eb", gen_length=8, block_length=8, temperature=0.0))
    prompt = jnp.array([[50, 60, 70, 80], [41, 42, 43, 44]], jnp.int32)
    head = _head(llm.cfg.d_model, "prompt")
    out = sampler(st, prompt, None, jax.random.key(0), head=HeadGamma.of(head, 0.0))
    mu = head(llm_prompt_features(llm, prompt, jnp.ones_like(prompt, bool), 8))
    np.testing.assert_allclose(out.head.gamma, mu, rtol=1e-5)
    fixed = sampler(st, prompt, None, jax.random.key(0), gamma=out.head.gamma)
    np.testing.assert_array_equal(out.tokens, fixed.tokens)
    noisy = sampler(st, prompt, None, jax.random.key(0), head=HeadGamma.of(head, 3.0))
    np.testing.assert_allclose(noisy.head.gamma, np.clip(noisy.head.gamma_raw, 0.0, 16.0))
    assert not np.allclose(noisy.head.gamma_raw, mu)


def test_step_head_reinforce_gradient_matches_finite_differences():
    """J(φ) = E[−NFE] of the EB sampler at T = 0 whose γ_t ~ N(μ_φ(f, s_t), σ²) per step (the
    only randomness). REINFORCE: the train step's head gradient on a group of N identical
    prompts (advantage A = R − mean R, ratio 1) is −Σ A ∇ log π; FD: (J(φ + h d) − J(φ − h d)) / 2h
    with common noise. Measured (N = 2048): b2 2.60 ± 0.10 vs FD 2.63; the masked-fraction
    feature's weights 1.16 ± 0.04 vs 1.18; mean entropy 0.75 ± 0.03 vs 0.86 ± 0.05."""
    llm, _ = tiny_llm()
    g, st = nnx.split(llm)
    n, length = 2048, 8
    sampler = make_sampler(g, SamplerConfig(rule="eb", gen_length=length, block_length=length, temperature=0.0))
    prompt = jnp.tile(jnp.array([[50, 60, 70, 80]], jnp.int32), (n, 1))
    cfg = RLConfig(method="d1", joint_sampler=True, head="step", sigma=1.0, gamma_max=16.0, gamma_init=2.0,
                   head_hidden=16, num_generations=n, beta=0.0, nfe_lambda=1.0, nfe_ref=1.0, lr=1e-3)
    head = _head(llm.cfg.d_model, "step", seed=3)
    hg, hs = nnx.split(head)

    def decode(state, key):
        return sampler(st, prompt, None, key, head=HeadGamma(hg, state, jnp.float32(cfg.sigma)))

    out = decode(hs, jax.random.key(0))
    nfe = out.nfe
    assert 5.0 < float(nfe.mean()) < 7.5 and len(np.unique(np.asarray(nfe))) >= 3  # γ really changes the steps
    batch = {"prompt": prompt, "prompt_mask": jnp.ones_like(prompt, bool), "completion": out.tokens[:, 4:],
             "completion_mask": out.completion_mask, "unmask_step": out.unmask_step,
             "behaviour_logp": out.behaviour_logp, "nfe": nfe, "rewards": jnp.zeros((n,), jnp.float32),
             "gamma_raw": out.head.gamma_raw, "step_features": out.head.step_features,
             "head_features": out.head.features}
    # the train step's head gradient: sampler reward r - λ NFE/NFE_ref = -NFE, one group of n rows
    ts = init_train_state(Policy(llm, head), cfg)
    _, grads, _ = make_grad_fn(ts.graphdef, cfg)(ts.trainable, ts.frozen, batch, jax.random.key(1))
    head_grad = grads["head"]
    r = -nfe.astype(jnp.float32)
    adv = r - r.mean()

    def per_row_derivative(density, d):  # A_i · d/dh log π(draws_i | φ + h d), at h = 0
        return adv * jax.jvp(density, (hs,), (d,))[1]

    right = lambda s: head_log_density(Policy(llm, nnx.merge(hg, s)), batch, cfg)[0]  # noqa: E731
    every_slot = lambda s: L.gaussian_log_density(  # noqa: E731  (the mistake: also the steps never taken)
        batch["gamma_raw"], nnx.merge(hg, s)(batch["head_features"][:, None], batch["step_features"]), cfg.sigma).sum(-1)

    def direction(which):
        d = jax.tree.map(jnp.zeros_like, hs)
        if which == "b2":
            d["b2"][...] = jnp.ones((1,))
        else:  # the first-layer weights of one step feature, aligned with w2 (u moves by ≈ s · h)
            w2 = hs["w2"][...][:, 0]
            d["w1"][...] = jnp.zeros_like(hs["w1"][...]).at[llm.cfg.d_model + which].set(jnp.sign(w2) / jnp.abs(w2).sum())
        return d

    h = 0.1
    for which in ("b2", 1, 3):
        d = direction(which)
        per_row = per_row_derivative(right, d)
        reinforce, se = float(per_row.mean()), float(per_row.std()) / np.sqrt(n)
        via_step = -float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(head_grad), jax.tree.leaves(d)))) / n
        np.testing.assert_allclose(via_step, reinforce, rtol=1e-4, err_msg=f"{which}: train-step head gradient")
        key = jax.random.key(100)
        up = decode(jax.tree.map(lambda a, b: a + h * b, hs, d), key).nfe
        down = decode(jax.tree.map(lambda a, b: a - h * b, hs, d), key).nfe
        fd_rows = (-up + down).astype(jnp.float32) / (2 * h)
        fd, fd_se = float(fd_rows.mean()), float(fd_rows.std()) / np.sqrt(n)
        tol = 3.5 * np.hypot(se, fd_se) + 0.05 * abs(fd)
        assert abs(reinforce - fd) < tol, f"{which}: REINFORCE {reinforce:.3f} ± {se:.3f} vs FD {fd:.3f} ± {fd_se:.3f}"
        assert fd > 4 * fd_se, f"{which}: FD {fd:.3f} ± {fd_se:.3f} is not a clear signal"
        if which == "b2":
            wrong = float(per_row_derivative(every_slot, d).mean())
            assert abs(wrong - fd) > 5 * tol, f"the wrong density ({wrong:.3f}) went unnoticed (FD {fd:.3f})"


def test_step_head_score_fn_and_export_round_trip(tmp_path):
    llm, _ = tiny_llm()
    head = _head(llm.cfg.d_model, "step", seed=4)
    cfg = RLConfig(joint_sampler=True, head="step", sigma=0.7, gamma_max=16.0, gamma_init=2.0, head_hidden=16,
                   num_generations=2, beta=0.0)
    sampler = make_sampler(nnx.split(llm)[0], SamplerConfig(rule="eb", gen_length=8, block_length=4, temperature=1.0))
    prompt = jnp.array([[50, 60, 70, 80]] * 2 + [[41, 42, 43, 44]] * 2, jnp.int32)
    out = sampler(nnx.split(llm)[1], prompt, None, jax.random.key(2), head=HeadGamma.of(head, cfg.sigma))
    batch = {"prompt": prompt, "prompt_mask": jnp.ones_like(prompt, bool), "completion": out.tokens[:, 4:],
             "completion_mask": out.completion_mask, "unmask_step": out.unmask_step,
             "behaviour_logp": out.behaviour_logp, "nfe": out.nfe, "rewards": jnp.arange(4.0),
             "gamma_raw": out.head.gamma_raw, "step_features": out.head.step_features,
             "head_features": out.head.features}
    ts = init_train_state(Policy(llm, head), cfg)
    old = make_score_fn(ts.graphdef, cfg)(ts.trainable, ts.frozen, batch, jax.random.key(1))["head_old_logp"]
    mu = head(out.head.features[:, None], out.head.step_features)
    steps = np.arange(out.head.gamma_raw.shape[1])[None] < np.asarray(out.nfe)[:, None]
    want = np.where(steps, -0.5 * ((np.asarray(out.head.gamma_raw) - mu) / 0.7) ** 2 - np.log(0.7)
                    - 0.5 * np.log(2 * np.pi), 0.0).sum(-1)
    np.testing.assert_allclose(old, want, rtol=1e-5)
    save_threshold_head(head, str(tmp_path))
    back = load_threshold_head(str(tmp_path))
    assert back.n_step_features == F and back.kind == "step"
    np.testing.assert_allclose(back(out.head.features[:, None], out.head.step_features), mu, rtol=1e-6)


def test_head_sampler_sharded_equals_single_device():
    """The step head (whose prompt features are the prompt head's input too) under FSDP x TP with the
    dual KV cache: same tokens and γ as on one device."""
    from diffpo_jax import sharding as shd

    mesh = shd.make_mesh(2, 2, 2)
    cfg = llada.tiny(lora_rank=2)
    sharded = shd.create_sharded(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(0)), mesh)
    single = llada.LLaDA(cfg, rngs=nnx.Rngs(0))
    prompt = jnp.arange(8 * 4, dtype=jnp.int32).reshape(8, 4) % 200 + 5
    head = HeadGamma.of(_head(64, "step"), 0.0)
    scfg = SamplerConfig(rule="eb", gen_length=8, block_length=4, temperature=0.0, kv_cache="dual")
    a = make_sampler(nnx.split(sharded)[0], scfg, mesh)(nnx.split(sharded)[1], prompt, None, jax.random.key(0), head=head)
    b = make_sampler(nnx.split(single)[0], scfg)(nnx.split(single)[1], prompt, None, jax.random.key(0), head=head)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.head.gamma, b.head.gamma, rtol=1e-4)

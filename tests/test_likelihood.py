"""Surrogate likelihoods (SPEC §3) against direct, unchunked re-statements on a tiny LLaDA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffpo_jax.models import llada
from diffpo_jax.rl import RLConfig, likelihood as lk

B, P, L = 4, 5, 8


@pytest.fixture(scope="module")
def model():
    m = llada.LLaDA(llada.tiny(lora_rank=4), rngs=nnx.Rngs(0))
    # non-zero LoRA B so lora=True and lora=False differ
    for name in m.lora_b:
        m.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.key(7), m.lora_b[name].shape)
    return m


@pytest.fixture(scope="module")
def traj():
    k = jax.random.split(jax.random.key(1), 4)
    prompt = jax.random.randint(k[0], (B, P), 0, 290)
    prompt_mask = jnp.arange(P)[None, :] >= jnp.array([0, 2, 0, 1])[:, None]  # left padding
    prompt = jnp.where(prompt_mask, prompt, 301)
    completion = jax.random.randint(k[1], (B, L), 0, 290)
    # each row reveals its tokens in a random order, 2 per step (T_b = 4), last row 1 per step (T_b = 8)
    order = jax.vmap(lambda kk: jax.random.permutation(kk, L))(jax.random.split(k[2], B))
    steps = jnp.where(jnp.arange(B)[:, None] < 3, order // 2 + 1, order + 1).astype(jnp.int32)
    nfe = jnp.array([4, 4, 4, 8], jnp.int32)
    return dict(prompt=prompt, prompt_mask=prompt_mask, completion=completion, unmask_step=steps, nfe=nfe)


def full_logps(model, tokens, targets, lora=True):
    """Reference: full-vocab log_softmax of the model logits at the completion positions."""
    logits = model(tokens, lora=lora)[:, -targets.shape[1]:].astype(jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 3, 8, 100])
def test_token_logprobs_chunked_equals_full(model, traj, chunk):
    tokens = jnp.concatenate([traj["prompt"], traj["completion"]], 1)
    h = model.hidden(tokens)[:, P:]
    got = lk.token_logprobs(model, h, traj["completion"], chunk)
    assert got.shape == (B, L) and got.dtype == jnp.float32
    want = full_logps(model, tokens, traj["completion"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # gradients w.r.t. the hidden states agree too (rematerialised chunks)
    f_chunk = lambda hh: lk.token_logprobs(model, hh, traj["completion"], chunk).sum()
    f_full = lambda hh: jnp.take_along_axis(jax.nn.log_softmax(model.logits_from_hidden(hh), -1),
                                            traj["completion"][..., None], -1).sum()
    np.testing.assert_allclose(jax.grad(f_chunk)(h), jax.grad(f_full)(h), atol=1e-5)


def test_mask_prompt_rate_padding_and_row_determinism():
    prompt = jnp.zeros((64, 50), jnp.int32)
    pm = jnp.arange(50)[None, :] >= 10  # 10 padding positions per row
    key = jax.random.key(3)
    out = lk.mask_prompt(prompt, pm, key, 0.15, 300)
    hit = np.asarray(out == 300)
    assert 0.11 < hit.mean() < 0.19
    assert hit[:, :10].any(), "d1 masks padding positions too"
    assert not (lk.mask_prompt(prompt, pm, key, 0.15, 300, include_padding=False) == 300)[:, :10].any()
    assert (lk.mask_prompt(prompt, pm, key, 0.0, 300) == prompt).all()
    # a row's draw depends only on (key, row_id): a strided sub-batch reproduces the full batch rows
    rows = jnp.arange(1, 64, 4)
    sub = lk.mask_prompt(prompt[rows], pm[rows], key, 0.15, 300, row_ids=rows)
    np.testing.assert_array_equal(sub, out[rows])
    # different inner iterations give different masks
    other = lk.mask_prompt(prompt, pm, lk.inner_key(key, 1), 0.15, 300)
    assert (other != out).any()


def test_draw_tau_range_and_latent():
    nfe = jnp.array([1, 2, 5, 7] * 50, jnp.int32)
    tau = np.asarray(lk.draw_tau(jax.random.key(0), nfe))
    assert tau.dtype == np.int32 and (tau >= 0).all() and (tau < np.asarray(nfe)).all()
    for t_b in (2, 5, 7):
        assert set(tau[np.asarray(nfe) == t_b]) == set(range(t_b))  # every value reachable
    comp = jnp.array([[5, 6, 7]])
    steps = jnp.array([[2, 1, 3]])
    np.testing.assert_array_equal(lk.latent_at(comp, steps, jnp.array([0]), 9), [[9, 9, 9]])
    np.testing.assert_array_equal(lk.latent_at(comp, steps, jnp.array([2]), 9), [[5, 6, 9]])


def test_mf_logps_matches_direct(model, traj):
    key = jax.random.key(5)
    got = lk.mf_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], key, p_mask=0.3, chunk=3)
    p_tilde = lk.mask_prompt(traj["prompt"], traj["prompt_mask"], key, 0.3, 300)
    assert (p_tilde == 300).any()
    tokens = jnp.concatenate([p_tilde, jnp.full_like(traj["completion"], 300)], 1)
    np.testing.assert_allclose(got, full_logps(model, tokens, traj["completion"]), atol=1e-5)
    ref = lk.mf_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], key, p_mask=0.3, chunk=3,
                      lora=False)
    np.testing.assert_allclose(ref, full_logps(model, tokens, traj["completion"], lora=False), atol=1e-5)
    assert np.abs(np.asarray(ref - got)).max() > 1e-4


@pytest.mark.parametrize("stages", ["stage1", "both", "none"])
def test_two_stage_matches_two_direct_forwards(model, traj, stages):
    key = jax.random.key(9)
    tau = jnp.array([1, 2, 3, 5], jnp.int32)
    got = lk.two_stage_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], traj["unmask_step"],
                             traj["nfe"], key, p_mask=0.3, stages=stages, chunk=3, tau=tau)
    p_tilde = lk.mask_prompt(traj["prompt"], traj["prompt_mask"], key, 0.3, 300)
    p1 = traj["prompt"] if stages == "none" else p_tilde
    p2 = p_tilde if stages == "both" else traj["prompt"]
    z = lk.latent_at(traj["completion"], traj["unmask_step"], tau, 300)
    lp1 = full_logps(model, jnp.concatenate([p1, jnp.full_like(z, 300)], 1), traj["completion"])
    lp2 = full_logps(model, jnp.concatenate([p2, z], 1), traj["completion"])
    want = jnp.where(traj["unmask_step"] <= tau[:, None], lp1, lp2)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_two_stage_tau0_equals_mean_field(model, traj):
    key = jax.random.key(11)
    args = (traj["prompt"], traj["prompt_mask"], traj["completion"])
    tau0 = jnp.zeros((B,), jnp.int32)
    two = lambda stages, pm: lk.two_stage_logps(model, *args, traj["unmask_step"], traj["nfe"], key, p_mask=pm,
                                                stages=stages, chunk=4, tau=tau0)
    mf = lambda pm: lk.mf_logps(model, *args, key, p_mask=pm, chunk=4)
    np.testing.assert_allclose(two("both", 0.3), mf(0.3), atol=1e-5)  # d1 exactly (same p̃)
    np.testing.assert_allclose(two("none", 0.3), mf(0.0), atol=1e-5)
    np.testing.assert_allclose(two("stage1", 0.3), mf(0.0), atol=1e-5)  # τ=0: all tokens from [p, M…M]


def test_surrogate_dispatch_and_fixed_key(model, traj):
    key = jax.random.key(2)
    cfg = RLConfig(method="2mf", p_mask=0.15, logprob_chunk=4)
    a = lk.surrogate_logps("2mf_is", model, traj, key, cfg)
    b = lk.surrogate_logps("2mf", model, traj, key, cfg)
    np.testing.assert_array_equal(a, b)  # same key -> same p̃ and τ (θ, θ_old and ref agree on draws)
    c = lk.surrogate_logps("d1", model, traj, key, cfg)
    np.testing.assert_allclose(c, lk.mf_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], key,
                                              p_mask=0.15, chunk=4), atol=1e-6)
    with pytest.raises(ValueError, match="surrogate"):
        lk.surrogate_logps("bogus", model, traj, key, cfg)
    with pytest.raises(ValueError, match="prompt_mask_stages"):
        lk.two_stage_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], traj["unmask_step"],
                           traj["nfe"], key, p_mask=0.1, stages="stage2", chunk=4)


def test_rl_config_validation_names_field():
    with pytest.raises(ValueError, match="method"):
        RLConfig(method="grpo")
    with pytest.raises(ValueError, match="p_mask"):
        RLConfig(p_mask=1.5)
    with pytest.raises(ValueError, match="gamma_init"):
        RLConfig(gamma_init=2.0, gamma_max=1.0)
    cfg = RLConfig()
    assert (cfg.epsilon, cfg.beta, cfg.num_generations, cfg.lr, cfg.grad_clip, cfg.p_mask) == (0.5, 0.04, 6, 3e-6,
                                                                                                0.2, 0.15)
    assert RLConfig(method="2mf_is").uses_is and RLConfig(method="2mf_is").surrogate == "2mf"
    assert not RLConfig(method="d1").uses_is


def test_token_logprobs_memory_is_bounded_by_the_chunk():
    """Forward + backward never hold the full [B, L, V] fp32 logits (XLA's own buffer accounting)."""
    m = llada.LLaDA(llada.tiny(vocab_size=8192), rngs=nnx.Rngs(0))
    h, t = jnp.ones((2, 256, 64)), jnp.zeros((2, 256), jnp.int32)
    full_logits = 2 * 256 * 8192 * 4
    temp = lambda c: jax.jit(jax.grad(lambda hh: lk.token_logprobs(m, hh, t, c).sum())).lower(h).compile() \
        .memory_analysis().temp_size_in_bytes
    assert temp(8) < full_logits / 4


# ----------------------------------------------------------------------------- exact likelihood

SAMPLER_RULES = [dict(rule="fixed", steps=6), dict(rule="topk", k=3), dict(rule="threshold", threshold=0.004),
                 dict(rule="eb", gamma=8.0)]  # the tiny random model is flat: these reveal several tokens a step


def _rollout(model, rule_kw, temperature, block_length=6, gen_length=12):
    from diffpo_jax.sampling import SamplerConfig, make_sampler

    graphdef, state = nnx.split(model)
    cfg = SamplerConfig(gen_length=gen_length, block_length=block_length, **rule_kw)
    prompt = jax.random.randint(jax.random.key(5), (B, P), 0, 290)
    pmask = jnp.ones((B, P), bool)
    out = make_sampler(graphdef, cfg)(state, prompt, pmask, jax.random.key(11),
                                      temperature=jnp.full((B,), temperature, jnp.float32))
    return prompt, pmask, out


@pytest.mark.parametrize("rule_kw", SAMPLER_RULES, ids=lambda kw: kw["rule"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_exact_on_policy_equals_the_samplers_behaviour_logp(model, rule_kw, temperature):
    """The one test that proves sampler and likelihood share one definition: on-policy, the
    exact likelihood of every revealed token equals the log-prob the sampler recorded when it
    drew it (tempered at T > 0; untempered, i.e. scored at T = 1, for greedy decoding)."""
    prompt, pmask, out = _rollout(model, rule_kw, temperature)
    comp = out.tokens[:, P:]
    got = lk.exact_logps(model, prompt, pmask, comp, out.unmask_step, chunk=5,
                         temperature=jnp.full((B,), temperature))
    want = out.behaviour_logp_tempered if temperature > 0 else out.behaviour_logp
    assert int(out.unmask_step.min()) >= 1
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if rule_kw["rule"] != "fixed":  # some step revealed several tokens (fixed: 2 per step by construction)
        assert int(out.nfe.min()) < 12


def test_exact_matches_a_direct_loop_and_skips_empty_steps(model, traj):
    """Against one explicit forward per step t = 1..max (z_{t-1} = revealed before t), with a
    trajectory whose step numbers have gaps (steps that revealed nothing)."""
    steps = traj["unmask_step"] * 2  # steps 2, 4, 6, ...: the odd steps revealed nothing
    temp = jnp.array([1.0, 0.5, 0.0, 2.0])
    got = lk.exact_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], steps, chunk=3,
                         temperature=temp)
    want = jnp.zeros((B, L))
    t_div = jnp.where(temp > 0, temp, 1.0)[:, None, None]
    for t in range(1, int(steps.max()) + 1):
        z = jnp.where(steps < t, traj["completion"], model.cfg.mask_token_id)
        logits = model(jnp.concatenate([traj["prompt"], z], 1))[:, P:].astype(jnp.float32) / t_div
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), traj["completion"][..., None], -1)[..., 0]
        want = jnp.where(steps == t, lp, want)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_exact_gradient_matches_the_direct_loop(model, traj):
    """∇ of Σ exact log-probs w.r.t. the LoRA parameters equals the direct loop's (remat + cond)."""
    graphdef, lora_state, rest = nnx.split(model, nnx.LoRAParam, ...)

    def total(fn, st):
        m = nnx.merge(graphdef, st, rest)
        return fn(m).sum()

    exact = lambda m: lk.exact_logps(m, traj["prompt"], traj["prompt_mask"], traj["completion"],  # noqa: E731
                                     traj["unmask_step"], chunk=4)

    def direct(m):
        out = jnp.zeros((B, L))
        for t in range(1, int(traj["unmask_step"].max()) + 1):
            z = jnp.where(traj["unmask_step"] < t, traj["completion"], m.cfg.mask_token_id)
            lp = full_logps(m, jnp.concatenate([traj["prompt"], z], 1), traj["completion"])
            out = jnp.where(traj["unmask_step"] == t, lp, out)
        return out

    g1 = jax.grad(lambda st: total(exact, st))(lora_state)
    g2 = jax.grad(lambda st: total(direct, st))(lora_state)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_tempered_surrogates_and_dispatch(model, traj):
    """With batch['temperature'], every surrogate scores log softmax(f / T); under d1's
    convention (likelihood_temperature='none') the temperature is ignored."""
    key = jax.random.key(3)
    temp = jnp.array([0.5, 1.0, 0.0, 2.0])
    batch = dict(traj, temperature=temp)
    cfg = RLConfig(method="exact")
    got = lk.surrogate_logps("exact", model, batch, key, cfg)
    want = lk.exact_logps(model, traj["prompt"], traj["prompt_mask"], traj["completion"], traj["unmask_step"],
                          chunk=cfg.logprob_chunk, temperature=temp)
    np.testing.assert_allclose(got, want, atol=1e-6)
    mf_t = lk.surrogate_logps("d1", model, batch, key, cfg)
    mf_1 = lk.surrogate_logps("d1", model, traj, key, cfg)
    np.testing.assert_allclose(mf_t[1], mf_1[1], atol=1e-6)  # T = 1
    np.testing.assert_allclose(mf_t[2], mf_1[2], atol=1e-6)  # T = 0: greedy, scored at T = 1
    assert not np.allclose(mf_t[0], mf_1[0], atol=1e-3)
    d1_cfg = cfg.replace(likelihood_temperature="none")
    np.testing.assert_allclose(lk.surrogate_logps("2mf", model, batch, key, d1_cfg),
                               lk.surrogate_logps("2mf", model, traj, key, d1_cfg), atol=1e-6)
    assert RLConfig(method="exact").surrogate == "exact"
    with pytest.raises(ValueError, match="likelihood_temperature"):
        RLConfig(likelihood_temperature="tempered")


@pytest.mark.parametrize("method,p_mask", [("exact", 0.15), ("d1", 0.0), ("d1", 0.3), ("2mf", 0.0), ("2mf_is", 0.15)])
def test_uses_key_says_which_likelihoods_depend_on_the_key(model, traj, method, p_mask):
    """`uses_key` (train.update scores θ_old once when False) agrees with the likelihoods: two
    inner keys give identical log-probs exactly when it is False."""
    cfg = RLConfig(method=method, p_mask=p_mask)
    a, b = (lk.surrogate_logps(method, model, traj, jax.random.key(k), cfg) for k in (1, 2))
    assert lk.uses_key(cfg) == (not np.array_equal(np.asarray(a), np.asarray(b)))

"""rule='dream' (Dream's remasking rules) and the top-p / top-k proposal filters, on a tiny
random Dream-architecture model (its logit shift lives inside the model).

In CI: token-exact (T = 0) against tests/reference_generate.dream_generate (our own NumPy /
torch statement of the algorithm), the schedule against torch, statistics of the random
parts. Locally, also against Dream's *released* `diffusion_generate` (NVlabs/Fast-dLLM
`dream/model/generation_utils.py`, never shipped here): set
`DIFFPO_DREAM_REF=/path/to/Fast-dLLM/dream/model` and the `released` tests run.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from diffpo_jax.sampling import SamplerConfig, make_sampler, rules
from reference_generate import (CountingModel, dream_counts, dream_filter, dream_generate, llada_generate,
                                row_generate)
from test_dream_parity import CFG, load_released, make_model, rand_tokens, released

PROMPT_LEN = 6


def make_dream_test_model(seed: int = 0):
    """`test_dream_parity.make_model` with weights rescaled (as reference_generate.make_test_model)
    so the logits are peaked and position-dependent: score gaps between positions are ~1e-4
    (maskgit_plus, topk_margin) to ~1e-3 (entropy) at the least, far above the ~1e-6 by which
    fp32 JAX and torch differ, so rankings cannot flip and token-exact tests are meaningful."""
    model = make_model(CFG, seed)
    for name, scale in (("q_proj", 8), ("k_proj", 8), ("v_proj", 4), ("attn_out", 4), ("ff_proj", 4),
                        ("up_proj", 4), ("ff_out", 4)):
        model.blocks[name][...] = model.blocks[name][...] * scale
    model.lm_head[...] = model.lm_head[...] * 20
    return model


@pytest.fixture(scope="module")
def setup():
    model = make_dream_test_model(0)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))

    def logits_fn(x, pm=None):
        assert pm is None
        return np.asarray(fwd(state, jnp.asarray(x, jnp.int32)))

    prompts = rand_tokens(0, 3, PROMPT_LEN, vocab=300)  # no special ids, no padding
    return model, graphdef, state, logits_fn, prompts


@functools.lru_cache(maxsize=None)
def _sampler(graphdef, cfg):
    """One compiled sampler per config for the whole module (make_sampler compiles anew)."""
    return make_sampler(graphdef, cfg)


def _run(setup, cfg, prompts=None, **call):
    model, graphdef, state, _, default = setup
    return _sampler(graphdef, cfg)(state, default if prompts is None else prompts, **call)


def _check_same(out, ref, steps):
    np.testing.assert_array_equal(np.asarray(out.tokens), ref["tokens"])
    np.testing.assert_array_equal(np.asarray(out.unmask_step), ref["unmask_step"])
    np.testing.assert_allclose(np.asarray(out.behaviour_logp), ref["logp"], atol=2e-4)
    assert np.asarray(out.nfe).tolist() == [steps] * len(ref["nfe"]) and int(out.forwards) == steps


# ----------------------------------------------------------------------------- schedule


def test_timesteps_are_torch_linspace_bit_for_bit():
    for eps in (1e-3, 1e-2, 0.25):
        for steps in list(range(1, 130)) + [255, 256, 512, 1000]:
            want = torch.linspace(1, eps, steps + 1).numpy()
            np.testing.assert_array_equal(rules.dream_timesteps(steps, eps), want, err_msg=f"{steps=} {eps=}")


def test_reveal_counts_match_dream_arithmetic():
    """k_i = int(n_i (1 - s/t)) in float32 for every start count n, stepping n down as Dream does."""
    sched = jax.jit(rules.dream_schedule)
    for steps, eps in ((1, 1e-3), (2, 1e-3), (3, 1e-3), (5, 1e-3), (8, 1e-3), (16, 0.05), (64, 1e-3), (128, 1e-3)):
        frac = rules.dream_transfer_fraction(steps, eps)
        assert frac[-1] == 1.0
        n0 = np.arange(0, 257)
        n, got = n0.copy(), []
        for i in range(steps):
            k = np.asarray(sched(jnp.asarray(n), frac, jnp.full(n.shape, i)))
            got.append(k)
            n = n - k
        assert np.all(n == 0)
        got = np.stack(got, 1)
        for m in (0, 1, 7, 31, 32, 100, 127, 128, 200, 256):
            assert got[m].tolist() == dream_counts(m, steps, eps), (steps, m)


# ----------------------------------------------------------------------------- filters / proposals


@pytest.mark.parametrize("top_p,top_k", [(0.5, 0), (0.9, 0), (0.99, 0), (1.0, 3), (0.7, 5), (0.3, 1)])
def test_filter_keeps_what_dream_keeps(top_p, top_k):
    z = np.random.RandomState(0).randn(4, 7, 50).astype(np.float32) * 2
    got = np.isfinite(np.asarray(rules.filter_logits(jnp.asarray(z), top_p, top_k)))
    want = np.isfinite(dream_filter(z, top_p, top_k))
    np.testing.assert_array_equal(got, want)
    assert got.sum(-1).min() >= 1


def test_filtered_proposals_sample_the_filtered_softmax():
    logits = jnp.array([[[2.0, 1.5, 1.0, 0.0, -1.0]]])
    t, n = 0.8, 40000
    many = jnp.broadcast_to(logits, (1, n, 5))
    prop = rules.propose(many, jax.random.key(0), jnp.full(1, t), top_k=3)
    target = np.asarray(jax.nn.softmax(jnp.where(jnp.arange(5) < 3, logits[0, 0] / t, -jnp.inf)))
    freq = np.bincount(np.asarray(prop.tokens[0]), minlength=5) / n
    np.testing.assert_allclose(freq, target, atol=0.01)
    tok = np.asarray(prop.tokens[0])
    np.testing.assert_allclose(np.asarray(prop.logp_tempered[0]), np.log(target[tok]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(prop.probs[0, 0]), target, rtol=1e-5)
    plain = np.asarray(jax.nn.log_softmax(logits[0, 0]))  # logp / confidence stay the plain softmax's
    np.testing.assert_allclose(np.asarray(prop.logp[0]), plain[tok], rtol=1e-5)
    greedy = rules.propose(logits, jax.random.key(0), jnp.zeros(1), top_p=0.5, top_k=2)
    assert int(greedy.tokens[0, 0]) == 0 and float(greedy.logp_tempered[0, 0]) == 0.0


def test_filter_that_keeps_only_the_mask_still_proposes_a_token():
    logits = jnp.array([[[1.0, 6.0, 2.0, 0.5]]])  # id 1 (the mask, say) is the top-1
    for t in (0.0, 1.0):
        prop = rules.propose(logits, jax.random.key(1), jnp.full(1, t), never=1, top_k=1)
        assert int(prop.tokens[0, 0]) == 2 and np.isfinite(float(prop.logp_tempered[0, 0]))


def test_alg_temp_draws_positions_from_softmax_of_scores():
    """select_dream with alg_temp > 0: the first pick ~ softmax(score / alg_temp) over the
    eligible positions; exactly k picks, never an ineligible one."""
    n, alg_temp = 20000, 0.5
    score = jnp.broadcast_to(jnp.array([0.0, 1.0, 9.0, 0.5, -0.5]), (n, 5))
    elig = jnp.broadcast_to(jnp.array([True, True, False, True, True]), (n, 5))
    one = np.asarray(rules.select_dream(score, elig, jnp.ones(n, jnp.int32), jax.random.key(0), alg_temp))
    want = np.asarray(jax.nn.softmax(jnp.where(elig[0], score[0] / alg_temp, -jnp.inf)))
    np.testing.assert_allclose(one.mean(0), want, atol=0.01)
    two = np.asarray(rules.select_dream(score, elig, jnp.full(n, 2), jax.random.key(1), alg_temp))
    assert np.all(two.sum(-1) == 2) and not two[:, 2].any()
    top = np.asarray(rules.select_dream(score, elig, jnp.full(n, 2), jax.random.key(1), 0.0))
    assert np.all(top == np.array([False, True, False, True, False]))


# ----------------------------------------------------------------------------- sampler vs reference (CI)


@pytest.mark.parametrize("alg,gen,block,steps,extra", [
    ("maskgit_plus", 16, 16, 8, {}),
    ("topk_margin", 16, 16, 5, {}),
    ("entropy", 16, 16, 16, {}),
    ("entropy", 16, 8, 6, {}),  # two blocks, 3 steps each: the schedule restarts per block
    ("maskgit_plus", 16, 8, 4, {"top_p": 0.8, "top_k": 20}),  # at T = 0 the filters move the scores
    ("origin", 16, 8, 2, {}),  # one step per block: every mask at once
])
def test_dream_rule_matches_reference(setup, alg, gen, block, steps, extra):
    model, _, _, logits_fn, prompts = setup
    cfg = SamplerConfig(rule="dream", dream_alg=alg, gen_length=gen, block_length=block, steps=steps, **extra)
    out = _run(setup, cfg)
    ref_model = CountingModel(logits_fn, model.cfg.mask_token_id)
    ref = dream_generate(ref_model, prompts, gen, block, steps, alg, **extra)
    _check_same(out, ref, steps)
    assert ref_model.calls == steps
    if extra:  # the filters did change the outcome (else this case would test nothing)
        plain = dream_generate(CountingModel(logits_fn, model.cfg.mask_token_id), prompts, gen, block, steps, alg)
        assert not np.array_equal(plain["tokens"], ref["tokens"])


def test_origin_reveal_counts_are_binomial(setup):
    """'origin' at step i reveals each of the n masks left with p_i = 1 - s/t: over 48 rows
    the per-step counts have mean sum(n p) and variance sum(n p (1-p)); the last step
    reveals the rest; the revealed tokens are the argmax proposals (T = 0)."""
    model, _, _, logits_fn, _ = setup
    steps, gen = 4, 32
    prompts = rand_tokens(1, 48, 4, vocab=300)
    cfg = SamplerConfig(rule="dream", dream_alg="origin", gen_length=gen, block_length=gen, steps=steps)
    out = _run(setup, cfg, prompts, key=jax.random.key(5))
    us = np.asarray(out.unmask_step)
    assert np.all(np.asarray(out.nfe) == steps) and np.all((us >= 1) & (us <= steps))
    p = rules.dream_transfer_fraction(steps, cfg.eps).astype(np.float64)
    left = np.full(len(us), gen)
    for i in range(steps - 1):
        count = (us == i + 1).sum(-1)
        z = (count.sum() - (left * p[i]).sum()) / np.sqrt((left * p[i] * (1 - p[i])).sum())
        assert abs(z) < 4, (i, z)
        left = left - count
    assert np.array_equal((us == steps).sum(-1), left)
    again = _run(setup, cfg, prompts, key=jax.random.key(6))
    assert not np.array_equal(np.asarray(again.unmask_step), us)  # a different key, a different order
    toks = np.asarray(out.tokens)[:4]
    for t in range(steps):  # revealed tokens = argmax (not the mask) of the state they were revealed from
        z = toks.copy()
        z[:, 4:] = np.where(us[:4] <= t, toks[:, 4:], model.cfg.mask_token_id)
        lg = logits_fn(z)[:, 4:].copy()
        lg[..., model.cfg.mask_token_id] = -np.inf
        now = us[:4] == t + 1
        np.testing.assert_array_equal(lg.argmax(-1)[now], toks[:, 4:][now])


@pytest.mark.parametrize("alg,temperature,extra", [
    ("entropy", 0.7, {"top_p": 0.9, "top_k": 20, "alg_temp": 0.3}),
    ("topk_margin", 1.0, {}),
])
def test_behaviour_logp_from_full_forwards(setup, alg, temperature, extra):
    """NFE = steps; re-running the model on where(unmask_step <= t, tokens, MASK) gives the
    behaviour log-probs of the tokens revealed at step t + 1: log softmax(f) and
    log softmax(filter(f / T)) (the distribution sampled), inside the first unfinished block."""
    model, _, _, logits_fn, prompts = setup
    gen, block, steps = 16, 8, 8
    cfg = SamplerConfig(rule="dream", dream_alg=alg, gen_length=gen, block_length=block, steps=steps, **extra)
    out = _run(setup, cfg, key=jax.random.key(3), temperature=temperature)
    toks, us, mask_id = np.asarray(out.tokens), np.asarray(out.unmask_step), model.cfg.mask_token_id
    assert np.asarray(out.nfe).tolist() == [steps] * 3 and int(out.forwards) == steps
    assert np.all((us >= 1) & (us <= steps))
    p = PROMPT_LEN
    for t in range(steps):
        z = toks.copy()
        z[:, p:] = np.where(us <= t, toks[:, p:], mask_id)
        lg = logits_fn(z)[:, p:].astype(np.float64)
        lsm = lg - lg.max(-1, keepdims=True)
        lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
        filt = dream_filter(lg / temperature, cfg.top_p, cfg.top_k).astype(np.float64)
        lsm_t = filt - filt.max(-1, keepdims=True)
        lsm_t = lsm_t - np.log(np.exp(lsm_t).sum(-1, keepdims=True))
        for b in range(len(toks)):
            now = us[b] == t + 1
            if not now.any():
                continue
            first_masked = np.nonzero((z[b, p:] == mask_id).reshape(-1, block).any(-1))[0][0]
            assert set(np.nonzero(now)[0] // block) == {first_masked}
            tok = toks[b, p:][now]
            np.testing.assert_allclose(lsm[b, now, tok], np.asarray(out.behaviour_logp)[b, now], atol=2e-4)
            np.testing.assert_allclose(lsm_t[b, now, tok], np.asarray(out.behaviour_logp_tempered)[b, now],
                                       atol=2e-4)


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_kv_cache_runs_with_the_dream_rule(setup, kv_cache):
    """An approximate cache: NFE = steps, every position revealed, and block 0's first step
    (a full forward either way) reveals what the exact sampler reveals."""
    model, _, _, _, prompts = setup
    cfg = SamplerConfig(rule="dream", dream_alg="maskgit_plus", gen_length=16, block_length=8, steps=8)
    exact, cached = _run(setup, cfg), _run(setup, cfg.replace(kv_cache=kv_cache))
    assert np.asarray(cached.nfe).tolist() == [8] * 3 and int(cached.forwards) == 8
    assert not np.any(np.asarray(cached.tokens) == model.cfg.mask_token_id)
    first = np.asarray(exact.unmask_step) == 1
    np.testing.assert_array_equal(np.asarray(cached.unmask_step) == 1, first)
    np.testing.assert_array_equal(np.asarray(cached.tokens)[:, PROMPT_LEN:][first],
                                  np.asarray(exact.tokens)[:, PROMPT_LEN:][first])


# ----------------------------------------------------------------------------- other rules on Dream


@pytest.mark.parametrize("rule,kw", [
    ("fixed", {"steps": 8}),
    ("topk", {"k": 3}),
    ("threshold", {"threshold": [0.3, 0.6, 0.95]}),
    ("eb", {"gamma": [0.0, 0.5, 3.0]}),
])
def test_llada_rules_run_on_a_dream_model(setup, rule, kw):
    """The shift is the model's: the samplers decode a Dream model exactly as the references
    (which call the model's aligned logits) say; EB with a per-row gamma. The filters change
    nothing at T = 0 for these rules."""
    model, _, _, logits_fn, prompts = setup
    gen, block = 16, 8
    static = {k: v for k, v in kw.items() if k in ("k", "steps")}
    cfg = SamplerConfig(rule=rule, gen_length=gen, block_length=block, **static)
    call = dict(gamma=kw.get("gamma"), threshold=kw.get("threshold"))
    out = _run(setup, cfg, **call)
    ref_model = CountingModel(logits_fn, model.cfg.mask_token_id)
    if rule == "fixed":
        ref = llada_generate(ref_model, prompts, gen, block, kw["steps"])
    else:
        ref = row_generate(ref_model, prompts, gen, block, rule, k=kw.get("k", 2),
                           threshold=np.asarray(kw.get("threshold", 0.9), np.float32),
                           gamma=np.asarray(kw.get("gamma", 0.1), np.float32))
    np.testing.assert_array_equal(np.asarray(out.tokens), ref["tokens"])
    np.testing.assert_array_equal(np.asarray(out.unmask_step), ref["unmask_step"])
    np.testing.assert_array_equal(np.asarray(out.nfe), ref["nfe"])
    np.testing.assert_allclose(np.asarray(out.behaviour_logp), ref["logp"], atol=2e-4)
    if rule == "eb":
        assert len(set(np.asarray(out.nfe).tolist())) > 1  # the per-row gammas did differ
        filtered = _run(setup, cfg.replace(top_p=0.5, top_k=3), **call)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(filtered)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- config / CLI


@pytest.mark.parametrize("kw,field", [
    ({"rule": "dream", "dream_alg": "low_confidence"}, "dream_alg"),
    ({"rule": "dream", "eps": 0.0}, "eps"),
    ({"rule": "dream", "alg_temp": -1.0}, "alg_temp"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"rule": "dream", "gen_length": 32, "block_length": 8, "steps": 10}, "steps=10"),
    ({"rule": "dream", "remasking": "random"}, "remasking"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**kw)


def test_config_steps_and_passthrough():
    cfg = SamplerConfig(rule="dream", gen_length=32, block_length=8, steps=12)
    assert (cfg.max_steps, cfg.max_steps_per_block) == (12, 3)
    assert SamplerConfig(rule="dream", gen_length=32, block_length=32).max_steps == 16  # None = L // 2
    from diffpo_jax import experiment

    section = ml_collections.ConfigDict(dict(rule="dream", dream_alg="topk_margin", eps=0.01, alg_temp=0.5,
                                             top_p=0.95, top_k=40, gen_length=32, block_length=32, steps=32))
    got = experiment.sampler_config(section, CFG)
    assert (got.rule, got.dream_alg, got.eps, got.alg_temp, got.top_p, got.top_k) == (
        "dream", "topk_margin", 0.01, 0.5, 0.95, 40)


def test_rl_warns_that_filters_change_the_sampled_distribution():
    from diffpo_jax import experiment
    from diffpo_jax.rl import RLConfig

    (w,) = experiment.behaviour_logp_warnings(RLConfig(method="2mf_is"), SamplerConfig(rule="eb", top_p=0.9))
    assert w.startswith("config.sampler.top_p=0.9") and "filtered" in w
    assert len(experiment.behaviour_logp_warnings(RLConfig(method="exact"), SamplerConfig(top_k=5))) == 1
    assert experiment.behaviour_logp_warnings(RLConfig(method="2mf_is"), SamplerConfig(rule="dream")) == []


def test_cli_flags(capsys):
    from diffpo_jax import sample

    args = sample.build_parser().parse_args(
        ["--model_dir", "/", "--prompt", "x", "--rule", "dream", "--dream_alg", "maskgit_plus", "--eps", "0.01",
         "--alg_temp", "0.2", "--top_p", "0.9", "--top_k", "7", "--gen_length", "64", "--block_length", "64",
         "--steps", "64"])
    cfg = sample.sampler_config(args)
    assert (cfg.rule, cfg.dream_alg, cfg.eps, cfg.alg_temp, cfg.top_p, cfg.top_k, cfg.steps) == (
        "dream", "maskgit_plus", 0.01, 0.2, 0.9, 7, 64)
    assert sample.sampler_config(sample.build_parser().parse_args(["--model_dir", "/", "--prompt", "x"])) == \
        SamplerConfig(gen_length=128, block_length=32)  # defaults: the filters and Dream's fields stay off
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    text = capsys.readouterr().out
    for word in ("--dream_alg", "--alg_temp", "--top_p", "--top_k", "--eps", "maskgit_plus", "topk_margin"):
        assert word in text


# ----------------------------------------------------------------------------- Dream's released code


def released_generate(ref, prompts, gen, steps, alg, **extra):
    """Dream's own diffusion_generate (T = 0) on `prompts [B, P]`; [B, P + gen] int."""
    from dream_ref.generation_utils import DreamGenerationConfig

    # written for transformers 4.x; 5.x calls validate(user_set_attributes=...) from update()
    DreamGenerationConfig.validate = lambda self, *a, **k: None
    ids = CFG.mask_token_id, CFG.pad_token_id, CFG.eos_token_id
    gc = DreamGenerationConfig(max_new_tokens=gen, steps=steps, alg=alg, temperature=0.0, mask_token_id=ids[0],
                               pad_token_id=ids[1], eos_token_id=ids[2], bos_token_id=ids[2], **extra)
    out = ref.diffusion_generate(torch.from_numpy(np.asarray(prompts, np.int64)), generation_config=gc)
    return out.numpy()


@released
@pytest.mark.parametrize("alg,gen,steps,extra", [
    ("maskgit_plus", 16, 8, {}),
    ("maskgit_plus", 32, 32, {}),
    ("topk_margin", 16, 5, {}),
    ("topk_margin", 24, 24, {"top_k": 5}),
    ("entropy", 16, 8, {}),
    ("entropy", 40, 13, {}),
    ("entropy", 24, 6, {"top_p": 0.8}),
    ("maskgit_plus", 24, 6, {"top_p": 0.9, "top_k": 30}),
    ("origin", 16, 1, {}),
])
def test_matches_released_diffusion_generate(setup, alg, gen, steps, extra):
    model, _, _, _, prompts = setup
    want = released_generate(load_released(model), prompts, gen, steps, alg, **extra)
    assert not np.any(want == model.cfg.mask_token_id)  # Dream proposed no mask id (we never do)
    cfg = SamplerConfig(rule="dream", dream_alg=alg, gen_length=gen, block_length=gen, steps=steps, **extra)
    out = _run(setup, cfg)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    assert np.asarray(out.nfe).tolist() == [steps] * len(prompts)

"""Samplers on a tiny model: token-exact parity with the NumPy reference loops (T = 0),
NFE = model calls, unmask_step reconstructs every intermediate state, no recompiles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffpo_jax.sampling import SamplerConfig, generate, left_pad, make_sampler
from reference_generate import CountingModel, llada_generate, make_test_model, row_generate

PROMPTS = [[11, 42, 7, 99, 250], [3, 180, 64], [77, 5, 123, 201]]  # different lengths, left-padded


@pytest.fixture(scope="module")
def setup():
    model = make_test_model(0)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x, pm: nnx.merge(graphdef, st)(x, pm))

    def logits_fn(x, pm=None):
        return np.asarray(fwd(state, jnp.asarray(x, jnp.int32), None if pm is None else jnp.asarray(pm)))

    tokens, mask = left_pad(PROMPTS, model.cfg.pad_token_id)
    return model, graphdef, state, logits_fn, tokens, mask


def _check_same(out, ref):
    p = out.tokens.shape[1] - out.unmask_step.shape[1]
    np.testing.assert_array_equal(np.asarray(out.tokens), ref["tokens"])
    np.testing.assert_array_equal(np.asarray(out.unmask_step), ref["unmask_step"])
    np.testing.assert_array_equal(np.asarray(out.nfe), ref["nfe"])
    np.testing.assert_allclose(np.asarray(out.behaviour_logp), ref["logp"], atol=2e-4)
    assert int(out.forwards) == int(np.max(ref["nfe"]))
    assert out.tokens.shape[1] == p + out.unmask_step.shape[1]


@pytest.mark.parametrize("gen,block,steps,extra", [
    (16, 8, 8, {}),
    (16, 4, 8, {}),
    (12, 12, 5, {}),  # 12 masks over 5 steps: 3,3,2,2,2
    (8, 4, 12, {}),  # more steps than masks: 1,1,1,1,0,0 per block, NFE still = steps
    (16, 8, 8, {"cfg_scale": 0.5}),
    (16, 8, 8, {"logits_eos_inf": True}),
    (16, 8, 8, {"use_padding_mask": True}),
])
def test_fixed_rule_matches_llada_reference(setup, gen, block, steps, extra):
    model, graphdef, state, logits_fn, tokens, mask = setup
    cfg = SamplerConfig(rule="fixed", gen_length=gen, block_length=block, steps=steps, **extra)
    out = make_sampler(graphdef, cfg)(state, tokens, mask)
    ref_model = CountingModel(logits_fn, model.cfg.mask_token_id, cfg.cfg_scale,
                              model.cfg.eos_token_id if cfg.logits_eos_inf else None)
    ref = llada_generate(ref_model, tokens, gen, block, steps, mask if cfg.use_padding_mask else None)
    _check_same(out, ref)
    assert ref_model.calls == steps  # LLaDA: one batched call per step
    assert out.cfg_guided == (cfg.cfg_scale > 0)
    if cfg.logits_eos_inf:
        assert not np.any(np.asarray(out.tokens)[:, -gen:] == model.cfg.eos_token_id)


@pytest.mark.parametrize("rule,gen,block,kw", [
    ("topk", 16, 8, {"k": 3}),
    ("threshold", 16, 8, {"threshold": [0.3, 0.6, 0.95]}),
    ("eb", 16, 8, {"gamma": [0.0, 0.5, 3.0]}),
    ("eb", 16, 16, {"gamma": [1e6, 1.0, 0.2]}),
])
def test_adaptive_rules_match_row_reference(setup, rule, gen, block, kw):
    """NFE per row = the reference's model calls for that row (one call per step)."""
    model, graphdef, state, logits_fn, tokens, mask = setup
    static = {"k": kw["k"]} if "k" in kw else {}
    sampler = make_sampler(graphdef, SamplerConfig(rule=rule, gen_length=gen, block_length=block, **static))
    out = sampler(state, tokens, mask, gamma=kw.get("gamma"), threshold=kw.get("threshold"))
    ref_model = CountingModel(logits_fn, model.cfg.mask_token_id)
    ref = row_generate(ref_model, tokens, gen, block, rule, k=kw.get("k", 2),
                       threshold=np.asarray(kw.get("threshold", 0.9), np.float32),
                       gamma=np.asarray(kw.get("gamma", 0.1), np.float32))
    _check_same(out, ref)
    assert ref_model.calls == int(np.sum(ref["nfe"]))
    if rule == "eb" and block == gen:
        assert int(out.nfe[0]) == 1  # huge gamma: the whole block in one step
    if rule == "eb" and block < gen:
        assert int(out.nfe[0]) == gen  # gamma = 0: one token per step (no zero-entropy ties here)


@pytest.mark.parametrize("rule,temperature,kw", [
    ("eb", 0.8, {"gamma": jnp.array([0.1, 0.7, 2.0])}),
    ("fixed", 0.0, {"remasking": "random", "steps": 8}),
])
def test_unmask_step_reconstructs_states(setup, rule, temperature, kw):
    """Re-running the model on where(unmask_step <= t, tokens, MASK) gives the proposals
    and behaviour log-probs of step t + 1, and the tokens revealed at t + 1 all lie in
    the first block that still has masks."""
    model, graphdef, state, logits_fn, tokens, mask = setup
    gen, block = 16, 8
    static = {k: v for k, v in kw.items() if k != "gamma"}
    cfg = SamplerConfig(rule=rule, gen_length=gen, block_length=block, **static)
    out = make_sampler(graphdef, cfg)(state, tokens, mask, key=jax.random.key(3), gamma=kw.get("gamma"),
                                      temperature=temperature)
    toks, us = np.asarray(out.tokens), np.asarray(out.unmask_step)
    nfe, p, mask_id = np.asarray(out.nfe), tokens.shape[1], model.cfg.mask_token_id
    assert np.all(us >= 1) and np.all(us.max(-1) <= nfe)
    states, rows, ts = [], [], []
    for b in range(len(toks)):
        for t in range(nfe[b]):
            z = toks[b].copy()
            z[p:] = np.where(us[b] <= t, toks[b, p:], mask_id)
            states.append(z), rows.append(b), ts.append(t)
    logits = logits_fn(np.stack(states))[:, p:].astype(np.float64)
    lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    for n, (b, t) in enumerate(zip(rows, ts)):
        now = us[b] == t + 1
        if rule != "fixed":
            assert now.any(), (b, t)
        if not now.any():
            continue
        masked_blocks = np.nonzero((states[n][p:] == mask_id).reshape(-1, block).any(-1))[0]
        assert set(np.nonzero(now)[0] // block) == {masked_blocks[0]}
        got = lsm[n, now, toks[b, p:][now]]
        np.testing.assert_allclose(got, np.asarray(out.behaviour_logp)[b, now], atol=2e-4)
        if temperature > 0:
            scaled = logits[n] / temperature
            lsm_t = scaled - scaled.max(-1, keepdims=True)
            lsm_t -= np.log(np.exp(lsm_t).sum(-1, keepdims=True))
            np.testing.assert_allclose(lsm_t[now, toks[b, p:][now]],
                                       np.asarray(out.behaviour_logp_tempered)[b, now], atol=2e-4)
        else:
            assert np.all(logits[n, now].argmax(-1) == toks[b, p:][now])
    assert int(out.forwards) == int(nfe.max())


def test_array_inputs_do_not_recompile(setup):
    model, graphdef, state, _, tokens, mask = setup
    sampler = make_sampler(graphdef, SamplerConfig(rule="eb", gen_length=8, block_length=4))
    outs = [sampler(state, tokens, mask, gamma=g, temperature=t, key=jax.random.key(s))
            for g, t, s in [(0.1, 0.0, 0), ([0.0, 1.0, 5.0], 0.0, 0), (0.3, 0.9, 1), (2.0, [0.2, 0.5, 1.0], 2)]]
    outs.append(sampler(state, tokens, mask, threshold=0.5))
    other = jax.tree.map(lambda a: a * 1.01, state)  # different weights, same structure
    outs.append(sampler(other, tokens, mask, gamma=0.1))
    assert sampler.trace_count == 1
    assert not np.array_equal(np.asarray(outs[0].nfe), np.asarray(outs[1].nfe))
    sampler(state, tokens[:2], mask[:2])  # a new batch size is a new shape: one more compile
    assert sampler.trace_count == 2


def test_padding_mask_makes_rows_independent_of_padding(setup):
    """With use_padding_mask a left-padded row decodes exactly as the prompt alone."""
    model, *_ = setup
    cfg = SamplerConfig(rule="eb", gen_length=8, block_length=4, use_padding_mask=True)
    batched = generate(model, PROMPTS, cfg, gamma=0.5)
    alone = generate(model, [PROMPTS[1]], cfg, gamma=0.5)
    np.testing.assert_array_equal(np.asarray(batched.tokens)[1, -8:], np.asarray(alone.tokens)[0, -8:])
    np.testing.assert_array_equal(np.asarray(batched.unmask_step)[1], np.asarray(alone.unmask_step)[0])


def test_completion_mask_and_input_errors(setup):
    model, graphdef, state, _, tokens, mask = setup
    out = generate(model, PROMPTS, rule="fixed", gen_length=8, block_length=8, steps=4)
    comp = np.asarray(out.tokens)[:, -8:]
    for row, cm, n in zip(comp, np.asarray(out.completion_mask), np.asarray(out.completion_length)):
        eos = np.nonzero(row == model.cfg.eos_token_id)[0]
        cut = eos[0] + 1 if len(eos) else 8
        assert cm.tolist() == [True] * cut + [False] * (8 - cut) and n == cut
    sampler = make_sampler(graphdef, SamplerConfig(rule="eb", gen_length=8, block_length=4))
    with pytest.raises(ValueError, match="mask id"):
        sampler(state, np.full((1, 3), model.cfg.mask_token_id), None)
    with pytest.raises(ValueError, match="gamma must be a scalar or shape"):
        sampler(state, tokens, mask, gamma=[0.1, 0.2])
    with pytest.raises(ValueError, match="max_sequence_length"):
        make_sampler(graphdef, SamplerConfig(rule="eb", gen_length=512, block_length=32))(state, tokens, mask)


@pytest.mark.parametrize("rule", ["fixed", "topk", "threshold", "eb"])
def test_a_model_that_predicts_the_mask_token_still_fills_every_block(rule):
    """The mask id is never proposed: with a model that ranks M first everywhere, every
    position is revealed exactly once, with a real token, and no block stalls."""
    from diffpo_jax.models import llada
    cfg = llada.tiny()
    model = llada.LLaDA(cfg, rngs=nnx.Rngs(0))
    model.lm_head[...] = model.lm_head[...].at[:, cfg.mask_token_id].add(50.0)
    out = generate(model, [[1, 2, 3, 4]] * 2, SamplerConfig(rule=rule, gen_length=16, block_length=8),
                   temperature=0.9)
    comp, steps = np.asarray(out.tokens)[:, 4:], np.asarray(out.unmask_step)
    assert not np.any(comp == cfg.mask_token_id)
    assert steps.min() >= 1 and np.all(steps.max(-1) == np.asarray(out.nfe))
    assert np.all(np.asarray(out.nfe) <= 16) and np.all(np.isfinite(np.asarray(out.behaviour_logp)))

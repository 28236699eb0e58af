"""Likelihoods and the RL train step on the Dream family (the logit shift lives in the model).

The sampler, the exact likelihood and the surrogates read the same model outputs, so on a
Dream-architecture model the exact likelihood must equal the sampler's recorded behaviour
log-probs (as on LLaDA), the MF/2-MF surrogates must score token j from output position
P + j (= Dream's raw position P + j - 1, checked against the PyTorch reference), and the
joint LoRA + head step must run sharded exactly as on one device.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import dream, llada
from diffpo_jax.models.threshold_head import Policy, ThresholdHead
from diffpo_jax.rl import RLConfig, likelihood as lk
from diffpo_jax.rl.train_step import init_train_state, make_train_step
from diffpo_jax.sampling import SamplerConfig, make_sampler
from torch_dream import torch_from_flax

B, P, L = 4, 5, 12


@pytest.fixture(scope="module")
def model():
    m = llada.LLaDA(dream.tiny(lora_rank=4), rngs=nnx.Rngs(0))
    m.lm_head[...] = m.lm_head[...] * 10.0  # peaked distributions, so rules reveal unevenly
    for i, name in enumerate(m.lora_b):
        m.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.key(7 + i), m.lora_b[name].shape)
    for i, name in enumerate(("q_bias", "k_bias", "v_bias")):
        m.blocks[name][...] = 0.1 * jax.random.normal(jax.random.key(20 + i), m.blocks[name].shape)
    return m


def _rollout(model, rule_kw, temperature):
    graphdef, state = nnx.split(model)
    cfg = SamplerConfig(gen_length=L, block_length=6, **rule_kw)
    prompt = jax.random.randint(jax.random.key(5), (B, P), 0, 290)
    out = make_sampler(graphdef, cfg)(state, prompt, jnp.ones((B, P), bool), jax.random.key(11),
                                      temperature=jnp.full((B,), temperature, jnp.float32))
    return prompt, out


@pytest.mark.parametrize("rule_kw,temperature", [(dict(rule="fixed", steps=6), 0.0), (dict(rule="eb", gamma=2.0), 0.8),
                                                 (dict(rule="threshold", threshold=0.3), 0.0)])
def test_exact_on_policy_equals_behaviour_logp_on_dream(model, rule_kw, temperature):
    prompt, out = _rollout(model, rule_kw, temperature)
    got = lk.exact_logps(model, prompt, jnp.ones((B, P), bool), out.tokens[:, P:], out.unmask_step, chunk=7,
                         temperature=jnp.full((B,), temperature))
    want = out.behaviour_logp_tempered if temperature > 0 else out.behaviour_logp
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_mean_field_scores_token_j_from_dreams_previous_position(model):
    """d1's mean-field log-prob of completion token j (prompt unmasked: p_mask = 0) is Dream's raw
    log-softmax at position P + j - 1 of [p, M...M], from the PyTorch reference (merged LoRA)."""
    prompt = jax.random.randint(jax.random.key(1), (B, P), 0, 290)
    comp = jax.random.randint(jax.random.key(2), (B, L), 0, 290)
    cfg = RLConfig(method="d1", p_mask=0.0, logprob_chunk=5)
    batch = dict(prompt=prompt, prompt_mask=jnp.ones((B, P), bool), completion=comp,
                 unmask_step=jnp.ones((B, L), jnp.int32), nfe=jnp.ones((B,), jnp.int32))
    got = np.asarray(lk.surrogate_logps("d1", model, batch, jax.random.key(0), cfg))
    x = np.concatenate([np.asarray(prompt), np.full((B, L), model.cfg.mask_token_id)], 1)
    with torch.no_grad():
        raw = torch_from_flax(model, merge_lora=True)(torch.from_numpy(x.astype(np.int64)), shifted=False)
    lsm = torch.log_softmax(raw.double(), -1).numpy()[:, P - 1:P + L - 1]
    want = np.take_along_axis(lsm, np.asarray(comp)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_joint_train_step_sharded_equals_single_device(model):
    cfg = RLConfig(method="2mf_is", joint_sampler=True, num_generations=4, lr=1e-3, beta=0.04, logprob_chunk=8,
                   gamma_max=4.0, gamma_init=1.0, head_hidden=16)
    k = jax.random.split(jax.random.key(3), 5)
    batch = dict(prompt=jax.random.randint(k[0], (8, P), 0, 290), prompt_mask=jnp.ones((8, P), bool),
                 completion=jax.random.randint(k[1], (8, L), 0, 290), completion_mask=jnp.ones((8, L), bool),
                 unmask_step=(jnp.arange(L)[None, :] // 3 + 1).repeat(8, 0).astype(jnp.int32),
                 behaviour_logp=-5.0 + 0.3 * jax.random.normal(k[2], (8, L)), nfe=jnp.full((8,), 4, jnp.int32),
                 rewards=jax.random.normal(k[3], (8,)), gamma_raw=1.0 + 0.2 * jax.random.normal(k[4], (8,)))

    def policy():
        m = llada.LLaDA(model.cfg, rngs=nnx.Rngs(0))
        nnx.update(m, nnx.state(model))
        return Policy(m, ThresholdHead(model.cfg.d_model, gamma_max=4.0, gamma_init=1.0, hidden=16, rngs=nnx.Rngs(1)))

    outs = []
    for mesh in (None, shd.make_mesh(2, 2, 2)):
        st = init_train_state(policy(), cfg, mesh)
        step = make_train_step(st.graphdef, cfg, st.tx, mesh, trainable=st.trainable, frozen=st.frozen)
        b = batch if mesh is None else jax.device_put(batch, shd.batch_sharding(mesh, 1))
        with shd.use_mesh(mesh):
            outs.append(step(st.trainable, st.opt_state, st.frozen, b, jax.random.key(9))[2])
    assert int(outs[0]["skipped"]) == 0 and float(outs[0]["grad_norm_lora"]) > 0
    for key in outs[0]:
        np.testing.assert_allclose(outs[1][key], outs[0][key], rtol=1e-4, atol=1e-5, err_msg=key)

"""Compile counters: array inputs (sampler γ / τ / temperature, train-step batches and keys) never
retrace or recompile; only a new shape does."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada
from diffpo_jax.models.threshold_head import Policy
from diffpo_jax.rl import RLConfig
from diffpo_jax.rl.train_step import init_train_state, make_score_fn, make_train_step
from diffpo_jax.sampling import SamplerConfig, make_sampler

B, P, L, G = 8, 4, 8, 4


def test_sampler_traces_once_for_new_gamma_threshold_temperature_arrays():
    model = llada.LLaDA(llada.tiny(), rngs=nnx.Rngs(0))
    model.lm_head[...] = model.lm_head[...] * 40.0  # sharp logits: γ / τ change how many tokens a step reveals
    graphdef, state = nnx.split(model)
    prompt = np.random.default_rng(0).integers(0, 290, (3, P)).astype(np.int32)
    mask = np.ones_like(prompt, bool)
    for rule in ("eb", "threshold"):
        sampler = make_sampler(graphdef, SamplerConfig(rule=rule, gen_length=8, block_length=4))
        nfes = set()
        for i, (g, th, t) in enumerate([([0.0, 0.5, 5.0], [0.1, 0.5, 0.99], [0.0, 0.0, 0.0]),
                                        ([1.0, 1.0, 0.2], [0.9, 0.2, 0.6], [0.7, 0.0, 1.3]),
                                        ([3.0, 0.1, 0.0], [0.3, 0.3, 0.3], [1.0, 1.0, 1.0])]):
            out = sampler(state, prompt, mask, jax.random.key(i), gamma=np.float32(g), threshold=np.float32(th),
                          temperature=np.float32(t))
            nfes.add(tuple(np.asarray(out.nfe)))
        assert sampler.trace_count == 1, rule
        assert sampler.jitted._cache_size() == 1, rule
        assert len(nfes) > 1, rule  # the arrays really changed the decode


def _batch(seed):
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((B, L)), axis=1)
    return dict(prompt=rng.integers(0, 290, (B, P)).astype(np.int32), prompt_mask=np.ones((B, P), bool),
                completion=rng.integers(0, 290, (B, L)).astype(np.int32),
                completion_mask=np.arange(L)[None, :] < rng.integers(3, L + 1, B)[:, None],
                unmask_step=(order // 2 + 1).astype(np.int32),
                behaviour_logp=(-5.0 + 0.5 * rng.normal(size=(B, L))).astype(np.float32),
                nfe=np.full((B,), L // 2, np.int32), rewards=rng.normal(size=B).astype(np.float32))


def test_train_step_compiles_once_for_new_batches_and_keys():
    llm = llada.LLaDA(llada.tiny(lora_rank=4), rngs=nnx.Rngs(0))
    policy = Policy(llm, None)
    cfg = RLConfig(method="2mf_is", num_generations=G, beta=0.0, logprob_chunk=4)  # small graph: fast compile
    mesh = shd.make_mesh(data=2, fsdp=-1, tp=1)
    ts = init_train_state(policy, cfg, mesh)
    step = make_train_step(ts.graphdef, cfg, ts.tx, mesh, trainable=ts.trainable, frozen=ts.frozen)
    score = make_score_fn(ts.graphdef, cfg, mesh)
    trainable, opt_state = ts.trainable, ts.opt_state
    losses = []
    for i in range(3):
        batch = {k: jnp.asarray(v) for k, v in _batch(i).items()}
        key = jax.random.fold_in(jax.random.key(7), i)
        batch.update(score(trainable, ts.frozen, batch, key))  # θ_old, as the trainer does
        trainable, opt_state, metrics = step(trainable, opt_state, ts.frozen, batch, key)
        losses.append(float(metrics["loss"]))
        assert int(metrics["skipped"]) == 0
    assert step.jitted._cache_size() == 1
    assert len(set(losses)) == 3  # different batches really went through

"""The sampler sharded on a (data=2, fsdp=2, tp=2) mesh equals the single-device run."""
import jax
import numpy as np
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.sampling import SamplerConfig, left_pad, make_sampler
from reference_generate import make_test_model

PROMPTS = [[11, 42, 7, 99, 250], [3, 180, 64], [77, 5, 123, 201], [9, 8]]


def test_sharded_sampler_matches_single_device():
    mesh = shd.make_mesh(data=2, fsdp=2, tp=2)
    model = shd.create_sharded(lambda: make_test_model(0), mesh)
    graphdef, state = nnx.split(model)
    tokens, mask = left_pad(PROMPTS, model.cfg.pad_token_id)
    cfg = SamplerConfig(rule="eb", gen_length=16, block_length=8)
    gamma, key = np.array([0.1, 0.5, 1.0, 3.0], np.float32), jax.random.key(7)

    sharded = make_sampler(graphdef, cfg, mesh)(state, tokens, mask, key, gamma=gamma, temperature=0.7)
    assert sharded.tokens.sharding.spec[0] == ("data", "fsdp")
    host_state = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), state)
    single = make_sampler(graphdef, cfg)(host_state, tokens, mask, key, gamma=gamma, temperature=0.7)

    for name in ("tokens", "unmask_step", "nfe", "completion_mask", "completion_length"):
        np.testing.assert_array_equal(np.asarray(getattr(sharded, name)), np.asarray(getattr(single, name)), name)
    np.testing.assert_allclose(np.asarray(sharded.behaviour_logp), np.asarray(single.behaviour_logp), atol=1e-4)
    np.testing.assert_allclose(np.asarray(sharded.behaviour_logp_tempered),
                               np.asarray(single.behaviour_logp_tempered), atol=1e-4)

"""Hand-checked selection rules on synthetic numbers (no model), config validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffpo_jax.sampling import SamplerConfig, completion_mask, left_pad
from diffpo_jax.sampling import rules


def _sel(mask):
    return [np.nonzero(r)[0].tolist() for r in np.asarray(mask)]


def test_fixed_schedule_splits_evenly_remainder_first():
    m = jnp.array([10, 2, 8])
    ks = np.stack([np.asarray(rules.fixed_schedule(m, 4, jnp.int32(s))) for s in range(4)], 1)
    assert ks.tolist() == [[3, 3, 2, 2], [1, 1, 0, 0], [2, 2, 2, 2]]


def test_topk_ties_go_to_lower_index_and_skip_ineligible():
    conf = jnp.array([[0.5, 0.9, 0.5, 0.95, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    elig = jnp.array([[1, 1, 1, 0, 1], [0, 1, 1, 1, 1]], bool)
    assert _sel(rules.select_topk(conf, elig, jnp.array([2, 3]))) == [[0, 1], [1, 2, 3]]
    # k larger than the eligible count takes them all, nothing else
    assert _sel(rules.select_topk(conf, elig, jnp.array([9, 9]))) == [[0, 1, 2, 4], [1, 2, 3, 4]]


def test_threshold_top1_plus_all_at_or_above_tau():
    conf = jnp.array([[0.3, 0.95, 0.9, 0.89],   # 0.9 == tau is kept
                      [0.4, 0.5, 0.5, 0.1],     # none >= tau: top-1 only, tie -> lower index
                      [0.99, 0.98, 0.2, 0.1],   # best two ineligible
                      [0.99, 0.99, 0.99, 0.99]])  # no eligible at all: nothing
    elig = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    got = rules.select_threshold(conf, elig, jnp.array([0.9, 0.9, 0.9, 0.0]))
    assert _sel(got) == [[1, 2], [1], [2], []]
    per_row = rules.select_threshold(conf[:1].repeat(2, 0), elig[:1].repeat(2, 0), jnp.array([0.0, 1.0]))
    assert _sel(per_row) == [[0, 1, 2, 3], [1]]


def test_eb_prefix_rule():
    # sorted entropies 0.125, 0.25, 0.375, 0.5 (positions 1, 3, 2, 0):
    # cumsum - cummax = 0, 0.125, 0.375, 0.75
    h = jnp.array([[0.5, 0.125, 0.375, 0.25]] * 5)
    elig = jnp.ones((5, 4), bool)
    got = rules.select_eb(h, elig, jnp.array([0.0, 0.125, 0.4, 0.75, 1e9]))
    assert _sel(got) == [[1], [1, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]


def test_eb_edge_cases():
    h = jnp.array([[0.0, 0.0, 0.5, 2.0],     # zero-entropy ties join at gamma=0 (sum of all but max = 0)
                   [0.3, 0.3, 0.3, 0.3],     # equal entropies: lower index first
                   [5.0, 0.1, 9.0, 7.0],     # only position 0 and 3 eligible, gamma 0: one of them
                   [1.0, 1.0, 1.0, 1.0]])    # nothing eligible: nothing
    elig = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]], bool)
    got = rules.select_eb(h, elig, jnp.array([0.0, 0.3, 0.0, 1e9]))
    assert _sel(got) == [[0, 1, 2], [0, 1], [0], []]


def test_propose_never_picks_the_excluded_id_but_scores_the_full_softmax():
    logits = jnp.array([[[1.0, 5.0, 2.0], [0.0, 9.0, -1.0]]])  # id 1 (say the mask id) is every argmax
    full = jax.nn.log_softmax(logits, -1)
    for t in (0.0, 1.0):
        prop = rules.propose(jnp.broadcast_to(logits, (1, 2, 3)), jax.random.key(2), jnp.full(1, t), never=1)
        assert 1 not in np.asarray(prop.tokens).ravel().tolist()
        tok = np.asarray(prop.tokens[0])
        np.testing.assert_allclose(np.asarray(prop.logp[0]), np.asarray(full[0])[np.arange(2), tok], rtol=1e-6)


def test_propose_greedy_and_gumbel_frequencies():
    logits = jnp.array([[[2.0, 1.0, 0.0, -jnp.inf]]])  # a -inf logit (logits_eos_inf) stays finite
    p = jax.nn.softmax(logits[0, 0])
    prop = rules.propose(logits, jax.random.key(0), jnp.zeros(1))
    assert int(prop.tokens[0, 0]) == 0 and float(prop.logp_tempered[0, 0]) == 0.0
    np.testing.assert_allclose(float(prop.confidence[0, 0]), float(p[0]), rtol=1e-6)
    ent = -float(jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0)))
    np.testing.assert_allclose(float(prop.entropy[0, 0]), ent, rtol=1e-5)
    # T = 0.7: x0 ~ softmax(logits / T); confidence / logp stay untempered
    n, t = 40000, 0.7
    many = jnp.broadcast_to(logits, (1, n, 4))
    prop = rules.propose(many, jax.random.key(1), jnp.full(1, t))
    freq = np.bincount(np.asarray(prop.tokens[0]), minlength=4) / n
    target = np.asarray(jax.nn.softmax(logits[0, 0] / t))
    np.testing.assert_allclose(freq, target, atol=0.01)
    tok = np.asarray(prop.tokens[0])
    with np.errstate(divide="ignore"):
        logp, logp_t = np.log(np.asarray(p)), np.log(target)
    np.testing.assert_allclose(np.asarray(prop.logp[0]), logp[tok], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(prop.logp_tempered[0]), logp_t[tok], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(prop.entropy)))


def test_gumbel_noise_reaches_the_far_tail():
    # fp32 Gumbels from a 23-bit uniform stop at ≈ 15.94, so a token > 16 logits below the leader
    # could never be sampled; propose draws mode="high" noise (as LLaDA draws float64 noise).
    key, shape = jax.random.key(3), (1, 64, 512)
    prop = rules.propose(jnp.zeros(shape), key, jnp.ones(1))
    high = jax.random.gumbel(key, shape, jnp.float32, mode="high")
    np.testing.assert_array_equal(np.asarray(prop.tokens), np.asarray(jnp.argmax(high, -1)))
    low = jax.random.gumbel(jax.random.key(0), (2_000_000,), jnp.float32)
    assert float(low.max()) < 15.95  # the cut-off that mode="high" avoids


def test_completion_mask_and_left_pad():
    comp = jnp.array([[5, 9, 7, 9], [1, 2, 3, 4], [9, 9, 1, 1]])
    assert np.asarray(completion_mask(comp, 9)).astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    toks, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert toks.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="more than length"):
        left_pad([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []], 0)


@pytest.mark.parametrize("kw,field", [
    ({"gen_length": 30, "block_length": 8}, "block_length"),
    ({"steps": 10, "gen_length": 32, "block_length": 8}, "steps=10"),
    ({"gen_length": 24, "block_length": 8}, "steps=None"),   # 12 steps over 3 blocks is fine...
    ({"rule": "beam"}, "rule"),
    ({"rule": "eb", "gamma": -1}, "gamma"),
    ({"rule": "threshold", "threshold": 1.5}, "threshold"),
    ({"rule": "eb", "remasking": "random"}, "remasking"),
    ({"temperature": -0.1}, "temperature"),
    ({"rule": "topk", "k": 0}, "k=0"),
])
def test_config_errors_name_the_field(kw, field):
    if field == "steps=None":  # ...but 13 steps over 3 blocks is not
        SamplerConfig(**kw)
        kw, field = {"gen_length": 26, "block_length": 13}, "steps=None"
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**kw)


def test_steps_is_validated_only_for_the_fixed_rule():
    """Rules other than 'fixed' ignore `steps`, so it need not be a multiple of n_blocks there."""
    for rule in ("topk", "threshold", "eb"):
        cfg = SamplerConfig(rule=rule, gen_length=24, block_length=8, steps=5)
        assert cfg.max_steps == SamplerConfig(rule=rule, gen_length=24, block_length=8).max_steps  # ignored
    with pytest.raises(ValueError, match=r"steps=5 must be a positive multiple of the number of blocks .*=3"):
        SamplerConfig(rule="fixed", gen_length=24, block_length=8, steps=5)
    for rule in ("fixed", "topk", "threshold", "eb"):  # a non-positive value is refused whatever the rule
        with pytest.raises(ValueError, match=r"steps=0 must be positive"):
            SamplerConfig(rule=rule, gen_length=24, block_length=8, steps=0)
    assert SamplerConfig(rule="fixed", gen_length=24, block_length=8, steps=6).max_steps == 6


def test_config_static_step_bounds():
    assert SamplerConfig(gen_length=256, block_length=32).max_steps == 128  # d1: steps = L / 2
    assert SamplerConfig(rule="topk", k=3, gen_length=64, block_length=32).max_steps == 2 * 11
    assert SamplerConfig(rule="eb", gen_length=64, block_length=32).max_steps == 64


class _FixedLogits:
    """A stand-in model whose logits depend only on (row, position): row 0 is certain
    everywhere (logit 20 on token i % 5), row 1 unsure with confidence rising with i."""

    class cfg:
        mask_token_id, eos_token_id, pad_token_id = 7, 6, 6

    def __call__(self, tokens, padding_mask=None, lora=True):
        b, n = tokens.shape
        pos = jnp.arange(n)
        onehot = jax.nn.one_hot(pos % 5, 8)
        height = jnp.stack([jnp.full((n,), 20.0), 1.0 + 0.1 * pos])[:b]  # [B, T]
        return onehot[None] * height[:, :, None]


def test_rows_finish_blocks_independently_and_idle_rows_are_free():
    from diffpo_jax.sampling import decode

    cfg = SamplerConfig(rule="threshold", gen_length=8, block_length=4)
    prompt = jnp.array([[1, 2], [3, 4]], jnp.int32)
    ones = jnp.ones((2,), jnp.float32)
    out = decode(_FixedLogits(), cfg, prompt, jnp.ones((2, 2), bool), jax.random.key(0), ones * 0.1, ones * 0.9,
                 ones * 0.0)
    # row 0: each block in one step, then idle (NFE stays 2); row 1: top-1 per step, highest position first
    assert np.asarray(out.nfe).tolist() == [2, 8] and int(out.forwards) == 8
    assert np.asarray(out.unmask_step).tolist() == [[1, 1, 1, 1, 2, 2, 2, 2], [4, 3, 2, 1, 8, 7, 6, 5]]
    assert np.asarray(out.tokens)[:, 2:].tolist() == [[2, 3, 4, 0, 1, 2, 3, 4]] * 2  # token = absolute pos % 5
    fixed = decode(_FixedLogits(), cfg.replace(rule="fixed", steps=4), prompt, jnp.ones((2, 2), bool),
                   jax.random.key(0), ones, ones, ones * 0.0)
    assert np.asarray(fixed.nfe).tolist() == [4, 4]  # fixed rule: NFE = steps for every row
    assert np.asarray(fixed.unmask_step)[1].tolist() == [2, 2, 1, 1, 4, 4, 3, 3]

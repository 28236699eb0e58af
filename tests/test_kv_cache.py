"""Prefix / dual KV cache of the sampler (SamplerConfig.kv_cache) and the model methods behind it.

What is exact and what is not:
  * `Transformer.hidden_with_cache` with a cache of the *same* tokens equals `hidden()` on its window.
  * The first forward of every block is a full forward (= the uncached logits of that state).
  * With ONE layer the cache is exact: layer-0 keys/values of position i depend only on
    (token_i, i), and cached positions keep their tokens within a block, so cached and
    uncached samplers agree. With more layers the cached keys/values are stale (they were
    computed before the block's newly revealed tokens existed): an approximation, checked
    here step by step against its definition, never against the uncached sampler.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada
from diffpo_jax.sampling import SamplerConfig, decode, left_pad, make_sampler
from reference_generate import make_test_model

PROMPTS = [[11, 42, 7, 99, 250], [3, 180, 64], [77, 5, 123, 201], [9, 8]]
GEN, BLOCK = 12, 4


@pytest.fixture(scope="module")
def two_layer():
    model = make_test_model(0)
    tokens, mask = left_pad(PROMPTS, model.cfg.pad_token_id)
    return model, tokens, mask


@functools.lru_cache(maxsize=None)
def _lora_model(n_layers):
    """GQA (4 query heads, 2 kv heads) with a non-zero LoRA adapter."""
    model = make_test_model(1, n_layers=n_layers, n_kv_heads=2, lora_rank=4)
    for i, name in enumerate(model.lora_b):
        shape = model.lora_b[name][...].shape
        model.lora_b[name][...] = 0.3 * jax.random.normal(jax.random.key(i), shape)
    return model


_SAMPLERS = {}


def _sampler(model, cfg):
    """One compiled sampler per (model, config), shared by the tests."""
    key = (id(model), cfg)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = make_sampler(nnx.graphdef(model), cfg)
    return _SAMPLERS[key]


_JIT = {}


def _fns(model, lora):
    """Jitted model methods for the replays (cached per model and lora flag)."""
    key = (id(model), lora)
    if key not in _JIT:
        g, state = nnx.split(model)
        _JIT[key] = (state, jax.jit(lambda s, z, pm: nnx.merge(g, s).hidden(z, pm, lora=lora)),
                     jax.jit(lambda s, z, pm: nnx.merge(g, s).hidden_and_kv(z, pm, lora=lora)[1:]),
                     jax.jit(lambda s, z, i, k, v, pm, w: nnx.merge(g, s).hidden_with_cache(z, i, w, k, v, pm, lora=lora),
                             static_argnums=6),
                     jax.jit(lambda s, h: nnx.merge(g, s).logits_from_hidden(h).astype(jnp.float32)))
    return _JIT[key]


def _replay(model, cfg, tokens, mask, out):
    """Recompute every step of a rollout from the model methods (one row at a time).

    'exact': a full forward of the state before the step (what the uncached sampler uses).
    'cached' (cfg.kv_cache != 'none'): the cache's definition: a block's first step is a
    full forward, later steps `hidden_with_cache` of the window ('prefix': block..end,
    'dual': the block) against the keys/values of the block's starting state.
    Returns {kind: (log-prob of each revealed token [B, L], argmax at those positions [B, L])}."""
    state, full, kv, win, head = _fns(model, cfg.lora)
    p, lb, mask_id = tokens.shape[1], cfg.block_length, model.cfg.mask_token_id
    toks, us = np.asarray(out.tokens), np.asarray(out.unmask_step)
    kinds = ("exact", "cached") if cfg.uses_cache else ("exact",)
    res = {kind: (np.zeros(us.shape), np.zeros(us.shape, np.int64)) for kind in kinds}
    n_rows = 2 if cfg.uses_cfg else 1

    def rows(z):  # [x] or the CFG pair [x, x with the prompt masked]
        return np.stack([z, np.where(np.arange(len(z)) < p, mask_id, z)][:n_rows])

    def record(kind, h, b, lo, hi, now):
        lg = np.asarray(head(state, h), np.float64)
        lg = lg[1] + (cfg.cfg_scale + 1) * (lg[0] - lg[1]) if cfg.uses_cfg else lg[0]
        lsm = lg - lg.max(-1, keepdims=True)
        lsm -= np.log(np.exp(lsm).sum(-1, keepdims=True))
        res[kind][0][b, lo - p:hi - p][now] = lsm[now, toks[b, lo:hi][now]]
        res[kind][1][b, lo - p:hi - p][now] = lsm.argmax(-1)[now]

    for b in range(len(toks)):
        pm = None
        if cfg.use_padding_mask:
            pm = np.repeat(np.concatenate([mask[b], np.ones(cfg.gen_length, bool)])[None], n_rows, axis=0)
        for j in range(cfg.n_blocks):
            lo, hi = p + j * lb, p + (j + 1) * lb
            steps = np.unique(us[b, lo - p:hi - p])
            assert np.array_equal(steps, np.arange(steps[0], steps[-1] + 1))  # consecutive steps
            for t in steps:
                now = us[b, lo - p:hi - p] == t
                z = toks[b].copy()
                z[p:] = np.where(us[b] < t, toks[b, p:], mask_id)
                h = full(state, rows(z), pm)[:, lo:hi]
                record("exact", h, b, lo, hi, now)
                if not cfg.uses_cache:
                    continue
                if t == steps[0]:
                    k, v = kv(state, rows(z), pm)
                else:
                    end = p + cfg.gen_length if cfg.kv_cache == "prefix" else hi
                    h = win(state, rows(z), lo, k, v, pm, end - lo)[:, :lb]
                record("cached", h, b, lo, hi, now)
    return res


def _check_replay(out, tokens, replay, atol=1e-4):
    logp, argmax = replay
    np.testing.assert_allclose(np.asarray(out.behaviour_logp), logp, atol=atol)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, tokens.shape[1]:], argmax)


def test_config_validation_and_default():
    assert SamplerConfig().kv_cache == "none" and not SamplerConfig().uses_cache
    with pytest.raises(ValueError, match=r"kv_cache='full': choose one of \('none', 'prefix', 'dual'\)"):
        SamplerConfig(kv_cache="full")


def test_hidden_with_cache_is_exact_for_a_fresh_cache(two_layer):
    """A window forward against the keys/values of the same tokens = hidden() (2 layers)."""
    model = two_layer[0]
    state, full, kv, win, _ = _fns(model, True)
    toks = jax.random.randint(jax.random.key(2), (2, 24), 0, 300)
    pm = jnp.arange(24)[None, :] >= jnp.array([0, 5])[:, None]
    h_ref = full(state, toks, pm)
    k, v = kv(state, toks, pm)
    assert k.shape == v.shape == (2, 2, 24, model.cfg.n_kv_heads, model.cfg.head_dim)
    for start, width in [(0, 24), (8, 8), (16, 8)]:
        hw = win(state, toks, start, k, v, pm, width)
        np.testing.assert_allclose(hw, h_ref[:, start:start + width], atol=1e-4)
    stale = win(state, toks, 8, k.at[:, :, :8].set(0.0), v, pm, 8)
    assert np.abs(stale - h_ref[:, 8:16]).max() > 1e-3  # the cache really is read


@pytest.mark.parametrize("kv,extra", [
    ("prefix", {}),
    ("dual", {"lora": False, "cfg_scale": 0.5, "use_padding_mask": True}),
])
def test_one_layer_cache_is_exact(kv, extra):
    """One layer: cached keys/values of unchanged tokens are exact, so every cached step's
    logits equal the uncached full forward of the same state (GQA, LoRA on/off, CFG, padding)."""
    model = _lora_model(1)
    graphdef, state = nnx.split(model)
    tokens, mask = left_pad(PROMPTS, model.cfg.pad_token_id)
    cfg = SamplerConfig(rule="eb", gen_length=GEN, block_length=BLOCK, kv_cache=kv, **extra)
    out = make_sampler(graphdef, cfg)(state, tokens, mask, gamma=np.array([0.0, 0.3, 1.0, 5.0], np.float32))
    _check_replay(out, tokens, _replay(model, cfg.replace(kv_cache="none"), tokens, mask, out)["exact"])


@pytest.mark.parametrize("kv,rule,kw", [
    ("prefix", "eb", {"gamma": np.array([0.0, 0.3, 1.0, 5.0], np.float32)}),
    ("dual", "threshold", {"threshold": np.array([0.5, 0.7, 0.9, 1.0], np.float32)}),
])
def test_cached_steps_follow_their_definition(two_layer, kv, rule, kw):
    """Two layers (approximate cache): every step's behaviour log-probs / tokens are the ones
    the definition gives; they equal the exact (uncached) ones at each block's first step
    only."""
    model, tokens, mask = two_layer
    cfg = SamplerConfig(rule=rule, gen_length=GEN, block_length=BLOCK, kv_cache=kv)
    out = _sampler(model, cfg)(nnx.state(model), tokens, mask, **kw)
    replay = _replay(model, cfg, tokens, mask, out)
    _check_replay(out, tokens, replay["cached"])
    us = np.asarray(out.unmask_step)
    first = us == np.repeat(us.reshape(len(us), -1, BLOCK).min(-1), BLOCK, axis=1)  # block's first step
    err = np.abs(np.asarray(out.behaviour_logp) - replay["exact"][0])
    assert err[first].max() < 1e-4 and err[~first].max() > 1e-3


class _Counting:
    """Stand-in for LLaDA that logs every model call made at run time (not at trace time)."""

    def __init__(self, model, log):
        self.model, self.cfg, self.log = model, model.cfg, log

    def _note(self, kind):
        jax.debug.callback(lambda: self.log.append(kind))

    def hidden(self, *a, **k):
        self._note("full")
        return self.model.hidden(*a, **k)

    def hidden_and_kv(self, *a, **k):
        self._note("full+kv")
        return self.model.hidden_and_kv(*a, **k)

    def hidden_with_cache(self, *a, **k):
        self._note("window")
        return self.model.hidden_with_cache(*a, **k)

    def logits_from_hidden(self, h):
        return self.model.logits_from_hidden(h)


def test_nfe_counts_model_calls_and_rows_move_in_lockstep(two_layer):
    """NFE = model calls at run time, full or window; n_blocks full ones; lockstep blocks."""
    model, tokens, mask = two_layer
    cfg = SamplerConfig(rule="eb", gen_length=GEN, block_length=BLOCK, kv_cache="prefix")
    graphdef, state = nnx.split(model)
    gamma = jnp.array([0.0, 0.5, 2.0, 1e6], jnp.float32)
    log = []
    run = jax.jit(lambda st: decode(_Counting(nnx.merge(graphdef, st), log), cfg, jnp.asarray(tokens),
                                    jnp.asarray(mask), jax.random.key(0), gamma, gamma, jnp.zeros(4)))
    out = jax.block_until_ready(run(state))
    jax.effects_barrier()
    nfe, us = np.asarray(out.nfe), np.asarray(out.unmask_step)
    assert len(log) == int(out.forwards) == int(nfe.max())
    np.testing.assert_array_equal(nfe, us.max(-1))  # every eb step reveals a token
    assert log.count("full+kv") == cfg.n_blocks and log.count("window") == len(log) - cfg.n_blocks
    assert "full" not in log
    # lockstep: per block the batch runs max_b (steps of row b in that block) forwards
    steps = [[len(np.unique(us[b, j * BLOCK:(j + 1) * BLOCK])) for b in range(len(us))] for j in range(cfg.n_blocks)]
    assert int(out.forwards) == sum(max(s) for s in steps) > int(nfe.min())
    assert int(nfe[3]) == cfg.n_blocks  # gamma = 1e6: one (full) forward per block


def test_no_recompile_across_gamma_and_temperature(two_layer):
    model, tokens, mask = two_layer
    state = nnx.state(model)
    sampler = _sampler(model, SamplerConfig(rule="eb", gen_length=GEN, block_length=BLOCK, kv_cache="prefix"))
    outs = [sampler(state, tokens, mask, gamma=g, temperature=t, key=jax.random.key(s))
            for g, t, s in [(0.1, 0.0, 0), ([0.0, 1.0, 5.0, 1e6], 0.0, 0), (0.3, 0.9, 1)]]
    assert sampler.trace_count == 1
    assert not np.array_equal(np.asarray(outs[0].nfe), np.asarray(outs[1].nfe))


def test_sharded_cached_sampler_matches_single_device(two_layer):
    model, tokens, mask = two_layer
    mesh = shd.make_mesh(data=2, fsdp=2, tp=2)
    sharded_model = shd.create_sharded(lambda: make_test_model(0), mesh)  # the same weights, sharded
    cfg = SamplerConfig(rule="threshold", gen_length=GEN, block_length=BLOCK, kv_cache="dual")
    threshold, key = np.array([0.5, 0.7, 0.9, 1.0], np.float32), jax.random.key(7)
    sharded = make_sampler(nnx.graphdef(sharded_model), cfg, mesh)(nnx.state(sharded_model), tokens, mask, key,
                                                                   threshold=threshold, temperature=0.7)
    assert sharded.tokens.sharding.spec[0] == ("data", "fsdp")
    single = _sampler(model, cfg)(nnx.state(model), tokens, mask, key, threshold=threshold, temperature=0.7)
    for name in ("tokens", "unmask_step", "nfe"):
        np.testing.assert_array_equal(np.asarray(getattr(sharded, name)), np.asarray(getattr(single, name)), name)
    np.testing.assert_allclose(np.asarray(sharded.behaviour_logp), np.asarray(single.behaviour_logp), atol=1e-4)


def test_model_without_cache_methods_is_refused():
    class LogitsOnly:
        cfg = llada.tiny()

        def __call__(self, x, padding_mask=None, lora=True):
            return jnp.zeros(x.shape + (320,))

    with pytest.raises(ValueError, match="kv_cache='dual' needs a model with hidden_and_kv"):
        decode(LogitsOnly(), SamplerConfig(rule="eb", gen_length=8, block_length=4, kv_cache="dual"),
               jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), bool), jax.random.key(0), jnp.zeros(1), jnp.zeros(1),
               jnp.zeros(1))


class _CountingBlocks(_Counting):
    """_Counting that also logs where each window forward starts."""

    def hidden_with_cache(self, tokens, start, *a, **k):
        jax.debug.callback(lambda s: self.log.append(("window", int(s))), start)
        return self.model.hidden_with_cache(tokens, start, *a, **k)


@pytest.mark.parametrize("steps", [3, 6, 12, 18])  # 1, 2, 4 (= block_length), 6 (> block_length) per block
@pytest.mark.parametrize("kv", ["none", "prefix", "dual"])
def test_fixed_rule_runs_exactly_steps_forwards_with_or_without_a_cache(two_layer, kv, steps):
    """rule='fixed' calls the model `steps` times (LLaDA), cached or not: every row's NFE = steps,
    each block takes exactly steps / n_blocks forwards (the first a full one with a cache, the
    rest windows inside that block), and no forward runs after the last block ends."""
    model, tokens, mask = two_layer
    cfg = SamplerConfig(rule="fixed", gen_length=GEN, block_length=BLOCK, steps=steps, kv_cache=kv)
    per_block, p = steps // cfg.n_blocks, tokens.shape[1]
    graphdef, state = nnx.split(model)
    log = []
    run = jax.jit(lambda st: decode(_CountingBlocks(nnx.merge(graphdef, st), log), cfg, jnp.asarray(tokens),
                                    jnp.asarray(mask), jax.random.key(0), jnp.zeros(4), jnp.zeros(4), jnp.zeros(4)))
    out = jax.block_until_ready(run(state))
    jax.effects_barrier()
    assert int(out.forwards) == len(log) == steps == cfg.max_steps
    np.testing.assert_array_equal(np.asarray(out.nfe), steps)
    us = np.asarray(out.unmask_step).reshape(len(tokens), cfg.n_blocks, BLOCK)
    for j in range(cfg.n_blocks):  # block j's tokens are revealed during its own steps only
        assert us[:, j].min() > j * per_block and us[:, j].max() <= (j + 1) * per_block
    if per_block <= BLOCK:  # every step reveals >= 1 token: block j uses all of its steps
        for b in range(len(tokens)):
            for j in range(cfg.n_blocks):
                assert set(us[b, j]) == set(range(j * per_block + 1, (j + 1) * per_block + 1))
    if kv == "none":
        assert log == ["full"] * steps
        return
    starts = [i for i, e in enumerate(log) if e == "full+kv"]
    assert starts == [j * per_block for j in range(cfg.n_blocks)]  # one full forward opens each block
    for j, s in enumerate(starts):
        windows = log[s + 1:s + per_block]
        assert [w[0] for w in windows] == ["window"] * (per_block - 1)
        want = p + j * BLOCK  # prefix: block..end and dual: the block both start at block j
        assert all(w[1] == want for w in windows), (j, windows)


@pytest.mark.parametrize("kv", ["prefix", "dual"])
def test_fixed_rule_with_an_exact_one_layer_cache_decodes_like_no_cache(kv):
    """One layer (the cache is exact): rule='fixed' with a cache reveals the same tokens at the
    same steps as without one, with the same NFE and forwards (= steps)."""
    model = _lora_model(1)
    graphdef, state = nnx.split(model)
    tokens, mask = left_pad(PROMPTS, model.cfg.pad_token_id)
    cfg = SamplerConfig(rule="fixed", gen_length=GEN, block_length=BLOCK, steps=9)
    ref = make_sampler(graphdef, cfg)(state, tokens, mask)
    out = make_sampler(graphdef, cfg.replace(kv_cache=kv))(state, tokens, mask)
    for name in ("tokens", "unmask_step", "nfe", "forwards"):
        np.testing.assert_array_equal(np.asarray(getattr(out, name)), np.asarray(getattr(ref, name)), name)
    assert int(out.forwards) == 9 and (np.asarray(out.nfe) == 9).all()

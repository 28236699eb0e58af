"""The jitted RL train step: policy-gradient identity, micro-batching, sharding, frozen base,
NaN guard, joint head, and a real learning run on a tiny LLaDA (fixed seed)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada
from diffpo_jax.models.threshold_head import Policy, ThresholdHead
from diffpo_jax.rl import RLConfig, likelihood as lk
from diffpo_jax.rl.train_step import init_train_state, make_grad_fn, make_score_fn, make_train_step, validate_batch

B, P, L, G, MASK = 8, 4, 8, 4, 300


def make_policy(seed=0, head=True):
    llm = llada.LLaDA(llada.tiny(lora_rank=4), rngs=nnx.Rngs(seed))
    for i, name in enumerate(llm.lora_b):  # non-zero adapter: θ ≠ ref, gradients reach lora_a too
        llm.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.key(100 + i), llm.lora_b[name].shape)
    h = ThresholdHead(64, gamma_max=1.0, gamma_init=0.3, hidden=16, rngs=nnx.Rngs(seed + 1)) if head else None
    return Policy(llm, h)


def make_batch(seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    order = jax.vmap(lambda kk: jax.random.permutation(kk, L))(jax.random.split(k[0], B))
    steps = (order // 2 + 1).astype(jnp.int32)
    completion_mask = jnp.arange(L)[None, :] < jnp.array([8, 8, 5, 8, 3, 8, 8, 6])[:, None]
    gamma_raw = 0.3 + 0.1 * jax.random.normal(k[4], (B,))
    return dict(prompt=jax.random.randint(k[1], (B, P), 0, 290), prompt_mask=jnp.ones((B, P), bool),
                completion=jax.random.randint(k[2], (B, L), 0, 290), completion_mask=completion_mask,
                unmask_step=steps, behaviour_logp=-5.5 + 0.5 * jax.random.normal(k[3], (B, L)),
                nfe=jnp.full((B,), L // 2, jnp.int32), rewards=gamma_raw + 0.1 * jax.random.normal(k[5], (B,)),
                gamma_raw=gamma_raw)


def tree_close(a, b, atol=1e-6, rtol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def first_adam_steps_close(tr, tr0, opt0, atol):
    """Parameters after one Adam step (≈ θ − lr·g/(|g| + eps)) agree where the full-batch
    gradient is well above Adam's eps = 1e-8 (|mu| = 0.1·|g| > 1e-7). Where g is ~1e-7 a 1e-8
    difference in g (summation order: micro-batches, shards, CPU vector width) moves
    g/(|g| + eps) by several %, so there only the Adam moments are compared (tree_close(opt...))."""
    mu = optax.tree_utils.tree_get(opt0, "mu")
    leaves = [jax.tree.leaves(t) for t in (tr, tr0, mu)]
    assert len({len(x) for x in leaves}) == 1
    kept = []
    for x, y, m in zip(*leaves):
        keep = np.abs(np.asarray(m)) > 1e-7
        kept.append(keep.mean())
        np.testing.assert_allclose(np.asarray(x)[keep], np.asarray(y)[keep], atol=atol)
    assert np.mean(kept) > 0.5


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


def full_logps(llm, tokens, targets):
    logits = llm(tokens)[:, -targets.shape[1]:].astype(jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]


def test_on_policy_gradient_equals_policy_gradient():
    """θ = θ_old: ∇loss = −Σ w A ∇log q / N with q computed here directly (w = 1 for d1)."""
    batch = make_batch(1)
    key = jax.random.key(3)
    for method in ("d1", "2mf_is"):
        cfg = RLConfig(method=method, beta=0.0, num_generations=G, p_mask=0.3, clamp_c=1.5, logprob_chunk=3)
        graphdef, tr, fr = nnx.split(make_policy(head=False), nnx.LoRAParam, ...)
        loss, grads, _ = jax.jit(make_grad_fn(graphdef, cfg))(tr, fr, batch, key)

        def pg_loss(t):
            llm = nnx.merge(graphdef, t, fr).llm
            p_t = lk.mask_prompt(batch["prompt"], batch["prompt_mask"], key, 0.3, MASK)
            lp = full_logps(llm, jnp.concatenate([p_t, jnp.full_like(batch["completion"], MASK)], 1),
                            batch["completion"])
            if method == "2mf_is":
                tau = lk.draw_tau(key, batch["nfe"])
                z = lk.latent_at(batch["completion"], batch["unmask_step"], tau, MASK)
                lp2 = full_logps(llm, jnp.concatenate([batch["prompt"], z], 1), batch["completion"])
                lp = jnp.where(batch["unmask_step"] <= tau[:, None], lp, lp2)
            w = jnp.minimum(1.5, jnp.exp(jax.lax.stop_gradient(lp) - batch["behaviour_logp"]))
            if method == "d1":
                w = jnp.ones_like(w)
            r = batch["rewards"].reshape(-1, G)
            adv = (r - r.mean(1, keepdims=True)).reshape(-1)
            m = batch["completion_mask"]
            return -(w * adv[:, None] * lp * m).sum() / m.sum()

        want = jax.jit(jax.grad(pg_loss))(tr)
        tree_close(grads, want, atol=1e-7, rtol=1e-4)
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-5


JOINT = RLConfig(method="2mf_is", joint_sampler=True, num_generations=G, beta=0.04, epsilon=0.2, lr=1e-2,
                 grad_clip=1.0, loss_agg="sequence", ratio_unit="step", nfe_lambda=0.0, logprob_chunk=3)


@pytest.fixture(scope="module")
def joint_run():
    """One joint step on a single device, with θ_old ≠ θ (old log-probs from a perturbed adapter)."""
    pol = make_policy()
    st = init_train_state(pol, JOINT)
    batch = make_batch(2)
    rng = lk.inner_key(jax.random.key(4), 1)
    old_tr = jax.tree.map(lambda x: x * 1.2, st.trainable)
    batch.update(make_score_fn(st.graphdef, JOINT)(old_tr, st.frozen, batch, rng))
    step = make_train_step(st.graphdef, JOINT, st.tx)
    out = step(copy(st.trainable), copy(st.opt_state), st.frozen, batch, rng)
    return dict(pol=pol, st=st, batch=batch, rng=rng, step=step, out=out)


def test_micro_batched_step_equals_full_batch(joint_run):
    st, batch, rng = joint_run["st"], joint_run["batch"], joint_run["rng"]
    cfg = JOINT.replace(micro_batches=4)
    tr, opt, metrics = make_train_step(st.graphdef, cfg, st.tx)(copy(st.trainable), copy(st.opt_state), st.frozen,
                                                                batch, rng)
    tr0, opt0, metrics0 = joint_run["out"]
    tree_close(opt, opt0, atol=5e-8, rtol=1e-4)  # Adam moments after one step = (clipped) gradients
    first_adam_steps_close(tr, tr0, opt0, atol=JOINT.lr * 0.01)
    for k in metrics0:
        np.testing.assert_allclose(metrics[k], metrics0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert float(metrics0["clip_frac"]) > 0 and float(metrics0["kl"]) > 0 and int(metrics0["skipped"]) == 0
    np.testing.assert_allclose(np.hypot(metrics0["grad_norm_lora"], metrics0["grad_norm_head"]),
                               metrics0["grad_norm"], rtol=1e-5)


def test_sharded_step_equals_single_device(joint_run):
    mesh = shd.make_mesh(2, 2, 2)
    st = init_train_state(make_policy(), JOINT, mesh)
    step = make_train_step(st.graphdef, JOINT, st.tx, mesh, trainable=st.trainable, frozen=st.frozen)
    batch = jax.device_put(joint_run["batch"], shd.batch_sharding(mesh, 1))
    tr, opt, metrics = step(st.trainable, st.opt_state, st.frozen, batch, joint_run["rng"])
    tr0, opt0, metrics0 = joint_run["out"]
    tree_close(opt, opt0, atol=1e-7, rtol=1e-3)  # Adam moments after one step = (clipped) gradients
    first_adam_steps_close(tr, tr0, opt0, atol=JOINT.lr * 0.01)
    for k in metrics0:
        np.testing.assert_allclose(metrics[k], metrics0[k], rtol=1e-4, atol=1e-5, err_msg=k)
    lora_a = tr["llm"]["lora_a"]["q_proj"][...]
    assert lora_a.sharding.spec == shd.state_shardings(st.trainable, mesh)["llm"]["lora_a"]["q_proj"].spec


def test_base_frozen_lora_and_head_move_toward_good_gamma(joint_run):
    st, pol = joint_run["st"], joint_run["pol"]
    tr, _, _ = joint_run["out"]
    base_before = nnx.state(pol, nnx.Not(nnx.Any(nnx.LoRAParam, nnx.PathContains("head"))))
    tree_close(st.frozen, base_before, atol=0, rtol=0)  # frozen is never an output of the step
    after = nnx.merge(st.graphdef, tr, st.frozen)
    assert any(float(jnp.abs(a - b).max()) > 0 for a, b in
               zip(jax.tree.leaves(nnx.state(after, nnx.LoRAParam)), jax.tree.leaves(nnx.state(pol, nnx.LoRAParam))))
    # rewards rise with γ (λ = 0): the head's μ must move up
    b = joint_run["batch"]
    feats = jnp.ones((1, 64))
    assert float(after.head(feats)[0]) > float(pol.head(feats)[0]) + 1e-3
    assert float(joint_run["out"][2]["mu_mean"]) == pytest.approx(0.3, abs=0.02)
    assert b["gamma_raw"].shape == (B,)


def test_nan_guard_skips_update(joint_run):
    st, batch = joint_run["st"], dict(joint_run["batch"])
    batch["rewards"] = batch["rewards"].at[0].set(jnp.nan)
    tr, opt, metrics = joint_run["step"](copy(st.trainable), copy(st.opt_state), st.frozen, batch, joint_run["rng"])
    assert int(metrics["skipped"]) == 1
    tree_close(tr, st.trainable, atol=0, rtol=0)
    tree_close(opt, st.opt_state, atol=0, rtol=0)


def test_validate_batch_names_the_field():
    batch = make_batch()
    with pytest.raises(ValueError, match="gamma_raw"):
        validate_batch({k: v for k, v in batch.items() if k != "gamma_raw"}, JOINT)
    with pytest.raises(ValueError, match="unmask_step"):
        validate_batch({**batch, "unmask_step": batch["unmask_step"][:, :3]}, JOINT)
    with pytest.raises(ValueError, match="num_generations"):
        validate_batch({k: v[:6] for k, v in batch.items()}, JOINT)
    with pytest.raises(ValueError, match="joint_sampler"):
        init_train_state(make_policy(head=False), JOINT)


# ----------------------------------------------------------------------------- learning


def rollout(llm, prompt, key, steps_per_token=2):
    """A tiny random-order dLLM sampler: each step samples every masked position from
    softmax f([p, z]) and reveals `steps_per_token` random ones. Returns the trajectory contract."""
    b = prompt.shape[0]
    n_steps = L // steps_per_token
    k_order, k_tok = jax.random.split(key)
    order = jax.vmap(lambda kk: jax.random.permutation(kk, L))(jax.random.split(k_order, b))
    unmask_step = (order // steps_per_token + 1).astype(jnp.int32)

    def body(t, carry):
        z, beh = carry
        logits = llm(jnp.concatenate([prompt, z], 1))[:, P:].astype(jnp.float32)
        logits = logits.at[..., MASK].set(-jnp.inf)
        tok = jax.random.categorical(jax.random.fold_in(k_tok, t), logits)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[..., None], -1)[..., 0]
        now = unmask_step == t + 1
        return jnp.where(now, tok, z), jnp.where(now, lp, beh)

    z, beh = jax.lax.fori_loop(0, n_steps, body, (jnp.full((b, L), MASK, jnp.int32), jnp.zeros((b, L))))
    return dict(completion=z, unmask_step=unmask_step, behaviour_logp=beh, nfe=jnp.full((b,), n_steps, jnp.int32),
                completion_mask=jnp.ones((b, L), bool))


def test_diffpo_learns_synthetic_reward():
    """Reward = fraction of completion tokens with id < 32 (≈ 9% at init). A few DiFFPO
    (2-MF + IS) rollouts × μ inner steps must raise the model's expected reward.
    (The tiny model's LM head is scaled ×10: at init scale its logits span < 1 nat, so no
    adapter could make the target tokens likely.)"""
    cfg = RLConfig(method="2mf_is", num_generations=4, beta=0.01, lr=1e-2, grad_clip=1.0, weight_decay=0.0,
                   num_inner=2, p_mask=0.15, logprob_chunk=8)
    pol = make_policy(seed=5, head=False)
    pol.llm.lm_head[...] = pol.llm.lm_head[...] * 10.0
    st = init_train_state(pol, cfg)
    step = make_train_step(st.graphdef, cfg, st.tx)
    score = make_score_fn(st.graphdef, cfg)
    prompts = jnp.repeat(jax.random.randint(jax.random.key(0), (4, P), 0, 290), 4, axis=0)  # 4 prompts × G
    sample = jax.jit(lambda tr, key: rollout(nnx.merge(st.graphdef, tr, st.frozen).llm, prompts, key))

    @jax.jit
    def expected_reward(tr):
        llm = nnx.merge(st.graphdef, tr, st.frozen).llm
        logits = llm(jnp.concatenate([prompts, jnp.full((16, L), MASK, jnp.int32)], 1))[:, P:]
        return jax.nn.softmax(logits.astype(jnp.float32), -1)[..., :32].sum(-1).mean()

    trainable, opt_state = st.trainable, st.opt_state
    r0 = float(expected_reward(trainable))
    key = jax.random.key(42)
    rewards = []
    for it in range(6):
        key, k_roll, k_inner = jax.random.split(key, 3)
        traj = sample(trainable, k_roll)
        rewards.append(float((traj["completion"] < 32).mean()))
        batch = dict(prompt=prompts, prompt_mask=jnp.ones_like(prompts, bool), **traj,
                     rewards=(traj["completion"] < 32).mean(1).astype(jnp.float32))
        old = copy(trainable)
        for k in range(cfg.num_inner):
            rng = lk.inner_key(k_inner, k)
            b = {**batch, **score(old, st.frozen, batch, rng)}
            trainable, opt_state, m = step(trainable, opt_state, st.frozen, b, rng)
            assert int(m["skipped"]) == 0
            if k == 0:
                np.testing.assert_allclose(m["ratio_max"], 1.0, atol=1e-5)  # θ = θ_old at the first inner step
    r1 = float(expected_reward(trainable))
    assert r1 > r0 + 0.3, (r0, r1, rewards)
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2])


def test_lora_and_head_are_clipped_by_their_own_norms():
    from diffpo_jax.rl.train_step import clip_by_group_norm

    grads = {"head": {"w": jnp.full(4, 50.0)}, "llm": {"lora_a": jnp.array([0.03, 0.04])}}
    out, _ = clip_by_group_norm(0.2).update(grads, optax.EmptyState())
    np.testing.assert_allclose(out["llm"]["lora_a"], [0.03, 0.04])  # norm 0.05 < 0.2: untouched
    np.testing.assert_allclose(jnp.linalg.norm(out["head"]["w"]), 0.2, rtol=1e-6)
    lora_only = {"llm": {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}}
    ref, _ = optax.clip_by_global_norm(0.2).update(lora_only, optax.EmptyState())
    tree_close(clip_by_group_norm(0.2).update(lora_only, optax.EmptyState())[0], ref)


def test_rollout_rewards_see_text_without_special_tokens():
    from transformers import AutoTokenizer

    from diffpo_jax.experiment import TINY_TOKENIZER
    from diffpo_jax.rl.rollout import decode_completions
    from diffpo_jax.tasks import gsm8k

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER, local_files_only=True)
    text = "<reasoning>\nx\n</reasoning>\n<answer>\n42\n</answer>\n"
    ids = tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id]
    (decoded,) = decode_completions(tok, np.array([ids]), np.ones((1, len(ids)), bool))
    assert decoded == text  # as d1's trainer decodes: the strict format reward (`</answer>\n$`) can fire
    assert gsm8k.reward_components(decoded, {"answer": "42"})["strict_format"] == 0.5


def test_head_lr_scale_scales_only_head_steps():
    from diffpo_jax.rl.train_step import make_optimizer
    cfg = RLConfig(joint_sampler=True, head_lr_scale=10.0, weight_decay=0.0)
    params = {"head": {"w": jnp.zeros(3)}, "llm": {"lora_a": jnp.zeros(3)}}
    tx = make_optimizer(cfg)
    upd, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert jnp.allclose(upd["head"]["w"], 10.0 * upd["llm"]["lora_a"])
    with pytest.raises(ValueError, match="head_lr_scale"):
        RLConfig(head_lr_scale=0.0)

"""One pure, jitted DiFFPO / d1 optimiser step over LoRA (+ threshold head) parameters.

    train_step(trainable, opt_state, frozen, batch, rng) -> (trainable, opt_state, metrics)

* `trainable` / `frozen`: the two `nnx.State`s of `nnx.split(policy, trainable_filter(joint), ...)`.
  Only `trainable` (LoRA, head) is differentiated, updated and returned; the base weights are
  the `frozen` input and are never an output, so they cannot change. trainable/opt_state are
  donated.
* `rng`: the key of this inner iteration, `inner_key(rollout_key, k)` (likelihood.py). The same
  key must be given to `score_fn` when computing θ_old / reference log-probs for iteration k,
  so the prompt mask p̃ and τ are identical for θ, θ_old and ref.
* θ_old: computed by the CALLER (design choice). Keep a copy of `trainable` from rollout time
  and call `score_fn(old_trainable, frozen, batch, rng)` once per inner iteration (or for all k
  at rollout time, as d1 does); put its `old_logp` (and `ref_logp`, `head_old_logp`) in the
  batch. Without `old_logp` the step is on-policy (old = stop_grad(θ), d1's μ = 1); without
  `ref_logp` (and β > 0) the reference log-probs are computed inside the step (LoRA off).

batch (per-row arrays, all sharded over ('data', 'fsdp') on their first axis):
  prompt [B,P] i32, prompt_mask [B,P] bool, completion [B,L] i32, completion_mask [B,L] bool,
  unmask_step [B,L] i32, behaviour_logp [B,L] f32, nfe [B] i32, rewards [B] f32;
  optional: old_logp [B,L], ref_logp [B,L], row_id [B] i32 (global row index, default arange),
  temperature [B] f32 (the rollout's T: the likelihoods score log softmax(f/T); default untempered);
  joint sampler: gamma_raw [B] f32 (unclipped draws; rl.head='step': [B, S], step t's draw at
  index t, valid for t < nfe), step head: step_features [B, S, F] f32; optional head_old_logp [B],
  head_features [B,D] (else recomputed from [p, M…M] with the current LoRA, stop-gradient;
  passing the rollout's features keeps the head's PPO ratio a function of φ alone).
Advantages are group-relative over consecutive groups of `num_generations` rows of the FULL
batch; micro-batches are strided row subsets (row r goes to micro-batch r mod M) and the
loss denominators are computed from the full batch first, so the summed gradients equal the
full-batch gradient. A non-finite loss or gradient skips the update (`skipped = 1`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from diffpo_jax import sharding as shd
from diffpo_jax.models.threshold_head import llm_prompt_features, trainable_filter
from diffpo_jax.rl import losses as L
from diffpo_jax.rl.config import RLConfig
from diffpo_jax.rl.likelihood import surrogate_logps

REQUIRED = ("prompt", "prompt_mask", "completion", "completion_mask", "unmask_step", "behaviour_logp", "nfe",
            "rewards")


def _is_head(path) -> bool:
    return bool(path) and getattr(path[0], "key", None) == "head"


def scale_head_updates(scale: float) -> optax.GradientTransformation:
    """Multiply the updates of parameters under `head` by `scale` (stateless): after AdamW this
    is the head running at `scale · lr` (decoupled weight decay included)."""
    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda path, u: u * scale if _is_head(path) else u, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def group_norms(grads) -> tuple[jax.Array, jax.Array]:
    """(‖g_LoRA‖₂, ‖g_head‖₂) of a trainable-state gradient tree (0 for an empty group)."""
    sq = [(_is_head(path), jnp.sum(jnp.square(g))) for path, g in jax.tree_util.tree_leaves_with_path(grads)]
    lora = sum((x for head, x in sq if not head), jnp.float32(0.0))
    head = sum((x for head, x in sq if head), jnp.float32(0.0))
    return jnp.sqrt(lora), jnp.sqrt(head)


def clip_by_group_norm(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping of the LoRA and the head separately: g ← g · min(1, max_norm / ‖g‖)
    per group (stateless). Without a head it is optax.clip_by_global_norm. One clip over both
    would let the head's REINFORCE gradient (norm ≈ 5 at init for LLaDA-8B, ≫ d1's 0.2) set the
    LoRA's clip factor, and so rescale the LoRA step by the head's noise from step to step."""
    def update(updates, state, params=None):
        del params
        lora_norm, head_norm = group_norms(updates)
        scale = lambda n: jnp.minimum(1.0, max_norm / jnp.maximum(n, 1e-30))  # noqa: E731
        s_lora, s_head = scale(lora_norm), scale(head_norm)
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * (s_head if _is_head(path) else s_lora).astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: RLConfig) -> optax.GradientTransformation:
    """AdamW (b1, b2, weight decay) after gradient clipping (`grad_clip`, LoRA and head each by
    its own global norm: `clip_by_group_norm`); constant lr after linear warmup. One optimizer
    over LoRA + head; the head's steps are scaled by `head_lr_scale`."""
    lr = cfg.lr if cfg.warmup_steps == 0 else optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    parts = [clip_by_group_norm(cfg.grad_clip),
             optax.adamw(lr, b1=cfg.adam_b1, b2=cfg.adam_b2, weight_decay=cfg.weight_decay)]
    if cfg.head_lr_scale != 1.0:
        parts.append(scale_head_updates(cfg.head_lr_scale))
    return optax.chain(*parts)


class TrainState(NamedTuple):
    graphdef: nnx.GraphDef
    trainable: nnx.State
    frozen: nnx.State
    opt_state: optax.OptState
    tx: optax.GradientTransformation


def init_train_state(policy: nnx.Module, cfg: RLConfig, mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
    """Split `policy` (a `Policy`) into trainable / frozen states and create the optimiser state,
    placed on `mesh` (sharding.py rules; the head is replicated) when given."""
    graphdef, trainable, frozen = nnx.split(policy, trainable_filter(cfg.joint_sampler), ...)
    if not jax.tree.leaves(trainable):
        raise ValueError("init_train_state: no trainable parameters; build the LLM with lora_rank > 0 "
                         "(and a ThresholdHead when joint_sampler=True)")
    if cfg.joint_sampler and getattr(policy, "head", None) is None:
        raise ValueError("init_train_state: RLConfig.joint_sampler=True needs Policy(llm, head=ThresholdHead(...))")
    tx = make_optimizer(cfg)
    trainable = jax.tree.map(jnp.copy, trainable)  # train_step donates it: keep `policy` usable
    if mesh is not None:
        trainable = jax.device_put(trainable, shd.state_shardings(trainable, mesh))
        frozen = jax.device_put(frozen, shd.state_shardings(frozen, mesh))
        opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings(tx, trainable, mesh))(trainable)
    else:
        opt_state = jax.jit(tx.init)(trainable)
    return TrainState(graphdef, trainable, frozen, opt_state, tx)


def opt_state_shardings(tx, trainable: nnx.State, mesh: jax.sharding.Mesh):
    """Optimiser-state shardings: moments like their parameter, everything else replicated."""
    abstract = jax.eval_shape(tx.init, trainable)
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(tx, lambda _, s: s, abstract, shd.state_shardings(trainable, mesh),
                                 transform_non_params=lambda _: replicated)


def validate_batch(batch: dict, cfg: RLConfig) -> None:
    """Raise ValueError naming the field when the batch breaks the trajectory contract."""
    missing = [k for k in REQUIRED if k not in batch]
    if cfg.joint_sampler:
        missing += [k for k in ("gamma_raw",) + (("step_features",) if cfg.head == "step" else ()) if k not in batch]
    if missing:
        raise ValueError(f"RL batch is missing {missing}; see diffpo_jax.rl.train_step docstring for the contract")
    b, length = batch["completion"].shape
    expect = {"completion_mask": (b, length), "unmask_step": (b, length), "behaviour_logp": (b, length),
              "old_logp": (b, length), "ref_logp": (b, length), "nfe": (b,), "rewards": (b,), "row_id": (b,),
              "temperature": (b,), "head_old_logp": (b,), "prompt": (b, batch["prompt"].shape[1]),
              "prompt_mask": (b, batch["prompt"].shape[1])}
    if cfg.head == "step" and "step_features" in batch:
        expect["gamma_raw"] = tuple(batch["step_features"].shape[:2])
        if batch["step_features"].shape[0] != b:
            raise ValueError(f"RL batch field 'step_features' has {batch['step_features'].shape[0]} rows, expected {b}")
    else:
        expect["gamma_raw"] = (b,)
    for k, shape in expect.items():
        if k in batch and tuple(batch[k].shape) != shape:
            raise ValueError(f"RL batch field {k!r} has shape {tuple(batch[k].shape)}, expected {shape}")
    if b % cfg.num_generations:
        raise ValueError(f"RL batch has {b} rows, not a multiple of num_generations={cfg.num_generations}")
    if b % cfg.micro_batches:
        raise ValueError(f"RL batch has {b} rows, not divisible by micro_batches={cfg.micro_batches}")


def advantages(batch: dict, cfg: RLConfig) -> tuple[jax.Array, Optional[jax.Array]]:
    """(model advantage `[B]`, head advantage `[B]` or None), group-relative over the full batch."""
    r_sampler = L.sampler_reward(batch["rewards"], batch["nfe"], cfg.nfe_lambda, cfg.nfe_ref)
    r_model = r_sampler if cfg.model_reward == "task_minus_nfe" else batch["rewards"]
    adv = L.group_advantages(r_model, cfg.num_generations, cfg.std_normalize)
    head_adv = L.group_advantages(r_sampler, cfg.num_generations, cfg.std_normalize) if cfg.joint_sampler else None
    return adv, head_adv


def _loss_parts(policy, mb: dict, key, cfg: RLConfig):
    """(policy LossOut, head LossOut | None, head stats) on one micro-batch."""
    lp = surrogate_logps(cfg.method, policy.llm, mb, key, cfg)
    old = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(lp)
    ref = None
    if cfg.beta > 0:
        ref = mb["ref_logp"] if "ref_logp" in mb else surrogate_logps(cfg.method, policy.llm, mb, key, cfg, lora=False)
        ref = jax.lax.stop_gradient(ref)
    pol = L.get_policy_loss(cfg.method)(lp, old, ref, mb["behaviour_logp"], mb["advantages"], mb["completion_mask"],
                                        mb["unmask_step"], cfg)
    if not cfg.joint_sampler:
        return pol, None, {}
    dens, mu = head_log_density(policy, mb, cfg)
    old_dens = mb["head_old_logp"] if "head_old_logp" in mb else jax.lax.stop_gradient(dens)
    head = L.head_loss(dens, old_dens, mb["head_advantages"], cfg.num_generations, cfg.epsilon)
    mu_ng = jax.lax.stop_gradient(mu)  # [B]: the prompt head's μ(p); the step head's mean μ_t over the row's steps
    stats = {"sum": {"mu_mean": mu_ng.sum()}, "max": {"mu_max": mu_ng.max(), "neg_mu_min": -mu_ng.min()}}
    return pol, head, stats


def step_valid(batch: dict) -> jax.Array:
    """`[B, S]` bool: the step head's draws that were taken (step index t < the row's nfe)."""
    s = batch["gamma_raw"].shape[1]
    return jnp.arange(s)[None, :] < batch["nfe"][:, None]


def head_log_density(policy, batch: dict, cfg: RLConfig) -> tuple[jax.Array, jax.Array]:
    """(log π_φ of the batch's γ draws `[B]` f32, μ `[B]` f32). Prompt head: log N(raw; μ_φ(f), σ²).
    Step head: Σ_{t < nfe} log N(raw_t; μ_φ(f, s_t), σ²) over the row's decoding steps, and μ the
    mean μ_t over them. f = batch head_features (else recomputed from [p, M…M], stop-gradient)."""
    feats = batch["head_features"] if "head_features" in batch else llm_prompt_features(
        policy.llm, batch["prompt"], batch["prompt_mask"], batch["completion"].shape[1],
        use_padding_mask=cfg.use_padding_mask)
    feats = jax.lax.stop_gradient(feats)
    if cfg.head == "prompt":
        mu = policy.head(feats)
        return L.gaussian_log_density(batch["gamma_raw"], mu, cfg.sigma), mu
    mu = policy.head(feats[:, None, :], batch["step_features"])  # [B, S]
    valid = step_valid(batch)
    dens = jnp.sum(jnp.where(valid, L.gaussian_log_density(batch["gamma_raw"], mu, cfg.sigma), 0.0), axis=-1)
    n = jnp.maximum(valid.sum(-1), 1).astype(jnp.float32)
    return dens, jnp.sum(jnp.where(valid, mu, 0.0), axis=-1) / n


def _micro_batches(batch: dict, m: int) -> dict:
    """[B, ...] -> [m, B/m, ...]; micro-batch j holds rows j, j+m, j+2m, …"""
    def split(x):
        b = x.shape[0]
        return x.reshape(b // m, m, *x.shape[1:]).swapaxes(0, 1)
    return {k: split(v) for k, v in batch.items()}


def _combine(a, b):
    """Accumulate aux trees: sums add, maxima take the max."""
    return {"sum": jax.tree.map(jnp.add, a["sum"], b["sum"]), "max": jax.tree.map(jnp.maximum, a["max"], b["max"])}


def make_grad_fn(graphdef: nnx.GraphDef, cfg: RLConfig) -> Callable:
    """grads_fn(trainable, frozen, batch, rng) -> (loss, grads, aux) (unjitted, pure).

    loss = Σ_mb policy_sum_mb / D_policy + head_coef · Σ_mb head_sum_mb / D_head, where the
    denominators D come from the full batch (they do not depend on parameters), so the
    micro-batched gradient is exactly the full-batch gradient.
    """

    def loss_fn(trainable, frozen, mb, key, denoms):
        policy = nnx.merge(graphdef, trainable, frozen)
        pol, head, stats = _loss_parts(policy, mb, key, cfg)
        total = pol.loss_sum / denoms["policy"]
        aux_sum = {k: (w.total, w.count) for k, w in pol.metrics.items()}
        aux_sum["policy_loss_sum"] = (pol.loss_sum, pol.denom)
        aux_max = dict(pol.maxima)
        if head is not None:
            total = total + cfg.head_coef * head.loss_sum / denoms["head"]
            aux_sum.update({k: (w.total, w.count) for k, w in head.metrics.items()})
            aux_sum["head_loss_sum"] = (head.loss_sum, head.denom)
            aux_sum.update({k: (v, jnp.float32(mb["rewards"].shape[0])) for k, v in stats["sum"].items()})
            aux_max.update(stats["max"])
        return total, {"sum": aux_sum, "max": aux_max}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def grads_fn(trainable, frozen, batch, rng):
        batch = prepare_batch(batch, cfg)
        b = batch["completion"].shape[0]
        denoms = {"policy": jnp.maximum(L.policy_loss_denominator(batch["completion_mask"], cfg.loss_agg), 1.0),
                  "head": jnp.float32(b / cfg.num_generations)}
        if cfg.micro_batches == 1:
            (loss, aux), grads = grad_fn(trainable, frozen, batch, rng, denoms)
            return loss, grads, (aux, batch)
        mbs = _micro_batches(batch, cfg.micro_batches)

        def body(carry, mb):
            g_acc, l_acc, a_acc = carry
            (l, a), g = grad_fn(trainable, frozen, mb, rng, denoms)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, _combine(a_acc, a)), None

        (loss, aux), grads = grad_fn(trainable, frozen, jax.tree.map(lambda x: x[0], mbs), rng, denoms)
        (grads, loss, aux), _ = jax.lax.scan(body, (grads, loss, aux), jax.tree.map(lambda x: x[1:], mbs))
        return loss, grads, (aux, batch)

    return grads_fn


def prepare_batch(batch: dict, cfg: RLConfig) -> dict:
    """Add row_id (default arange) and the full-batch advantages (and head advantages)."""
    batch = dict(batch)
    batch.setdefault("row_id", jnp.arange(batch["completion"].shape[0], dtype=jnp.int32))
    adv, head_adv = advantages(batch, cfg)
    batch["advantages"] = adv
    if head_adv is not None:
        batch["head_advantages"] = head_adv
    return batch


def make_train_step(graphdef: nnx.GraphDef, cfg: RLConfig, tx: optax.GradientTransformation,
                    mesh: Optional[jax.sharding.Mesh] = None, *, trainable=None, frozen=None) -> Callable:
    """Build the jitted step (see the module docstring). With a mesh, pass the example
    `trainable` / `frozen` states (or abstract ones) so explicit shardings can be derived."""
    grads_fn = make_grad_fn(graphdef, cfg)

    def step(trainable, opt_state, frozen, batch, rng):
        loss, grads, (aux, batch) = grads_fn(trainable, frozen, batch, rng)
        lora_norm, head_norm = group_norms(grads)
        grad_norm = jnp.hypot(lora_norm, head_norm)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, opt_state, trainable)
        new_tr = optax.apply_updates(trainable, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        metrics = _finalise_metrics(aux, loss, grad_norm, ok, batch, cfg)
        if cfg.joint_sampler:  # each group is clipped by its own norm (clip_by_group_norm)
            metrics["grad_norm_lora"], metrics["grad_norm_head"] = lora_norm, head_norm
        return keep(new_tr, trainable), keep(new_opt, opt_state), metrics

    if mesh is None:
        jitted = jax.jit(step, donate_argnums=(0, 1))
    else:
        if trainable is None or frozen is None:
            raise ValueError("make_train_step: with a mesh, pass trainable= and frozen= to derive shardings")
        tr_sh = shd.state_shardings(trainable, mesh)
        opt_sh = opt_state_shardings(tx, trainable, mesh)
        replicated = NamedSharding(mesh, P())
        jitted = jax.jit(step, donate_argnums=(0, 1),
                         in_shardings=(tr_sh, opt_sh, shd.state_shardings(frozen, mesh),
                                       NamedSharding(mesh, P(("data", "fsdp"))), replicated),
                         out_shardings=(tr_sh, opt_sh, replicated))

    def train_step(trainable, opt_state, frozen, batch, rng):
        validate_batch(batch, cfg)
        if mesh is not None:
            shards = mesh.shape["data"] * mesh.shape["fsdp"]
            if batch["completion"].shape[0] % shards:
                raise ValueError(f"RL batch has {batch['completion'].shape[0]} rows, not divisible by the mesh's "
                                 f"data x fsdp = {shards} batch shards")
            batch = jax.device_put(batch, NamedSharding(mesh, P(("data", "fsdp"))))  # e.g. sampler outputs
        with shd.use_mesh(mesh):
            return jitted(trainable, opt_state, frozen, batch, rng)

    train_step.jitted = jitted
    return train_step


def _finalise_metrics(aux, loss, grad_norm, ok, batch, cfg: RLConfig) -> dict:
    """Scalar metrics: weighted means (total / count), maxima, rewards, NFE, γ statistics."""
    out = {k: t / jnp.maximum(c, 1e-9) for k, (t, c) in aux["sum"].items()}
    out["policy_loss"] = out.pop("policy_loss_sum")
    if "head_loss_sum" in out:
        out["head_loss"] = out.pop("head_loss_sum")
    out["tokens_per_row"] = out.pop("tokens")
    out.update(aux["max"])
    if "neg_mu_min" in out:
        out["mu_min"] = -out.pop("neg_mu_min")
    r = batch["rewards"].astype(jnp.float32)
    nfe = batch["nfe"].astype(jnp.float32)  # every model forward (the head reads the first decoding forward)
    out.update(loss=loss, grad_norm=grad_norm, skipped=1 - ok.astype(jnp.int32), reward_mean=r.mean(),
               reward_std=r.std(), adv_abs_mean=jnp.abs(batch["advantages"]).mean(), nfe_mean=nfe.mean(),
               nfe_max=nfe.max())
    if cfg.joint_sampler:
        g = jnp.clip(batch["gamma_raw"], 0.0, cfg.gamma_max)
        if cfg.head == "step":  # each row's mean γ over its steps
            valid = step_valid(batch)
            g = jnp.sum(jnp.where(valid, g, 0.0), axis=-1) / jnp.maximum(valid.sum(-1), 1).astype(jnp.float32)
        out.update(gamma_mean=g.mean(), gamma_std=g.std(), gamma_min=g.min(), gamma_max=g.max(),
                   sampler_reward_mean=L.sampler_reward(r, nfe, cfg.nfe_lambda, cfg.nfe_ref).mean())
    return out


def make_score_fn(graphdef: nnx.GraphDef, cfg: RLConfig, mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
    """score(trainable, frozen, batch, rng) -> {'old_logp' [B,L], 'ref_logp' [B,L] (β > 0),
    'head_old_logp' [B] (joint, when batch has gamma_raw)}: the surrogate log-probs of the given
    (θ_old) parameters and of the reference, with the same inner-iteration key as train_step."""

    def score(trainable, frozen, batch, rng):
        policy = nnx.merge(graphdef, trainable, frozen)
        batch = dict(batch)
        batch.setdefault("row_id", jnp.arange(batch["completion"].shape[0], dtype=jnp.int32))
        out = {"old_logp": surrogate_logps(cfg.method, policy.llm, batch, rng, cfg)}
        if cfg.beta > 0:
            out["ref_logp"] = surrogate_logps(cfg.method, policy.llm, batch, rng, cfg, lora=False)
        if cfg.joint_sampler and "gamma_raw" in batch:
            out["head_old_logp"] = head_log_density(policy, batch, cfg)[0]
        return jax.lax.stop_gradient(out)

    jitted = jax.jit(score)

    def score_fn(trainable, frozen, batch, rng):
        with shd.use_mesh(mesh):
            return jitted(trainable, frozen, batch, rng)

    return score_fn

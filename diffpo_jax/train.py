"""DiFFPO / d1 RL training: `python -m diffpo_jax.train --config configs/<exp>.py [--config.x=y ...]`.

Each step (one rollout):
  prompts (grain, per-process shard)  ->  G completions each with the configured sampler
  (the adaptive EB sampler draws γ around the threshold head's μ(p) when joint)  ->  rewards
  ->  μ = `rl.num_inner` updates of the pure train step over the same rollout, each with
  θ_old / reference log-probs from `score_fn` under the inner iteration's key  ->  metrics
  (progress bar, console, `<out_dir>/metrics.jsonl`, TensorBoard `<out_dir>/tb`)  ->  every
  `train.eval_every` steps accuracy + NFE on held-out items  ->  every `train.save_every`
  steps an orbax checkpoint (LoRA + head params, optimizer state, data-iterator state, step).

Exact resume: all randomness is derived from (config.seed, step), so a run restarted from the
checkpoint of step k (automatically, from `<out_dir>/checkpoints`) reproduces the metrics of
steps k+1… of an uninterrupted run. At the end (`train.export_hf`) the LoRA-merged model is
written in HF format to `<out_dir>/hf` and the adapter alone to `<out_dir>/peft` (joint: the
threshold head to `<out_dir>/head`); `--export_step N` exports checkpoint N of a run the same way
(`<out_dir>/export-stepN/`) without training.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from diffpo_jax import distributed, evaluate, experiment, storage, tasks
from diffpo_jax.checkpointing import CheckpointMismatch, Checkpointer
from diffpo_jax.metrics_log import MetricsLog
from diffpo_jax.models.threshold_head import Policy, save_threshold_head
from diffpo_jax.rl.likelihood import inner_key, uses_key
from diffpo_jax.rl.rollout import rollout
from diffpo_jax.rl.train_step import init_train_state, make_score_fn, make_train_step
from diffpo_jax.sampling import make_sampler
from diffpo_jax.tasks.data import grpo_dataset


def _mean_metrics(per_inner: list[dict]) -> dict:
    """The train step's scalar metrics over the μ inner iterations (host floats): `*_max` keys
    (ratio_max, is_weight_max, mu_max, ...) their maximum, `*_min` their minimum, the rest the mean."""
    host = jax.tree.map(float, distributed.host_tree(per_inner))  # one sync for all inner steps
    reduce = lambda k: np.max if k.endswith("_max") else np.min if k.endswith("_min") else np.mean  # noqa: E731
    return {f"train/{k}": float(reduce(k)([m[k] for m in host])) for k in host[0]}


def _eval_items(config) -> list[dict]:
    n = int(config.train.eval_items)
    return tasks.load_eval_items(config.task.name, config.task.data_dir or None, n=n or None, seed=int(config.seed))


def make_evaluator(config, policy_ref: Callable, tokenizer, rl_cfg, mesh) -> Callable[[], dict]:
    """evaluate() -> {'eval/accuracy', 'eval/nfe_mean', ...} with the current policy (γ = μ(p)
    from the head when joint, else the eval section's fixed γ / threshold)."""
    items = _eval_items(config)
    style, add_reasoning = config.task.prompt_style, config.task.get("add_reasoning", None)
    fmt = lambda it: tasks.format_prompt(config.task.name, it, tokenizer, "eval", add_reasoning, style)  # noqa
    ids = evaluate.encode_prompts(config.task.name, items, tokenizer, int(config.task.max_prompt_length), fmt)
    def run() -> dict:
        policy = policy_ref()
        scfg = experiment.sampler_config(config.eval, policy.llm.cfg, "eval")
        _, summary = evaluate.run_eval(policy.llm, tokenizer, config.task.name, items, scfg,
                                       batch_size=int(config.train.eval_batch),
                                       head=policy.head if rl_cfg.joint_sampler else None,
                                       key=jax.random.key(int(config.seed) + 7), mesh=mesh, prompt_ids=ids,
                                       progress=False, pad_multiple=int(config.eval.get("pad_multiple", 0)))
        return {f"eval/{k}": float(v) for k, v in summary.items()}

    return run


class ShardedBatches:
    """This process's GRPO prompt rows. The global batch of `train.prompts_per_step` prompts is
    assembled from `train.data_shards` disjoint data shards (default: one per process), each
    `tasks.data.grpo_dataset` over `ShardOptions(i, data_shards)`; process p reads shards
    p·S/n … (p+1)·S/n − 1 and concatenates them. The global batch therefore depends only on
    `data_shards`, not on the process count (a 1-process run with data_shards=2 sees exactly
    the batches of a 2-process run). State: one grain iterator state per local shard."""

    def __init__(self, config, tokenizer, group_size: int):
        n_proc, pid = jax.process_count(), jax.process_index()
        shards = int(config.train.get("data_shards", 0) or n_proc)
        per_step = int(config.train.prompts_per_step)
        if shards % n_proc or per_step % shards:
            raise experiment.ConfigError(
                f"config.train.data_shards={shards}: must be a multiple of the {n_proc} processes and divide "
                f"config.train.prompts_per_step={per_step}")
        local = range(pid * shards // n_proc, (pid + 1) * shards // n_proc)
        try:
            self.iters = self._open(config, tokenizer, group_size, shards, local)
        except FileNotFoundError as e:  # benchmark data missing: the message names the flags to set
            raise experiment.ConfigError(str(e)) from None

    @staticmethod
    def _open(config, tokenizer, group_size: int, shards: int, local: range) -> list:
        per_step = int(config.train.prompts_per_step)
        gen_kwargs = experiment.generator_kwargs(config)
        return [iter(grpo_dataset(
            config.task.name, tokenizer, n_prompts=per_step // shards, group_size=group_size,
            max_prompt_length=int(config.task.max_prompt_length), data_dir=config.task.data_dir or None,
            seed=int(config.seed), prompt_style=config.task.prompt_style,
            add_reasoning=config.task.get("add_reasoning", None), math_train_path=config.task.get("train_path", "") or None,
            source_seed=int(config.seed), shard_options=grain.sharding.ShardOptions(i, shards, drop_remainder=True),
            **gen_kwargs)) for i in local]

    def next(self) -> dict:
        parts = [next(it) for it in self.iters]
        return {"prompt_ids": np.concatenate([b["prompt_ids"] for b in parts]),
                "prompt_mask": np.concatenate([b["prompt_mask"] for b in parts]),
                "items": [x for b in parts for x in b["items"]]}

    def get_state(self) -> list:
        return [_json_state(it.get_state()) for it in self.iters]

    def set_state(self, states: list) -> None:
        if len(states) != len(self.iters):
            raise ValueError(f"checkpoint has {len(states)} data-shard states, this run reads {len(self.iters)}: "
                             "resume with the same config.train.data_shards and process count")
        for it, st in zip(self.iters, states):
            it.set_state(st)


def update(trainable, opt_state, frozen, batch: dict, k_inner: jax.Array, rl_cfg, step_fn, score_fn):
    """μ = rl_cfg.num_inner optimizer steps on one rollout -> (trainable, opt_state, mean metrics).

    θ_old = the rollout-time parameters, scored per inner iteration k under `inner_key(k_inner, k)`
    (the key the step uses too), or once when the likelihood does not depend on the key
    (`uses_key`: exact, MF at p_mask 0; for exact that saves μ − 1 passes of NFE forwards). With
    μ = 1 the step's own stop_grad(θ) is θ_old (and the reference is computed inside the step), so
    the scoring forwards are skipped.
    """
    old = jax.tree.map(jnp.copy, trainable) if rl_cfg.num_inner > 1 else None  # the step donates trainable
    rescore = uses_key(rl_cfg)
    scored = None
    per_inner = []
    for k in range(rl_cfg.num_inner):
        rng = inner_key(k_inner, k)
        inner = dict(batch)
        if old is not None:
            if scored is None or rescore:
                scored = score_fn(old, frozen, batch, rng)
            inner.update(scored)
        trainable, opt_state, m = step_fn(trainable, opt_state, frozen, inner, rng)
        per_inner.append(m)
    return trainable, opt_state, _mean_metrics(per_inner)


def rollout_metrics(info: dict) -> dict:
    """Rewards per component, rollout NFE / completion length / γ (means over all rows)."""
    out = {f"reward/{k}": float(v.mean()) for k, v in info["reward_components"].items()}
    out.update({"reward/mean": float(info["rewards"].mean()), "rollout/nfe_mean": float(info["nfe"].mean()),
                "rollout/completion_length": float(info["completion_length"].mean())})
    if info["gamma"] is not None:
        out["rollout/gamma_mean"] = float(info["gamma"].mean())
    return out


def _checkpoint_state(trainable, opt_state) -> dict:
    """What a checkpoint's `state` holds (the RNG is derived from (seed, step); data state is in meta)."""
    return {"trainable": trainable, "opt_state": opt_state}


class TrainResult(NamedTuple):
    policy: Policy        # the trained Policy (LLM with its LoRA, threshold head or None)
    metrics: dict         # the last step's metrics (host floats)
    out_dir: str


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flat_config(config: ml_collections.ConfigDict) -> dict:
    """{'section.field': JSON value} of `config` (as `<out_dir>/config.json` stores it)."""
    return _flat(json.loads(config.to_json_best_effort()))


def config_changes(out_dir: str, config: ml_collections.ConfigDict) -> list[str]:
    """'field: saved -> now' for every field where `config` differs from the run's
    `<out_dir>/config.json` (written at the run's first start); [] if there is none."""
    path = os.path.join(out_dir, "config.json")
    if not storage.exists(path):
        return []
    saved = _flat(json.loads(storage.read_text(path)))
    now = flat_config(config)
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def restore_checkpoint(ckpt: Checkpointer, ts, config, step=None):
    """(step, trainable, opt_state, meta) of checkpoint `step` (default: the latest), restored into
    `ts`'s shapes and shardings. A checkpoint whose trees do not fit the config (e.g. another
    lora_rank or joint_sampler) raises ConfigError naming the fields changed since the run began."""
    try:
        step, restored, meta = ckpt.restore(_checkpoint_state(ts.trainable, ts.opt_state), step)
    except (CheckpointMismatch, KeyError, TypeError) as e:
        changes = config_changes(config.train.out_dir, config)
        raise experiment.ConfigError(
            f"cannot restore into this config's parameters: {str(e).splitlines()[0][:400]}. Fields changed "
            f"since the run began (<out_dir>/config.json): {'; '.join(changes) or 'none recorded'}. Resume "
            "with the run's config, or start a new run with another config.train.out_dir") from None
    return step, restored["trainable"], restored["opt_state"], meta


def _build(config):
    """(rl_cfg, mesh, tokenizer, sampler_cfg, policy, train state) of an experiment config."""
    experiment.check_task(config)
    rl_cfg = experiment.rl_config(config)
    mesh = experiment.build_mesh(config)
    llm, tokenizer = experiment.build_llm(config, mesh)
    sampler_cfg = experiment.sampler_config(config.sampler, llm.cfg)
    experiment.check_rollout_input(rl_cfg, sampler_cfg)
    policy = experiment.build_policy(llm, rl_cfg, int(config.seed))
    return rl_cfg, mesh, tokenizer, sampler_cfg, policy, init_train_state(policy, rl_cfg, mesh)


def train(config: ml_collections.ConfigDict, *, progress: bool = True) -> TrainResult:
    """Run (or resume) the experiment `config` (see the module doc)."""
    rl_cfg, mesh, tokenizer, sampler_cfg, policy, ts = _build(config)
    for warning in experiment.behaviour_logp_warnings(rl_cfg, sampler_cfg):
        print(f"warning: {warning}")
    step_fn = make_train_step(ts.graphdef, rl_cfg, ts.tx, mesh, trainable=ts.trainable, frozen=ts.frozen)
    score_fn = make_score_fn(ts.graphdef, rl_cfg, mesh)
    sampler = make_sampler(nnx.split(policy.llm)[0], sampler_cfg, mesh)
    frozen = ts.frozen
    trainable, opt_state = ts.trainable, ts.opt_state
    current_policy = lambda: nnx.merge(ts.graphdef, trainable, frozen)  # noqa: E731

    data = ShardedBatches(config, tokenizer, rl_cfg.num_generations)

    out_dir = config.train.out_dir
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), int(config.train.keep), async_save=True)
    start = 0
    if ckpt.latest_step() is not None:
        start, trainable, opt_state, meta = restore_checkpoint(ckpt, ts, config)
        data.set_state(meta["data_state"])
        if distributed.is_primary():
            print(f"resumed from {ckpt.directory} at step {start}")
            for change in config_changes(out_dir, config):
                print(f"  config changed since the run began: {change}")
    elif distributed.is_primary():
        storage.makedirs(out_dir)
        storage.write_text(os.path.join(out_dir, "config.json"), config.to_json_best_effort(indent=1))
    log = MetricsLog(out_dir, start, tensorboard=bool(config.train.get("tensorboard", True)))
    evaluator = None
    if int(config.train.eval_items) and int(config.train.eval_every) > 0:
        evaluator = make_evaluator(config, current_policy, tokenizer, rl_cfg, mesh)
    reward_fn = tasks.get_task(config.task.name).reward_components
    base_key = jax.random.key(int(config.seed))
    total = int(config.train.steps)
    last: dict = {}
    bar = tqdm(range(start, total), initial=start, total=total, desc=config.name, disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        batch_np = data.next()
        k_roll, k_inner = jax.random.split(jax.random.fold_in(base_key, step))
        batch, info = rollout(current_policy(), sampler, batch_np["prompt_ids"], batch_np["prompt_mask"],
                              batch_np["items"], reward_fn, k_roll, rl_cfg, tokenizer,
                              temperature=float(config.sampler.temperature), mesh=mesh)
        t_roll = time.perf_counter() - t0
        trainable, opt_state, metrics = update(trainable, opt_state, frozen, batch, k_inner, rl_cfg, step_fn, score_fn)
        metrics.update(rollout_metrics(info))
        metrics.update({"time/rollout_s": t_roll, "time/step_s": time.perf_counter() - t0})
        done = step + 1
        if evaluator is not None and (done % int(config.train.eval_every) == 0 or done == total):
            metrics.update(evaluator())
        log.write(done, metrics)
        last = metrics
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", nfe=f"{metrics['rollout/nfe_mean']:.1f}",
                        refresh=False)
        if progress and int(config.train.log_every) > 0 and done % int(config.train.log_every) == 0:
            tqdm.write(_console_line(done, metrics))
        if done % int(config.train.save_every) == 0 or done == total:
            ckpt.save(done, _checkpoint_state(trainable, opt_state),
                      {"step": done, "data_state": data.get_state(), "name": config.name})
    ckpt.close()
    log.close()
    final = current_policy()
    if config.train.export_hf and (start < total or not storage.isdir(os.path.join(out_dir, "hf"))):
        _export(final, config, out_dir)
    return TrainResult(final, last, out_dir)


def export_checkpoint(config: ml_collections.ConfigDict, step: int = -1) -> str:
    """Export checkpoint `step` (-1: the latest) of the run `config.train.out_dir` like the end of
    training does: the LoRA-merged HF model, the PEFT adapter (and the threshold head when
    joint) under `<out_dir>/export-step<N>/`. Returns that directory."""
    ts = _build(config)[-1]
    out_dir = config.train.out_dir
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), int(config.train.keep), async_save=False)
    steps = ckpt.all_steps()
    if not steps:
        raise experiment.ConfigError(f"config.train.out_dir={out_dir}: no committed checkpoint in {ckpt.directory}")
    if step != -1 and step not in steps:
        raise experiment.ConfigError(f"--export_step={step}: {ckpt.directory} holds steps {steps}")
    step, trainable, _, _ = restore_checkpoint(ckpt, ts, config, None if step == -1 else step)
    ckpt.close()
    dest = os.path.join(out_dir, f"export-step{step}")
    _export(nnx.merge(ts.graphdef, trainable, ts.frozen), config, dest)
    return dest


def _json_state(state):
    """grain iterator state -> JSON-safe (numpy scalars to Python)."""
    return json.loads(json.dumps(state, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


def _console_line(step: int, m: dict) -> str:
    keys = {"reward/mean": "reward", "rollout/nfe_mean": "nfe", "rollout/gamma_mean": "gamma",
            "train/loss": "loss", "train/clip_frac": "clip", "train/kl": "kl", "eval/accuracy": "eval_acc",
            "eval/nfe_mean": "eval_nfe"}
    parts = [f"{short}={m[k]:.4g}" for k, short in keys.items() if k in m]
    return f"step {step}: " + "  ".join(parts)


def _export(policy, config, out_dir: str) -> None:
    """hf/, peft/ (and head/ when joint) under `out_dir`; a bucket `out_dir` is built in a local
    temporary directory and uploaded by the primary process."""
    from diffpo_jax.convert.hf_export import save_hf, save_peft_adapter

    src = config.model.hf_dir or None
    local = storage.local_staging(out_dir)
    save_hf(policy.llm, os.path.join(local, "hf"), source_dir=src, merge_lora=True)
    save_peft_adapter(policy.llm, os.path.join(local, "peft"), base_model_name_or_path=src)
    head = ""
    if policy.head is not None:
        save_threshold_head(policy.head, os.path.join(local, "head"))
        head = f" and the threshold head to {out_dir}/head"
    storage.publish(local, out_dir, upload=distributed.is_primary())
    if distributed.is_primary():
        print(f"exported the LoRA-merged model to {out_dir}/hf, the adapter to {out_dir}/peft{head}")


def quiet_logs() -> None:
    """Keep absl INFO chatter (orbax, XLA) off the console unless -v/--verbosity was given."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def main(argv) -> None:
    del argv
    quiet_logs()
    distributed.maybe_initialize()
    config = experiment.config_flag_value(_CONFIG)
    if _SHOW_CONFIG.value:
        for key, value in flat_config(config).items():
            print(f"--config.{key}={json.dumps(value)}")
        return
    if distributed.is_primary():
        print(distributed.process_info())
    try:
        if _EXPORT_STEP.value is not None:
            print(f"exported to {export_checkpoint(config, _EXPORT_STEP.value)}")
        else:
            train(config, progress=distributed.is_primary())
    except experiment.ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except FileNotFoundError as e:  # an input the config points at (data, checkpoint) is missing
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py[:ARG])",
                                              lock_config=True)
    _EXPORT_STEP = flags.DEFINE_integer(
        "export_step", None, "export checkpoint N of the run (-1: the latest) to <out_dir>/export-stepN/ "
        "(hf/: LoRA-merged HF model, peft/: adapter, head/: threshold head when joint) and exit; no training")
    _SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "print every --config.<section>.<field>=<value> "
                                     "of the loaded config (the flags you can override) and exit")
    app.run(main)

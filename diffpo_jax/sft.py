"""Masked-diffusion SFT (LLaDA's objective, `sft_loss.py`): the step d1 runs before RL, and how
the shipped demo model is made.

    python -m diffpo_jax.sft --config configs/sft_sudoku.py [--config.sft.steps=600 ...]

Targets are the task's reference answers in the `<answer>…</answer>` convention, followed by
`<|eot_id|>` and EOS padding up to `sft.completion_length` (all counted: the model learns to
stop). Sudoku / Countdown train on generated puzzles (their solvers give the answers), GSM8K
on its train split (`<reasoning>solution</reasoning><answer>n</answer>`). All parameters are
trained (no LoRA), AdamW; the result is written in HF format (`convert/hf_export`) with the
tokenizer files, so `python -m diffpo_jax.train --config.model.hf_dir=<out>` starts from it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from diffpo_jax import distributed, evaluate, experiment, tasks
from diffpo_jax.sft_loss import sft_loss
from diffpo_jax.tasks.data import train_source


def answer_text(task: str, item: dict) -> str:
    """The SFT target of an item: its reference answer in the task's answer tags."""
    name = tasks.get_task(task).name
    if name in ("sudoku", "countdown"):  # the solver's grid / expression
        return f"<answer>\n{item['solution']}\n</answer>"
    if name == "gsm8k":
        return f"<reasoning>\n{item['solution']}\n</reasoning>\n<answer>\n{item['answer']}\n</answer>"
    raise ValueError(f"sft: no reference answers for task {task!r}; use sudoku, countdown or gsm8k")


def encode_examples(task: str, items, tokenizer, prompt_fn, completion_length: int, eot_id: int, pad_id: int):
    """-> (prompt `[B, P] i32` left-padded, prompt_mask `[B, P]`, completion `[B, L] i32`,
    weights `[B, L] f32`): completion = answer + <|eot_id|> + EOS padding to L (all weighted 1)."""
    from diffpo_jax.sampling import left_pad

    prompts = [tokenizer(prompt_fn(it), add_special_tokens=False)["input_ids"] for it in items]
    prompt, pmask = left_pad(prompts, pad_id)
    comp = np.full((len(items), completion_length), pad_id, np.int32)
    for i, it in enumerate(items):
        ids = tokenizer(answer_text(task, it), add_special_tokens=False)["input_ids"] + [eot_id]
        if len(ids) > completion_length:
            raise ValueError(f"sft: the answer of item {it.get('id', i)} has {len(ids)} tokens, more than "
                             f"config.sft.completion_length={completion_length}")
        comp[i, :len(ids)] = ids
    return prompt, pmask, comp, np.ones(comp.shape, np.float32)


def make_sft_step(graphdef, tx):
    """Jitted (state, opt_state, prompt, completion, weights, key) -> (state, opt_state, metrics)."""

    @jax.jit
    def step(state, opt_state, prompt, completion, weights, key):
        def loss_fn(s):
            return sft_loss(nnx.merge(graphdef, s), prompt, completion, weights, key)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, metrics

    return step


def run_sft(config: ml_collections.ConfigDict, progress: bool = True) -> dict:
    """Train config.sft.steps steps and write the HF checkpoint to config.sft.out_dir.
    Returns {'steps', 'seconds', 'final_loss', 'eval': summary or None}."""
    s = config.sft
    seed = int(config.seed)
    llm, tokenizer = experiment.build_llm(config, None)
    cfg = llm.cfg
    task = config.task.name
    style = config.task.prompt_style
    prompt_fn = lambda it: tasks.format_prompt(task, it, tokenizer, "train", False, style)  # noqa: E731
    gen_kwargs = experiment.generator_kwargs(config)
    source = train_source(task, config.task.data_dir or None, size=int(s.steps) * int(s.batch_size), seed=seed,
                          **gen_kwargs)
    graphdef, state = nnx.split(llm, nnx.Param)
    warmup = min(int(s.warmup), int(s.steps) // 2)
    lr = optax.warmup_cosine_decay_schedule(0.0, float(s.lr), warmup, int(s.steps), float(s.lr) * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(float(s.grad_clip)),
                     optax.adamw(lr, weight_decay=float(s.weight_decay)))
    opt_state = tx.init(state)
    step_fn = make_sft_step(graphdef, tx)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    bar = tqdm(range(int(s.steps)), desc="sft", disable=not progress, dynamic_ncols=True)
    metrics = {}
    for i in bar:
        items = [source[i * int(s.batch_size) + j] for j in range(int(s.batch_size))]
        prompt, _, comp, w = encode_examples(task, items, tokenizer, prompt_fn, int(s.completion_length),
                                             cfg.eot_token_id, cfg.pad_token_id)
        state, opt_state, metrics = step_fn(state, opt_state, jnp.asarray(prompt), jnp.asarray(comp),
                                            jnp.asarray(w), jax.random.fold_in(key, i))
        if i % 25 == 0:
            bar.set_postfix(loss=f"{float(metrics['sft_loss']):.3f}", acc=f"{float(metrics['masked_acc']):.3f}")
    seconds = time.perf_counter() - t0
    model = nnx.merge(graphdef, state, nnx.state(llm, nnx.Not(nnx.Param)))
    out = {"steps": int(s.steps), "seconds": round(seconds, 1), "final_loss": float(metrics["sft_loss"])}
    if int(s.get("eval_items", 0)):
        items = tasks.load_eval_items(task, config.task.data_dir or None, n=int(s.eval_items), seed=seed)
        ids = evaluate.encode_prompts(task, items, tokenizer, 0,
                                      lambda it: tasks.format_prompt(task, it, tokenizer, "eval", False, style))
        scfg = experiment.sampler_config(config.eval, cfg, "eval")
        _, summary = evaluate.run_eval(model, tokenizer, task, items, scfg, batch_size=int(config.train.eval_batch),
                                       prompt_ids=ids, progress=progress)
        out["eval"] = summary
    _save(model, tokenizer, config, out)
    return out


def _save(model, tokenizer, config, info: dict) -> None:
    from diffpo_jax.convert.hf_export import save_hf

    out_dir = config.sft.out_dir
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    save_hf(model, out_dir, dtype=config.sft.get("save_dtype", "float32"))
    if distributed.is_primary():
        with open(os.path.join(out_dir, "sft_info.json"), "w") as f:
            json.dump({"command": "python -m diffpo_jax.sft " + " ".join(sys.argv[1:]),
                       "seed": int(config.seed), "sft": config.sft.to_dict(), "model": config.model.to_dict(),
                       "task": config.task.to_dict(), "result": info}, f, indent=1, default=str)


def main(argv) -> None:
    del argv
    from diffpo_jax.train import quiet_logs

    quiet_logs()
    distributed.maybe_initialize()
    try:
        info = run_sft(experiment.config_flag_value(_CONFIG))
    except experiment.ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "SFT config file (configs/sft_*.py)", lock_config=True)
    app.run(main)

"""The embedded demo (README's main command): DiFFPO makes a tiny dLLM solve 4x4 Sudoku
better *and* with fewer forward passes, on a laptop CPU in a few minutes.

    python -m diffpo_jax.demo [--method joint] [--steps 40] [--seed 0] [--out_dir runs/demo_joint_seed0]

1. Loads the shipped tiny LLaDA (diffpo_jax/assets/demo_sudoku: ~0.9M parameters, made by
   `python -m diffpo_jax.sft --config configs/sft_sudoku.py`, seed 0, see its sft_info.json).
2. Evaluates it on held-out puzzles of the real test set (../shared/data): the EB sampler at
   fixed γ values (accuracy and mean NFE), and LLaDA's one-token-per-step decoding.
3. Trains with DiFFPO (configs/demo_sudoku.py: 2-MF + IS + the jointly trained threshold
   head; `--method` picks d1 / 2mf / 2mf_is instead) — the same `diffpo_jax.train` loop
   as the LLaDA-8B configs, checkpoints and metrics in `--out_dir` (default
   `runs/demo_<method>_seed<seed>`: one per run, since re-running in a directory resumes
   from its checkpoints).
4. Evaluates the trained model with its adaptive sampler (γ = μ_φ(p) per prompt) and the
   same fixed γ values, prints before/after accuracy and NFE, writes `pareto.png` and
   `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

from diffpo_jax import evaluate, experiment, tasks
from diffpo_jax.rl.rollout import adaptive_gamma_fn


def _evaluate(llm, tokenizer, config, items, ids, scfg, gamma_fn=None) -> dict:
    _, summary = evaluate.run_eval(llm, tokenizer, config.task.name, items, scfg,
                                   batch_size=int(config.train.eval_batch), gamma_fn=gamma_fn,
                                   key=jax.random.key(1234), prompt_ids=ids, progress=False,
                                   pad_multiple=int(config.eval.get("pad_multiple", 0)))
    return summary


def fixed_gamma_points(llm, tokenizer, config, items, ids, series: str) -> list[dict]:
    """Fixed-γ EB points ({label, series, accuracy, nfe_mean, ...}) for the Pareto plot."""
    base = experiment.sampler_config(config.eval, llm.cfg, "eval")
    return [{"label": f"γ={g:g}", "series": series, "gamma": g,
             **_evaluate(llm, tokenizer, config, items, ids, base.replace(gamma=float(g)))}
            for g in config.eval.gammas]


def adaptive_point(policy, tokenizer, config, items, ids, rl_cfg, series: str) -> dict:
    """The adaptive sampler: per-prompt γ = μ_φ(p) from the threshold head."""
    scfg = experiment.sampler_config(config.eval, policy.llm.cfg, "eval")
    mu_of = adaptive_gamma_fn(policy, scfg.gen_length, rl_cfg.use_padding_mask)
    mus = []

    def gamma_fn(p, m):
        mus.append(mu_of(p, m))
        return mus[-1]

    out = _evaluate(policy.llm, tokenizer, config, items, ids, scfg, gamma_fn)
    mu_mean = float(jnp.concatenate(mus).mean())
    return {"label": f"adaptive (mean μ={mu_mean:.2f})", "series": series, "gamma": mu_mean, **out}


def default_out_dir(method: str, seed: int) -> str:
    """`runs/demo_<method>_seed<seed>`: training resumes from what `out_dir` holds, so every
    method and seed gets its own directory (another method's checkpoint is never reused)."""
    return os.path.join("runs", f"demo_{method}_seed{seed}")


def run_demo(method: str = "joint", steps: int = 0, out_dir: str | None = None, seed: int = 0,
             eval_items: int = 0, overrides: dict | None = None, progress: bool = True,
             sweep: bool = True) -> dict:
    """Run the whole demo; returns the summary written to `<out_dir>/summary.json`
    (out_dir None: `default_out_dir(method, seed)`; an existing run there is resumed, and
    experiment.ConfigError is raised if its parameters do not fit this method).
    `sweep=False` evaluates only the main points (before: EB at `eval.gamma`; after: the
    adaptive sampler when joint, else EB at `eval.gamma`), for the paper table's many runs."""
    from configs import demo_sudoku
    from diffpo_jax.train import train

    t0 = time.perf_counter()
    out_dir = out_dir or default_out_dir(method, seed)
    config = demo_sudoku.get_config(method)
    config.seed = seed
    config.train.out_dir = out_dir
    if steps:
        config.train.steps = steps
    if eval_items:
        config.train.eval_items = eval_items
    for k, v in (overrides or {}).items():
        section, field = k.split(".", 1)
        config[section][field] = v
    rl_cfg = experiment.rl_config(config)

    llm, tokenizer = experiment.build_llm(config, None)
    items = tasks.load_eval_items("sudoku", config.task.data_dir or None, n=int(config.train.eval_items), seed=42)
    fmt = lambda it: tasks.format_prompt("sudoku", it, tokenizer, "eval", False, "compact")  # noqa: E731
    ids = evaluate.encode_prompts("sudoku", items, tokenizer, 0, fmt)
    say = print if progress else (lambda *a, **k: None)
    say(f"[demo] held-out: {len(items)} puzzles of shared/data/sudoku_4x4_test.csv; model: {config.model.hf_dir}")
    eval_cfg = experiment.sampler_config(config.eval, llm.cfg, "eval")
    one_per_step = eval_cfg.replace(rule="fixed", steps=eval_cfg.gen_length)
    before_fixed = _evaluate(llm, tokenizer, config, items, ids, one_per_step)
    ref_gamma = float(config.eval.gamma)
    if sweep:
        config.eval.gammas = tuple(sorted(set(config.eval.gammas) | {ref_gamma}))
    else:
        config.eval.gammas = (ref_gamma,)
    before = fixed_gamma_points(llm, tokenizer, config, items, ids, "SFT model, fixed γ")
    before_ref = next(p for p in before if abs(p["gamma"] - ref_gamma) < 1e-9)
    say(f"[demo] before: EB γ={before_ref['gamma']:g}: accuracy {100 * before_ref['accuracy']:.1f}%, "
        f"mean NFE {before_ref['nfe_mean']:.2f}   (one token per step: {100 * before_fixed['accuracy']:.1f}%, "
        f"NFE {before_fixed['nfe_mean']:.0f})")
    t_train = time.perf_counter()
    result = train(config, progress=progress)
    t_train = time.perf_counter() - t_train
    policy = result.policy
    after = fixed_gamma_points(policy.llm, tokenizer, config, items, ids, f"{method} model, fixed γ")
    points = before + after
    after_main = next(p for p in after if abs(p["gamma"] - ref_gamma) < 1e-9)
    if rl_cfg.joint_sampler:
        after_main = adaptive_point(policy, tokenizer, config, items, ids, rl_cfg, f"{method}, adaptive γ=μ(p)")
        points.append(after_main)
    plot = evaluate.plot_pareto(points, os.path.join(out_dir, "pareto.png"),
                                f"4x4 Sudoku, tiny dLLM: before vs after {method}")
    summary = {"method": method, "seed": seed, "steps": int(config.train.steps), "n_eval": len(items),
               "before": before_ref, "before_one_token_per_step": before_fixed, "after": after_main,
               "points": points, "train_seconds": round(t_train, 1),
               "total_seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    say("")
    say(f"{'':28}{'accuracy':>10}{'puzzles':>10}{'mean NFE':>10}")
    for name, p in (("before (SFT, EB γ=%g)" % before_ref["gamma"], before_ref),
                    (f"after ({after_main['label'] if rl_cfg.joint_sampler else 'EB γ=%g' % after_main['gamma']})",
                     after_main)):
        say(f"{name:28}{100 * p['accuracy']:>9.1f}%{100 * p['puzzle_accuracy']:>9.1f}%{p['nfe_mean']:>10.2f}")
    say(f"[demo] accuracy = d1's Sudoku cell accuracy; 'puzzles' = fully solved grids. Training {t_train:.0f} s, "
        f"total {summary['total_seconds']:.0f} s. Plot: {plot}; numbers: {out_dir}/summary.json")
    return summary


def main(argv=None) -> int:
    from configs.demo_sudoku import METHODS

    p = argparse.ArgumentParser(prog="python -m diffpo_jax.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="joint", choices=METHODS,
                   help="joint (default: 2-MF + IS + threshold head), d1, 2mf or 2mf_is")
    p.add_argument("--steps", type=int, default=0, help="RL steps (default: configs/demo_sudoku.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RL run (default 0)")
    p.add_argument("--eval_items", type=int, default=0, help="held-out puzzles (default: the config's)")
    p.add_argument("--out_dir", default=None,
                   help="checkpoints, metrics.jsonl, pareto.png, summary.json (default runs/demo_<method>_seed<seed>; "
                        "an existing run there is resumed)")
    args = p.parse_args(argv)
    from absl import logging

    from diffpo_jax import distributed

    logging.set_verbosity(logging.WARNING)
    distributed.maybe_initialize()  # multi-host from the environment; a no-op on one host
    try:
        run_demo(args.method, args.steps, args.out_dir or default_out_dir(args.method, args.seed), args.seed,
                 args.eval_items)
    except experiment.ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

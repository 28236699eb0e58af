"""The embedded demo (README's main command): DiFFPO makes a tiny dLLM solve 4x4 Sudoku
better *and* with fewer forward passes, on a laptop CPU in a few minutes.

    python -m diffpo_jax.demo [--method joint] [--family llada] [--steps 40] [--seed 0] [--out_dir runs/demo_joint_seed0]

1. Loads the shipped tiny LLaDA (diffpo_jax/assets/demo_sudoku: ~0.9M parameters, made by
   `python -m diffpo_jax.sft --config configs/sft_sudoku.py`, seed 0, see its sft_info.json),
   or with `--family dream` the same recipe in the Dream architecture
   (diffpo_jax/assets/demo_sudoku_dream: GQA, q/k/v biases, the logit shift, ChatML prompts).
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
5. The fair comparison: the SFT model with the fixed-γ EB sampler at the γ whose mean NFE
   matches the trained model's main point (`sft_equal_nfe`: log γ interpolated against NFE
   on the SFT points, then a secant refinement or two; an SFT point already within
   `NFE_TOL` is reused), and a verdict line computed from
   the numbers (`equal_nfe_gain`: cell and puzzle points of the trained model over it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Callable, Sequence

import jax

from diffpo_jax import evaluate, experiment, tasks


def _evaluate(llm, tokenizer, config, items, ids, scfg, gamma_fn=None) -> dict:
    _, summary = evaluate.run_eval(llm, tokenizer, config.task.name, items, scfg,
                                   batch_size=int(config.train.eval_batch), gamma_fn=gamma_fn,
                                   key=jax.random.key(1234), prompt_ids=ids, progress=False,
                                   pad_multiple=int(config.eval.get("pad_multiple", 0)))
    return summary


def fixed_gamma_points(llm, tokenizer, config, items, ids, series: str,
                       gammas: Sequence[float] | None = None) -> list[dict]:
    """Fixed-γ EB points ({label, series, accuracy, nfe_mean, ...}) for the Pareto plot, at
    `gammas` (default config.eval.gammas)."""
    base = experiment.sampler_config(config.eval, llm.cfg, "eval")
    return [{"label": f"γ={g:g}", "series": series, "gamma": g,
             **_evaluate(llm, tokenizer, config, items, ids, base.replace(gamma=float(g)))}
            for g in (config.eval.gammas if gammas is None else gammas)]


NFE_TOL = 0.25  # |NFE(SFT at γ) - NFE(trained model)| that counts as equal NFE


def gamma_for_nfe(points: Sequence[tuple[float, float]], target_nfe: float,
                  max_factor: float = 4.0) -> tuple[float, bool]:
    """(γ to try next, bracketed): the fixed γ at which the EB sampler's mean NFE should be
    `target_nfe`, from evaluated (γ, nfe_mean) `points` (NFE falls as γ grows). Bracketed:
    log γ linear in NFE between the points closest above and below the target. Otherwise
    (the target is beyond every point) the secant through the two points nearest the target,
    its step capped at a factor `max_factor` in γ (×/÷ 2 when the points give no usable slope)."""
    pts = sorted({(float(g), float(n)) for g, n in points if g > 0})
    if not pts:
        raise ValueError("gamma_for_nfe: needs at least one point with γ > 0")
    above = [p for p in pts if p[1] >= target_nfe]
    below = [p for p in pts if p[1] <= target_nfe]
    if above and below:
        ga, na = min(above, key=lambda p: (p[1], -p[0]))  # the smallest NFE >= target (largest γ on ties)
        gb, nb = max(below, key=lambda p: (p[1], -p[0]))  # the largest NFE <= target (smallest γ on ties)
        if na == nb:
            return math.sqrt(ga * gb), True
        t = (na - target_nfe) / (na - nb)
        return math.exp(math.log(ga) + t * (math.log(gb) - math.log(ga))), True
    near = sorted(pts, key=lambda p: abs(p[1] - target_nfe))
    g1, n1 = near[0]
    other = next((p for p in near[1:] if p[1] != n1), None)
    slope = None if other is None else (math.log(other[0]) - math.log(g1)) / (other[1] - n1)
    if slope is None or slope >= 0:  # no slope, or NFE not falling with γ: step by 2 the right way
        return (g1 * 2.0 if target_nfe < n1 else g1 / 2.0), False
    step = max(-math.log(max_factor), min(math.log(max_factor), (target_nfe - n1) * slope))
    return g1 * math.exp(step), False


def match_nfe(eval_at: Callable[[float], dict], known: Sequence[dict], target_nfe: float,
              tol: float = NFE_TOL, max_evals: int = 3) -> tuple[dict, list[dict]]:
    """(closest, tried): the SFT summary whose NFE matches `target_nfe`. `known`: summaries
    already measured (`gamma`, `nfe_mean`, accuracies); the nearest one is returned unevaluated
    when it is within `tol`. Otherwise evaluate `eval_at(γ)` at `gamma_for_nfe`'s γ, then again
    with every evaluation added to the points (a secant / regula-falsi step) while the NFE is
    off by more than `tol`, at most `max_evals` evaluations. `closest` is the summary whose NFE
    is nearest the target (of `tried`, or the known one), with `gamma`, `target_nfe`, `nfe_gap`
    and `matched`; `tried` lists the new evaluations only."""
    points = [(float(k["gamma"]), float(k["nfe_mean"])) for k in known]
    tried: list[dict] = []
    nearest = min(known, key=lambda k: abs(float(k["nfe_mean"]) - target_nfe), default=None)
    if nearest is not None and abs(float(nearest["nfe_mean"]) - target_nfe) <= tol:
        candidates = [nearest]
    else:
        for _ in range(max_evals):
            g, _ = gamma_for_nfe(points, target_nfe)
            if any(abs(g - t["gamma"]) <= 1e-6 * g for t in tried):
                break  # the search is not moving (an NFE plateau)
            out = {**eval_at(g), "gamma": g}
            tried.append(out)
            points.append((g, float(out["nfe_mean"])))
            if abs(out["nfe_mean"] - target_nfe) <= tol:
                break
        candidates = tried
    best = dict(min(candidates, key=lambda t: abs(t["nfe_mean"] - target_nfe)))
    gap = float(best["nfe_mean"]) - float(target_nfe)
    best.update(target_nfe=float(target_nfe), nfe_gap=gap, matched=abs(gap) <= tol)
    return best, tried


def _signed(x: float) -> str:
    return f"{'+' if x >= 0 else '−'}{abs(x):.1f}"


def equal_nfe_verdict(after: dict, sft: dict, tol: float = NFE_TOL) -> tuple[dict, str]:
    """({cells, puzzles}: points of `after` over `sft`, the verdict line) from two summaries
    (accuracy, puzzle_accuracy, nfe_mean). Beats = no worse on both and better on one."""
    cells = 100 * (float(after["accuracy"]) - float(sft["accuracy"]))
    puzzles = 100 * (float(after["puzzle_accuracy"]) - float(sft["puzzle_accuracy"]))
    gain = {"cells": round(cells, 3), "puzzles": round(puzzles, 3)}
    nfes = f"({after['nfe_mean']:.2f} vs {sft['nfe_mean']:.2f})"
    if abs(float(after["nfe_mean"]) - float(sft["nfe_mean"])) <= tol:
        where = f"at equal NFE {nfes}"
    else:
        where = (f"at the closest NFE the SFT model reached {nfes}, NOT equal (γ={sft.get('gamma', float('nan')):.3g} "
                 f"is at the edge of the search)")
    numbers = f"{_signed(cells)} cell points / {_signed(puzzles)} puzzle points"
    if cells >= 0 and puzzles >= 0 and (cells > 0 or puzzles > 0):
        text = f"{where} RL is {numbers} over the SFT model"
    elif cells <= 0 and puzzles <= 0:
        text = f"{where} RL does NOT beat the SFT model ({numbers})"
    else:
        text = f"{where} RL is mixed against the SFT model ({numbers})"
    return gain, "[demo] " + text


def adaptive_point(policy, tokenizer, config, items, ids, series: str, eval_cfg=None) -> dict:
    """The adaptive sampler: γ = μ_φ(p) per prompt (or μ_φ(p, s_t) per step) from the threshold
    head, inside the EB sampler of `eval_cfg` (default: config.eval). `gamma` = the mean γ used."""
    scfg = eval_cfg or experiment.sampler_config(config.eval, policy.llm.cfg, "eval")
    records, out = evaluate.run_eval(policy.llm, tokenizer, config.task.name, items, scfg,
                                     batch_size=int(config.train.eval_batch), head=policy.head,
                                     key=jax.random.key(1234), prompt_ids=ids, progress=False,
                                     pad_multiple=int(config.eval.get("pad_multiple", 0)))
    gammas = [r["gamma"] for r in records]
    mu_mean = float(sum(gammas) / max(len(gammas), 1))
    kind = "μ(p, s_t)" if policy.head.n_step_features else "μ(p)"
    return {"label": f"adaptive {kind} (mean γ={mu_mean:.2f})", "series": series, "gamma": mu_mean,
            "gammas": gammas, **out}


def default_out_dir(method: str, seed: int, family: str = "llada") -> str:
    """`runs/demo_<method>_seed<seed>` (`runs/demo_<family>_<method>_seed<seed>` for a family
    other than llada): training resumes from what `out_dir` holds, so every method, family and
    seed gets its own directory (another run's checkpoint is never reused)."""
    name = method if family == "llada" else f"{family}_{method}"
    return os.path.join("runs", f"demo_{name}_seed{seed}")


def run_demo(method: str = "joint", steps: int = 0, out_dir: str | None = None, seed: int = 0,
             eval_items: int = 0, overrides: dict | None = None, progress: bool = True,
             sweep: bool = True, family: str = "llada") -> dict:
    """Run the whole demo; returns the summary written to `<out_dir>/summary.json`
    (out_dir None: `default_out_dir(method, seed)`; an existing run there is resumed, and
    experiment.ConfigError is raised if its parameters do not fit this method).
    `sweep=False` evaluates only the main points (before: EB at `eval.gamma`; after: the
    adaptive sampler when joint, else EB at `eval.gamma`), for the paper table's many runs."""
    from configs import demo_sudoku
    from diffpo_jax.train import train

    t0 = time.perf_counter()
    out_dir = out_dir or default_out_dir(method, seed, family)
    config = demo_sudoku.get_config(f"{method},{family}")
    config.seed = seed
    config.train.out_dir = out_dir
    if steps:
        config.train.steps = steps
    if eval_items:
        config.train.eval_items = eval_items
    experiment.apply_overrides(config, overrides)
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
    sweep_gammas = tuple(float(g) for g in config.eval.gammas)
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
    after_main = next(p for p in after if abs(p["gamma"] - ref_gamma) < 1e-9)
    if rl_cfg.joint_sampler:
        after_main = adaptive_point(policy, tokenizer, config, items, ids, f"{method}, adaptive γ")
    # The fair comparison: the SFT model (`llm` is untouched: train() loads its own copy) at the
    # fixed γ whose mean NFE matches the trained model's main point (every model forward counted).
    target = float(after_main["nfe_mean"])
    sft_known = list(before)
    if not sweep:  # only the ref point so far: bracket the target with the sweep's γ on its side
        side = [g for g in sweep_gammas
                if (g > ref_gamma if target < before_ref["nfe_mean"] else g < ref_gamma)]
        sft_known += fixed_gamma_points(llm, tokenizer, config, items, ids, "SFT model, fixed γ", side)
    eval_at = lambda g: fixed_gamma_points(llm, tokenizer, config, items, ids, "SFT model, fixed γ", [g])[0]  # noqa: E731
    sft_eq, tried = match_nfe(eval_at, sft_known, target)
    sft_eq.update(label=f"γ={sft_eq['gamma']:.3g} (equal NFE)", series="SFT model, fixed γ",
                  tries=[{"gamma": t["gamma"], "nfe_mean": t["nfe_mean"], "accuracy": t["accuracy"]} for t in tried])
    gain, verdict = equal_nfe_verdict(after_main, sft_eq)
    points = sft_known + [sft_eq] + after + ([after_main] if rl_cfg.joint_sampler else [])
    plot = evaluate.plot_pareto(points, os.path.join(out_dir, "pareto.png"),
                                f"4x4 Sudoku, tiny {'LLaDA' if family == 'llada' else 'Dream'}: before vs after {method}")
    summary = {"method": method, "family": family, "seed": seed, "steps": int(config.train.steps), "n_eval": len(items),
               "before": before_ref, "before_one_token_per_step": before_fixed, "after": after_main,
               "sft_equal_nfe": sft_eq, "equal_nfe_gain": gain, "equal_nfe_verdict": verdict,
               "points": points, "train_seconds": round(t_train, 1),
               "total_seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    say("")
    say(f"{'':36}{'accuracy':>10}{'puzzles':>10}{'mean NFE':>10}")
    after_name = after_main["label"] if rl_cfg.joint_sampler else "EB γ=%g" % after_main["gamma"]
    for name, p in ((f"before (SFT, EB γ={before_ref['gamma']:g})", before_ref),
                    (f"SFT, EB γ={sft_eq['gamma']:.3g} (equal NFE)", sft_eq),
                    (f"after ({after_name})", after_main)):
        say(f"{name:36}{100 * p['accuracy']:>9.1f}%{100 * p['puzzle_accuracy']:>9.1f}%{p['nfe_mean']:>10.2f}")
    say(verdict)
    say(f"[demo] accuracy = d1's Sudoku cell accuracy; 'puzzles' = fully solved grids. Training {t_train:.0f} s, "
        f"total {summary['total_seconds']:.0f} s. Plot: {plot}; numbers: {out_dir}/summary.json")
    return summary


def main(argv=None) -> int:
    from configs.demo_sudoku import METHODS

    p = argparse.ArgumentParser(prog="python -m diffpo_jax.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="joint", choices=METHODS,
                   help="joint (default: 2-MF + IS + threshold head, one γ per prompt), joint_step (the "
                        "step-level head: a γ per decoding step), d1, 2mf, 2mf_is or exact")
    p.add_argument("--family", default="llada", choices=("llada", "dream"),
                   help="model family of the shipped tiny SFT model: llada (default, assets/demo_sudoku) or dream "
                        "(assets/demo_sudoku_dream: Dream's architecture and ChatML tokenizer)")
    p.add_argument("--steps", type=int, default=0, help="RL steps (default: configs/demo_sudoku.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RL run (default 0)")
    p.add_argument("--eval_items", type=int, default=0, help="held-out puzzles (default: the config's)")
    p.add_argument("--out_dir", default=None,
                   help="checkpoints, metrics.jsonl, pareto.png, summary.json (default runs/demo_[<family>_]<method>_seed<seed>; "
                        "an existing run there is resumed)")
    args = p.parse_args(argv)
    from absl import logging

    from diffpo_jax import distributed

    logging.set_verbosity(logging.WARNING)
    distributed.maybe_initialize()  # multi-host from the environment; a no-op on one host
    try:
        run_demo(args.method, args.steps, args.out_dir or default_out_dir(args.method, args.seed, args.family),
                 args.seed, args.eval_items, family=args.family)
    except experiment.ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The adaptive sampler against the best fixed rule, in and out of distribution (issue 20).

    python -m diffpo_jax.frontier_experiment --heads prompt,step --seeds 0,1,2 --out_dir runs/frontier
    python -m diffpo_jax.frontier_experiment --family dream --heads prompt --out_dir runs/frontier_dream

On the embedded demo's 4x4 Sudoku setting (the shipped SFT model, `--family dream` its Dream-
architecture twin; `configs/demo_sudoku.py:joint`
and `:joint_step` with the demo's budget: 40 RL steps of 8 prompts x 8 completions, 2-MF + IS +
the threshold head):

1. The fixed-rule frontier of the SFT model on every target set: EB at each γ of `--gammas` and
   Fast-dLLM's threshold rule at each τ of `--thresholds` (greedy, 256 items). Its frontier is
   the non-dominated (NFE, accuracy) points of both sweeps joined linearly (`frontier.py`).
2. Per head kind (`rl.head`: prompt = one γ per prompt, the paper's; step = γ_t per decoding
   step) and seed: the joint run (its own out_dir, resumable), then the trained system (LoRA +
   head, γ = μ, the head reading the sampler's first forward) on every target, and the trained
   LLM with fixed EB γ (`RL_GAMMAS`) and fixed thresholds (`RL_THRESHOLDS`) on the
   in-distribution set (does the LoRA move the fixed frontier? does the head beat its own LLM's
   fixed rules?).
3. NFE saved at equal accuracy, 1 − NFE / frontier NFE(accuracy), and the accuracy gained at
   equal NFE, acc − frontier accuracy(NFE), per run; mean ± 95% CI over seeds
   (`seed_stats.mean_ci`), paired step − prompt differences.

Targets: `test` = the shipped held-out puzzles (8 empty cells, as training), `empty4` / `empty11`
= generated puzzles with 4 / 11 empty cells (the SFT data had 6–10, RL 8), `len32` = the held-out
puzzles decoded with a 32-token completion (the head was trained at 24). The head is frozen:
trained on `test`'s distribution only. Outputs in --out_dir: `results.json` (every point),
`frontier.md` (the tables), `frontier.png` (in-distribution plot), `ood.png` (accuracy vs NFE per
target), `gammas.png` (the heads' γ per target). Every evaluation is cached in
`<out_dir>/evals/`, so an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional, Sequence

from diffpo_jax import evaluate, experiment, frontier, seed_stats, storage, tasks
from diffpo_jax.cli_types import floats, positive_int

HEADS = ("prompt", "step")
TARGETS = {  # name -> (puzzle source, completion length)
    "test": ("test", 24),
    "empty4": (4, 24),
    "empty11": (11, 24),
    "len32": ("test", 32),
}
GAMMAS = (0.03, 0.1, 0.3, 0.6, 1.0, 1.7, 3.0, 6.0)
THRESHOLDS = (0.98, 0.9, 0.8, 0.6, 0.4, 0.2)
RL_GAMMAS = (0.3, 0.6, 1.0, 1.7, 3.0)
RL_THRESHOLDS = (0.9, 0.8, 0.6)


def target_items(name: str, n: int) -> list[dict]:
    """The `n` puzzles of target `name`: the held-out test subset (d1's 256), or generated
    puzzles with k empty cells (seed 7, disjoint from the test set)."""
    source = TARGETS[name][0]
    if source == "test":
        return tasks.load_eval_items("sudoku", n=n, seed=42)
    from diffpo_jax.tasks import generators
    from diffpo_jax.tasks.data import heldout_keys

    exclude = heldout_keys("sudoku")
    return [{"id": f"sudoku/gen7_empty{source}/{i}",
             **generators.generate_sudoku(i, 7, min_empty=source, max_empty=source, exclude=exclude)} for i in range(n)]


class Study:
    """Shared state: the demo config, the SFT model, the targets' prompts, the evaluation cache."""

    def __init__(self, out_dir: str, n_items: int, steps: int, targets: Sequence[str] = tuple(TARGETS),
                 progress: bool = True, family: str = "llada"):
        from configs import demo_sudoku

        self.out_dir, self.steps, self.progress, self.family = out_dir, steps, progress, family
        self.config = demo_sudoku.get_config(f"joint,{family}")
        self.llm, self.tokenizer = experiment.build_llm(self.config, None)
        fmt = lambda it: tasks.format_prompt("sudoku", it, self.tokenizer, "eval", False, "compact")  # noqa: E731
        self.items = {t: target_items(t, n_items) for t in targets}
        self.ids = {t: evaluate.encode_prompts("sudoku", self.items[t], self.tokenizer, 0, fmt) for t in targets}
        os.makedirs(os.path.join(out_dir, "evals"), exist_ok=True)

    def say(self, *a):
        if self.progress:
            print(*a, flush=True)

    def sampler(self, target: str, **kw):
        base = experiment.sampler_config(self.config.eval, self.llm.cfg, "eval")
        length = TARGETS[target][1]
        return base.replace(gen_length=length, block_length=length, **kw)

    def cached(self, name: str, fn) -> dict:
        """fn() -> a point dict, stored as `<out_dir>/evals/<name>.json` (reused when present)."""
        path = os.path.join(self.out_dir, "evals", f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        t0 = time.perf_counter()
        point = fn()
        point["seconds"] = round(time.perf_counter() - t0, 1)
        storage.write_text(path, json.dumps(point))
        self.say(f"[frontier] {name}: accuracy {100 * point['accuracy']:.1f}% (puzzles "
                 f"{100 * point['puzzle_accuracy']:.1f}%), NFE {point['nfe_mean']:.2f}  ({point['seconds']:.0f} s)")
        return point

    def fixed(self, llm, target: str, rule: str, knob: float, model: str) -> dict:
        kw = {"rule": "eb", "gamma": knob} if rule == "eb" else {"rule": "threshold", "threshold": knob}

        def run():
            from diffpo_jax.demo import _evaluate
            out = _evaluate(llm, self.tokenizer, self.config, self.items[target], self.ids[target],
                            self.sampler(target, **kw))
            return {"model": model, "target": target, "rule": rule, "knob": knob, **out}

        return self.cached(f"{model}_{target}_{rule}{knob:g}", run)

    def train(self, head: str, seed: int):
        from diffpo_jax.train import train

        from configs import demo_sudoku

        config = demo_sudoku.get_config(f"{'joint' if head == 'prompt' else 'joint_step'},{self.family}")
        config.seed = seed
        config.train.steps = self.steps
        config.train.out_dir = os.path.join(self.out_dir, f"{head}_seed{seed}")
        t0 = time.perf_counter()
        result = train(config, progress=self.progress)
        self.say(f"[frontier] trained {head} head, seed {seed}: {time.perf_counter() - t0:.0f} s")
        return result.policy

    def adaptive(self, policy, head: str, seed: int, target: str) -> dict:
        def run():
            from diffpo_jax.demo import adaptive_point
            p = adaptive_point(policy, self.tokenizer, self.config, self.items[target], self.ids[target], "",
                               self.sampler(target))
            return {"model": f"{head}_seed{seed}", "target": target, "rule": f"{head} head", "head": head,
                    "seed": seed, **{k: v for k, v in p.items() if k not in ("label", "series")}}

        return self.cached(f"{head}_seed{seed}_{target}_adaptive", run)


def sft_frontier(points: Sequence[dict], target: str, rules: Sequence[str] = ("eb", "threshold")):
    """The fixed-rule frontier [(nfe, accuracy)] of the SFT points of `target` over `rules`."""
    return frontier.pareto_frontier([(p["nfe_mean"], p["accuracy"]) for p in points
                                     if p["model"] == "sft" and p["target"] == target and p["rule"] in rules])


def compare(points: Sequence[dict], heads: Sequence[str], seeds: Sequence[int],
            targets: Sequence[str] = tuple(TARGETS)) -> dict:
    """{target: {'frontier': [(nfe, acc)], head: {'saved': [per seed], 'gain': [per seed], 'nfe',
    'accuracy', 'puzzles', 'gamma': [...]}}} against each target's SFT frontier (EB + threshold);
    `*_eb` against the SFT model's EB-only frontier (fixed γ: the paper's comparison), `*_own`
    against the run's own LLM with fixed rules (what the head adds on top of its LoRA)."""
    out = {}
    for target in targets:
        front, front_eb = sft_frontier(points, target), sft_frontier(points, target, ("eb",))
        out[target] = {"frontier": front, "frontier_eb": front_eb}
        for head in heads:
            rows = {k: [] for k in ("saved", "gain", "saved_eb", "gain_eb", "saved_own", "gain_own", "nfe", "accuracy",
                                    "puzzles", "gamma")}
            for seed in seeds:
                p = next((q for q in points if q.get("head") == head and q.get("seed") == seed
                          and q["target"] == target), None)
                if p is None:
                    continue
                rows["saved"].append(frontier.nfe_saved(front, p["nfe_mean"], p["accuracy"]))
                rows["gain"].append(frontier.accuracy_gain(front, p["nfe_mean"], p["accuracy"]))
                rows["saved_eb"].append(frontier.nfe_saved(front_eb, p["nfe_mean"], p["accuracy"]))
                rows["gain_eb"].append(frontier.accuracy_gain(front_eb, p["nfe_mean"], p["accuracy"]))
                own = frontier.pareto_frontier([(q["nfe_mean"], q["accuracy"]) for q in points if q.get("rl_head") == head
                                                and q.get("seed") == seed and q["target"] == target])
                rows["saved_own"].append(frontier.nfe_saved(own, p["nfe_mean"], p["accuracy"]) if own else None)
                rows["gain_own"].append(frontier.accuracy_gain(own, p["nfe_mean"], p["accuracy"]) if own else None)
                rows["nfe"].append(p["nfe_mean"])
                rows["accuracy"].append(p["accuracy"])
                rows["puzzles"].append(p["puzzle_accuracy"])
                rows["gamma"].append(p["gamma"])
            out[target][head] = rows
    return out


def _ci(values, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """mean ± 95% CI of the non-None values × scale; '(k outside)' counts the runs outside the
    frontier's measured range (None: not compared)."""
    vals = [v for v in values if v is not None]
    miss = len(values) - len(vals)
    note = f" ({miss} outside)" if miss else ""
    if not vals:
        return "—" + note
    m, h = seed_stats.mean_ci([scale * v for v in vals])
    return seed_stats.fmt_ci(m, h, digits, signed) + note


def tables(cmp: dict, points: Sequence[dict], heads: Sequence[str], gammas: Sequence[float] = GAMMAS,
           thresholds: Sequence[float] = THRESHOLDS, rl_gammas: Sequence[float] = RL_GAMMAS,
           rl_thresholds: Sequence[float] = RL_THRESHOLDS) -> str:
    """Markdown: the per-target comparison table, the paired step − prompt differences, the SFT
    frontier points, and the RL models' fixed-γ points."""
    lines = ["| target | sampler | cell acc. % | puzzles % | mean NFE | mean γ | NFE saved at equal acc. % "
             "| acc. gain at equal NFE (points) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    targets = list(cmp)
    for target in targets:
        front = cmp[target]["frontier"]
        lines.append(f"| {target} | SFT fixed-rule frontier (EB + threshold) | "
                     f"{100 * front[0][1]:.1f} … {100 * front[-1][1]:.1f} | | {front[0][0]:.2f} … {front[-1][0]:.2f} "
                     "| | 0 | 0 | — |")
        for head in heads:
            r = cmp[target][head]
            lines.append(f"| {target} | {head} head (+ its LoRA) | {_ci(r['accuracy'])} | {_ci(r['puzzles'])} | "
                         f"{_ci(r['nfe'], 1.0, 2)} | {_ci(r['gamma'], 1.0, 2)} | {_ci(r['saved'], signed=True)} | "
                         f"{_ci(r['gain'], signed=True)} | {len(r['nfe'])} |")
            lines.append(f"| {target} | … against the SFT model's fixed EB γ only | | | | | "
                         f"{_ci(r['saved_eb'], signed=True)} | {_ci(r['gain_eb'], signed=True)} | {len(r['nfe'])} |")
            if any(v is not None for v in r["saved_own"] + r["gain_own"]):
                lines.append(f"| {target} | … against its own LLM's fixed rules (EB + threshold) | | | | | "
                             f"{_ci(r['saved_own'], signed=True)} | {_ci(r['gain_own'], signed=True)} | "
                             f"{len(r['nfe'])} |")
    out = ["\n".join(lines)]
    if set(HEADS) <= set(heads):
        pl = ["", "Paired by seed, step head − prompt head:", "",
              "| target | Δ NFE saved (points of %) | Δ acc. gain at equal NFE (points) |", "|---|---|---|"]
        for target in targets:
            a, b = cmp[target]["step"], cmp[target]["prompt"]
            pairs = [(x, y) for x, y in zip(a["saved"], b["saved"]) if x is not None and y is not None]
            gains = [(x, y) for x, y in zip(a["gain"], b["gain"]) if x is not None and y is not None]
            cell = lambda ps: (seed_stats.fmt_ci(*seed_stats.paired_diff([100 * x for x, _ in ps],  # noqa: E731
                                                                         [100 * y for _, y in ps]), signed=True)
                               if len(ps) > 1 else "—")
            pl.append(f"| {target} | {cell(pairs)} | {cell(gains)} |")
        out.append("\n".join(pl))
    sft = ["", "SFT model, fixed rules (cell % / puzzles % @ NFE):", "",
           "| target | " + " | ".join(f"EB γ={g:g}" for g in gammas) + " | "
           + " | ".join(f"τ={t:g}" for t in thresholds) + " |", "|---" * (1 + len(gammas) + len(thresholds)) + "|"]
    for target in targets:
        cells = []
        for rule, knobs in (("eb", gammas), ("threshold", thresholds)):
            for k in knobs:
                p = next((q for q in points if q["model"] == "sft" and q["target"] == target and q["rule"] == rule
                          and abs(q["knob"] - k) < 1e-12), None)
                cells.append("" if p is None else f"{100 * p['accuracy']:.1f} / {100 * p['puzzle_accuracy']:.1f} "
                             f"@ {p['nfe_mean']:.2f}")
        sft.append(f"| {target} | " + " | ".join(cells) + " |")
    out.append("\n".join(sft))
    rl = ["", "The trained LLMs (LoRA) with fixed rules on `test`, mean ± 95% CI over seeds (cell % @ NFE):", "",
          "| model | " + " | ".join([f"EB γ={g:g}" for g in rl_gammas] + [f"τ={t:g}" for t in rl_thresholds]) + " |",
          "|---" * (1 + len(rl_gammas) + len(rl_thresholds)) + "|"]
    for head in heads:
        cells = []
        for rule, k in [("eb", g) for g in rl_gammas] + [("threshold", t) for t in rl_thresholds]:
            ps = [q for q in points if q.get("rl_head") == head and q["target"] == "test" and q["rule"] == rule
                  and abs(q["knob"] - k) < 1e-12]
            cells.append(f"{_ci([q['accuracy'] for q in ps])} @ {_ci([q['nfe_mean'] for q in ps], 1.0, 2)}"
                         if ps else "")
        rl.append(f"| {head}-head run's LLM | " + " | ".join(cells) + " |")
    out.append("\n".join(rl))
    return "\n".join(out) + "\n"


COLORS = {"prompt": "tab:red", "step": "tab:green"}


def plots(points: Sequence[dict], heads: Sequence[str], out_dir: str,
          targets: Sequence[str] = tuple(TARGETS)) -> list[str]:
    """frontier.png (test: SFT EB / threshold curves, frontier, RL LLM fixed γ, head points),
    ood.png (one panel per target), gammas.png (per-row γ of each head per target, all seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel(ax, target, legend=True):
        for rule, style in (("eb", "o-"), ("threshold", "s--")):
            ps = sorted((p for p in points if p["model"] == "sft" and p["target"] == target and p["rule"] == rule),
                        key=lambda p: p["nfe_mean"])
            ax.plot([p["nfe_mean"] for p in ps], [100 * p["accuracy"] for p in ps], style, color="tab:blue",
                    alpha=0.8, ms=4, label=f"SFT, fixed {'EB γ' if rule == 'eb' else 'threshold τ'}")
        front = sft_frontier(points, target)
        ax.plot([n for n, _ in front], [100 * a for _, a in front], "-", color="black", lw=0.8, alpha=0.5,
                label="fixed-rule frontier")
        if target == "test":
            for head in heads:
                ps = [p for p in points if p.get("rl_head") == head and p["target"] == target]
                ax.plot([p["nfe_mean"] for p in ps], [100 * p["accuracy"] for p in ps], "x", color=COLORS[head],
                        alpha=0.6, label=f"{head}-head run's LLM, fixed rules")
        for head in heads:
            ps = [p for p in points if p.get("head") == head and p["target"] == target]
            ax.plot([p["nfe_mean"] for p in ps], [100 * p["accuracy"] for p in ps], "*", ms=11, color=COLORS[head],
                    label=f"{head} head (each seed)")
        ax.set_xscale("log")
        ax.set_xlabel("mean NFE (log)")
        ax.set_ylabel("cell accuracy %")
        ax.set_title(target, fontsize=9)
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=7)

    paths = []

    def save(fig, name):
        paths.append(os.path.join(out_dir, name))
        fig.tight_layout()
        fig.savefig(paths[-1])
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    panel(ax, "test")
    ax.set_title("4x4 Sudoku (held-out, in distribution): adaptive heads vs fixed rules", fontsize=9)
    save(fig, "frontier.png")
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.6), dpi=110, squeeze=False)
    for i, (ax, target) in enumerate(zip(axes[0], targets)):
        panel(ax, target, legend=i == 0)
    fig.suptitle("heads trained on `test` only, frozen; each panel: that target's fixed-rule sweeps", fontsize=9)
    save(fig, "ood.png")
    fig, axes = plt.subplots(1, len(heads), figsize=(5 * len(heads), 3.4), dpi=110, squeeze=False)
    for ax, head in zip(axes[0], heads):
        for target in targets:
            g = [x for p in points if p.get("head") == head and p["target"] == target for x in p.get("gammas", [])]
            if g:
                ax.hist(g, bins=40, histtype="step", label=target, density=True)
        ax.set_title(f"{head} head: γ per completion{' (mean over its steps)' if head == 'step' else ''}, "
                     "seeds pooled", fontsize=9)
        ax.set_xlabel("γ")
        ax.legend(fontsize=7)
    save(fig, "gammas.png")
    return paths


def run(heads: Sequence[str], seeds: Sequence[int], out_dir: str, n_items: int = 256, steps: int = 40,
        gammas: Optional[Sequence[float]] = None, thresholds: Optional[Sequence[float]] = None,
        targets: Sequence[str] = tuple(TARGETS), rl_gammas: Sequence[float] = RL_GAMMAS,
        rl_thresholds: Sequence[float] = RL_THRESHOLDS, progress: bool = True, family: str = "llada") -> dict:
    """The whole study (see the module doc); returns what `<out_dir>/results.json` holds."""
    gammas, thresholds = tuple(gammas or GAMMAS), tuple(thresholds or THRESHOLDS)
    if "test" not in targets:
        raise ValueError(f"targets {targets}: 'test' (the training distribution) is needed")
    t0 = time.perf_counter()
    study = Study(out_dir, n_items, steps, targets, progress, family)
    points = []
    for target in targets:
        points += [study.fixed(study.llm, target, "eb", g, "sft") for g in gammas]
        points += [study.fixed(study.llm, target, "threshold", t, "sft") for t in thresholds]
    for head in heads:
        for seed in seeds:
            policy = study.train(head, seed)
            points += [study.adaptive(policy, head, seed, t) for t in targets]
            for rule, knobs in (("eb", rl_gammas), ("threshold", rl_thresholds)):
                for k in knobs:
                    p = study.fixed(policy.llm, "test", rule, k, f"{head}_seed{seed}_llm")
                    points.append({**p, "rl_head": head, "seed": seed})
    cmp = compare(points, heads, seeds, targets)
    md = tables(cmp, points, heads, gammas, thresholds, rl_gammas, rl_thresholds)
    figs = plots(points, heads, out_dir, targets)
    seconds = round(time.perf_counter() - t0, 1)
    results = {"heads": list(heads), "seeds": list(seeds), "n_items": n_items, "steps": steps, "gammas": gammas,
               "thresholds": thresholds, "targets": list(targets), "family": family, "rl_gammas": list(rl_gammas),
               "rl_thresholds": list(rl_thresholds), "points": points, "comparison": cmp, "seconds": seconds}
    storage.write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1))
    storage.write_text(os.path.join(out_dir, "frontier.md"), md)
    study.say(md)
    study.say(f"[frontier] {seconds:.0f} s; tables {out_dir}/frontier.md, plots {', '.join(figs)}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.frontier_experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default="prompt,step", help="comma-separated head kinds (prompt, step)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds (default 0,1,2)")
    p.add_argument("--out_dir", default="runs/frontier", help="runs, cached evaluations, tables and plots")
    p.add_argument("--eval_items", type=positive_int, default=256, help="puzzles per target (default 256)")
    p.add_argument("--steps", type=positive_int, default=40, help="RL steps per run (default: the demo's 40)")
    p.add_argument("--gammas", type=floats, default=None, help=f"SFT EB sweep (default {','.join(map(str, GAMMAS))})")
    p.add_argument("--thresholds", type=floats, default=None,
                   help=f"SFT threshold sweep (default {','.join(map(str, THRESHOLDS))})")
    p.add_argument("--family", default="llada", choices=("llada", "dream"),
                   help="the shipped tiny SFT model: llada (assets/demo_sudoku) or dream (assets/demo_sudoku_dream)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated evaluation sets, 'test' included (default {','.join(TARGETS)})")
    args = p.parse_args(argv)
    heads = [h for h in args.heads.split(",") if h]
    if not heads or any(h not in HEADS for h in heads):
        p.error(f"--heads {args.heads!r}: a comma-separated subset of {HEADS}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: comma-separated integers")
    targets = [t for t in args.targets.split(",") if t]
    if "test" not in targets or any(t not in TARGETS for t in targets):
        p.error(f"--targets {args.targets!r}: a comma-separated subset of {tuple(TARGETS)} that includes 'test'")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        run(heads, seeds, args.out_dir, args.eval_items, args.steps, args.gammas, args.thresholds, targets,
            family=args.family)
    except experiment.ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

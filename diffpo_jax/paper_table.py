"""The toy-scale paper table: d1, 2-MF, 2-MF + IS, exact and joint on the demo task, one shared
budget, the same seeds, mean ± 95% CI and paired differences.

    python -m diffpo_jax.paper_table --seeds 0,1,2,3,4 --out_dir runs/paper_table
    python -m diffpo_jax.paper_table --model_dir runs/sft_sudoku_120 --set rl.lr=3e-4 --out_dir runs/toy_headroom

Each (method, seed) is one `diffpo_jax.demo` run (configs/demo_sudoku.py:METHOD with that
seed, same steps, same held-out puzzles; `--model_dir` another SFT checkpoint, `--set
section.field=value` the shared budget, applied to every method). Writes to `out_dir`:
`table.md` (cell / puzzle accuracy and NFE as mean ± 95% t-interval over seeds, the SFT
model's row first; per method the points over the SFT model at that run's own NFE,
`equal_nfe_gain`), `paired.md` (paired differences between methods and against the SFT
model, seed by seed, with their 95% CIs and a verdict: higher / lower / within noise),
`results.json`, `pareto.png` (mean accuracy vs mean NFE), `curves.png` (training reward and
the per-step surrogate KL `train/surrogate_kl` of every method, mean ± 95% CI over seeds, from
each run's metrics.jsonl). Runs already finished in `out_dir` are reused; a run made with
other settings (`settings.json`) is refused.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from diffpo_jax.seed_stats import fmt_ci, mean_ci, paired_diff, verdict

METHODS = ("d1", "2mf", "2mf_is", "exact", "joint")
LABELS = {"d1": "d1 (mean-field)", "2mf": "2-MF", "2mf_is": "2-MF + IS", "exact": "exact likelihood",
          "joint": "2-MF + IS + joint sampler"}
# (a, b) pairs of `paired.md`: each method against d1, and each step of the paper's ladder.
PAIRS = (("2mf", "d1"), ("2mf_is", "d1"), ("exact", "d1"), ("joint", "d1"), ("2mf_is", "2mf"),
         ("exact", "2mf_is"), ("joint", "2mf_is"))


def _pm(x: np.ndarray, digits: int = 1, signed: bool = False) -> str:
    """'mean ± 95% CI half-width' over seeds."""
    return fmt_ci(*mean_ci(x), digits=digits, signed=signed)


def _gain(runs: list[dict], key: str) -> str:
    """Mean ± 95% CI over seeds of `equal_nfe_gain[key]` (points over the SFT model at the trained
    model's NFE); '—' for summaries without it (runs from before the equal-NFE point), '†' when
    some seed's NFE was not matched."""
    if not runs or any("equal_nfe_gain" not in s for s in runs):
        return "—"
    mark = " †" if any(not s["sft_equal_nfe"].get("matched", True) for s in runs) else ""
    return _pm(np.array([s["equal_nfe_gain"][key] for s in runs]), signed=True) + mark


def _row(name: str, pts: list[dict], runs: list[dict] | None = None) -> str:
    acc = np.array([p["accuracy"] for p in pts]) * 100
    puz = np.array([p["puzzle_accuracy"] for p in pts]) * 100
    nfe = np.array([p["nfe_mean"] for p in pts])
    gains = f"{_gain(runs, 'cells')} | {_gain(runs, 'puzzles')}" if runs is not None else "— | —"
    return f"| {name} | {_pm(acc)} | {_pm(puz)} | {_pm(nfe, 2)} | {gains} | {len(pts)} |"


def make_table(results: dict) -> str:
    """Markdown table from {method: [summary per seed]} (summaries of `demo.run_demo`). The Δ
    columns compare each run with the SFT model at its own NFE (`sft_equal_nfe`: the fixed γ
    whose mean NFE matches the run's). All columns: mean ± 95% CI over seeds."""
    first = next(iter(results.values()))
    lines = ["| model (EB sampler) | cell accuracy % | puzzles solved % | mean NFE | "
             "Δ cells vs SFT @ equal NFE | Δ puzzles vs SFT @ equal NFE | seeds |",
             "|---|---|---|---|---|---|---|",
             _row(f"SFT model, γ={first[0]['before']['gamma']:g}", [s["before"] for s in first])]
    for m, runs in results.items():
        lines.append(_row(LABELS.get(m, m), [s["after"] for s in runs], runs))
    if any(not s.get("sft_equal_nfe", {}).get("matched", True) for runs in results.values() for s in runs):
        lines.append("\n† some seed's NFE was not matched within 0.25 by the SFT model "
                     "(γ at the edge of the search)")
    return "\n".join(lines)


def paired_table(results: dict) -> str:
    """Markdown table of paired differences (a − b, seed by seed; the seeds share training prompts
    and held-out puzzles) for PAIRS present in `results`, and of each method against the SFT model
    (after − before): cell and puzzle points and NFE, mean ± 95% CI, verdict on cell points."""
    lines = ["| comparison | Δ cell points | Δ puzzle points | Δ NFE | cells: | seeds |", "|---|---|---|---|---|---|"]

    def row(name, a_pts, b_pts):
        d = {k: paired_diff([100 * p[k] for p in a_pts], [100 * p[k] for p in b_pts])
             for k in ("accuracy", "puzzle_accuracy")}
        nfe = paired_diff([p["nfe_mean"] for p in a_pts], [p["nfe_mean"] for p in b_pts])
        lines.append(f"| {name} | {fmt_ci(*d['accuracy'])} | {fmt_ci(*d['puzzle_accuracy'])} | "
                     f"{fmt_ci(*nfe, digits=2)} | {verdict(*d['accuracy'])} | {len(a_pts)} |")

    for m, runs in results.items():
        row(f"{LABELS.get(m, m)} − SFT model", [s["after"] for s in runs], [s["before"] for s in runs])
    for a, b in PAIRS:
        if a in results and b in results:  # paired by seed: only the seeds both methods ran
            by_seed = {s.get("seed"): s for s in results[b]}
            both = [s for s in results[a] if s.get("seed") in by_seed]
            if both:
                row(f"{LABELS[a]} − {LABELS[b]}", [s["after"] for s in both],
                    [by_seed[s.get("seed")]["after"] for s in both])
    return "\n".join(lines)


def read_curves(run_dir: str, keys=("reward/mean", "train/surrogate_kl")) -> dict:
    """{key: [steps] float array} from `<run_dir>/metrics.jsonl` (NaN where a step lacks the key)."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])  # a resumed run repeats none
    return {k: np.array([r.get(k, np.nan) for r in rows], np.float64) for k in keys}


def plot_curves(curves: dict, path: str, title: str) -> str:
    """Two panels: training reward and per-step surrogate KL, one line per method (mean over
    seeds) with its 95% CI band. curves: {method: [read_curves(...) per seed]}. PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for ax, key, ylabel in ((axes[0], "reward/mean", "training reward (rollout mean)"),
                            (axes[1], "train/surrogate_kl", "surrogate KL(π ‖ π̃) per completion (nats)")):
        for m, per_seed in curves.items():
            n = min(len(c[key]) for c in per_seed)
            y = np.stack([c[key][:n] for c in per_seed])
            stats = [mean_ci(y[:, i]) for i in range(n)]
            mean = np.array([a for a, _ in stats])
            half = np.nan_to_num(np.array([h for _, h in stats]))
            steps = np.arange(1, n + 1)
            ax.plot(steps, mean, label=LABELS.get(m, m))
            ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def parse_set(items: list[str]) -> dict:
    """['rl.lr=3e-4', 'train.steps=60'] -> {'rl.lr': 0.0003, 'train.steps': 60} (JSON values, else strings)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: expected section.field=value, e.g. --set rl.lr=3e-4")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _settings_guard(run_dir: str, settings: dict) -> None:
    """Write `<run_dir>/settings.json`, or refuse a run directory made with other settings."""
    path = os.path.join(run_dir, "settings.json")
    if os.path.isfile(path):
        saved = json.load(open(path))
        if saved != settings:
            raise SystemExit(f"{run_dir} holds a run with settings {saved}, not {settings}: "
                             "use another --out_dir (or delete that run)")
        return
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.paper_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS}")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--steps", type=int, default=0, help="RL steps per run (default: the demo config's)")
    p.add_argument("--model_dir", default="", help="SFT checkpoint (HF format) to start from (default: the "
                   "shipped demo model)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="shared budget for every method, e.g. --set rl.lr=3e-4 (repeatable)")
    p.add_argument("--out_dir", default="runs/paper_table")
    args = p.parse_args(argv)
    from absl import logging

    from diffpo_jax import distributed
    from diffpo_jax.demo import run_demo
    from diffpo_jax.evaluate import plot_pareto

    logging.set_verbosity(logging.WARNING)
    distributed.maybe_initialize()  # multi-host from the environment; a no-op on one host
    overrides = parse_set(args.set)
    if args.model_dir:
        if not os.path.isdir(args.model_dir):
            raise SystemExit(f"--model_dir {args.model_dir!r} is not a directory (an SFT checkpoint, e.g. "
                             "python -m diffpo_jax.sft --config configs/sft_sudoku.py --config.sft.out_dir=...)")
        overrides["model.hf_dir"] = args.model_dir
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {METHODS}")
    results: dict = {}
    curves: dict = {}
    for m in methods:
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = os.path.join(args.out_dir, f"{m}_seed{seed}")
            path = os.path.join(run_dir, "summary.json")
            _settings_guard(run_dir, {"steps": args.steps, "overrides": overrides})
            if os.path.isfile(path):
                summary = json.load(open(path))
            else:
                summary = run_demo(m, args.steps, run_dir, seed, overrides=overrides, progress=False, sweep=False)
            results.setdefault(m, []).append(summary)
            curves.setdefault(m, []).append(read_curves(run_dir))
            gain = summary.get("equal_nfe_gain")
            vs_sft = (f"  vs SFT @ equal NFE {gain['cells']:+.1f} cells / {gain['puzzles']:+.1f} puzzles"
                      if gain else "")
            print(f"{m} seed {seed}: accuracy {100 * summary['after']['accuracy']:.1f}%  "
                  f"NFE {summary['after']['nfe_mean']:.2f}{vs_sft}  ({summary['total_seconds']:.0f} s)", flush=True)
    table, paired = make_table(results), paired_table(results)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out_dir, "paired.md"), "w") as f:
        f.write(paired + "\n")
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump({"settings": {"steps": args.steps, "overrides": overrides, "seeds": args.seeds},
                   "results": results}, f, indent=1)
    first = next(iter(results.values()))
    points = [{"label": "SFT", "series": "SFT model",
               "accuracy": float(np.mean([s["before"]["accuracy"] for s in first])),
               "nfe_mean": float(np.mean([s["before"]["nfe_mean"] for s in first]))}]
    points += [{"label": f"SFT @ NFE of {LABELS.get(m, m)}", "series": "SFT model",
                "accuracy": float(np.mean([s["sft_equal_nfe"]["accuracy"] for s in runs])),
                "nfe_mean": float(np.mean([s["sft_equal_nfe"]["nfe_mean"] for s in runs]))}
               for m, runs in results.items() if all("sft_equal_nfe" in s for s in runs)]
    points += [{"label": LABELS.get(m, m), "series": LABELS.get(m, m),
                "accuracy": float(np.mean([s["after"]["accuracy"] for s in runs])),
                "nfe_mean": float(np.mean([s["after"]["nfe_mean"] for s in runs]))} for m, runs in results.items()]
    title = "toy paper table: 4x4 Sudoku, tiny dLLM"
    plot_pareto(points, os.path.join(args.out_dir, "pareto.png"), title)
    plot_curves(curves, os.path.join(args.out_dir, "curves.png"), title)
    print(table)
    print()
    print(paired)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

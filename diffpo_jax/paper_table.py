"""The toy-scale paper table: d1, 2-MF, 2-MF + IS and joint on the demo task, same budget and seeds.

    python -m diffpo_jax.paper_table --seeds 0,1,2 --out_dir runs/paper_table

Each (method, seed) is one `diffpo_jax.demo` run (configs/demo_sudoku.py:METHOD with that
seed, same steps, same held-out puzzles). Writes `table.md` (accuracy ± std over seeds,
puzzle accuracy, mean NFE; the SFT model's row first), `results.json` and `pareto.png`
(mean accuracy vs mean NFE per method). Runs already finished in `out_dir` are reused.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

METHODS = ("d1", "2mf", "2mf_is", "joint")
LABELS = {"d1": "d1 (mean-field)", "2mf": "2-MF", "2mf_is": "2-MF + IS", "joint": "2-MF + IS + joint sampler"}


def _row(name: str, pts: list[dict]) -> str:
    acc = np.array([p["accuracy"] for p in pts]) * 100
    puz = np.array([p["puzzle_accuracy"] for p in pts]) * 100
    nfe = np.array([p["nfe_mean"] for p in pts])
    return (f"| {name} | {acc.mean():.1f} ± {acc.std():.1f} | {puz.mean():.1f} ± {puz.std():.1f} | "
            f"{nfe.mean():.2f} ± {nfe.std():.2f} | {len(pts)} |")


def make_table(results: dict) -> str:
    """Markdown table from {method: [summary per seed]} (summaries of `demo.run_demo`)."""
    first = next(iter(results.values()))
    lines = ["| model (EB sampler) | cell accuracy % | puzzles solved % | mean NFE | seeds |",
             "|---|---|---|---|---|",
             _row(f"SFT model, γ={first[0]['before']['gamma']:g}", [s["before"] for s in first])]
    for m, runs in results.items():
        lines.append(_row(LABELS.get(m, m), [s["after"] for s in runs]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.paper_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=0, help="RL steps per run (default: the demo config's)")
    p.add_argument("--out_dir", default="runs/paper_table")
    args = p.parse_args(argv)
    from absl import logging

    from diffpo_jax import distributed
    from diffpo_jax.demo import run_demo
    from diffpo_jax.evaluate import plot_pareto

    logging.set_verbosity(logging.WARNING)
    distributed.maybe_initialize()  # multi-host from the environment; a no-op on one host
    results: dict = {}
    for m in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = os.path.join(args.out_dir, f"{m}_seed{seed}")
            path = os.path.join(run_dir, "summary.json")
            if os.path.isfile(path):
                summary = json.load(open(path))
            else:
                summary = run_demo(m, args.steps, run_dir, seed, progress=False, sweep=False)
            results.setdefault(m, []).append(summary)
            print(f"{m} seed {seed}: accuracy {100 * summary['after']['accuracy']:.1f}%  "
                  f"NFE {summary['after']['nfe_mean']:.2f}  ({summary['total_seconds']:.0f} s)", flush=True)
    table = make_table(results)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    first = next(iter(results.values()))
    points = [{"label": "SFT", "series": "SFT model",
               "accuracy": float(np.mean([s["before"]["accuracy"] for s in first])),
               "nfe_mean": float(np.mean([s["before"]["nfe_mean"] for s in first]))}]
    points += [{"label": LABELS.get(m, m), "series": LABELS.get(m, m),
                "accuracy": float(np.mean([s["after"]["accuracy"] for s in runs])),
                "nfe_mean": float(np.mean([s["after"]["nfe_mean"] for s in runs]))} for m, runs in results.items()]
    plot_pareto(points, os.path.join(args.out_dir, "pareto.png"), "toy paper table: 4x4 Sudoku, tiny dLLM")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

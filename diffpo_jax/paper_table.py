"""The toy-scale paper table: d1, 2-MF, 2-MF + IS and joint on the demo task, same budget and seeds.

    python -m diffpo_jax.paper_table --seeds 0,1,2 --out_dir runs/paper_table

Each (method, seed) is one `diffpo_jax.demo` run (configs/demo_sudoku.py:METHOD with that
seed, same steps, same held-out puzzles). Writes `table.md` (accuracy ± std over seeds,
puzzle accuracy, mean NFE; the SFT model's row first; per method the cell and puzzle points
over the SFT model at that run's NFE, `equal_nfe_gain`), `results.json` and `pareto.png`
(mean accuracy vs mean NFE per method; the SFT series includes its equal-NFE points). Runs
already finished in `out_dir` are reused.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

METHODS = ("d1", "2mf", "2mf_is", "joint")
LABELS = {"d1": "d1 (mean-field)", "2mf": "2-MF", "2mf_is": "2-MF + IS", "joint": "2-MF + IS + joint sampler"}


def _pm(x: np.ndarray, fmt: str = ".1f", sign: str = "") -> str:
    return f"{x.mean():{sign}{fmt}} ± {x.std():{fmt}}"


def _gain(runs: list[dict], key: str) -> str:
    """Mean ± std over seeds of `equal_nfe_gain[key]` (points over the SFT model at the trained
    model's NFE); '—' for summaries without it (runs from before the equal-NFE point), '†' when
    some seed's NFE was not matched."""
    if not runs or any("equal_nfe_gain" not in s for s in runs):
        return "—"
    mark = " †" if any(not s["sft_equal_nfe"].get("matched", True) for s in runs) else ""
    return _pm(np.array([s["equal_nfe_gain"][key] for s in runs]), sign="+") + mark


def _row(name: str, pts: list[dict], runs: list[dict] | None = None) -> str:
    acc = np.array([p["accuracy"] for p in pts]) * 100
    puz = np.array([p["puzzle_accuracy"] for p in pts]) * 100
    nfe = np.array([p["nfe_mean"] for p in pts])
    gains = f"{_gain(runs, 'cells')} | {_gain(runs, 'puzzles')}" if runs is not None else "— | —"
    return f"| {name} | {_pm(acc)} | {_pm(puz)} | {_pm(nfe, '.2f')} | {gains} | {len(pts)} |"


def make_table(results: dict) -> str:
    """Markdown table from {method: [summary per seed]} (summaries of `demo.run_demo`). The Δ
    columns compare each run with the SFT model at its own NFE (`sft_equal_nfe`: the fixed γ
    whose mean NFE matches the run's), mean ± std over seeds."""
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
            gain = summary.get("equal_nfe_gain")
            vs_sft = (f"  vs SFT @ equal NFE {gain['cells']:+.1f} cells / {gain['puzzles']:+.1f} puzzles"
                      if gain else "")
            print(f"{m} seed {seed}: accuracy {100 * summary['after']['accuracy']:.1f}%  "
                  f"NFE {summary['after']['nfe_mean']:.2f}{vs_sft}  ({summary['total_seconds']:.0f} s)", flush=True)
    table = make_table(results)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
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
    plot_pareto(points, os.path.join(args.out_dir, "pareto.png"), "toy paper table: 4x4 Sudoku, tiny dLLM")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

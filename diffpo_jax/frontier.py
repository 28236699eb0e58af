"""The fixed-rule accuracy-vs-NFE frontier and the NFE a sampler saves at *equal accuracy*.

    python -m diffpo_jax.frontier runs/demo_joint_seed0/summary.json [more summary.json ...]

A fixed rule swept over its knob (EB γ, Fast-dLLM's threshold) gives points (NFE_i, acc_i).
Its frontier is the upper hull that a user can reach by picking the knob: the points not
dominated by another (no other point has NFE <= and accuracy >=, one strictly), joined by
straight lines in (NFE, accuracy). `frontier_nfe(frontier, a)` is the least NFE at which the
frontier reaches accuracy `a` (linear interpolation between the two frontier points around
`a`; None above the frontier's best accuracy). A sampler point (NFE_s, acc_s) then saves

    saved = 1 - NFE_s / frontier_nfe(frontier, acc_s)        (> 0: fewer NFE at equal accuracy)

relative to the best fixed setting. Below the frontier's lowest accuracy the comparison is
an extrapolation and is refused (None): the frontier was not measured there.

With several summaries (seeds), `saved` is reported as mean ± 95% CI over them
(`seed_stats.mean_ci`). Inputs are the demo's summary.json files: the frontier is their
"SFT model, fixed γ" points, the sampler is their `after` point (the trained system).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from diffpo_jax import seed_stats

SFT_SERIES = "SFT model, fixed γ"


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (nfe, accuracy) points, sorted by NFE ascending (accuracy then rises)."""
    pts = sorted(set((float(n), float(a)) for n, a in points), key=lambda p: (p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for n, a in pts:
        if not front or a > front[-1][1]:
            front.append((n, a))
    return front


def frontier_nfe(front: Sequence[tuple[float, float]], accuracy: float) -> Optional[float]:
    """Least NFE at which the frontier reaches `accuracy` (linear between its points); None
    outside [lowest, highest] frontier accuracy."""
    if not front or accuracy > front[-1][1] or accuracy < front[0][1]:
        return None
    for (n0, a0), (n1, a1) in zip(front, front[1:]):
        if a0 <= accuracy <= a1:
            return n0 + (accuracy - a0) / (a1 - a0) * (n1 - n0)
    return front[0][0]  # a one-point frontier, accuracy equal to it


def frontier_accuracy(front: Sequence[tuple[float, float]], nfe: float) -> Optional[float]:
    """Best accuracy the frontier reaches with at most `nfe` NFE (linear between its points; its
    last accuracy beyond its last point); None below its least NFE (not measured there)."""
    if not front or nfe < front[0][0]:
        return None
    for (n0, a0), (n1, a1) in zip(front, front[1:]):
        if n0 <= nfe <= n1:
            return a0 + (nfe - n0) / (n1 - n0) * (a1 - a0) if n1 > n0 else max(a0, a1)
    return front[-1][1]


def accuracy_gain(front: Sequence[tuple[float, float]], nfe: float, accuracy: float) -> Optional[float]:
    """accuracy − frontier_accuracy(front, nfe): what a sampler at (nfe, accuracy) gains over the best
    fixed setting at equal NFE (negative: it loses); None below the frontier's least NFE."""
    ref = frontier_accuracy(front, nfe)
    return None if ref is None else accuracy - ref


def nfe_saved(front: Sequence[tuple[float, float]], nfe: float, accuracy: float) -> Optional[float]:
    """1 - nfe / frontier_nfe(front, accuracy): the fraction of the best fixed setting's NFE that a
    sampler at (nfe, accuracy) saves at equal accuracy (negative: it needs more); None outside."""
    ref = frontier_nfe(front, accuracy)
    return None if ref is None or ref <= 0 else 1.0 - nfe / ref


def from_summary(summary: dict) -> dict:
    """{'frontier', 'point', 'frontier_nfe', 'saved'} of one demo summary.json."""
    sft = [(p["nfe_mean"], p["accuracy"]) for p in summary["points"] if p.get("series") == SFT_SERIES]
    front = pareto_frontier(sft)
    after = summary["after"]
    ref = frontier_nfe(front, after["accuracy"])
    return {"frontier": front, "point": (after["nfe_mean"], after["accuracy"]), "frontier_nfe": ref,
            "saved": nfe_saved(front, after["nfe_mean"], after["accuracy"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.frontier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", help="demo summary.json files (one per seed)")
    args = p.parse_args(argv)
    saved = []
    for path in args.summaries:
        try:
            with open(path) as f:
                r = from_summary(json.load(f))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {path}: not a demo summary.json ({e!r})") from None
        n, a = r["point"]
        if r["saved"] is None:
            print(f"{path}: sampler at {100 * a:.1f}% / {n:.2f} NFE lies outside the fixed-γ frontier's accuracy "
                  f"range {[round(100 * x[1], 1) for x in (r['frontier'][0], r['frontier'][-1])]}: not compared")
            continue
        saved.append(r["saved"])
        print(f"{path}: sampler {100 * a:.1f}% at {n:.2f} NFE; fixed-γ frontier reaches {100 * a:.1f}% at "
              f"{r['frontier_nfe']:.2f} NFE: {100 * r['saved']:+.1f}% NFE saved at equal accuracy")
    if len(saved) > 1:
        m, h = seed_stats.mean_ci([100 * s for s in saved])
        print(f"NFE saved at equal accuracy over {len(saved)} runs: {seed_stats.fmt_ci(m, h, signed=True)} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DiFFPO Fig. 2c on a trained model: per decoding step, how far the mean-field (d1) and
two-stage mean-field (2-MF) surrogates are from the conditionals the sampler really used.

    python -m diffpo_jax.surrogate_gap --model_dir runs/sft_sudoku_120 --out_dir runs/surrogate_gap

Rollouts are the RL rollouts of the demo setting (`configs/demo_sudoku.py`): `--n` generated
training puzzles (the RL task's generator, disjoint from the test set), one completion each
from the rollout sampler (EB γ 0.3 at T 0.7, 24 tokens in one block), under `--seed`. For every
decoding step t, at the positions revealed at t, `rl.diagnostics.surrogate_kl_by_step` compares

    p_true = softmax f(p, z_{t−1})        the conditional the sampler used (z_0 = all M)
    p_MF   = softmax f(p̃, z_0)            d1's mean-field (p̃: the prompt masked at rl.p_mask)
    p_2MF  = p_MF if t ≤ τ else softmax f(p, z_τ),   τ = floor(f · T_b) for f in --tau_fracs

by KL(p_true ‖ p_sur) and KL(p_sur ‖ p_true), averaged over positions per step t and per relative
time t / T_b. The temperature-free conditionals are compared (the KL of the tempered ones
differs only in scale). Writes `surrogate_gap.md` (table per t / T bin and per step),
`surrogate_gap.json` (every array) and `surrogate_gap.png` (the figure) to `out_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Sequence

import numpy as np

def _label(name: str) -> str:
    """'mf' -> 'mean-field (d1)', '2mf@f0.5' -> '2-MF, τ = 0.5·T'."""
    return "mean-field (d1)" if name == "mf" else f"2-MF, τ = {name.split('@f')[1]}·T"


def rollouts(model_dir: str, n: int, seed: int, family: str = "llada"):
    """(llm, config, batch) with batch = prompt / prompt_mask `[n, P]`, completion /
    unmask_step `[n, L]` int32, completion_mask `[n, L]` bool, nfe `[n]` int32 (numpy)."""
    import jax
    from flax import nnx

    from configs import demo_sudoku
    from diffpo_jax import evaluate, experiment, tasks
    from diffpo_jax.sampling import left_pad, make_sampler
    from diffpo_jax.tasks.data import train_source

    config = demo_sudoku.get_config(f"d1,{family}")
    if model_dir:
        config.model.hf_dir = model_dir
    config.model.lora_rank = 0  # the SFT model itself
    llm, tokenizer = experiment.build_llm(config, None)
    source = train_source("sudoku", size=n, seed=seed, **experiment.generator_kwargs(config))
    items = [source[i] for i in range(n)]
    fmt = lambda it: tasks.format_prompt("sudoku", it, tokenizer, "train", False, "compact")  # noqa: E731
    ids = evaluate.encode_prompts("sudoku", items, tokenizer, int(config.task.max_prompt_length), fmt)
    prompt, prompt_mask = left_pad(ids, llm.cfg.pad_token_id)
    scfg = experiment.sampler_config(config.sampler, llm.cfg, "sampler")
    graphdef, state = nnx.split(llm)
    out = make_sampler(graphdef, scfg)(state, prompt, prompt_mask, jax.random.key(seed))
    batch = {"prompt": np.asarray(prompt), "prompt_mask": np.asarray(prompt_mask),
             "completion": np.asarray(out.tokens)[:, prompt.shape[1]:], "unmask_step": np.asarray(out.unmask_step),
             "completion_mask": np.asarray(out.completion_mask), "nfe": np.asarray(out.nfe)}
    return llm, config, batch


def run(model_dir: str, out_dir: str, n: int = 64, seed: int = 0, tau_fracs: Sequence[float] = (0.25, 0.5, 0.75),
        n_bins: int = 6, family: str = "llada") -> dict:
    """The whole measurement (module doc); returns what `surrogate_gap.json` holds."""
    import jax
    import jax.numpy as jnp

    from diffpo_jax.rl.diagnostics import surrogate_kl_by_step

    t0 = time.perf_counter()
    llm, config, b = rollouts(model_dir, n, seed, family)
    kl = surrogate_kl_by_step(llm, jnp.asarray(b["prompt"]), jnp.asarray(b["prompt_mask"]),
                              jnp.asarray(b["completion"]), jnp.asarray(b["unmask_step"]), jnp.asarray(b["nfe"]),
                              jnp.asarray(b["completion_mask"]), tau_fracs=tau_fracs, p_mask=float(config.rl.p_mask),
                              key=jax.random.key(seed + 1), chunk=int(config.rl.logprob_chunk), n_bins=n_bins,
                              lora=False)
    result = {"model_dir": model_dir or config.model.hf_dir, "n": n, "seed": seed, "tau_fracs": list(tau_fracs),
              "p_mask": float(config.rl.p_mask), "nfe_mean": float(b["nfe"].mean()),
              "arrays": {k: np.asarray(v).tolist() for k, v in kl.items()},
              "seconds": round(time.perf_counter() - t0, 1)}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "surrogate_gap.json"), "w") as f:
        json.dump(result, f)
    with open(os.path.join(out_dir, "surrogate_gap.md"), "w") as f:
        f.write(table(result) + "\n")
    plot(result, os.path.join(out_dir, "surrogate_gap.png"))
    return result


def surrogates(result: dict) -> list[str]:
    return ["mf"] + [f"2mf@f{f:g}" for f in result["tau_fracs"]]


def table(result: dict) -> str:
    """Markdown: mean KL(p_true ‖ p_sur) per relative-time bin, then per step, and the
    position-weighted mean over all steps."""
    a = result["arrays"]
    names = surrogates(result)
    rel = [i for i, c in enumerate(a["rel_count"]) if c > 0]
    lines = [f"{result['n']} rollouts (mean NFE {result['nfe_mean']:.2f}), seed {result['seed']}, p_mask "
             f"{result['p_mask']:g}; mean KL(p_true ‖ p_surrogate) in nats per revealed position:", "",
             "| surrogate | all steps | " + " | ".join(f"t/T ≈ {a['rel_bins'][i]:.2f}" for i in rel) + " |",
             "|---|---|" + "---|" * len(rel)]
    count = np.asarray(a["count"], float)
    for s in names:
        per_t = np.nan_to_num(np.asarray(a[f"{s}/kl_true_sur"], float))
        overall = float((per_t * count).sum() / max(count.sum(), 1))
        lines.append(f"| {_label(s)} | {overall:.3f} | "
                     + " | ".join(f"{a[f'{s}/rel_kl_true_sur'][i]:.3f}" for i in rel) + " |")
    steps = [i for i, c in enumerate(a["count"]) if c > 0]
    lines += ["", "Per decoding step t (positions revealed at t in brackets):", "",
              "| surrogate | " + " | ".join(f"t={a['t'][i]} ({int(a['count'][i])})" for i in steps) + " |",
              "|---|" + "---|" * len(steps)]
    for s in names:
        lines.append(f"| {_label(s)} | " + " | ".join(f"{a[f'{s}/kl_true_sur'][i]:.3f}" for i in steps) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result["arrays"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    steps = [i for i, c in enumerate(a["count"]) if c > 0]
    rel = [i for i, c in enumerate(a["rel_count"]) if c > 0]
    for s in surrogates(result):
        style = "o-" if s == "mf" else "s--"
        axes[0].plot([a["t"][i] for i in steps], [a[f"{s}/kl_true_sur"][i] for i in steps], style, ms=3, label=_label(s))
        axes[1].plot([a["rel_bins"][i] for i in rel], [a[f"{s}/rel_kl_true_sur"][i] for i in rel], style, ms=3,
                     label=_label(s))
    axes[0].set(title="KL(p_true ‖ p_surrogate) per decoding step", xlabel="decoding step t", ylabel="mean KL (nats)")
    axes[1].set(title="… vs relative decoding time", xlabel="t / T")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"surrogate gap on {result['n']} rollouts of {os.path.basename(result['model_dir'].rstrip('/'))}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.surrogate_gap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="", help="SFT checkpoint (HF format; default: the shipped demo model)")
    p.add_argument("--family", default="llada", choices=("llada", "dream"), help="the demo model family")
    p.add_argument("--n", type=int, default=64, help="rollouts (one per generated training puzzle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau_fracs", default="0.25,0.5,0.75", help="2-MF split points τ = floor(f·T), comma-separated")
    p.add_argument("--out_dir", default="runs/surrogate_gap")
    args = p.parse_args(argv)
    if args.model_dir and not os.path.isdir(args.model_dir):
        p.error(f"--model_dir {args.model_dir!r} is not a directory (an HF-format SFT checkpoint)")
    try:
        fracs = tuple(float(x) for x in args.tau_fracs.split(","))
    except ValueError:
        p.error(f"--tau_fracs {args.tau_fracs!r}: comma-separated numbers in (0, 1), e.g. 0.25,0.5")
    if not all(0 < f < 1 for f in fracs) or args.n < 1:
        p.error("--tau_fracs must lie in (0, 1) and --n be >= 1")
    result = run(args.model_dir, args.out_dir, args.n, args.seed, fracs, family=args.family)
    print(table(result))
    print(f"[surrogate_gap] {result['seconds']:.0f} s; {args.out_dir}/surrogate_gap.md, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is the RL update signal or noise? The gradient noise scale of each method's policy gradient at
the SFT model, and how closely each surrogate's gradient follows the exact likelihood's.

    python -m diffpo_jax.gradient_noise --model_dir runs/sft_sudoku_120 --batches 16 \\
        --out_dir runs/gradient_noise_120

K independent rollout batches of the toy paper table's budget (configs/demo_sudoku.py: P = 8
prompts × G = 8 completions, EB γ 0.3, T 0.7) are drawn once from the SFT model; on each batch,
every method's loss gradient g_k (the LoRA parameters, at θ = θ_old = the SFT model, where the
ratio is 1 and nothing is clipped) is taken on the same rollouts. Writes `gradient_noise.md`,
`gradient_noise.json` under out_dir.

Reported per method (McCandlish et al. 2018, "An empirical model of large-batch training", App. A,
with prompts as the independent unit: a group's advantages are relative to each other):

    |G|²  ≈ (B |ḡ|² − b ⟨|g_k|²⟩) / (B − b)        b = P, B = K·P, ḡ = mean_k g_k
    tr Σ  ≈ (⟨|g_k|²⟩ − |ḡ|²) / (1/b − 1/B)
    B_noise = tr Σ / |G|²                            prompts per step at which signal = noise

`snr_per_step` = |G|² / (tr Σ / b): the squared signal over the noise of one step's gradient.
`cos_to_exact` = the mean over batches of cos(g_k^method, g_k^exact) on the same rollouts: 1 if
the surrogate's gradient is the exact likelihood's, whatever the noise. `cos_expected_to_exact`
= cos(G^method, G^exact) of the expected gradients, from the unbiased cross-batch estimate
⟨G^a, G^b⟩ ≈ mean_{k≠l} g_k^a · g_l^b (nan where an |G|² estimate is ≤ 0). 95% intervals: a
bootstrap over the K batches.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np

METHODS = ("d1", "2mf", "2mf_is", "exact")


def noise_scale(sq_norms: np.ndarray, mean_sq_norm: float, b: float, big: float) -> dict:
    """{g2 = |G|², trace = tr Σ, b_noise} from ⟨|g_k|²⟩ over batches of `b` units and |ḡ|² of
    their mean (`big` = K·b units), and snr_per_step = |G|²/(tr Σ/b), b_noise = b / snr_per_step
(inf when the |G|² estimate is ≤ 0: no signal detected above the noise)."""
    small = float(np.mean(sq_norms))
    g2 = (big * mean_sq_norm - b * small) / (big - b)
    trace = (small - mean_sq_norm) / (1.0 / b - 1.0 / big)
    snr = g2 / (trace / b) if trace > 0 else float("nan")
    return {"g2": g2, "trace": trace, "snr_per_step": snr, "b_noise": b / snr if snr > 0 else float("inf")}


def cross_batch_dot(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased ⟨E a_k, E b_k⟩ from `[K, D]` rows of independent batches: mean_{k≠l} a_k · b_l."""
    k = a.shape[0]
    return float((np.sum(a.sum(0) * b.sum(0)) - np.sum(a * b)) / (k * (k - 1)))


def summarize(grads: dict[str, np.ndarray], prompts_per_batch: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """grads: method -> `[K, D]` float64 flattened gradients, row k from rollout batch k (the same
    batches for every method). Returns per method the noise scale, its bootstrap 95% interval, and
    cos_to_exact (when 'exact' is among the methods)."""
    rng = np.random.default_rng(seed)
    k = next(iter(grads.values())).shape[0]
    if k < 2:
        raise ValueError("gradient_noise: needs at least 2 batches")
    b, big = float(prompts_per_batch), float(k * prompts_per_batch)
    boots = rng.integers(0, k, size=(n_boot, k))
    out = {}
    for m, g in grads.items():
        sq = np.sum(g * g, axis=1)
        est = noise_scale(sq, float(np.sum(g.mean(0) ** 2)), b, big)
        snr = [noise_scale(sq[i], float(np.sum(g[i].mean(0) ** 2)), b, big)["snr_per_step"] for i in boots]
        est["snr_per_step_ci"] = [float(np.nanpercentile(snr, 2.5)), float(np.nanpercentile(snr, 97.5))]
        if "exact" in grads:
            e = grads["exact"]
            cos = np.sum(g * e, axis=1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(e, axis=1), 1e-300)
            est["cos_to_exact"] = float(cos.mean())
            est["cos_to_exact_ci"] = [float(np.percentile(cos[boots].mean(1), q)) for q in (2.5, 97.5)]
            ga, ge = cross_batch_dot(g, g), cross_batch_dot(e, e)
            est["cos_expected_to_exact"] = (cross_batch_dot(g, e) / np.sqrt(ga * ge) if ga > 0 and ge > 0
                                            else float("nan"))
        out[m] = est
    return out


def _flat(grads) -> np.ndarray:
    import jax
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(grads)])


def measure(model_dir: str, batches: int, seed: int, methods: Sequence[str] = METHODS,
            overrides: dict | None = None, progress: bool = True) -> tuple[dict, dict]:
    """(grads: method -> `[K, D]`, info) on `batches` rollout batches of the demo budget."""
    import jax
    from tqdm import tqdm

    from configs import demo_sudoku
    from diffpo_jax import experiment, tasks
    from diffpo_jax.rl.rollout import rollout
    from diffpo_jax.rl.train_step import init_train_state, make_grad_fn
    from diffpo_jax.sampling import make_sampler
    from diffpo_jax.train import ShardedBatches
    from flax import nnx

    def config_of(method):
        c = demo_sudoku.get_config(method)
        c.seed = seed
        c.model.hf_dir = model_dir
        for key, v in (overrides or {}).items():
            section, field = key.split(".", 1)
            c[section][field] = v
        return c

    config = config_of(methods[0])
    rl0 = experiment.rl_config(config)
    llm, tokenizer = experiment.build_llm(config, None)
    sampler_cfg = experiment.sampler_config(config.sampler, llm.cfg)
    policy = experiment.build_policy(llm, rl0, seed)
    sampler = make_sampler(nnx.split(policy.llm)[0], sampler_cfg, None)
    grad_fns = {}
    for m in methods:
        rl = experiment.rl_config(config_of(m))
        ts = init_train_state(policy, rl, None)
        grad_fns[m] = (jax.jit(make_grad_fn(ts.graphdef, rl)), ts.trainable, ts.frozen)
    data = ShardedBatches(config, tokenizer, rl0.num_generations)
    reward_fn = tasks.get_task(config.task.name).reward_components
    base = jax.random.key(seed)
    grads = {m: [] for m in methods}
    rewards = []
    for k in tqdm(range(batches), desc="rollout batches", disable=not progress, dynamic_ncols=True):
        batch_np = data.next()
        k_roll, k_inner = jax.random.split(jax.random.fold_in(base, k))
        batch, _ = rollout(policy, sampler, batch_np["prompt_ids"], batch_np["prompt_mask"], batch_np["items"],
                           reward_fn, k_roll, rl0, tokenizer, temperature=float(config.sampler.temperature))
        rewards.append(float(np.mean(np.asarray(batch["rewards"]))))
        for m, (fn, trainable, frozen) in grad_fns.items():
            _, g, _ = fn(trainable, frozen, batch, k_inner)
            grads[m].append(_flat(g))
    info = {"model_dir": model_dir, "batches": batches, "seed": seed, "prompts_per_batch": int(config.train.prompts_per_step),
            "completions_per_prompt": rl0.num_generations, "reward_mean": float(np.mean(rewards)),
            "dim": int(grads[methods[0]][0].size)}
    return {m: np.stack(v) for m, v in grads.items()}, info


def _prompts(b: int, snr: float) -> str:
    """B_noise = b / SNR as text ('∞' where the SNR bound is ≤ 0)."""
    return f"{b / snr:.0f}" if snr > 0 else "∞"


def to_markdown(result: dict, info: dict) -> str:
    lines = [f"{info['batches']} rollout batches of {info['prompts_per_batch']} prompts × "
             f"{info['completions_per_prompt']} completions from `{info['model_dir']}` (seed {info['seed']}, "
             f"mean reward {info['reward_mean']:.3f}); LoRA gradient at θ_old, {info['dim']} parameters:", "",
             "| method | per-step SNR \\|G\\|²/(tr Σ/b) [95% CI] | B_noise, prompts per step [95% CI] | "
             "cos(g, g_exact) per batch [95% CI] | cos(G, G_exact) expected |", "|---|---|---|---|---|"]
    for m, r in result.items():
        lo, hi = r["snr_per_step_ci"]
        cos = (f"{r['cos_to_exact']:.3f} [{r['cos_to_exact_ci'][0]:.3f}, {r['cos_to_exact_ci'][1]:.3f}]"
               if "cos_to_exact" in r else "—")
        b = info["prompts_per_batch"]
        b_noise = (f"{r['b_noise']:.0f} [{_prompts(b, hi)}, {_prompts(b, lo)}]" if r["b_noise"] < float("inf")
                   else f"∞ (no signal detected) [≥ {_prompts(b, hi)}]")
        expected = f"{r['cos_expected_to_exact']:.3f}" if "cos_expected_to_exact" in r else "—"
        lines.append(f"| {m} | {r['snr_per_step']:.3f} [{lo:.3f}, {hi:.3f}] | {b_noise} | {cos} | {expected} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from diffpo_jax.paper_table import parse_set

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=None, help="SFT checkpoint (default: the shipped demo model)")
    p.add_argument("--batches", type=int, default=16, help="independent rollout batches K (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="budget override for every method, as in paper_table (e.g. train.prompts_per_step=16)")
    p.add_argument("--out_dir", default="runs/gradient_noise")
    args = p.parse_args(argv)
    from configs import demo_sudoku

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"--methods: {bad} unknown; choose from {METHODS}")
    grads, info = measure(args.model_dir or demo_sudoku.DEMO_MODEL, args.batches, args.seed, methods,
                          parse_set(args.set))
    result = summarize(grads, info["prompts_per_batch"])
    os.makedirs(args.out_dir, exist_ok=True)
    text = to_markdown(result, info)
    with open(os.path.join(args.out_dir, "gradient_noise.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out_dir, "gradient_noise.json"), "w") as f:
        json.dump({"info": info, "result": result}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

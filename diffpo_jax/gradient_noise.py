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
the surrogate's gradient is the exact likelihood's, whatever the noise (t-interval over the
independent batches). `cos_expected_to_exact` = cos(G^method, G^exact) of the expected
gradients, from the unbiased cross-batch estimate ⟨G^a, G^b⟩ ≈ mean_{k≠l} g_k^a · g_l^b (nan
where an |G|² estimate is ≤ 0; not bounded by 1 when the signal is below the noise). The other
95% intervals: delete-one-batch jackknife. The gradients are kept in out_dir/grads.npz, and a
rerun with the same settings reads them instead of recomputing.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np
from scipy import stats

from diffpo_jax.seed_stats import mean_ci, paired_diff, verdict

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


def _stats(g: np.ndarray, e: np.ndarray | None, b: float) -> dict:
    """Noise scale of `[K, D]` per-batch gradients g (b units each), and cos(G, G_exact) when e
    (the exact method's gradients on the same batches) is given."""
    k = g.shape[0]
    sq = np.sum(g * g, axis=1)
    out = noise_scale(sq, float(np.sum(g.mean(0) ** 2)), b, k * b)
    if e is not None:
        ga, ge = cross_batch_dot(g, g), cross_batch_dot(e, e)
        out["cos_expected_to_exact"] = cross_batch_dot(g, e) / np.sqrt(ga * ge) if ga > 0 and ge > 0 else float("nan")
    return out


def _jackknife_ci(g: np.ndarray, e: np.ndarray | None, b: float, key: str, est: float) -> list[float]:
    """95% interval est ± t_{K−1} · se, se the delete-one-batch jackknife standard error (a
    bootstrap would resample a batch twice, which the cross-batch estimators read as signal)."""
    k = g.shape[0]
    loo = np.array([_stats(np.delete(g, i, 0), None if e is None else np.delete(e, i, 0), b)[key] for i in range(k)])
    if not np.all(np.isfinite(loo)):
        return [float("nan"), float("nan")]
    se = np.sqrt((k - 1) / k * np.sum((loo - loo.mean()) ** 2))
    half = float(stats.t.ppf(0.975, k - 1) * se)
    return [est - half, est + half]


def summarize(grads: dict[str, np.ndarray], prompts_per_batch: int) -> dict:
    """grads: method -> `[K, D]` float64 flattened gradients, row k from rollout batch k (the same
    batches for every method, K ≥ 3). Per method: g2, trace, snr_per_step (+ `_ci`), b_noise;
    with 'exact' among the methods, cos_to_exact (mean per-batch cosine, t-interval over the
    independent batches, + `_ci`) and cos_expected_to_exact (+ `_ci`)."""
    k = next(iter(grads.values())).shape[0]
    if k < 3:
        raise ValueError(f"gradient_noise: {k} batches; needs at least 3 (the interval is a jackknife)")
    b = float(prompts_per_batch)
    e = grads.get("exact")
    out = {}
    for m, g in grads.items():
        est = _stats(g, e, b)
        est["snr_per_step_ci"] = _jackknife_ci(g, None, b, "snr_per_step", est["snr_per_step"])
        if e is not None:
            cos = np.sum(g * e, axis=1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(e, axis=1), 1e-300)
            mean, half = mean_ci(cos)
            est["cos_per_batch"] = cos.tolist()
            est["cos_to_exact"], est["cos_to_exact_ci"] = mean, [mean - half, mean + half]
            est["cos_expected_to_exact_ci"] = _jackknife_ci(g, e, b, "cos_expected_to_exact",
                                                            est["cos_expected_to_exact"])
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
        experiment.apply_overrides(c, overrides)
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


LADDER = (("2mf", "d1"), ("2mf_is", "2mf"), ("2mf_is", "d1"))


def _prompts(b: int, snr: float) -> str:
    """B_noise = b / SNR as text ('∞' where the SNR bound is ≤ 0)."""
    return f"{b / snr:.0f}" if snr > 0 else "∞"


def _interval(x: float, ci: list[float]) -> str:
    return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def to_markdown(result: dict, info: dict) -> str:
    """The per-method table, then the paired per-batch cosine differences along the paper's ladder."""
    b = info["prompts_per_batch"]
    lines = [f"{info['batches']} rollout batches of {b} prompts × {info['completions_per_prompt']} completions "
             f"from `{info['model_dir']}` (seed {info['seed']}, mean reward {info['reward_mean']:.3f}); LoRA "
             f"gradient at θ_old, {info['dim']} parameters; mean [95% CI]:", "",
             "| method | per-step SNR \\|G\\|²/(tr Σ/b) | B_noise, prompts per step | "
             "cos(g, g_exact) per batch | cos(G, G_exact) of the expected gradients |", "|---|---|---|---|---|"]
    for m, r in result.items():
        lo, hi = r["snr_per_step_ci"]
        b_noise = (f"{r['b_noise']:.0f} [{_prompts(b, hi)}, {_prompts(b, lo)}]" if r["b_noise"] < float("inf")
                   else f"∞ (no signal detected) [≥ {_prompts(b, hi)}]")
        cos = _interval(r["cos_to_exact"], r["cos_to_exact_ci"]) if "cos_to_exact" in r else "—"
        expected = (_interval(r["cos_expected_to_exact"], r["cos_expected_to_exact_ci"])
                    if "cos_expected_to_exact" in r else "—")
        lines.append(f"| {m} | {_interval(r['snr_per_step'], [lo, hi])} | {b_noise} | {cos} | {expected} |")
    pairs = [(a, c) for a, c in LADDER if "cos_per_batch" in result.get(a, {}) and "cos_per_batch" in result.get(c, {})]
    if pairs:
        lines += ["", "| per-batch cos to exact, paired by batch | Δ mean [95% CI] | reading |", "|---|---|---|"]
        for a, c in pairs:
            mean, half = paired_diff(result[a]["cos_per_batch"], result[c]["cos_per_batch"])
            lines.append(f"| {a} − {c} | {_interval(mean, [mean - half, mean + half])} | {verdict(mean, half)} |")
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
    settings = {"model_dir": args.model_dir or demo_sudoku.DEMO_MODEL, "batches": args.batches, "seed": args.seed,
                "methods": methods, "overrides": parse_set(args.set)}
    os.makedirs(args.out_dir, exist_ok=True)
    cache, result_path = os.path.join(args.out_dir, "grads.npz"), os.path.join(args.out_dir, "gradient_noise.json")
    saved = json.load(open(result_path)) if os.path.isfile(cache) and os.path.isfile(result_path) else None
    if saved is not None and saved.get("settings") == settings:
        with np.load(cache) as z:
            grads = {m: z[m].astype(np.float64) for m in methods}
        info = saved["info"]
        print(f"[gradient_noise] read the gradients of {cache} (same settings)")
    else:
        grads, info = measure(settings["model_dir"], args.batches, args.seed, methods, settings["overrides"])
        np.savez(cache, **{m: g.astype(np.float32) for m, g in grads.items()})
    result = summarize(grads, info["prompts_per_batch"])
    text = to_markdown(result, info)
    with open(os.path.join(args.out_dir, "gradient_noise.md"), "w") as f:
        f.write(text + "\n")
    with open(result_path, "w") as f:
        json.dump({"settings": settings, "info": info, "result": result}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

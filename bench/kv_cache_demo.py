"""The prefix / dual KV cache on a *trained* model: accuracy, NFE, token agreement, speed and
IS statistics on the demo task (4x4 Sudoku, real test set), vs the uncached sampler.

    python -m bench.kv_cache_demo                                  # shipped SFT model, CPU, ~2 min
    python -m bench.kv_cache_demo --block_lengths 24,8,4 --gammas 0.3,1 --rules eb,threshold
    python -m bench.kv_cache_demo --model_dir runs/demo_sudoku_joint/hf   # an RL-trained demo model, from
        # python -m diffpo_jax.train --config configs/demo_sudoku.py:joint --config.train.export_hf=True

`bench/kv_cache.py` measures the mechanism on random weights, where a stale context moves
flat logits a lot; this one measures what users care about on a model that learned the task
(`diffpo_jax/assets/demo_sudoku`, the demo's SFT model): for each rule / knob / block length
and kv_cache in (none, prefix, dual), greedy (T = 0) decoding of `--n` held-out puzzles
(`tasks.load_eval_items('sudoku', seed=42)`, the demo's evaluation set and prompt):
  cell acc. / puzzles    d1's pooled Sudoku cell accuracy, and fully solved grids (%)
  mean NFE, forwards     per-row NFE; batched model calls summed over the batches
  ms / batch, speed-up   median wall time of decoding one batch (compile excluded); none / this
  token agreement        completion tokens equal to the uncached sampler's on the same prompt
  |Δ behaviour logp|     the sampler's behaviour_logp vs the exact per-step log-prob of the same
                         token (full forward of the state before its step), completion tokens
  IS at C (own / exact)  tokens whose clamped IS weight min(C, exp(logp_2MF − behaviour)) is at
                         C, with the cached sampler's own behaviour_logp and with the exact one
With one block (block 24 = gen 24, the demo's setting) `prefix` caches only the prompt; with
more blocks it also caches the finished blocks. `dual` caches the later blocks too.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

if __package__ in (None, ""):  # `python bench/kv_cache_demo.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)
from bench.kv_cache import MODES, RULE_KNOBS, exact_logp_fn, two_mf_fn  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from diffpo_jax import evaluate, experiment, tasks  # noqa: E402
from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.rl.config import RLConfig  # noqa: E402
from diffpo_jax.sampling import SamplerConfig, make_sampler  # noqa: E402

GEN_LENGTH = 24  # the demo's completion length (configs/demo_sudoku.py)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default="", help="HF-format demo model (default: the shipped SFT model)")
    ap.add_argument("--n", type=int, default=256, help="held-out puzzles")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rules", default="eb", help=f"comma list from {tuple(RULE_KNOBS)}")
    ap.add_argument("--gammas", default="0.3,1", help="eb's gamma values")
    ap.add_argument("--thresholds", default="0.9", help="threshold's tau values")
    ap.add_argument("--block_lengths", default="24,8", help=f"divisors of gen_length={GEN_LENGTH}")
    ap.add_argument("--clamp_c", type=float, default=RLConfig().clamp_c, help="IS clamp C")
    ap.add_argument("--iters", type=int, default=3, help="timed calls per batch shape (median)")
    args = ap.parse_args(argv)
    bad = [r for r in args.rules.split(",") if r not in RULE_KNOBS]
    if bad:
        ap.error(f"--rules {args.rules!r}: unknown {bad}; choose from {tuple(RULE_KNOBS)}")
    for lb in _ints(args.block_lengths):
        if lb <= 0 or GEN_LENGTH % lb:
            ap.error(f"--block_lengths: {lb} does not divide gen_length={GEN_LENGTH}")
    return args


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def settings_grid(args) -> list[tuple[str, dict, int]]:
    """(rule, {knob: value}, block_length) for every combination asked for."""
    grid = []
    for rule in args.rules.split(","):
        knob = RULE_KNOBS[rule]
        values = {"gamma": _floats(args.gammas), "threshold": _floats(args.thresholds)}.get(knob, [None])
        for v in values:
            for lb in _ints(args.block_lengths):
                grid.append((rule, {knob: v} if knob else {}, lb))
    return grid


def load_demo(args, mesh):
    """(model, tokenizer, items, prompt batches [(tokens [b, P], mask [b, P], n_real)])."""
    from configs import demo_sudoku

    config = demo_sudoku.get_config("joint")
    config.model.lora_rank = 0  # the SFT model alone
    if args.model_dir:
        config.model.hf_dir = args.model_dir
    llm, tokenizer = experiment.build_llm(config, mesh)
    items = tasks.load_eval_items("sudoku", config.task.data_dir or None, n=args.n, seed=42)
    fmt = lambda it: tasks.format_prompt("sudoku", it, tokenizer, "eval", False, "compact")  # noqa: E731
    ids = evaluate.encode_prompts("sudoku", items, tokenizer, 0, fmt)
    batches = [(np.asarray(t), np.asarray(m), n) for _, t, m, n in
               evaluate.padded_batches(ids, args.batch, llm.cfg.pad_token_id)]
    return llm, tokenizer, items, batches


def run(args: argparse.Namespace) -> dict:
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    llm, tokenizer, items, batches = load_demo(args, mesh)
    graphdef, state = nnx.split(llm)
    rl = RLConfig()
    exact_fn = exact_logp_fn(graphdef, GEN_LENGTH, GEN_LENGTH)
    mf2_fn = two_mf_fn(graphdef, GEN_LENGTH, rl.replace(logprob_chunk=GEN_LENGTH))
    log_c = math.log(args.clamp_c)
    base_eval = SamplerConfig(rule="eb", gen_length=GEN_LENGTH, block_length=GEN_LENGTH,
                              mask_token_id=llm.cfg.mask_token_id, eos_token_id=llm.cfg.eos_token_id)
    rows, ratios = [], {}
    for rule, kw, lb in settings_grid(args):
        label = ", ".join([rule] + [f"{k} {v:g}" for k, v in kw.items()] + [f"block {lb}"])
        per_mode, times = {}, {}
        for mode in MODES:
            scfg = base_eval.replace(rule=rule, block_length=lb, kv_cache=mode, **kw)
            sampler = make_sampler(graphdef, scfg, mesh)
            fn = lambda toks, pm, s=sampler: jax.block_until_ready(s(state, toks, pm, jax.random.key(0)))  # noqa: E731
            per_mode[mode] = [fn(t, m) for t, m, _ in batches]  # the first call compiles
            times[mode] = fn
        b0 = batches[0]
        timed = common.time_interleaved({m: (lambda f=f: f(b0[0], b0[1])) for m, f in times.items()}, 0, args.iters)
        base_t = timed["none"][0]
        for mode in MODES:
            scores, agree, deltas, own_c, exact_c, nfes, forwards = [], [], [], [], [], [], 0
            for (toks, pmask, n_real), out, ref in zip(batches, per_mode[mode], per_mode["none"]):
                with shd.use_mesh(mesh):
                    exact = np.asarray(exact_fn(state, out.tokens, out.unmask_step, out.nfe))[:n_real]
                    mf2 = np.asarray(mf2_fn(state, out.tokens, jnp.asarray(pmask), out.unmask_step, out.nfe,
                                            jax.random.key(1)))[:n_real]
                comp = np.asarray(out.tokens)[:n_real, -GEN_LENGTH:]
                cmask = np.asarray(out.completion_mask)[:n_real]
                own = np.asarray(out.behaviour_logp)[:n_real]
                agree.append(comp == np.asarray(ref.tokens)[:n_real, -GEN_LENGTH:])
                deltas.append(np.abs(own - exact)[cmask])
                own_c.append((mf2 - own)[cmask] >= log_c)
                exact_c.append((mf2 - exact)[cmask] >= log_c)
                nfes.append(np.asarray(out.nfe)[:n_real])
                forwards += int(out.forwards)
                start = len(scores)
                for j in range(n_real):
                    text = tokenizer.decode([int(t) for t in comp[j][cmask[j]]], skip_special_tokens=False)
                    scores.append(tasks.score("sudoku", text, items[start + j]))
            acc = tasks.aggregate("sudoku", scores)
            d = np.concatenate(deltas)
            t = timed[mode][0]
            rows.append([label, mode, f"{100 * acc['accuracy']:.1f}", f"{100 * acc['puzzle_accuracy']:.1f}",
                         f"{float(np.mean(np.concatenate(nfes))):.2f}", forwards, f"{t * 1e3:.1f}",
                         f"{base_t / t:.2f}x", f"{float(np.mean(np.concatenate(agree))):.3f}",
                         f"{float(d.mean()):.2e}", f"{float(d.max()):.2e}",
                         f"{float(np.mean(np.concatenate(own_c))):.3f}",
                         f"{float(np.mean(np.concatenate(exact_c))):.3f}"])
            if mode != "none":
                ratios[f"{label} {mode} speed-up vs none"] = base_t / t
    model = args.model_dir or "diffpo_jax/assets/demo_sudoku (shipped SFT model)"
    settings = (f"{model}: {llm.cfg.n_layers} layers, d {llm.cfg.d_model}, {llm.cfg.compute_dtype}; "
                f"{len(items)} held-out 4x4 Sudoku puzzles (shared/data, seed 42), batch {args.batch}, prompt "
                f"{batches[0][0].shape[1]} tokens, gen {GEN_LENGTH}, T = 0; IS clamp C = {args.clamp_c:g}; "
                f"time = median of {args.iters} interleaved calls on one batch")
    return dict(title="Prefix KV cache on the trained demo model", settings=settings, env=common.env_line(),
                ratios=ratios, rows=rows,
                columns=["setting", "kv_cache", "cell acc. %", "puzzles %", "mean NFE", "forwards",
                         "ms / batch", "speed-up", "token agreement", "mean abs Δ logp", "max abs Δ logp",
                         "IS at C (own)", "IS at C (exact)"])


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

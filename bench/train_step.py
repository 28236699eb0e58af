"""LoRA RL train step: diffpo_jax.rl.train_step (jitted) vs a d1-style PyTorch step, same weights.

    python -m bench.train_step                    # tiny LoRA model on CPU
    python -m bench.train_step --llada8b --batch 8 --prompt_len 128 --gen_length 256 --remat full  # GPU

(`python -m bench.run --only train_step` runs it with the suite's settings.)

One step on a batch of B completions (groups of G rows), method d1 (mean-field surrogate,
w = 1), old / reference log-probs given in the batch (as d1 stores them at rollout time):
    lp   = mean-field log-probs of o under θ (prompt masked with p_mask, completion all M)
    ℓ_i  = −min(ρ_i A_b, clip(ρ_i, 1−ε, 1+ε) A_b) + β·(exp(lp_ref − lp) − (lp_ref − lp) − 1),
           ρ = exp(lp − lp_old), A = r − mean_group(r)
    loss = Σ m ℓ / Σ m;  backward;  global-norm clip;  AdamW on the LoRA parameters only.
JAX: `make_train_step(...)` on a `Policy(LLaDA with LoRA)` (state donated, one compile).
Torch: `tests/torch_llada.TorchLLaDA` with the same weights and LoRA adapters, base frozen,
full `[B, P+L, V]` logits like d1, `torch.optim.AdamW` + `clip_grad_norm_`; with --remat other
than none every block is checkpointed (d1 uses gradient checkpointing). Before timing both
compute the loss and gradient norm of the same initial weights on JAX's p̃; they are compared.
steps/s = 1 / median seconds per step; tokens/s = B·L completion tokens per step.
MFU: bench/common.py train_flops (LoRA: the frozen base's weight gradients are not computed);
the "3× fwd" column uses the full-fine-tuning convention for comparison.
Peak memory: GPU: jax `peak_bytes_in_use` / `torch.cuda.max_memory_allocated`; CPU: the
process's max RSS (JAX and torch together, one number).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/train_step.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)
from bench import likelihood as blk  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402
from diffpo_jax.models.threshold_head import Policy  # noqa: E402
from diffpo_jax.rl import RLConfig, likelihood as lk  # noqa: E402
from diffpo_jax.rl.train_step import init_train_state, make_score_fn, make_train_step  # noqa: E402


def torch_grpo_loss(lp, old, ref, adv, mask, epsilon: float, beta: float):
    """d1's token-mean clipped GRPO loss with the k3 KL. lp/old/ref `[B, L]`, adv `[B]`, mask `[B, L]`."""
    m = mask.float()
    ratio = torch.exp(torch.clamp((lp - old) * m, -20.0, 20.0))
    a = adv[:, None]
    per = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * a)
    if beta > 0:
        r = ref - lp
        per = per + beta * (torch.exp(r) - r - 1.0)
    return (per * m).sum() / m.sum().clamp_min(1.0)


def torch_loss(tm, p_tilde, t: dict, rl: RLConfig, mask_id: int, remat: bool):
    lp = blk.torch_mf_logps(tm, p_tilde, t["completion"], mask_id, remat)
    r = t["rewards"].view(-1, rl.num_generations)
    adv = (r - r.mean(1, keepdim=True)).view(-1)
    return torch_grpo_loss(lp, t["old_logp"], t["ref_logp"], adv, t["completion_mask"], rl.epsilon, rl.beta)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llada8b", action="store_true", help="LLaDA-8B shapes, bf16, random weights (accelerator)")
    ap.add_argument("--n_layers", type=int, default=None, help="override the layer count (smoke runs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--group", type=int, default=4, help="G, completions per prompt (divides --batch)")
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--gen_length", type=int, default=128)
    ap.add_argument("--p_mask", type=float, default=0.15)
    ap.add_argument("--beta", type=float, default=0.04)
    common.add_rl_bench_args(ap)
    ap.add_argument("--torch_remat", default=None, choices=("none", "full"),
                    help="torch gradient checkpointing per block (default: on iff --remat is not none); "
                         "lets each side run its fastest setting")
    args = ap.parse_args(argv)
    if args.batch % args.group:
        ap.error(f"--batch {args.batch} is not a multiple of --group {args.group}")
    return args


def run(args: argparse.Namespace) -> dict:
    common.set_torch_threads(args.torch_threads)
    cfg = blk.model_config(args)
    torch_remat = (args.torch_remat or ("none" if args.remat == "none" else "full")) == "full"
    rl = RLConfig(method="d1", num_generations=args.group, p_mask=args.p_mask, beta=args.beta,
                  logprob_chunk=args.chunk, lr=1e-4)
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    llm = common.build_llada(cfg, seed=args.seed, lora_b_std=0.02, mesh=mesh,
                             attention_impl=args.attention_impl)
    ts = init_train_state(Policy(llm, None), rl, mesh)
    step = make_train_step(ts.graphdef, rl, ts.tx, mesh, trainable=ts.trainable, frozen=ts.frozen)
    key = jax.random.key(args.seed + 1)

    arrays = common.rl_inputs(cfg, args.batch, args.prompt_len, args.gen_length, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    arrays["rewards"] = rng.normal(size=args.batch).astype(np.float32)
    arrays["behaviour_logp"] = np.full((args.batch, args.gen_length), -3.0, np.float32)
    batch = jax.device_put({k: jnp.asarray(v) for k, v in arrays.items()}, shd.batch_sharding(mesh, 1))
    batch.update(make_score_fn(ts.graphdef, rl, mesh)(ts.trainable, ts.frozen, batch, key))  # θ_old = θ, ref

    tdev = None if args.no_torch else common.default_torch_device()
    notes, fns = [], {}
    if tdev:  # before the first JAX step: the torch copy gets the initial weights
        tm = common.torch_llada_copy(llm, common.torch_dtype(cfg.compute_dtype), tdev)
        lora = common.add_torch_lora(tm, llm)
        tm.train()
        ta = blk.to_torch({k: v for k, v in arrays.items() if v.dtype != np.float32}, tdev)
        ta.update({k: torch.from_numpy(np.array(batch[k], np.float32)).to(tdev)
                   for k in ("rewards", "old_logp", "ref_logp")})
        p_tilde = torch.from_numpy(np.asarray(lk.mask_prompt(batch["prompt"], batch["prompt_mask"], key, rl.p_mask,
                                                             cfg.mask_token_id)).astype(np.int64)).to(tdev)
        loss0 = torch_loss(tm, p_tilde, ta, rl, cfg.mask_token_id, torch_remat)
        loss0.backward()
        gnorm0 = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in lora)))
        loss0 = float(loss0.detach())
        for p in lora:
            p.grad = None
        opt = torch.optim.AdamW(lora, lr=rl.lr, betas=(rl.adam_b1, rl.adam_b2), weight_decay=rl.weight_decay)
        gen = torch.Generator(device=tdev).manual_seed(args.seed)
        sync = common.torch_sync(tdev)

    st = {"tr": ts.trainable, "opt": ts.opt_state}

    def jax_step():
        st["tr"], st["opt"], metrics = step(st["tr"], st["opt"], ts.frozen, batch, key)
        return jax.block_until_ready((st["tr"], metrics))[1]

    t0 = time.perf_counter()
    m0 = jax_step()
    notes.append(f"jax compile+first step {time.perf_counter() - t0:.2f}s")
    fns["jax train_step (jit)"] = jax_step
    if tdev:
        notes.append(f"initial loss jax {float(m0['loss']):.6f} / torch {loss0:.6f}; grad norm jax "
                     f"{float(m0['grad_norm']):.6f} / torch {gnorm0:.6f}")

        def torch_step():
            p_t = blk.torch_mask_prompt(ta["prompt"], rl.p_mask, cfg.mask_token_id, gen)
            loss = torch_loss(tm, p_t, ta, rl, cfg.mask_token_id, torch_remat)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora, rl.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            return loss

        if tdev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        fns[f"torch d1-style step ({tdev}, {torch.get_num_threads()} threads)"] = torch_step
    with shd.use_mesh(mesh), common.profile(args.profile):
        timed = common.time_interleaved(fns, args.warmup, args.iters)
    mem = common.peak_memory(tdev)

    seq, n_tok = args.prompt_len + args.gen_length, args.batch * args.gen_length
    flops = common.train_flops(cfg, args.batch, seq, head_tokens=n_tok)
    flops3 = common.train_flops(cfg, args.batch, seq, head_tokens=n_tok, convention="3x")
    peak = common.detect_peak_tflops(args.peak_tflops)
    notes.append(f"FLOPs/step {flops:.3e} (3x-forward convention {flops3:.3e})"
                 + (f"; peak {peak:.0f} TFLOP/s" if peak else ""))
    if "jax_peak_gb" not in mem:
        notes.append(f"peak memory: process max RSS {mem['host_max_rss_gb']:.2f} GB (JAX and torch together)")
    rows, data = [], []
    for name, (t, _) in timed.items():
        gb = mem.get("jax_peak_gb" if name.startswith("jax") else "torch_peak_gb")
        rows.append([name, f"{1e3 * t:.2f}", f"{1 / t:.2f}", f"{n_tok / t:,.0f}", f"{flops / t / 1e12:.3f}",
                     common.mfu(flops, t, peak), common.mfu(flops3, t, peak),
                     f"{gb:.2f} GB" if gb is not None else "see note"])
        data.append(dict(impl=name, seconds=t, steps_per_s=1 / t, tokens_per_s=n_tok / t, flops=flops,
                         peak_memory_gb=gb))
    ratios = {}
    if len(data) > 1:
        ratios["jax / torch steps/s"] = data[1]["seconds"] / data[0]["seconds"]
    return dict(bench="train_step", title=f"Train step ({'LLaDA-8B' if args.llada8b else 'tiny'})",
                env=common.env_line(tdev),
                settings=(f"d={cfg.d_model}, layers={cfg.n_layers}, V={cfg.vocab_size}, LoRA r={cfg.lora_rank} "
                          f"(all 7 projections), compute={cfg.compute_dtype}, remat jax={args.remat} / torch "
                          f"{'per-block checkpointing' if torch_remat else 'none'}, B={args.batch} "
                          f"(G={args.group}), P={args.prompt_len}, L={args.gen_length}, method d1, β={rl.beta}, "
                          f"ε={rl.epsilon}, p_mask={rl.p_mask}, AdamW + clip {rl.grad_clip}"),
                notes=notes, columns=["impl", "ms / step", "steps/s", "tokens/s", "TFLOP/s", "MFU",
                                      "MFU (3× fwd conv.)", "peak memory"],
                rows=rows, ratios=ratios, data=data, memory=mem)


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

"""Surrogate likelihood throughput: diffpo_jax.rl.likelihood (MF, 2-MF) vs a d1-style PyTorch
implementation of the same computation on the same weights, in the same run.

    python -m bench.likelihood                    # tiny LoRA model on CPU
    python -m bench.likelihood --llada8b --batch 8 --prompt_len 128 --gen_length 256   # GPU

(`python -m bench.run --only likelihood` runs it with the suite's settings.)

Both sides return per-token log-probs `[B, L] f32` of a completion `o` given the prompt `p`:
  mf  (d1):  log softmax(f([p̃, M…M]))[o_i]; p̃ = p with each position replaced by the mask id
             with probability p_mask (padding included, as d1), one forward of `[B, P+L]`.
  2mf:       stage 1 as mf, stage 2 from `[p, z_τ]` (z_τ = o where unmask_step ≤ τ, else M;
             τ ~ UniformInt[0, nfe)), both as one `[2B, P+L]` forward; token i takes stage 1 if
             unmask_step_i ≤ τ.
  exact:     the sampler's trajectory likelihood (`exact_logps`): one `[B, P+L]` forward per
             decoding step (here nfe = L/2 steps), the oracle the surrogates approximate; JAX
             only (no d1 counterpart), its cost relative to mf is the number to read.
JAX: the jitted `mf_logps` / `two_stage_logps` / `exact_logps` (LM head on the L completion positions only,
chunked log-softmax). Torch: written the way d1's `_get_per_token_logps` is: `torch.rand`
prompt masking, the model's full `[B, P+L, V]` logits, slice the completion, fp32
`log_softmax`, gather. The LoRA adapter is on in both (as when scoring θ / θ_old). Before
timing, the torch functions are fed JAX's p̃ and τ and the log-probs compared.
tokens/s = B·L scored completion tokens per call. MFU uses the same model FLOPs for both
sides (bench/common.py: body over all R·(P+L) tokens, LM head over B·L, R = B or 2B).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/likelihood.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402
from diffpo_jax.rl import likelihood as lk  # noqa: E402

SURROGATES = ("mf", "2mf", "exact")


# ----------------------------------------------------------------------------- torch (d1-style)


def torch_mask_prompt(prompt, p_mask: float, mask_id: int, gen):
    """p̃: each prompt position -> mask_id with probability p_mask. `[B, P]` long."""
    u = torch.rand(prompt.shape, generator=gen, device=prompt.device)
    return torch.where(u < p_mask, mask_id, prompt)


def torch_draw_tau(nfe, gen):
    """τ ~ UniformInt[0, max(nfe, 1)) per row. nfe `[B]` long -> `[B]` long."""
    hi = nfe.clamp_min(1).float()
    return (torch.rand(nfe.shape, generator=gen, device=nfe.device) * hi).floor().long().minimum(nfe.clamp_min(1) - 1)


def torch_gather_logps(logits, completion):
    """fp32 log_softmax over V, gathered at the completion ids. `[B, L, V]`, `[B, L]` -> `[B, L]`."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, completion[..., None])[..., 0]


def torch_mf_logps(tm, p_tilde, completion, mask_id: int, remat: bool = False):
    """d1 mean-field: one forward of `[p̃, M…M]`, full logits, completion slice. -> `[B, L] f32`."""
    x = torch.cat([p_tilde, torch.full_like(completion, mask_id)], dim=1)
    logits = common.torch_logits(tm, x, remat)[:, p_tilde.shape[1]:]
    return torch_gather_logps(logits, completion)


def torch_two_stage_logps(tm, p_tilde, prompt, completion, unmask_step, tau, mask_id: int, remat: bool = False):
    """2-MF (prompt masking in stage 1 only): `[p̃, M…M]` and `[p, z_τ]` in one `[2B]` forward."""
    b, p = prompt.shape
    z = torch.where(unmask_step <= tau[:, None], completion, mask_id)
    x = torch.cat([torch.cat([p_tilde, torch.full_like(completion, mask_id)], 1), torch.cat([prompt, z], 1)], 0)
    logits = common.torch_logits(tm, x, remat)[:, p:]
    stage1 = (unmask_step <= tau[:, None])[..., None]
    return torch_gather_logps(torch.where(stage1, logits[:b], logits[b:]), completion)


def torch_surrogate(kind: str, tm, t: dict, p_mask: float, mask_id: int, gen, remat: bool = False):
    """Draw p̃ (and τ) with torch's RNG, then score: the timed torch call."""
    p_tilde = torch_mask_prompt(t["prompt"], p_mask, mask_id, gen)
    if kind == "mf":
        return torch_mf_logps(tm, p_tilde, t["completion"], mask_id, remat)
    tau = torch_draw_tau(t["nfe"], gen)
    return torch_two_stage_logps(tm, p_tilde, t["prompt"], t["completion"], t["unmask_step"], tau, mask_id, remat)


def to_torch(arrays: dict, device: str) -> dict:
    return {k: torch.from_numpy(v.astype(np.int64) if v.dtype != bool else v).to(device) for k, v in arrays.items()}


# ----------------------------------------------------------------------------- JAX


def jax_surrogate_fn(graphdef, kind: str, p_mask: float, chunk: int):
    """jitted (state, arrays, key) -> `[B, L] f32` log-probs of the LoRA model."""

    def fn(state, a, key):
        model = nnx.merge(graphdef, state)
        if kind == "mf":
            return lk.mf_logps(model, a["prompt"], a["prompt_mask"], a["completion"], key, p_mask=p_mask, chunk=chunk)
        if kind == "exact":
            return lk.exact_logps(model, a["prompt"], a["prompt_mask"], a["completion"], a["unmask_step"], chunk=chunk)
        return lk.two_stage_logps(model, a["prompt"], a["prompt_mask"], a["completion"], a["unmask_step"], a["nfe"],
                                  key, p_mask=p_mask, stages="stage1", chunk=chunk)

    return jax.jit(fn)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llada8b", action="store_true", help="LLaDA-8B shapes, bf16, random weights (accelerator)")
    ap.add_argument("--n_layers", type=int, default=None, help="override the layer count (smoke runs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--gen_length", type=int, default=128)
    ap.add_argument("--surrogates", default="mf,2mf,exact")
    ap.add_argument("--p_mask", type=float, default=0.15)
    common.add_rl_bench_args(ap)
    return ap.parse_args(argv)


def model_config(args) -> llada.LLaDAConfig:
    """tiny (fp32) or LLaDA-8B (bf16) with LoRA on every projection."""
    rank = args.lora_rank or (128 if args.llada8b else 8)
    if args.llada8b:
        cfg = common.llada8b_config(lora_rank=rank, remat=args.remat)
    else:
        cfg = llada.tiny(lora_rank=rank, lora_alpha=16.0, remat=args.remat)
    return cfg.replace(n_layers=args.n_layers) if args.n_layers else cfg


def run(args: argparse.Namespace) -> dict:
    common.set_torch_threads(args.torch_threads)
    cfg = model_config(args)
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    model = common.build_llada(cfg, seed=args.seed, lora_b_std=0.02, mesh=mesh,
                               attention_impl=args.attention_impl)
    graphdef, state = nnx.split(model)
    arrays = common.rl_inputs(cfg, args.batch, args.prompt_len, args.gen_length, args.seed)
    ja = jax.device_put({k: jnp.asarray(v) for k, v in arrays.items()}, shd.batch_sharding(mesh, 1))
    key = jax.random.key(args.seed + 1)
    tdev = None if args.no_torch else common.default_torch_device()
    tm = None
    if tdev:
        tm = common.torch_llada_copy(model, common.torch_dtype(cfg.compute_dtype), tdev)
        common.add_torch_lora(tm, model)
        ta = to_torch(arrays, tdev)
        gen = torch.Generator(device=tdev).manual_seed(args.seed)
        sync = common.torch_sync(tdev)
    peak = common.detect_peak_tflops(args.peak_tflops)
    n_tok = args.batch * args.gen_length
    rows, data, notes, ratios = [], [], [], {}
    for kind in args.surrogates.split(","):
        if kind not in SURROGATES:
            raise SystemExit(f"--surrogates: unknown {kind!r}; choose from {SURROGATES}")
        fn = jax_surrogate_fn(graphdef, kind, args.p_mask, args.chunk)
        t0 = time.perf_counter()
        with shd.use_mesh(mesh):
            lp = np.asarray(jax.block_until_ready(fn(state, ja, key)))
        compile_s = time.perf_counter() - t0
        fns = {f"jax {kind} (jit)": lambda fn=fn: jax.block_until_ready(fn(state, ja, key))}
        if tm is not None and kind != "exact":
            with torch.no_grad():  # parity on JAX's own p̃ and τ
                p_tilde = torch.from_numpy(np.asarray(lk.mask_prompt(ja["prompt"], ja["prompt_mask"], key, args.p_mask,
                                                                     cfg.mask_token_id)).astype(np.int64)).to(tdev)
                if kind == "mf":
                    ref = torch_mf_logps(tm, p_tilde, ta["completion"], cfg.mask_token_id)
                else:
                    tau = torch.from_numpy(np.asarray(lk.draw_tau(key, ja["nfe"])).astype(np.int64)).to(tdev)
                    ref = torch_two_stage_logps(tm, p_tilde, ta["prompt"], ta["completion"], ta["unmask_step"], tau,
                                                cfg.mask_token_id)
            diff = float(np.abs(lp - ref.float().cpu().numpy()).max())
            notes.append(f"{kind}: jax compile+first call {compile_s:.2f}s; max |logp_jax - logp_torch| = {diff:.2e}")

            def torch_call(kind=kind):
                with torch.no_grad():
                    out = torch_surrogate(kind, tm, ta, args.p_mask, cfg.mask_token_id, gen)
                sync()
                return out

            fns[f"torch {kind} eager ({tdev}, {torch.get_num_threads()} threads)"] = torch_call
        else:
            notes.append(f"{kind}: jax compile+first call {compile_s:.2f}s")
        with shd.use_mesh(mesh), common.profile(args.profile and os.path.join(args.profile, kind)):
            timed = common.time_interleaved(fns, args.warmup, args.iters)
        n_steps = int(np.max(arrays["unmask_step"])) if kind == "exact" else 1  # forwards per call
        rows_fwd = args.batch * (2 if kind == "2mf" else n_steps)
        flops = common.forward_flops(cfg, rows_fwd, args.prompt_len + args.gen_length, head_tokens=n_tok * n_steps,
                                     lora=True)
        for name, (t, _) in timed.items():
            rows.append([name, f"{1e3 * t:.2f}", f"{n_tok / t:,.0f}", f"{flops / t / 1e12:.3f}",
                         common.mfu(flops, t, peak)])
            data.append(dict(surrogate=kind, impl=name, seconds=t, tokens_per_s=n_tok / t, flops=flops))
        secs = [t for t, _ in timed.values()]
        if len(secs) > 1:
            ratios[f"jax / torch tokens/s, {kind}"] = secs[1] / secs[0]
        if kind == "exact" and any(d["surrogate"] == "mf" for d in data):
            mf_s = next(d["seconds"] for d in data if d["surrogate"] == "mf" and d["impl"].startswith("jax"))
            ratios["jax exact / jax mf seconds per call"] = secs[0] / mf_s
    return dict(bench="likelihood", title=f"Likelihood ({'LLaDA-8B' if args.llada8b else 'tiny'})",
                env=common.env_line(tdev),
                settings=(f"d={cfg.d_model}, layers={cfg.n_layers}, V={cfg.vocab_size}, LoRA r={cfg.lora_rank}, "
                          f"compute={cfg.compute_dtype}, B={args.batch}, P={args.prompt_len}, L={args.gen_length}, "
                          f"p_mask={args.p_mask}, chunk={args.chunk}; tokens/s = B·L scored tokens"),
                notes=notes, columns=["impl", "ms / call", "tokens/s", "TFLOP/s", "MFU"], rows=rows, ratios=ratios,
                data=data)


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

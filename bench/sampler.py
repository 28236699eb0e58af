"""Sampler benchmark: tokens/s and NFE per rule, JAX vs a PyTorch reference loop, same weights.

  python -m bench.sampler                       # CPU, 'small' random model (~2 min on 2 cores)
  python -m bench.sampler --preset tiny --repeats 1
  python -m bench.sampler --llada8b --batch 8 --prompt_len 128 --gen_length 256   # GPU: 8B shapes, bf16

(`python -m bench.run --only sampler` runs it with the suite's settings.)
The JAX model is built first; its weights are copied into `tests/torch_llada.TorchLLaDA`
(through the HF name mapping of diffpo_jax.convert), so both sides decode with identical
weights. The PyTorch loop is written the way the public references are (LLaDA generate(),
Fast-dLLM, EB re-implementations): the batch moves block by block in lockstep and each step
computes the full `[B, P+L, V]` logits. The JAX sampler (diffpo_jax.sampling) lets each row
move to its next block as soon as its current one is full, and applies the LM head to the
current block only. Both report per-row NFE; they must agree (and, at T = 0, so must the
tokens). Random weights are sharpened (LM head x --head_scale) so that the parallel rules
reveal different numbers of tokens per step: NFE here shows the mechanics, not model quality.
MFU (GPU/TPU): batched forwards x the model FLOPs of one step (bench/common.py forward FLOPs
over the whole [B, P+L] sequence, LM head on the B x block_length current-block positions,
the same count for both sides) / seconds / peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/sampler.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from diffpo_jax.models import llada  # noqa: E402
from diffpo_jax.sampling import SamplerConfig, make_sampler  # noqa: E402

PRESETS = {
    "tiny": dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=128),
    "small": dict(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden=768),
}


# ----------------------------------------------------------------------------- torch reference loop


def _transfer_counts(n_masks: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] -> [B, steps]: LLaDA's even split, remainder to the first steps."""
    s = torch.arange(steps, device=n_masks.device)[None, :]
    return n_masks[:, None] // steps + (s < (n_masks[:, None] % steps)).long()


def _ranks(key: torch.Tensor) -> torch.Tensor:
    """Rank of each entry when sorted ascending (stable: ties by lower index)."""
    return torch.argsort(torch.argsort(key, dim=-1, stable=True), dim=-1)


@torch.no_grad()
def torch_generate(model, prompt: torch.Tensor, cfg: SamplerConfig, gamma, threshold, mask_id: int,
                   temperature: float = 0.0, seed: int = 0):
    """Batched lockstep reference. Returns (tokens [B, P+L], nfe [B], forwards)."""
    b, p = prompt.shape
    dev = prompt.device
    x = torch.full((b, p + cfg.gen_length), mask_id, dtype=torch.long, device=dev)
    x[:, :p] = prompt
    nfe = torch.zeros(b, dtype=torch.long, device=dev)
    gamma = torch.as_tensor(gamma, dtype=torch.float32, device=dev).expand(b)
    threshold = torch.as_tensor(threshold, dtype=torch.float32, device=dev).expand(b)
    gen = torch.Generator(device=dev).manual_seed(seed)
    forwards, lb = 0, cfg.block_length
    for blk in range(cfg.n_blocks):
        lo, hi = p + blk * lb, p + (blk + 1) * lb
        counts = _transfer_counts((x[:, lo:hi] == mask_id).sum(-1), cfg.max_steps_per_block)
        step = 0
        while True:
            elig = x[:, lo:hi] == mask_id
            active = elig.any(-1)
            if (cfg.rule == "fixed" and step == cfg.max_steps_per_block) or (cfg.rule != "fixed" and not active.any()):
                break
            logits = model(x)[:, lo:hi].float()  # full logits, as the references compute them
            forwards += 1
            lsm = torch.log_softmax(logits, -1)
            if temperature > 0:
                u = torch.rand(logits.shape, generator=gen, device=dev).clamp_min(1e-20)
                noisy = logits / temperature - torch.log(-torch.log(u))
            else:
                noisy = logits.clone()
            noisy[..., mask_id] = -torch.inf  # never propose the mask id (as diffpo_jax.sampling.rules.propose)
            x0 = noisy.argmax(-1)
            conf = lsm.gather(-1, x0[..., None])[..., 0].exp()
            if cfg.rule in ("fixed", "topk"):
                k = counts[:, step] if cfg.rule == "fixed" else torch.full((b,), cfg.k, device=dev)
                select = _ranks(torch.where(elig, -conf, torch.inf)) < k[:, None]
            elif cfg.rule == "threshold":
                select = (_ranks(torch.where(elig, -conf, torch.inf)) == 0) | (conf >= threshold[:, None])
            else:  # eb
                ent = -(lsm.exp() * lsm).nan_to_num().sum(-1)
                order = torch.argsort(torch.where(elig, ent, torch.inf), dim=-1, stable=True)
                n = elig.sum(-1, keepdim=True)
                in_range = torch.arange(lb, device=dev)[None, :] < n
                h = torch.where(in_range, ent.gather(-1, order), 0.0)
                excess = h.cumsum(-1) - h.cummax(-1).values
                count = ((excess <= gamma[:, None]) & in_range).sum(-1, keepdim=True).clamp(min=1)
                select = torch.argsort(order, dim=-1) < torch.minimum(count, n)
            select &= elig
            x[:, lo:hi] = torch.where(select, x0, x[:, lo:hi])
            nfe += (torch.ones_like(active) if cfg.rule == "fixed" else active).long()
            step += 1
    return x, nfe, forwards


# ----------------------------------------------------------------------------- set-up


def build_models(args):
    if args.llada8b:
        cfg = common.llada8b_config(max_sequence_length=4096)
        if args.n_layers:
            cfg = cfg.replace(n_layers=args.n_layers)
    else:
        cfg = llada.tiny(**PRESETS[args.preset], compute_dtype="float32", max_sequence_length=1024)
    model = common.build_llada(cfg, seed=args.seed, attention_impl=args.attention_impl)
    model.lm_head[...] = (model.lm_head[...].astype(jnp.float32) * args.head_scale).astype(model.lm_head[...].dtype)
    tmodel = None
    if not args.no_torch:
        tmodel = common.torch_llada_copy(model, torch.bfloat16 if args.llada8b else torch.float32, args.torch_device)
    return cfg, model, tmodel


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--llada8b", action="store_true", help="LLaDA-8B shapes, bf16, random weights (accelerator)")
    ap.add_argument("--n_layers", type=int, default=None, help="override the 8B layer count (smoke runs)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--gen_length", type=int, default=64)
    ap.add_argument("--block_length", type=int, default=32)
    ap.add_argument("--rules", default="fixed,topk,threshold,eb")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--head_scale", type=float, default=40.0, help="multiply the random LM head (sharper logits)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument("--torch_threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--torch_device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak_tflops", type=float, default=None, help="peak of all devices together, TFLOP/s")
    ap.add_argument("--profile", default=None, help="write a jax.profiler trace of the timed JAX calls here")
    ap.add_argument("--json", default=None, help="also write the results here")
    common.add_attention_arg(ap)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    common.set_torch_threads(args.torch_threads)
    cfg, model, tmodel = build_models(args)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(args.seed)
    prompt = rng.integers(0, min(cfg.vocab_size, cfg.mask_token_id), (args.batch, args.prompt_len)).astype(np.int32)
    n_tokens = args.batch * args.gen_length
    peak = common.detect_peak_tflops(args.peak_tflops)
    # model FLOPs of one batched forward: body over [B, P+L], LM head over the current block
    step_flops = common.forward_flops(cfg, args.batch, args.prompt_len + args.gen_length,
                                      head_tokens=args.batch * args.block_length)
    name = "LLaDA-8B" if args.llada8b else args.preset
    settings = (f"{name} (d={cfg.d_model}, layers={cfg.n_layers}, V={cfg.vocab_size}), B={args.batch}, "
                f"P={args.prompt_len}, L={args.gen_length}, block={args.block_length}, T={args.temperature}; "
                f"k={args.k}, threshold={args.threshold}, gamma={args.gamma}, fixed steps=L/2")
    columns = ["rule", "mean NFE", "JAX forwards", "JAX s", "JAX ms/fwd", "JAX tok/s", "JAX MFU", "torch forwards",
               "torch s", "torch ms/fwd", "torch tok/s", "torch MFU", "same NFE", "same tokens"]
    rows, table = [], []
    for rule in args.rules.split(","):
        scfg = SamplerConfig(rule=rule, gen_length=args.gen_length, block_length=args.block_length, k=args.k,
                             steps=args.gen_length // 2 if rule == "fixed" else None)
        sampler = make_sampler(graphdef, scfg)
        kw = dict(gamma=args.gamma, threshold=args.threshold, temperature=args.temperature, key=jax.random.key(1))
        t0 = time.perf_counter()
        jax.block_until_ready(sampler(state, prompt, None, **kw))
        compile_s = time.perf_counter() - t0
        fns = {"jax": lambda: jax.block_until_ready(sampler(state, prompt, None, **kw))}
        if tmodel is not None:
            tp = torch.from_numpy(prompt.astype(np.int64)).to(args.torch_device)
            sync = common.torch_sync(args.torch_device)

            def run_torch():
                res = torch_generate(tmodel, tp, scfg, args.gamma, args.threshold, cfg.mask_token_id,
                                     args.temperature)
                sync()
                return res

            run_torch()  # warm-up
            fns["torch"] = run_torch
        with common.profile(args.profile and os.path.join(args.profile, rule)):
            timed = common.time_interleaved(fns, 0, args.repeats)
        jax_s, out = timed["jax"]
        fw = int(out.forwards)
        row = dict(rule=rule, nfe=float(np.mean(out.nfe)), jax_forwards=fw, jax_s=jax_s, jax_tok_s=n_tokens / jax_s,
                   jax_ms_fwd=1e3 * jax_s / fw, jax_first_call_s=compile_s, jax_mfu=common.mfu(fw * step_flops,
                                                                                             jax_s, peak))
        cells = [rule, f"{row['nfe']:.1f}", fw, f"{jax_s:.3f}", f"{row['jax_ms_fwd']:.1f}", f"{row['jax_tok_s']:.0f}",
                 row["jax_mfu"]]
        if tmodel is not None:
            torch_s, (tx, tnfe, tfw) = timed["torch"]
            row.update(torch_forwards=tfw, torch_s=torch_s, torch_tok_s=n_tokens / torch_s,
                       torch_ms_fwd=1e3 * torch_s / tfw, torch_mfu=common.mfu(tfw * step_flops, torch_s, peak),
                       same_nfe=bool(np.array_equal(tnfe.cpu().numpy(), np.asarray(out.nfe))),
                       same_tokens=float(np.mean(np.all(tx.cpu().numpy() == np.asarray(out.tokens), -1))))
            same = ([row["same_nfe"], f"{row['same_tokens']:.0%}"] if args.temperature == 0 else
                    ["n/a (T > 0: different RNGs)", "n/a"])
            cells += [tfw, f"{torch_s:.3f}", f"{row['torch_ms_fwd']:.1f}", f"{row['torch_tok_s']:.0f}",
                      row["torch_mfu"]] + same
        else:
            cells += ["-"] * 7
        rows.append(row)
        table.append(cells)
    ratios = {}
    if tmodel is not None:
        ratios["jax / torch tokens/s (geometric mean over rules)"] = float(np.exp(np.mean(
            [np.log(r["jax_tok_s"] / r["torch_tok_s"]) for r in rows])))
    res = dict(bench="sampler", title=f"Sampler ({name})", env=common.env_line(args.torch_device),
               settings=settings, notes=[f"model FLOPs per batched forward {step_flops:.3e}"
                                         + (f"; peak {peak:.0f} TFLOP/s" if peak else "")],
               columns=columns, rows=table, ratios=ratios, data=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=res["env"], shape=settings, rows=rows), f, indent=2)
    return res


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

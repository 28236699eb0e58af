"""Sampler benchmark: tokens/s and NFE per rule, JAX vs a PyTorch reference loop, same weights.

  python bench/sampler.py                       # CPU, 'small' random model (~2 min on 2 cores)
  python bench/sampler.py --preset tiny --repeats 1
  python bench/sampler.py --llada8b --batch 8 --prompt_len 128 --gen_length 256   # GPU: 8B shapes, bf16

The JAX model is built first; its weights are copied into `tests/torch_llada.TorchLLaDA`
(through the HF name mapping of diffpo_jax.convert), so both sides decode with identical
weights. The PyTorch loop is written the way the public references are (LLaDA generate(),
Fast-dLLM, EB re-implementations): the batch moves block by block in lockstep and each step
computes the full `[B, P+L, V]` logits. The JAX sampler (diffpo_jax.sampling) lets each row
move to its next block as soon as its current one is full, and applies the LM head to the
current block only. Both report per-row NFE; they must agree (and, at T = 0, so must the
tokens). Random weights are sharpened (LM head x --head_scale) so that the parallel rules
reveal different numbers of tokens per step: NFE here shows the mechanics, not model quality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from diffpo_jax.convert.hf_export import hf_tensor_iter  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402
from diffpo_jax.sampling import SamplerConfig, make_sampler  # noqa: E402
from torch_llada import TorchLLaDA, TorchLLaDAConfig  # noqa: E402

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
                x0 = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
            else:
                x0 = logits.argmax(-1)
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
        cfg = llada.llada_8b_instruct(compute_dtype="bfloat16", max_sequence_length=4096)
    else:
        cfg = llada.tiny(**PRESETS[args.preset], compute_dtype="float32", max_sequence_length=1024)
    model = llada.LLaDA(cfg, rngs=nnx.Rngs(args.seed))
    model.lm_head[...] = (model.lm_head[...].astype(jnp.float32) * args.head_scale).astype(model.lm_head[...].dtype)
    tmodel = None
    if not args.no_torch:
        tcfg = TorchLLaDAConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                                n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, mlp_hidden_size=cfg.mlp_hidden,
                                rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                                max_sequence_length=cfg.max_sequence_length, mask_token_id=cfg.mask_token_id,
                                eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        dtype = torch.bfloat16 if args.llada8b else torch.float32
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device("meta"):  # no memory, no random init; weights are copied in below
                tmodel = TorchLLaDA(tcfg)
        finally:
            torch.set_default_dtype(prev)
        tmodel = tmodel.to_empty(device=args.torch_device)
        params = tmodel.state_dict()
        copied = set()
        with torch.no_grad():
            for name, w in hf_tensor_iter(model):  # one tensor at a time
                params[name].copy_(torch.from_numpy(np.array(w, np.float32)).to(dtype))
                copied.add(name)
        if copied != set(params):
            raise RuntimeError(f"torch parameters not copied from the JAX model: {sorted(set(params) - copied)}")
        tmodel.eval()
    return cfg, model, tmodel


def alternate(run_a, run_b, repeats):
    """Median wall time of `repeats` runs of each, interleaved a, b, a, b, ... (so that a
    change in machine load hits both sides). Returns ((out_a, s_a), (out_b, s_b))."""
    res = {0: [None, []], 1: [None, []]}
    for _ in range(repeats):
        for i, fn in enumerate((run_a, run_b)):
            if fn is not None:
                t = time.perf_counter()
                res[i][0] = fn()
                res[i][1].append(time.perf_counter() - t)
    return tuple((res[i][0], float(np.median(res[i][1])) if res[i][1] else float("nan")) for i in (0, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--llada8b", action="store_true", help="LLaDA-8B shapes, bf16, random weights (accelerator)")
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
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)

    cfg, model, tmodel = build_models(args)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(args.seed)
    prompt = rng.integers(0, min(cfg.vocab_size, cfg.mask_token_id), (args.batch, args.prompt_len)).astype(np.int32)
    n_tokens = args.batch * args.gen_length
    env = (f"{jax.devices()[0].device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores), jax {jax.__version__}, torch {torch.__version__} on {args.torch_device}")
    name = "LLaDA-8B" if args.llada8b else args.preset
    shape = (f"{name} (d={cfg.d_model}, layers={cfg.n_layers}, V={cfg.vocab_size}), B={args.batch}, "
             f"P={args.prompt_len}, L={args.gen_length}, block={args.block_length}, T={args.temperature}")
    print(env + "\n" + shape)
    print("| rule | mean NFE | JAX forwards | JAX s | JAX ms/fwd | JAX tok/s | torch forwards | torch s | "
          "torch ms/fwd | torch tok/s | same NFE | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for rule in args.rules.split(","):
        scfg = SamplerConfig(rule=rule, gen_length=args.gen_length, block_length=args.block_length, k=args.k,
                             steps=args.gen_length // 2 if rule == "fixed" else None)
        sampler = make_sampler(graphdef, scfg)
        kw = dict(gamma=args.gamma, threshold=args.threshold, temperature=args.temperature, key=jax.random.key(1))
        t0 = time.perf_counter()
        jax.block_until_ready(sampler(state, prompt, None, **kw))
        compile_s = time.perf_counter() - t0
        run_jax = lambda: jax.block_until_ready(sampler(state, prompt, None, **kw))  # noqa: E731
        run_torch = None
        if tmodel is not None:
            tp = torch.from_numpy(prompt.astype(np.int64)).to(args.torch_device)
            run_torch = lambda: torch_generate(tmodel, tp, scfg, args.gamma, args.threshold,  # noqa: E731
                                               cfg.mask_token_id, args.temperature)
            run_torch()  # warm-up
        (out, jax_s), (tout, torch_s) = alternate(run_jax, run_torch, args.repeats)
        row = dict(rule=rule, nfe=float(np.mean(out.nfe)), jax_forwards=int(out.forwards), jax_s=jax_s,
                   jax_tok_s=n_tokens / jax_s, jax_ms_fwd=1e3 * jax_s / int(out.forwards), jax_first_call_s=compile_s)
        if tmodel is not None:
            tx, tnfe, tfw = tout
            row.update(torch_forwards=tfw, torch_s=torch_s, torch_tok_s=n_tokens / torch_s,
                       torch_ms_fwd=1e3 * torch_s / tfw,
                       same_nfe=bool(np.array_equal(tnfe.cpu().numpy(), np.asarray(out.nfe))),
                       same_tokens=float(np.mean(np.all(tx.cpu().numpy() == np.asarray(out.tokens), -1))))
        rows.append(row)
        same = ("{same_nfe} | {same_tokens:.0%}".format(**row) if args.temperature == 0 else "n/a (T > 0: "
                "different RNGs) | n/a") if tmodel is not None else ""
        t = ("| {torch_forwards} | {torch_s:.3f} | {torch_ms_fwd:.1f} | {torch_tok_s:.0f} | ".format(**row) + same
             + " |" if tmodel is not None else "| - | - | - | - | - | - |")
        print("| {rule} | {nfe:.1f} | {jax_forwards} | {jax_s:.3f} | {jax_ms_fwd:.1f} | {jax_tok_s:.0f} ".format(**row)
              + t, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env, shape=shape, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()

"""Attention alone: every JAX implementation (models/attention.py) next to torch's
`scaled_dot_product_attention`, forward and forward + backward, same inputs.

    python -m bench.attention                           # CPU: xla vs torch (CPU SDPA)
    python -m bench.attention --llada8b                 # GPU / TPU: LLaDA-8B heads, bf16, B 8, S 384
    python -m bench.attention --impls xla,splash        # splash through the Pallas interpreter (CPU)

Bidirectional (no causal mask), no key mask (LLaDA parity mode), q / k / v `[B, S, H, hd]`.
Columns: ms per call (median of --iters interleaved calls after --warmup), TFLOP/s and MFU
with FLOPs = 4·B·H·S²·hd (forward: QKᵀ and PV) and 2.5× that for forward + backward (the
backward's four matmuls plus the forward's two; the flash kernels' recomputation of QKᵀ is
not counted). Implementations that do not run here (cudnn off GPU, or a kernel error) are
listed with the error instead of a time. Outputs are compared with xla's before timing.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python bench/attention.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffpo_jax.models import attention  # noqa: E402

JAX_IMPLS = ("xla", "cudnn", "splash")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llada8b", action="store_true", help="32 heads of 128, bf16 (accelerator)")
    ap.add_argument("--batch", type=int, default=None, help="default 8 (llada8b) / 2 (CPU)")
    ap.add_argument("--seq", type=int, default=None, help="default 384 = P 128 + L 256 (llada8b) / 256 (CPU)")
    ap.add_argument("--heads", type=int, default=None, help="default 32 (llada8b) / 4 (CPU)")
    ap.add_argument("--head_dim", type=int, default=128)
    ap.add_argument("--impls", default=None, help=f"comma list from {JAX_IMPLS} (default: xla + the backend's "
                    "fused kernel: cudnn on GPU, splash on TPU; splash is interpreted, very slowly, off TPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument("--torch_threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--peak_tflops", type=float, default=None)
    args = ap.parse_args(argv)
    big = args.llada8b
    args.batch = args.batch or (8 if big else 2)
    args.seq = args.seq or (384 if big else 256)
    args.heads = args.heads or (32 if big else 4)
    if args.impls is None:
        args.impls = {"gpu": "xla,cudnn", "tpu": "xla,splash"}.get(jax.default_backend(), "xla")
    bad = sorted(set(args.impls.split(",")) - set(JAX_IMPLS))
    if bad:
        ap.error(f"--impls {args.impls!r}: unknown {bad}; choose from {JAX_IMPLS}")
    return args


def jax_fns(impl: str, scale: float):
    """(forward, forward + backward) jitted for one implementation."""
    def fwd(q, k, v):
        return attention.attention(q, k, v, None, scale, impl)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v).astype(jnp.float32) ** 2)

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def run(args: argparse.Namespace) -> dict:
    dtype = jnp.bfloat16 if args.llada8b else jnp.float32
    shape = (args.batch, args.seq, args.heads, args.head_dim)
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(x, shape, jnp.float32).astype(dtype) for x in ks)
    scale = 1.0 / float(np.sqrt(args.head_dim))
    peak = common.detect_peak_tflops(args.peak_tflops)
    flops = 4.0 * args.batch * args.heads * args.seq ** 2 * args.head_dim
    ref = np.asarray(jax_fns("xla", scale)[0](q, k, v).astype(jnp.float32))
    fns, notes, skipped = {}, [], []
    for impl in args.impls.split(","):
        f, g = jax_fns(impl, scale)
        try:
            out = np.asarray(jax.block_until_ready(f(q, k, v)).astype(jnp.float32))
            jax.block_until_ready(g(q, k, v))
        except Exception as e:  # noqa: BLE001  (a kernel that does not run here is reported, not fatal)
            skipped.append([f"jax {impl}", f"not run: {type(e).__name__}: {str(e).splitlines()[0][:120]}"])
            continue
        notes.append(f"jax {impl}: max |out - xla| = {np.abs(out - ref).max():.2e}")
        fns[f"jax {impl} fwd"] = lambda f=f: jax.block_until_ready(f(q, k, v))
        fns[f"jax {impl} fwd+bwd"] = lambda g=g: jax.block_until_ready(g(q, k, v))
    tdev = None
    if not args.no_torch:
        import torch
        import torch.nn.functional as F

        common.set_torch_threads(args.torch_threads)
        tdev = common.default_torch_device()
        sync = common.torch_sync(tdev)
        tdt = torch.bfloat16 if args.llada8b else torch.float32
        tq, tk, tv = (torch.from_numpy(np.asarray(x.astype(jnp.float32))).to(tdev, tdt).transpose(1, 2)
                      .contiguous().requires_grad_(True) for x in (q, k, v))

        def t_fwd():
            with torch.no_grad():
                out = F.scaled_dot_product_attention(tq, tk, tv, scale=scale)
            sync()
            return out

        def t_bwd():
            out = F.scaled_dot_product_attention(tq, tk, tv, scale=scale)
            grads = torch.autograd.grad(out.float().pow(2).sum(), (tq, tk, tv))
            sync()
            return grads

        tout = t_fwd().transpose(1, 2).float().cpu().numpy()
        notes.append(f"torch sdpa: max |out - jax xla| = {np.abs(tout - ref).max():.2e}")
        fns["torch sdpa fwd"], fns["torch sdpa fwd+bwd"] = t_fwd, t_bwd
    timed = common.time_interleaved(fns, args.warmup, args.iters)
    rows = []
    for name, (t, _) in timed.items():
        f = flops * (2.5 if name.endswith("bwd") else 1.0)
        rows.append([name, f"{t * 1e3:.3f}", f"{f / t / 1e12:.3f}", common.mfu(f, t, peak)])
    rows += [[name, why, "", ""] for name, why in skipped]
    ratios = {}
    for part in ("fwd", "fwd+bwd"):
        t_xla = timed.get(f"jax xla {part}", (None,))[0]
        for name, (t, _) in timed.items():
            if name.endswith(" " + part) and t_xla and name != f"jax xla {part}":
                ratios[f"{name.rsplit(' ', 1)[0]} vs jax xla, {part} (speed)"] = t_xla / t
    settings = (f"B={args.batch}, S={args.seq}, H={args.heads}, hd={args.head_dim}, "
                f"{jnp.dtype(dtype).name}, bidirectional, no mask; median of {args.iters} interleaved calls; "
                f"attention_impl=auto -> {attention.resolve_impl('auto', dtype, args.head_dim)} here")
    return dict(bench="attention", title="Attention kernels", env=common.env_line(tdev), settings=settings,
                notes=notes, columns=["impl", "ms / call", "TFLOP/s", "MFU"], rows=rows, ratios=ratios)


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

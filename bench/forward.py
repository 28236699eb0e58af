"""Forward-pass throughput: jitted JAX LLaDA vs the PyTorch reference (tests/torch_llada.py), same run.

    python -m bench.forward                      # tiny config on CPU, JAX vs torch
    python -m bench.forward --shape small        # a 4-layer d_model=512 model
    python -m bench.forward --llada8b --batch 8 --length 512   # GPU/TPU, random bf16 weights

(`python -m bench.run --only forward` runs it with the suite's settings.) Both sides run the
same weights (JAX -> HF tensors via diffpo_jax.convert -> torch, one tensor at a time) and the
logits are compared before timing. tokens/s = batch * length / median wall time per forward.
MFU = FLOPs / (time * peak) with the forward FLOPs of bench/common.py (LM head on every
position here); on CPU MFU is "n/a (CPU)".
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/forward.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402

SHAPES = {
    "tiny": lambda **kw: llada.tiny(**kw),
    "small": lambda **kw: llada.tiny(**{"d_model": 512, "n_layers": 4, "n_heads": 8, "n_kv_heads": 8,
                                        "mlp_hidden": 1536, "vocab_size": 4096, **kw}),
    "llada8b": lambda **kw: common.llada8b_config(**kw),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--llada8b", action="store_true", help="LLaDA-8B shapes, random bf16 weights (= --shape llada8b)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--compute_dtype", default=None, help="default: float32 (tiny/small), bfloat16 (llada8b)")
    p.add_argument("--n_layers", type=int, default=None, help="override the layer count (e.g. a 1-layer 8B smoke run)")
    p.add_argument("--remat", default="none", choices=llada.REMAT_POLICIES)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--peak_tflops", type=float, default=None, help="peak of all devices together, TFLOP/s")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--torch_threads", type=int, default=None, help="default on CPU: time 1 and all cores")
    p.add_argument("--profile", default=None, help="write a jax.profiler trace of the timed region here")
    common.add_attention_arg(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    shape = "llada8b" if args.llada8b else args.shape
    dtype = args.compute_dtype or ("bfloat16" if shape == "llada8b" else "float32")
    cfg = SHAPES[shape](compute_dtype=dtype, remat=args.remat)
    if args.n_layers:
        cfg = cfg.replace(n_layers=args.n_layers)

    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    model = common.build_llada(cfg, mesh=mesh, attention_impl=args.attention_impl)
    tokens_np = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    tokens = jax.device_put(jnp.asarray(tokens_np), shd.batch_sharding(mesh))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    with shd.use_mesh(mesh):
        t_compile = time.perf_counter()
        logits = jax.block_until_ready(fwd(state, tokens))
        t_compile = time.perf_counter() - t_compile
    fns = {"jax (jit)": lambda: jax.block_until_ready(fwd(state, tokens))}

    notes, tdev = [], None
    if not args.no_torch:
        import torch
        tdev = common.default_torch_device()
        tm = common.torch_llada_copy(model, common.torch_dtype(dtype), tdev)
        tt = torch.from_numpy(tokens_np.astype(np.int64)).to(tdev)
        sync = common.torch_sync(tdev)
        threads = sorted({1, os.cpu_count() or 1}) if tdev == "cpu" and args.torch_threads is None else \
            [args.torch_threads or torch.get_num_threads()]

        def torch_fwd(n):  # on a small shared CPU, 1 OpenMP thread can beat all cores
            def call():
                torch.set_num_threads(n)
                with torch.inference_mode():
                    tm(tt)
                sync()
            return call

        with torch.inference_mode():
            ref = tm(tt).float().cpu().numpy()
        diff = float(np.abs(np.asarray(logits, np.float32) - ref).max())
        notes.append(f"max |logits_jax - logits_torch| = {diff:.2e}")
        for n in threads:
            fns[f"torch {torch.__version__} eager ({tdev}, {n} threads)"] = torch_fwd(n)
    with shd.use_mesh(mesh), common.profile(args.profile):
        timed = common.time_interleaved(fns, args.warmup, args.iters)

    n_tok = args.batch * args.length
    flops = common.forward_flops(cfg, args.batch, args.length)
    peak = common.detect_peak_tflops(args.peak_tflops)
    notes.insert(0, f"jax compile+first call {t_compile:.2f}s; FLOPs/forward {flops:.3e}"
                 + (f"; peak {peak:.0f} TFLOP/s" if peak else ""))
    rows, data = [], []
    for name, (t, _) in timed.items():
        rows.append([name, f"{1e3 * t:.2f}", f"{n_tok / t:,.0f}", f"{flops / t / 1e12:.3f}",
                     common.mfu(flops, t, peak)])
        data.append(dict(impl=name, seconds=t, tokens_per_s=n_tok / t, tflops=flops / t / 1e12))
    ratios = {}
    if len(data) > 1:
        best = min(d["seconds"] for d in data[1:])
        ratios["jax / best torch tokens/s"] = best / data[0]["seconds"]
    return dict(bench="forward", title=f"Forward ({shape})", env=common.env_line(tdev),
                settings=(f"shape={shape} ({cfg.param_count() / 1e6:.2f}M params), batch={args.batch}, "
                          f"length={args.length}, compute={dtype}, remat={args.remat}"),
                notes=notes, columns=["impl", "ms / forward", "tokens/s", "TFLOP/s", "MFU"], rows=rows,
                ratios=ratios, data=data)


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

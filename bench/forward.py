"""Forward-pass throughput: jitted JAX LLaDA vs the PyTorch reference (tests/torch_llada.py), same run.

    python bench/forward.py                      # tiny config on CPU, JAX vs torch
    python bench/forward.py --shape small        # a 4-layer d_model=512 model
    python bench/forward.py --llada8b --batch 8 --length 512 --no_torch   # GPU/TPU, random bf16 weights

Both sides run the same weights (JAX -> HF tensors via diffpo_jax.convert -> torch) and the
logits are compared before timing. tokens/s = batch * length / median wall time per forward.

MFU = FLOPs / (time * peak), with forward FLOPs (bidirectional attention, no causal halving)
    FLOPs = 2 * N_matmul * T  +  4 * n_layers * B * L^2 * d_model
N_matmul = all projection weights of all layers + the LM head (embedding lookup and norms
excluded), T = B * L tokens; the second term is QK^T and AV. Peak: --peak_tflops, else the
dense bf16 peak of a detected H100/H200/TPU; on CPU MFU is not reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402

# Dense bf16 peak TFLOP/s per chip, by substring of jax's device_kind.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6": 918.0}
SHAPES = {
    "tiny": lambda **kw: llada.tiny(**kw),
    "small": lambda **kw: llada.tiny(**{"d_model": 512, "n_layers": 4, "n_heads": 8, "n_kv_heads": 8,
                                        "mlp_hidden": 1536, "vocab_size": 4096, **kw}),
    "llada8b": lambda **kw: llada.llada_8b_instruct(**kw),
}


def forward_flops(cfg: llada.LLaDAConfig, batch: int, length: int) -> float:
    n_matmul = sum(getattr(cfg, i) * getattr(cfg, o) for i, o in llada.PROJECTIONS.values()) * cfg.n_layers
    n_matmul += cfg.d_model * cfg.vocab_size
    return 2.0 * n_matmul * batch * length + 4.0 * cfg.n_layers * batch * length**2 * cfg.d_model


def detect_peak_tflops() -> float | None:
    kind = jax.devices()[0].device_kind
    for key, peak in PEAK_TFLOPS.items():
        if key.lower() in kind.lower():
            return peak * len(jax.devices())
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def time_interleaved(fns: dict, warmup: int, iters: int) -> dict:
    """Median seconds per call of each blocking fn, calls interleaved round-robin so that all
    implementations see the same background load (the CPU may be shared)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def torch_copy(model: llada.LLaDA):
    """The torch reference with the same weights (through the converter's HF tensor names)."""
    import torch
    from torch_llada import TorchLLaDA, TorchLLaDAConfig
    from diffpo_jax.convert.hf_export import hf_tensor_iter

    c = model.cfg
    tm = TorchLLaDA(TorchLLaDAConfig(vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers,
                                     n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, mlp_hidden_size=c.mlp_hidden,
                                     rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps))
    sd = {name: torch.from_numpy(np.array(t, np.float32)) for name, t in hf_tensor_iter(model, dtype=np.float32)}
    tm.load_state_dict(sd, strict=True)
    return tm.eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
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
    args = p.parse_args(argv)
    shape = "llada8b" if args.llada8b else args.shape
    dtype = args.compute_dtype or ("bfloat16" if shape == "llada8b" else "float32")
    cfg = SHAPES[shape](compute_dtype=dtype, remat=args.remat)
    if args.n_layers:
        cfg = cfg.replace(n_layers=args.n_layers)

    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    model = shd.create_sharded(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(0)), mesh)
    tokens_np = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    tokens = jax.device_put(jnp.asarray(tokens_np), shd.batch_sharding(mesh))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    with shd.use_mesh(mesh):
        t_compile = time.perf_counter()
        logits = jax.block_until_ready(fwd(state, tokens))
        t_compile = time.perf_counter() - t_compile
    fns = {"jax (jit)": lambda: jax.block_until_ready(fwd(state, tokens))}

    n_tok = args.batch * args.length
    flops = forward_flops(cfg, args.batch, args.length)
    peak = args.peak_tflops or detect_peak_tflops()
    max_diff = None
    if not args.no_torch:
        import torch
        tm = torch_copy(model)
        tt = torch.from_numpy(tokens_np.astype(np.int64))
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        tdev = "cuda" if torch.cuda.is_available() else "cpu"
        tm, tt = tm.to(tdev, tdtype), tt.to(tdev)
        sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)
        threads = sorted({1, os.cpu_count() or 1}) if tdev == "cpu" and args.torch_threads is None else \
            [args.torch_threads or torch.get_num_threads()]

        def torch_fwd(n):  # on a small shared CPU, 1 OpenMP thread can beat all cores
            def run():
                torch.set_num_threads(n)
                with torch.inference_mode():
                    tm(tt)
                sync()
            return run

        with torch.inference_mode():
            ref = tm(tt).float().cpu().numpy()
        max_diff = float(np.abs(np.asarray(logits, np.float32) - ref).max())
        for n in threads:
            fns[f"torch {torch.__version__} eager ({tdev}, {n} threads)"] = torch_fwd(n)
    with shd.use_mesh(mesh):
        rows = list(time_interleaved(fns, args.warmup, args.iters).items())

    dev = jax.devices()[0]
    print(f"# forward benchmark: shape={shape} ({cfg.param_count() / 1e6:.2f}M params) batch={args.batch} "
          f"length={args.length} compute={dtype} remat={args.remat}")
    print(f"# device: {len(jax.devices())} x {dev.device_kind} ({dev.platform}); host {cpu_name()}, "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}; jax {jax.__version__}, "
          f"python {platform.python_version()}")
    print(f"# jax compile+first call {t_compile:.2f}s; FLOPs/forward {flops:.3e}"
          + (f"; peak {peak:.0f} TFLOP/s" if peak else "; no peak known: MFU n/a"))
    if max_diff is not None:
        print(f"# max |logits_jax - logits_torch| = {max_diff:.2e}")
    print("| impl | ms / forward | tokens/s | TFLOP/s | MFU |")
    print("|---|---|---|---|---|")
    for name, t in rows:
        tflops = flops / t / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        print(f"| {name} | {1e3 * t:.2f} | {n_tok / t:,.0f} | {tflops:.3f} | {mfu} |")
    if len(rows) > 1:
        best = min(t for _, t in rows[1:])
        print(f"ratio jax / best torch tokens/s: {best / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()

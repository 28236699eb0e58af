"""Shared pieces of the benchmarks: timing, FLOP counts / MFU, peak memory, model set-up, and
the PyTorch copies (tests/torch_llada.py, optionally with LoRA) of a JAX LLaDA.

FLOPs (model FLOPs: what the computation needs, no rematerialisation counted; bidirectional
attention, so no causal halving). With R rows of S tokens (T = R·S), H positions that go
through the LM head, N_body = n_layers · Σ_proj d_in·d_out (all projection weights),
N_head = d_model · V, N_lora = n_layers · Σ_targets r·(d_in + d_out):

    forward   F = 2·(N_body + N_lora)·T + 2·N_head·H + 4·n_layers·R·S²·d_model
    LoRA step   = F + backward, the backward with the base frozen:
                  activation gradients 2·N_body·T + 2·N_head·H (one matmul per weight, like
                  the forward), attention backward 8·n_layers·R·S²·d_model (4 matmuls vs 2),
                  LoRA activation + weight gradients 4·N_lora·T
                ≈ 2× the forward's matmul FLOPs + 3× its attention FLOPs.
The weight gradients of the frozen base (the other half of a full backward) are never
computed, so the usual "training = 3 × forward" (6·N·T) convention would overstate a LoRA
step's work by ~1.5×; `train_flops(..., convention="3x")` gives that number for comparison.
The input embedding lookup, norms, RoPE, softmax and optimiser are not counted. Checked against
XLA's count of the compiled program (tests/test_bench_flops.py, a 1-layer model): forward
within 3%; LoRA step within 5% once the first layer's q/k/v input gradients are removed
(nothing upstream trains, so XLA never computes them; ~0.7% of the body at 32 layers).

MFU = FLOPs / (seconds × peak); peak = dense bf16 TFLOP/s per chip (PEAK_TFLOPS, matched
against jax's device_kind) × devices, or --peak_tflops. On CPU there is no peak: "n/a (CPU)".
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time

# Torch and JAX share one GPU in these benchmarks: JAX must not pre-allocate 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(ROOT, "tests"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402

# Dense bf16 peak TFLOP/s per chip, by (lower-case) substring of jax's device_kind; first match wins.
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "tpu v4": 275.0, "tpu v5 lite": 197.0,
               "tpu v5e": 197.0, "tpu v5p": 459.0, "tpu v5": 459.0, "tpu v6": 918.0}


# ----------------------------------------------------------------------------- environment


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def detect_peak_tflops(override: float | None = None) -> float | None:
    """Peak TFLOP/s of all local devices together (override wins); None on CPU / unknown chips."""
    if override:
        return override
    kind = jax.devices()[0].device_kind.lower()
    for key, peak in PEAK_TFLOPS.items():
        if key in kind:
            return peak * len(jax.devices())
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def env_line(torch_device: str | None = None) -> str:
    """One line: devices, host, load, library versions."""
    import flax
    import optax
    dev = jax.devices()[0]
    parts = [f"{len(jax.devices())} x {dev.device_kind} ({dev.platform})",
             f"host {cpu_name()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}",
             f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"]
    if torch_device:
        import torch
        parts.append(f"torch {torch.__version__} on {torch_device}")
    parts.append(f"python {platform.python_version()}")
    return "; ".join(parts)


def default_torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(device: str):
    """A function that waits for the torch device (a no-op on CPU)."""
    import torch
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def set_torch_threads(n: int) -> None:
    """torch CPU threads: n, or all cores when n == 0."""
    import torch
    torch.set_num_threads(n or os.cpu_count() or 1)


# ----------------------------------------------------------------------------- timing


def time_interleaved(fns: dict, warmup: int, iters: int) -> dict:
    """{name: (median seconds per call, last output)} of blocking zero-argument fns.

    Calls are interleaved round-robin (a, b, a, b, ...) so that every implementation sees the
    same background load (the CPU may be shared). `warmup` untimed calls of each come first.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    outs = {}
    for _ in range(max(1, iters)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), outs[name]) for name, t in times.items()}


@contextlib.contextmanager
def profile(log_dir: str | None):
    """`jax.profiler.trace(log_dir)` around the block (TensorBoard / Perfetto trace); no-op if None."""
    if not log_dir:
        yield
        return
    os.makedirs(log_dir, exist_ok=True)
    with jax.profiler.trace(log_dir):
        yield
    print(f"# profile written to {log_dir}", flush=True)


# ----------------------------------------------------------------------------- FLOPs, MFU, memory


def n_body(cfg: llada.LLaDAConfig) -> int:
    """Projection weights of all layers (per-token matmul params, LM head excluded)."""
    return cfg.n_layers * sum(getattr(cfg, i) * getattr(cfg, o) for i, o in llada.PROJECTIONS.values())


def n_lora(cfg: llada.LLaDAConfig) -> int:
    """LoRA params (A and B of every target of every layer); 0 without LoRA."""
    if cfg.lora_rank <= 0:
        return 0
    return cfg.n_layers * sum(cfg.lora_rank * (getattr(cfg, llada.PROJECTIONS[t][0]) +
                                               getattr(cfg, llada.PROJECTIONS[t][1])) for t in cfg.lora_targets)


def forward_flops(cfg: llada.LLaDAConfig, rows: int, seq: int, head_tokens: int | None = None,
                  lora: bool = False) -> float:
    """F = 2·(N_body + N_lora)·R·S + 2·D·V·H + 4·n_layers·R·S²·D (module docstring)."""
    t = rows * seq
    h = t if head_tokens is None else head_tokens
    nl = n_lora(cfg) if lora else 0
    return 2.0 * (n_body(cfg) + nl) * t + 2.0 * cfg.d_model * cfg.vocab_size * h + \
        4.0 * cfg.n_layers * rows * seq**2 * cfg.d_model


def train_flops(cfg: llada.LLaDAConfig, rows: int, seq: int, head_tokens: int, convention: str = "lora") -> float:
    """FLOPs of one forward + backward of a LoRA model with the base frozen (module docstring).

    convention='lora': what is computed (≈ 2× forward matmuls, 3× attention, LoRA 3×);
    convention='3x': 3 × forward, the full-fine-tuning (6·N·T) convention.
    """
    fwd = forward_flops(cfg, rows, seq, head_tokens, lora=True)
    if convention == "3x":
        return 3.0 * fwd
    if convention != "lora":
        raise ValueError(f"convention={convention!r}: choose 'lora' or '3x'")
    t = rows * seq
    bwd = 2.0 * n_body(cfg) * t + 2.0 * cfg.d_model * cfg.vocab_size * head_tokens + \
        8.0 * cfg.n_layers * rows * seq**2 * cfg.d_model + 4.0 * n_lora(cfg) * t
    return fwd + bwd


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> str:
    if peak_tflops is None:
        return "n/a (CPU)" if on_cpu() else "n/a (unknown peak: --peak_tflops)"
    return f"{100.0 * flops / seconds / 1e12 / peak_tflops:.1f}%"


def peak_memory(torch_device: str | None = None) -> dict:
    """Peak memory so far, GB: host max RSS (whole process: on CPU this covers JAX *and* torch),
    the JAX device's peak_bytes_in_use (GPU/TPU) and torch.cuda.max_memory_allocated."""
    out = {"host_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}  # Linux: KiB
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["jax_peak_gb"] = stats["peak_bytes_in_use"] / 1e9
    if torch_device and str(torch_device).startswith("cuda"):
        import torch
        out["torch_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


# ----------------------------------------------------------------------------- models


def llada8b_config(**kw) -> llada.LLaDAConfig:
    """LLaDA-8B shapes, bf16 params and compute."""
    return llada.llada_8b_instruct(**{"compute_dtype": "bfloat16", **kw})


def add_attention_arg(ap) -> None:
    """--attention_impl, shared by every benchmark (models/attention.py)."""
    from diffpo_jax.models.attention import ATTENTION_IMPLS

    ap.add_argument("--attention_impl", default="auto", choices=ATTENTION_IMPLS,
                    help="JAX attention kernel (auto: splash on TPU, cuDNN on GPU where they apply, else xla)")


def build_llada(cfg: llada.LLaDAConfig, seed: int = 0, mesh=None, lora_b_std: float = 0.0,
                attention_impl: str | None = None) -> llada.LLaDA:
    """Random-weight LLaDA created directly on its shards by one jitted init: no host copy.

    The key is an "rbg" key (XLA's RngBitGenerator): with the default threefry key the
    unfused CPU init of a 1-layer 8B-width model (2.6 GB of bf16 params) peaked at 16 GB
    (threefry's uint32 intermediates + the fp32 normals of every parameter), with rbg at
    3.3 GB, so the fp32 draws never add up to a full fp32 copy. lora_b_std > 0 makes the
    adapter non-zero (θ ≠ base, gradients reach lora_a).
    """
    mesh = mesh if mesh is not None else shd.make_mesh(data=1, fsdp=-1, tp=1)
    cfg = cfg.replace(attention_impl=attention_impl) if attention_impl else cfg
    key = jax.random.key(seed, impl="rbg")
    model = shd.create_sharded(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(key)), mesh)
    if lora_b_std > 0:
        for i, name in enumerate(model.lora_b):
            v = model.lora_b[name]
            noise = jax.random.normal(jax.random.key(1000 + i), v.shape, jax.numpy.float32) * lora_b_std
            v[...] = noise.astype(v.dtype)
    return model


def torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[str(name)]


def _to_torch(w: np.ndarray, dtype):
    """numpy (fp32 or ml_dtypes bf16) -> torch tensor in dtype, without an fp32 copy of bf16."""
    import torch
    w = np.require(w, requirements=["C", "W"])  # copies only read-only / strided arrays
    if w.dtype == np.dtype(jax.numpy.bfloat16):
        return torch.from_numpy(w.view(np.uint16)).view(torch.bfloat16).to(dtype)
    return torch.from_numpy(w).to(dtype)


def torch_llada_copy(model: llada.LLaDA, dtype, device: str):
    """`tests/torch_llada.TorchLLaDA` with the JAX model's base weights (LoRA not merged), built
    on the meta device and filled one tensor at a time (through the converter's HF names), so
    the host never holds more than one tensor: usable at 8B."""
    import torch
    from torch_llada import TorchLLaDA, TorchLLaDAConfig
    from diffpo_jax.convert.hf_export import hf_tensor_iter

    c = model.cfg
    tcfg = TorchLLaDAConfig(vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
                            n_kv_heads=c.n_kv_heads, mlp_hidden_size=c.mlp_hidden, rope_theta=c.rope_theta,
                            rms_norm_eps=c.rms_norm_eps, max_sequence_length=c.max_sequence_length,
                            mask_token_id=c.mask_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):  # no memory, no random init
            tm = TorchLLaDA(tcfg)
    finally:
        torch.set_default_dtype(prev)
    tm = tm.to_empty(device=device)
    params = tm.state_dict()
    copied = set()
    with torch.no_grad():
        for name, w in hf_tensor_iter(model, merge_lora=False):
            params[name].copy_(_to_torch(w, dtype))
            copied.add(name)
    if copied != set(params):
        raise RuntimeError(f"torch parameters not copied from the JAX model: {sorted(set(params) - copied)}")
    return tm.eval()


def add_torch_lora(tm, model: llada.LLaDA) -> list:
    """Wrap every LoRA target Linear of `tm` with the JAX model's adapter:
    y = W x + ((x @ A) @ B) · alpha / r, A `[in, r]`, B `[r, out]` (as diffpo_jax's `_project`).
    Freezes all base weights; returns the LoRA parameters (the only trainable ones)."""
    import torch
    from torch import nn

    cfg = model.cfg
    if cfg.lora_rank <= 0:
        return []
    scale = cfg.lora_alpha / cfg.lora_rank
    dev = next(tm.parameters()).device

    class LoRALinear(nn.Module):
        def __init__(self, base, a, b):
            super().__init__()
            self.base, self.lora_a, self.lora_b = base, nn.Parameter(a), nn.Parameter(b)

        def forward(self, x):  # fp32 factors (as ours), the product in x's dtype (as ours)
            return self.base(x) + ((x @ self.lora_a.to(x.dtype)) @ self.lora_b.to(x.dtype)) * scale

    for p in tm.parameters():
        p.requires_grad_(False)
    lora = []
    for li, blk in enumerate(tm.model.transformer.blocks):
        for name in cfg.lora_targets:
            a = _to_torch(np.asarray(model.lora_a[name][...][li]), torch.float32).to(dev)
            b = _to_torch(np.asarray(model.lora_b[name][...][li]), torch.float32).to(dev)
            wrapped = LoRALinear(getattr(blk, name), a, b)
            setattr(blk, name, wrapped)
            lora += [wrapped.lora_a, wrapped.lora_b]
    return lora


def torch_logits(tm, tokens, remat: bool = False):
    """TorchLLaDA forward `[B, S] -> [B, S, V]`; remat=True checkpoints every block (as d1's
    gradient_checkpointing) so only block inputs are kept for the backward."""
    if not remat:
        return tm(tokens)
    from torch.utils.checkpoint import checkpoint
    t = tm.model.transformer
    x = t.wte(tokens)
    for blk in t.blocks:
        x = checkpoint(blk, x, None, use_reentrant=False)
    return t.ff_out(t.ln_f(x))


# ----------------------------------------------------------------------------- inputs, output


def rl_inputs(cfg: llada.LLaDAConfig, batch: int, prompt_len: int, gen_length: int, seed: int = 0) -> dict:
    """Random numpy trajectory arrays: prompt `[B, P]` int32 (ids below mask_token_id), prompt_mask
    `[B, P]` bool (all True), completion `[B, L]` int32, completion_mask `[B, L]` bool (row b keeps
    its first L − b mod 4 tokens), unmask_step `[B, L]` int32 (two tokens per step), nfe `[B]`."""
    rng = np.random.default_rng(seed)
    hi = min(cfg.vocab_size, cfg.mask_token_id)
    order = np.argsort(rng.random((batch, gen_length)), axis=1)
    lens = gen_length - np.arange(batch) % 4
    return dict(prompt=rng.integers(0, hi, (batch, prompt_len)).astype(np.int32),
                prompt_mask=np.ones((batch, prompt_len), bool),
                completion=rng.integers(0, hi, (batch, gen_length)).astype(np.int32),
                completion_mask=np.arange(gen_length)[None, :] < lens[:, None],
                unmask_step=(order // 2 + 1).astype(np.int32),
                nfe=np.full((batch,), max(1, gen_length // 2), np.int32))


def markdown_table(columns: list, rows: list) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render(result: dict) -> str:
    """Markdown for one benchmark result dict: title, settings, notes, table, ratios."""
    out = [f"### {result['title']}", "", result["settings"], ""]
    out += [f"- {n}" for n in result.get("notes", [])]
    if result.get("notes"):
        out.append("")
    out.append(markdown_table(result["columns"], result["rows"]))
    if result.get("ratios"):
        out.append("")
    for label, value in result.get("ratios", {}).items():
        out.append(f"ratio {label}: {value:.2f}x")
    return "\n".join(out)


def print_result(result: dict) -> None:
    """A benchmark's stand-alone output: its environment line, then its markdown section."""
    print("# " + result["env"])
    print(render(result))


def add_rl_bench_args(ap) -> None:
    """The flags shared by the likelihood and train-step benchmarks (LoRA model, timing, torch)."""
    from diffpo_jax.models import llada

    ap.add_argument("--chunk", type=int, default=64, help="JAX log-softmax chunk (RLConfig.logprob_chunk)")
    ap.add_argument("--lora_rank", type=int, default=None, help="default 8 (tiny), 128 (llada8b, d1's)")
    ap.add_argument("--remat", default="none", choices=llada.REMAT_POLICIES)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument("--torch_threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--peak_tflops", type=float, default=None)
    ap.add_argument("--profile", default=None, help="write a jax.profiler trace of the timed region here")
    ap.add_argument("--seed", type=int, default=0)
    add_attention_arg(ap)

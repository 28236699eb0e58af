"""Bidirectional multi-head attention, one implementation per backend.

    out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, g(h)] + mask[b, j]) v[b, j, g(h)]

q `[B, Lq, H, hd]`, k / v `[B, Lk, Hkv, hd]` (g(h) = h // (H / Hkv): grouped-query heads),
key_mask `[B, Lk]` bool (True = a real key; None = every key, LLaDA's released behaviour).
No causal mask (LLaDA is bidirectional). Implementations (`LLaDAConfig.attention_impl`):

  auto    the backend's fused kernel where it certainly applies, else xla (`resolve_impl`):
          TPU -> splash when head_dim is a multiple of 128 (LLaDA-8B: 128);
          GPU -> cudnn on Ampere or newer (compute capability >= 8.0; not e.g. a T4) for
          bf16/fp16, head_dim <= 128 and a multiple of 8, no key mask (cuDNN's padding
          masks are right-padding lengths; ours are left-padded prompts).
  xla     `jax.nn.dot_product_attention(implementation='xla')`: plain einsums + softmax.
  cudnn   `jax.nn.dot_product_attention(implementation='cudnn')`: cuDNN flash attention
          (NVIDIA GPUs; bf16/fp16).
  splash  the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu`), inside
          a `shard_map` over the mesh (batch over data x fsdp, heads over tp). Sequences are
          padded to a multiple of 128 and padded / masked keys excluded with segment ids.
          Off TPU it runs in the Pallas interpreter (slow; for tests on CPU).
The platform is the current mesh's (`current_platform`), so compiling ahead of time for a
TPU topology from a CPU host (bench/tpu_compile.py) resolves and lowers the TPU kernels.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from diffpo_jax import sharding as shd

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # sequence padding unit of the splash kernel (its smallest block size)


def gpu_compute_capability() -> float:
    """The first device's CUDA compute capability (8.0 = A100, 9.0 = H100), 0.0 if unknown."""
    try:
        return float(jax.devices()[0].compute_capability)
    except (AttributeError, TypeError, ValueError):
        return 0.0


def current_platform() -> str:
    """The platform the current computation is for: that of the mesh set with `jax.set_mesh`
    (so an ahead-of-time compile for a TPU topology from a CPU host says 'tpu'), else
    `jax.default_backend()`."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()


def resolve_impl(impl: Optional[str], dtype, head_dim: int, masked: bool = False,
                 backend: Optional[str] = None, capability: Optional[float] = None) -> str:
    """The concrete implementation ('xla' | 'cudnn' | 'splash') for `impl` (None = 'auto') on
    `backend` (default: `current_platform()`); `masked`: a key mask is given; `capability`:
    the GPU's compute capability (default: read from the device)."""
    impl = impl or "auto"
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}: choose one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    backend = backend or current_platform()
    if backend == "tpu" and head_dim % 128 == 0:
        return "splash"
    if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) \
            and head_dim <= 128 and head_dim % 8 == 0 and not masked \
            and (capability if capability is not None else gpu_compute_capability()) >= 8.0:
        return "cudnn"
    return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: Optional[jax.Array], scale: float,
              impl: Optional[str] = None) -> jax.Array:
    """Attention output `[B, Lq, H, hd]` in q's dtype (see the module docstring)."""
    impl = resolve_impl(impl, q.dtype, q.shape[-1], key_mask is not None)
    if impl == "splash":
        return splash_attention(q, k, v, key_mask, scale)
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=impl)


# ----------------------------------------------------------------------------- splash (TPU)


def _splash_kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
    """A splash MHA kernel for one example: (q [H, Lq, hd], k, v [H, Lk, hd], SegmentIds) -> [H, Lq, hd].

    Built inside the trace that uses it (once per compile): its mask tables become constants
    of that program. Building it eagerly and caching it would run ops on the mesh's devices,
    which an ahead-of-time compile for a TPU topology does not have."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    def block(n):
        return next(b for b in (512, 256, 128) if n % b == 0)

    bq, bkv = block(q_len), block(kv_len)
    sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                          block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    mask = sm.MultiHeadMask([sm.FullMask((q_len, kv_len)) for _ in range(heads)])
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
    """x padded with `value` at the end of `axis` to a multiple of `multiple`."""
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _splash_local(q, k, v, kv_segment, scale: float, interpret: bool):
    """Splash on one shard. q `[b, Lq, h, hd]`, k / v `[b, Lk, h, hd]`, kv_segment `[b, Lk']` int32."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    lq = q.shape[1]
    qh = _pad_to(jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2), 2, SPLASH_BLOCK)  # [b, h, Lq', hd]
    kh = _pad_to(jnp.swapaxes(k, 1, 2), 2, SPLASH_BLOCK)
    vh = _pad_to(jnp.swapaxes(v, 1, 2), 2, SPLASH_BLOCK)
    kernel = _splash_kernel(qh.shape[1], qh.shape[2], kh.shape[2], interpret)
    segments = sk.SegmentIds(q=jnp.zeros(qh.shape[:1] + qh.shape[2:3], jnp.int32), kv=kv_segment)
    out = jax.vmap(kernel)(qh, kh, vh, segments)  # [b, h, Lq', hd]
    return jnp.swapaxes(out[:, :, :lq], 1, 2)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: Optional[jax.Array],
                     scale: float) -> jax.Array:
    """`attention` with the splash kernel. Keys are padded to a multiple of 128; a key takes
    segment id 0 when real (key_mask True, not padding) and 1 otherwise, every query 0, so
    queries attend to the real keys only. Grouped-query k / v are repeated to H heads."""
    b, lk, hkv = k.shape[0], k.shape[1], k.shape[2]
    groups = q.shape[2] // hkv
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    real = jnp.ones((b, lk), bool) if key_mask is None else key_mask.astype(bool)
    kv_segment = _pad_to(jnp.where(real, 0, 1).astype(jnp.int32), 1, SPLASH_BLOCK, value=1)
    interpret = current_platform() != "tpu"
    local = functools.partial(_splash_local, scale=scale, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return local(q, k, v, kv_segment)
    qkv_spec = shd.logical_to_spec(("batch", None, "heads", None), q.shape, mesh)
    seg_spec = P(qkv_spec[0], None)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
                            out_specs=qkv_spec, check_vma=False)
    return sharded(q, k, v, kv_segment)

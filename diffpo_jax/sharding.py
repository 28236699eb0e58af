"""Device mesh, the one table of logical-axis rules, and sharded model creation.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel + parameter sharding),
`tp` (tensor parallel over heads / MLP / vocab). Meshes use `AxisType.Auto` on purpose:
XLA's sharding propagation handles gathers (embedding lookups) that Explicit axes would
need annotated by hand.

Every parameter gets logical axes from `PARAM_AXES` (by its name in the module) and
`LOGICAL_RULES` maps logical axes to mesh axes. Models are created directly into their
shardings: `nnx.eval_shape` gives the abstract model, `jax.jit(init, out_shardings=...)`
materialises each shard on its own device; no full copy ever lives on one device.
Nothing here assumes a host 0: every process runs the same code on its addressable shards.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES = {
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "vocab": "tp",
    "embed": "fsdp",
    "heads": "tp",  # flattened heads * head_dim
    "mlp": "tp",
    "layers": None,
    "norm": None,
    "lora_rank": None,
    "lora_rank_fsdp": "fsdp",
}

# Logical axes of each parameter, by the last component of its path in the module.
# Projections are stacked [layers, in, out]; LoRA factors take their target's axes. A factor
# whose feature axis is a tp axis (heads, mlp) shards its rank over fsdp instead, so that no
# LoRA factor (nor its optimizer moments) is replicated over the fsdp axis.
_PROJ_AXES = {
    "q_proj": ("embed", "heads"),
    "k_proj": ("embed", "heads"),
    "v_proj": ("embed", "heads"),
    "attn_out": ("heads", "embed"),
    "ff_proj": ("embed", "mlp"),
    "up_proj": ("embed", "mlp"),
    "ff_out": ("mlp", "embed"),
}
PARAM_AXES = {
    "embed": (None, "embed"),  # vocab unsharded: a row gather from a tp-sharded table rematerialises
    "lm_head": ("embed", "vocab"),
    "ln_f": ("norm",),
    "attn_norm": ("layers", "norm"),
    "ff_norm": ("layers", "norm"),
    **{name: ("layers", i, o) for name, (i, o) in _PROJ_AXES.items()},
    # q/k/v biases (qkv_bias families, e.g. Dream): sharded like their projection's output
    **{bias: ("layers", _PROJ_AXES[proj][1]) for bias, proj in (("q_bias", "q_proj"), ("k_bias", "k_proj"),
                                                                 ("v_bias", "v_proj"))},
}


def _lora_rank_axis(feature: str) -> str:
    """The rank axis of a LoRA factor whose other axis is `feature`: fsdp-sharded unless
    `feature` already is."""
    return "lora_rank" if LOGICAL_RULES[feature] == "fsdp" else "lora_rank_fsdp"


def param_logical_axes(path: Sequence) -> tuple:
    """Logical axes for a parameter at `path` (a tuple of keys from `nnx.state(...)`)."""
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    keys = [k for k in keys if k not in ("value", "raw_value")]  # Variable attribute, not a name
    name = keys[-1]
    if "lora_a" in keys:
        feature = _PROJ_AXES[name][0]
        return ("layers", feature, _lora_rank_axis(feature))
    if "lora_b" in keys:
        feature = _PROJ_AXES[name][1]
        return ("layers", _lora_rank_axis(feature), feature)
    if "head" in keys[:-1] or name not in PARAM_AXES:
        return (None,) * 8  # small params (threshold head, ...) are replicated; trimmed below
    return PARAM_AXES[name]


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """PartitionSpec for `axes` on `mesh`; an axis whose size the mesh does not divide is
    replicated instead (e.g. a tiny vocab on a big tp axis), and extra axes are dropped."""
    spec = []
    for ax, dim in zip(axes, shape):
        mesh_ax = LOGICAL_RULES.get(ax) if ax is not None else None
        if mesh_ax is not None:
            names = mesh_ax if isinstance(mesh_ax, tuple) else (mesh_ax,)
            size = int(np.prod([mesh.shape[n] for n in names if n in mesh.shape]))
            names = tuple(n for n in names if n in mesh.shape)
            if not names or dim % size:
                mesh_ax = None
            else:
                mesh_ax = names if len(names) > 1 else names[0]
        spec.append(mesh_ax)
    return P(*spec)


def make_mesh(data: int = 1, fsdp: int = -1, tp: int = 1, devices=None) -> jax.sharding.Mesh:
    """A ('data', 'fsdp', 'tp') mesh; one axis may be -1 (= all remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = [data, fsdp, tp]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape data={shape[0]} fsdp={shape[1]} tp={shape[2]} needs "
                         f"{int(np.prod(shape))} devices, but {len(devices)} are available")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
    """A pytree like `state` holding a NamedSharding per leaf (from PARAM_AXES)."""
    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, logical_to_spec(param_logical_axes(path)[: len(shape)], shape, mesh))
    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding for a `[B, ...]` batch array: B over ('data', 'fsdp')."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def create_sharded(make_module: Callable[[], nnx.Module], mesh: jax.sharding.Mesh) -> nnx.Module:
    """Build `make_module()` with every parameter created directly on its shards."""
    abstract = nnx.eval_shape(make_module)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)

    @jax.jit
    def init():
        return nnx.state(make_module())

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_module(module: nnx.Module, mesh: jax.sharding.Mesh) -> nnx.Module:
    """Move an existing module's state onto its mesh shardings (returns a new module)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh)))


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """`with_sharding_constraint` by logical axes when a mesh is set (`jax.set_mesh`); else a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


@contextlib.contextmanager
def use_mesh(mesh: Optional[jax.sharding.Mesh]):
    """`jax.set_mesh(mesh)` that accepts None (no mesh: single device)."""
    if mesh is None:
        yield
    else:
        with jax.set_mesh(mesh):
            yield

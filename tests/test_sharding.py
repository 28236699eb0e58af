"""Mesh, logical-axis rules and sharded creation/forward on 8 fake CPU devices (data=2, fsdp=2, tp=2)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada

CFG = llada.tiny(lora_rank=4)


def make():
    return llada.LLaDA(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def mesh():
    return shd.make_mesh(data=2, fsdp=2, tp=2)


@pytest.fixture(scope="module")
def sharded(mesh):
    return shd.create_sharded(make, mesh)


def test_make_mesh_shapes_and_errors():
    assert len(jax.devices()) == 8
    assert dict(shd.make_mesh(2, 2, 2).shape) == {"data": 2, "fsdp": 2, "tp": 2}
    assert dict(shd.make_mesh(data=1, fsdp=-1, tp=2).shape) == {"data": 1, "fsdp": 4, "tp": 2}
    with pytest.raises(ValueError, match=r"data=2 fsdp=2 tp=3 needs 12 devices, but 8 are available"):
        shd.make_mesh(2, 2, 3)
    with pytest.raises(ValueError, match=r"at most one axis may be -1"):
        shd.make_mesh(-1, -1, 1)
    with pytest.raises(ValueError, match=r"8 devices are not divisible by 3"):
        shd.make_mesh(3, -1, 1)


def test_params_are_sharded_per_rules(sharded):
    expect = {
        ("embed",): P(None, "fsdp"),
        ("lm_head",): P("fsdp", "tp"),
        ("ln_f",): P(None),
        ("blocks", "q_proj"): P(None, "fsdp", "tp"),
        ("blocks", "k_proj"): P(None, "fsdp", "tp"),
        ("blocks", "attn_out"): P(None, "tp", "fsdp"),
        ("blocks", "ff_proj"): P(None, "fsdp", "tp"),
        ("blocks", "ff_out"): P(None, "tp", "fsdp"),
        ("blocks", "attn_norm"): P(None, None),
        ("lora_a", "q_proj"): P(None, "fsdp", None),
        ("lora_b", "q_proj"): P(None, "fsdp", "tp"),  # rank over fsdp: no factor is fsdp-replicated
        ("lora_a", "ff_out"): P(None, "tp", "fsdp"),
        ("lora_b", "ff_out"): P(None, None, "fsdp"),
    }
    state = nnx.to_pure_dict(nnx.state(sharded))
    for path, spec in expect.items():
        leaf = state
        for k in path:
            leaf = leaf[k]
        assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)


def test_indivisible_axis_is_replicated(mesh):
    # vocab 321 is not divisible by tp=2: that axis falls back to replication instead of failing.
    assert shd.logical_to_spec(("embed", "vocab"), (64, 321), mesh) == P("fsdp", None)
    assert shd.logical_to_spec(("batch", "length"), (8, 5), mesh) == P(("data", "fsdp"), None)
    assert shd.logical_to_spec(("batch", "length"), (6, 5), mesh) == P(None, None)


def test_create_sharded_holds_only_shards_and_matches_unsharded_init(sharded, mesh):
    state = nnx.to_pure_dict(nnx.state(sharded))
    unsharded = nnx.to_pure_dict(nnx.state(nnx.jit(make)()))
    for (path, arr), ref in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(unsharded)):
        spec = arr.sharding.spec
        want = tuple(d // math.prod(mesh.shape[a] for a in ((ax,) if isinstance(ax, str) else ax or ()))
                     for d, ax in zip(arr.shape, tuple(spec) + (None,) * (arr.ndim - len(spec))))
        shards = arr.addressable_shards
        assert len(shards) == 8 and {s.device for s in shards} == set(mesh.devices.flat)
        assert all(s.data.shape == want for s in shards), (path, want, [s.data.shape for s in shards])
        # Each device holds exactly its block (nothing bigger was ever placed there).
        assert all(s.data.nbytes == math.prod(want) * arr.dtype.itemsize for s in shards)
        np.testing.assert_array_equal(np.asarray(arr), np.asarray(ref), err_msg=str(path))
    big = state["embed"]
    assert big.addressable_shards[0].data.size * 2 == big.size  # fsdp=2 split, replicated over data/tp


def test_sharded_init_program_never_builds_a_full_param(mesh):
    """create_sharded's recipe (jit(init, out_shardings=state_shardings)): after SPMD partitioning
    the per-device program contains only block shapes, never a full sharded parameter."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = shd.state_shardings(abstract, mesh)
    hlo = jax.jit(lambda: nnx.state(make()), out_shardings=shardings).lower().compile().as_text()
    full = {"embed": "f32[320,64]", "lm_head": "f32[64,320]", "q_proj": "f32[2,64,64]",
            "ff_proj": "f32[2,64,128]", "ff_out": "f32[2,128,64]"}
    for name, shape in full.items():
        assert shape not in hlo, f"{name}: full shape {shape} appears in the partitioned init program"
    assert "f32[320,32]" in hlo and "f32[2,32,64]" in hlo  # the blocks are there


def test_sharded_jit_forward_equals_single_device(sharded, mesh):
    graphdef, state = nnx.split(sharded)
    tokens = jax.random.randint(jax.random.key(0), (8, 24), 0, CFG.vocab_size, dtype=jnp.int32)
    mask = jnp.ones((8, 24), bool).at[1, :5].set(False)

    def fwd(state, tokens, mask):
        return nnx.merge(graphdef, state)(tokens, mask)

    out_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, None))
    sharded_fwd = jax.jit(fwd, in_shardings=(shd.state_shardings(state, mesh), shd.batch_sharding(mesh),
                                             shd.batch_sharding(mesh)), out_shardings=out_sharding)
    with shd.use_mesh(mesh):
        logits = sharded_fwd(state, jax.device_put(tokens, shd.batch_sharding(mesh)),
                             jax.device_put(mask, shd.batch_sharding(mesh)))
    assert logits.sharding.spec == out_sharding.spec
    assert logits.addressable_shards[0].data.shape == (2, 24, CFG.vocab_size)

    device0 = jax.devices()[0]
    single_state = jax.device_put(jax.device_get(state), device0)
    ref = jax.jit(fwd)(single_state, tokens, mask)
    assert ref.sharding.device_set == {device0}
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5, rtol=0)


def test_shard_module_moves_existing_module(mesh):
    model = llada.LLaDA(llada.tiny(), rngs=nnx.Rngs(1))
    moved = shd.shard_module(model, mesh)
    assert moved.blocks["q_proj"][...].sharding.spec == P(None, "fsdp", "tp")
    np.testing.assert_array_equal(np.asarray(moved.embed[...]), np.asarray(model.embed[...]))


def test_constrain_is_noop_without_mesh():
    x = jnp.ones((4, 3))
    assert shd.constrain(x, ("batch", None)) is x

"""Placeholder main job until the trainer issue lands: build a tiny LLaDA on a mesh and run it."""
import jax
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada


def main():
    cfg = llada.tiny()
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    model = shd.create_sharded(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(0)), mesh)
    tokens = jax.random.randint(jax.random.key(0), (len(jax.devices()), 32), 0, cfg.vocab_size)
    with shd.use_mesh(mesh):
        logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    print(f"tiny LLaDA forward on {mesh.shape}: logits {logits.shape} {logits.dtype}")


if __name__ == "__main__":
    main()

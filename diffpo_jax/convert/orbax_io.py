"""NNX params <-> an orbax checkpoint directory (what `python -m diffpo_jax.convert import` writes).

Layout of `path/`:
  params/            orbax StandardCheckpointer of `nnx.to_pure_dict(nnx.state(model))`
  llada_config.json  the TransformerConfig (alias LLaDAConfig) fields, `family` included, of
                     either family (to rebuild the module; the name predates Dream)
  hf_config.json     optional: the source config.json (so export round-trips its extra keys)
`path` may be a bucket URI (gs://...): orbax and `diffpo_jax.storage` write it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax import storage
from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.models.llada import LLaDA, LLaDAConfig


def config_to_json(cfg: LLaDAConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "lora_rank",
                "lora_targets")


def config_from_json(d: dict, source: str = "llada_config.json", **overrides) -> LLaDAConfig:
    """LLaDAConfig from its JSON fields; ConversionError naming `source` for an unknown field or value."""
    d = {**d, **overrides}
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(LLaDAConfig)})
    if unknown:
        raise ConversionError(f"{source}: unknown LLaDAConfig field(s) {unknown} (written by another diffpo-jax "
                              f"version, or edited by hand?); remove them")
    if "lora_targets" in d:
        d["lora_targets"] = tuple(d["lora_targets"])
    try:
        return LLaDAConfig(**d)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{source}: {e}") from None


def save_orbax(model: LLaDA, path: str, hf_config: Optional[dict] = None) -> None:
    """Save params + config into `path` (every process calls this; orbax coordinates)."""
    path = storage.absolute(path)
    if storage.exists(os.path.join(path, "params")):
        raise ConversionError(f"{path}/params already exists; choose a new --out directory or delete it")
    storage.makedirs(path)
    # The configs first: orbax commits params/ atomically, so params/ existing means complete.
    if jax.process_index() == 0:
        storage.write_text(os.path.join(path, "llada_config.json"), json.dumps(config_to_json(model.cfg), indent=2))
        if hf_config is not None:
            storage.write_text(os.path.join(path, "hf_config.json"), json.dumps(hf_config, indent=2))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(path, "params"), nnx.to_pure_dict(nnx.state(model)))
    ckptr.wait_until_finished()


def read_hf_config(path: str) -> Optional[dict]:
    p = os.path.join(path, "hf_config.json")
    if not storage.exists(p):
        return None
    return json.loads(storage.read_text(p))


def load_orbax(path: str, mesh: Optional[jax.sharding.Mesh] = None, **config_overrides) -> LLaDA:
    """Restore a module saved by `save_orbax`, each param straight onto its mesh sharding
    (mesh None: one device). Overrides may change numerics (compute_dtype, remat), not shapes."""
    path = storage.absolute(path)
    cfg_path = os.path.join(path, "llada_config.json")
    if not storage.exists(cfg_path) or not storage.isdir(os.path.join(path, "params")):
        raise ConversionError(f"{path}: not a diffpo-jax params checkpoint (needs llada_config.json and "
                              f"params/, as written by `python -m diffpo_jax.convert import`)")
    saved = json.loads(storage.read_text(cfg_path))
    stored, cfg = config_from_json(saved, cfg_path), config_from_json(saved, cfg_path, **config_overrides)
    reshaping = [f"{k}: {getattr(stored, k)!r} -> {getattr(cfg, k)!r}" for k in SHAPE_FIELDS
                 if getattr(stored, k) != getattr(cfg, k)]
    if reshaping:
        raise ConversionError(f"{cfg_path}: override(s) {reshaping} would change parameter shapes, and a "
                              "checkpoint restores only into its own shapes; load without them (to add LoRA, "
                              "export to HF and use load_hf(..., lora_rank=r), as training does)")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(state)
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, pure)
    else:
        shardings = shd.state_shardings(pure, mesh)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), pure, shardings)
    restored = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), target)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)

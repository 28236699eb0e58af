"""HF safetensors <-> NNX conversion for LLaDA and Dream (one mapping table per family, each
used in both directions: convert/mapping.py; the family comes from config.json / model.cfg.family).

    load_hf(model_dir, mesh=None, **config_overrides) -> LLaDA (= Transformer; family= checks the family)
    save_hf(model, out_dir, source_dir=None, merge_lora=True, max_shard_bytes=5e9) -> dict
    save_peft_adapter(model, out_dir) -> list[str]
    save_orbax(model, path, hf_config=None) / load_orbax(path, mesh=None) -> LLaDA
CLI: `python -m diffpo_jax.convert {import,export} --help`.
"""

from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.convert.hf_config import config_from_hf, config_to_hf, detect_family
from diffpo_jax.convert.hf_export import save_hf, save_peft_adapter
from diffpo_jax.convert.hf_import import load_hf
from diffpo_jax.convert.orbax_io import load_orbax, save_orbax

__all__ = ["ConversionError", "config_from_hf", "config_to_hf", "detect_family", "load_hf", "save_hf",
           "save_peft_adapter", "load_orbax", "save_orbax"]

"""HF LLaDA `config.json` (OLMo-style keys) <-> `LLaDAConfig`, refusing switches we do not implement.

Mapped keys (HF -> LLaDAConfig):
  d_model, n_layers, n_heads -> same names
  n_kv_heads                 -> n_kv_heads (null: 1 if multi_query_attention else n_heads)
  mlp_hidden_size            -> mlp_hidden (null: mlp_ratio * d_model)
  embedding_size | vocab_size-> vocab_size (= embedding rows; embedding_size wins when set)
  rope_theta, rms_norm_eps, max_sequence_length, mask_token_id, eos_token_id,
  pad_token_id (null: eos)   -> same names
"""

from __future__ import annotations

import copy
import json
import os
from typing import Optional

from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.models.llada import LLaDAConfig

# key -> the values we implement. A key absent from config.json is accepted.
SUPPORTED_SWITCHES = {
    "model_type": ("llada",),
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "activation_type": ("silu",),
    "scale_logits": (False,),
    "alibi": (False,),
    "input_emb_norm": (False,),
    "weight_tying": (False,),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "attention_layer_norm": (False,),
    "layer_norm_with_affine": (True,),
    "bias_for_layer_norm": (False, None),
    "rope": (True,),
    "rope_full_precision": (True,),
    "clip_qkv": (None,),
    "block_group_size": (1,),
}
# (keys, what they must hold, test) for values present and not null.
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
VALUE_RULES = (
    (("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "embedding_size", "vocab_size",
      "max_sequence_length"), "a positive integer", lambda v: _is_int(v) and v > 0),
    (("mlp_ratio", "rope_theta", "rms_norm_eps"), "a positive number",
     lambda v: (_is_int(v) or isinstance(v, float)) and v > 0),
    (("mask_token_id", "eos_token_id", "pad_token_id"), "a token id (a non-negative integer)",
     lambda v: _is_int(v) and v >= 0),
)
REQUIRED = ("d_model", "n_layers", "n_heads")
LLADA_MASK_ID = 126336

# config.json written when no source config is available (GSAI-ML/LLaDA-8B-Instruct's keys).
LLADA_TEMPLATE = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": LLADA_MASK_ID, "max_sequence_length": 4096,
    "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
    "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
    "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "bfloat16", "use_cache": False,
    "vocab_size": 126464, "weight_tying": False,
}


def read_config(model_dir: str) -> dict:
    """Parse `model_dir/config.json` (clear error when missing or not JSON)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise ConversionError(f"{model_dir}: directory does not exist (check the --hf_dir / model path)")
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: config.json is missing; an HF LLaDA checkpoint directory needs it "
                              f"(copy it from the original checkpoint, e.g. GSAI-ML/LLaDA-8B-Instruct)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _check_types(hf: dict, source: str) -> None:
    """ConversionError naming the key for a value of the wrong type (e.g. "d_model": "4096")."""
    if hf.get("mlp_hidden_size") is None and "mlp_ratio" in hf and hf["mlp_ratio"] is None:
        raise ConversionError(f"{source}: mlp_hidden_size and mlp_ratio are both null; set mlp_hidden_size "
                              "(LLaDA-8B: 12288)")
    for keys, want, ok in VALUE_RULES:
        for key in keys:
            v = hf.get(key)
            if v is not None and not ok(v):
                raise ConversionError(f"{source}: {key}={v!r} ({type(v).__name__}); expected {want}")


def _resolved(hf: dict) -> dict:
    """The LLaDAConfig fields that `hf` determines (nulls resolved as the HF code does)."""
    n_kv = hf.get("n_kv_heads")
    if n_kv is None:
        n_kv = 1 if hf.get("multi_query_attention") else hf["n_heads"]
    mlp = hf.get("mlp_hidden_size")
    if mlp is None:
        mlp = int(hf.get("mlp_ratio", 4) * hf["d_model"])  # 4: the HF config class default
    vocab = hf.get("embedding_size") or hf.get("vocab_size")
    out = dict(d_model=hf["d_model"], n_layers=hf["n_layers"], n_heads=hf["n_heads"], n_kv_heads=n_kv,
               mlp_hidden=mlp, vocab_size=vocab, mask_token_id=hf.get("mask_token_id", LLADA_MASK_ID))
    for key in ("rope_theta", "rms_norm_eps", "max_sequence_length", "eos_token_id"):
        if hf.get(key) is not None:
            out[key] = hf[key]
    pad = hf.get("pad_token_id")
    out["pad_token_id"] = pad if pad is not None else out.get("eos_token_id", LLaDAConfig.eos_token_id)
    return out


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> LLaDAConfig:
    """`LLaDAConfig` from a parsed config.json. `overrides` set any LLaDAConfig field
    (e.g. param_dtype, compute_dtype, remat, lora_rank); param_dtype defaults to bfloat16."""
    for key, allowed in SUPPORTED_SWITCHES.items():
        if key in hf and hf[key] not in allowed:
            raise ConversionError(f"{source}: {key}={hf[key]!r} is not supported by diffpo-jax's LLaDA "
                                  f"(implemented: {key} in {list(allowed)}); this is not a LLaDA-8B-style "
                                  f"checkpoint, or the model needs a feature the JAX model lacks")
    for key in REQUIRED:
        if hf.get(key) is None:
            raise ConversionError(f"{source}: required key {key!r} is missing or null")
    _check_types(hf, source)
    if not (hf.get("embedding_size") or hf.get("vocab_size")):
        raise ConversionError(f"{source}: neither 'embedding_size' nor 'vocab_size' is set")
    fields = {"param_dtype": "bfloat16", **_resolved(hf), **overrides}
    unknown = set(fields) - {f.name for f in LLaDAConfig.__dataclass_fields__.values()}
    if unknown:
        raise ConversionError(f"unknown LLaDAConfig override(s) {sorted(unknown)}")
    try:
        return LLaDAConfig(**fields)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


def config_to_hf(cfg: LLaDAConfig, base: Optional[dict] = None, dtype: str = "bfloat16") -> dict:
    """config.json for `cfg`: `base` (the source checkpoint's config, else LLADA_TEMPLATE) with
    the mapped keys set from `cfg`. A null in `base` that already resolves to cfg's value stays null;
    `vocab_size` (tokenizer size) is kept when the embedding rows are unchanged."""
    out = copy.deepcopy(base if base is not None else LLADA_TEMPLATE)
    had = _resolved(out) if all(out.get(k) is not None for k in REQUIRED) else {}
    for key, field in (("n_kv_heads", "n_kv_heads"), ("mlp_hidden_size", "mlp_hidden")):
        if not (key in out and out[key] is None and had.get(field) == getattr(cfg, field)):
            out[key] = getattr(cfg, field)
    if had.get("vocab_size") != cfg.vocab_size or out.get("vocab_size") is None:
        out["vocab_size"] = cfg.vocab_size
    out["embedding_size"] = cfg.vocab_size
    for key in ("d_model", "n_layers", "n_heads", "rope_theta", "rms_norm_eps", "max_sequence_length",
                "mask_token_id", "eos_token_id", "pad_token_id"):
        out[key] = getattr(cfg, key)
    out["torch_dtype"] = dtype
    return dict(sorted(out.items()))

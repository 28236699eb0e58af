"""HF `config.json` <-> `TransformerConfig`, one key table per model family, refusing switches
we do not implement.

The family comes from config.json (`detect_family`): `model_type` 'llada' -> LLaDA, 'Dream' ->
Dream; without model_type, `architectures` (LLaDAModelLM / DreamModel); with neither, LLaDA.

LLaDA keys (OLMo-style, HF -> TransformerConfig):
  d_model, n_layers, n_heads -> same names
  n_kv_heads                 -> n_kv_heads (null: 1 if multi_query_attention else n_heads)
  mlp_hidden_size            -> mlp_hidden (null: mlp_ratio * d_model)
  embedding_size | vocab_size-> vocab_size (= embedding rows; embedding_size wins when set)
  rope_theta, rms_norm_eps, max_sequence_length, mask_token_id, eos_token_id,
  pad_token_id (null: eos)   -> same names
Dream keys (Qwen2-style, Dream-org/Dream-v0-Instruct-7B; + the `models/dream.DREAM_FAMILY` switches):
  hidden_size -> d_model, num_hidden_layers -> n_layers, num_attention_heads -> n_heads,
  num_key_value_heads (null: num_attention_heads) -> n_kv_heads, intermediate_size -> mlp_hidden,
  vocab_size -> vocab_size, max_position_embeddings -> max_sequence_length,
  rope_theta, rms_norm_eps, mask_token_id, pad_token_id, eos_token_id -> same names
  (absent or null: DreamConfig's defaults; eos null: pad); eot_token_id = <|im_end|> (151645).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Optional

from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.convert.mapping import FAMILY_NAMES
from diffpo_jax.models import dream
from diffpo_jax.models.llada import LLaDAConfig

FAMILY_OF_MODEL_TYPE = {"llada": "llada", "Dream": "dream"}
FAMILY_OF_ARCHITECTURE = {"LLaDAModelLM": "llada", "DreamModel": "dream"}
NAMES = FAMILY_NAMES  # display names, from the mapping tables' module
REFERENCE = {"llada": "LLaDA-8B", "dream": "Dream-v0-7B"}  # for "this is not a ...-style checkpoint"

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
REQUIRED = ("d_model", "n_layers", "n_heads")  # LLaDA's
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



DREAM_SWITCHES = {
    "model_type": ("Dream",),
    "hidden_act": ("silu",),
    "tie_word_embeddings": (False,),  # our LM head is a separate parameter
    "use_sliding_window": (False,),
    "rope_scaling": (None,),  # plain RoPE only (no linear / dynamic / yarn scaling)
    "attention_dropout": (0.0,),
}
DREAM_VALUE_RULES = (
    (("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
      "vocab_size", "max_position_embeddings", "head_dim"), "a positive integer", lambda v: _is_int(v) and v > 0),
    (("rope_theta", "rms_norm_eps"), "a positive number", lambda v: (_is_int(v) or isinstance(v, float)) and v > 0),
    (("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"), "a token id (a non-negative integer)",
     lambda v: _is_int(v) and v >= 0),
)
DREAM_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# DreamConfig.__init__'s defaults (what the HF code uses for an absent key) of the keys we map.
DREAM_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
                  "mask_token_id": 151666, "pad_token_id": 151643}
# Dream config.json key -> TransformerConfig field (besides num_key_value_heads and eos_token_id).
DREAM_KEYS = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
              "intermediate_size": "mlp_hidden", "vocab_size": "vocab_size", "rope_theta": "rope_theta",
              "rms_norm_eps": "rms_norm_eps", "max_position_embeddings": "max_sequence_length",
              "mask_token_id": "mask_token_id", "pad_token_id": "pad_token_id"}
DREAM_EOT_ID = dream.dream_7b_instruct().eot_token_id  # <|im_end|>; not in config.json

# config.json written when no source config is available (Dream-org/Dream-v0-Instruct-7B's keys).
DREAM_TEMPLATE = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False,
    "vocab_size": 152064,
}


def detect_family(hf: dict, source: str = "config.json") -> str:
    """'llada' | 'dream' from config.json's model_type (else architectures; neither: 'llada')."""
    model_type = hf.get("model_type")
    if model_type is not None:
        if model_type not in FAMILY_OF_MODEL_TYPE:
            raise ConversionError(f"{source}: model_type={model_type!r} is not supported; diffpo-jax converts "
                                  f"LLaDA (model_type 'llada') and Dream (model_type 'Dream') checkpoints")
        return FAMILY_OF_MODEL_TYPE[model_type]
    architectures = hf.get("architectures")
    for arch in architectures if isinstance(architectures, list) else ():
        if arch in FAMILY_OF_ARCHITECTURE:
            return FAMILY_OF_ARCHITECTURE[arch]
    return "llada"


def check_family(found: str, wanted: Optional[str], source: str) -> None:
    """ConversionError when the checkpoint's family `found` is not the `wanted` one (None: any)."""
    if wanted is None or wanted == found:
        return
    if wanted not in NAMES:
        raise ConversionError(f"family={wanted!r}: choose one of {sorted(NAMES)}")
    raise ConversionError(f"{source} is a {NAMES[found]} checkpoint, but a {NAMES[wanted]} model "
                          f"(family={wanted!r}) was expected; point the model directory at a {NAMES[wanted]} "
                          f"checkpoint, or choose a {NAMES[found]} preset / family={found!r}")


def read_config(model_dir: str) -> dict:
    """Parse `model_dir/config.json` (clear error when missing or not JSON)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise ConversionError(f"{model_dir}: directory does not exist (check the --hf_dir / model path)")
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: config.json is missing; an HF checkpoint directory needs it "
                              f"(copy it from the original checkpoint, e.g. GSAI-ML/LLaDA-8B-Instruct or "
                              f"Dream-org/Dream-v0-Instruct-7B)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _check_types(hf: dict, source: str, rules=VALUE_RULES) -> None:
    """ConversionError naming the key for a value of the wrong type (e.g. "d_model": "4096")."""
    for keys, want, ok in rules:
        for key in keys:
            v = hf.get(key)
            if v is not None and not ok(v):
                raise ConversionError(f"{source}: {key}={v!r} ({type(v).__name__}); expected {want}")


def _llada_checks(hf: dict, source: str) -> None:
    if hf.get("mlp_hidden_size") is None and "mlp_ratio" in hf and hf["mlp_ratio"] is None:
        raise ConversionError(f"{source}: mlp_hidden_size and mlp_ratio are both null; set mlp_hidden_size "
                              "(LLaDA-8B: 12288)")
    _check_types(hf, source, VALUE_RULES)
    if not (hf.get("embedding_size") or hf.get("vocab_size")):
        raise ConversionError(f"{source}: neither 'embedding_size' nor 'vocab_size' is set")


def _dream_checks(hf: dict, source: str) -> None:
    if "num_key_value_heads" not in hf:  # DreamConfig's default (32) would silently be wrong for Dream-7B
        raise ConversionError(f"{source}: required key 'num_key_value_heads' is missing (Dream-v0-7B: 4; "
                              f"null means one per attention head)")
    _check_types(hf, source, DREAM_VALUE_RULES)
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, head_dim):
        raise ConversionError(f"{source}: head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads "
                              f"= {head_dim}; a decoupled head_dim is not implemented")


def _dream_resolved(hf: dict) -> dict:
    """The TransformerConfig fields that a Dream config.json determines (absent/null keys as DreamConfig does)."""
    out = dict(dream.DREAM_FAMILY, eot_token_id=DREAM_EOT_ID)
    for key, field in DREAM_KEYS.items():
        out[field] = hf[key] if hf.get(key) is not None else DREAM_DEFAULTS[key]
    n_kv = hf.get("num_key_value_heads")
    out["n_kv_heads"] = n_kv if n_kv is not None else hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    out["eos_token_id"] = eos if eos is not None else out["pad_token_id"]
    return out


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


CHECKS = {"llada": _llada_checks, "dream": _dream_checks}
RESOLVE = {"llada": _resolved, "dream": _dream_resolved}
SWITCHES = {"llada": SUPPORTED_SWITCHES, "dream": DREAM_SWITCHES}
REQUIRED_KEYS = {"llada": REQUIRED, "dream": DREAM_REQUIRED}


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> LLaDAConfig:
    """`TransformerConfig` (alias LLaDAConfig) from a parsed config.json of either family
    (`detect_family`). `overrides` set any field (e.g. param_dtype, compute_dtype, remat,
    lora_rank); param_dtype defaults to bfloat16. An override `family=` is the family the caller
    expects: a checkpoint of another family is a ConversionError."""
    family = detect_family(hf, source)
    check_family(family, overrides.pop("family", None), source)
    for key, allowed in SWITCHES[family].items():
        if key in hf and hf[key] not in allowed:
            raise ConversionError(f"{source}: {key}={hf[key]!r} is not supported by diffpo-jax's {NAMES[family]} "
                                  f"(implemented: {key} in {list(allowed)}); this is not a {REFERENCE[family]}-style "
                                  f"checkpoint, or the model needs a feature the JAX model lacks")
    for key in REQUIRED_KEYS[family]:
        if hf.get(key) is None:
            raise ConversionError(f"{source}: required key {key!r} is missing or null")
    CHECKS[family](hf, source)
    fields = {"param_dtype": "bfloat16", **RESOLVE[family](hf), **overrides}
    unknown = set(fields) - {f.name for f in LLaDAConfig.__dataclass_fields__.values()}
    if unknown:
        raise ConversionError(f"unknown TransformerConfig (LLaDAConfig) override(s) {sorted(unknown)}")
    try:
        return LLaDAConfig(**fields)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


def config_to_hf(cfg: LLaDAConfig, base: Optional[dict] = None, dtype: str = "bfloat16",
                 source: str = "the source config.json") -> dict:
    """config.json for `cfg` in its family's keys: `base` (the source checkpoint's config, which
    must be of `cfg.family`, else the family's template) with the mapped keys set from `cfg`."""
    found = detect_family(base, source) if base is not None else cfg.family
    if found != cfg.family:
        name = NAMES[cfg.family]
        raise ConversionError(f"{source} is a {NAMES[found]} config, but the model to export is {name} "
                              f"(family={cfg.family!r}); use the {name} checkpoint's directory as source_dir "
                              f"(--source_dir), or none (then the {name} template is used)")
    return {"llada": _llada_to_hf, "dream": _dream_to_hf}[cfg.family](cfg, base, dtype)


def _llada_to_hf(cfg: LLaDAConfig, base: Optional[dict], dtype: str) -> dict:
    """LLaDA config.json for `cfg`: `base` (the source checkpoint's config, else LLADA_TEMPLATE) with
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


def _dream_to_hf(cfg: LLaDAConfig, base: Optional[dict], dtype: str) -> dict:
    """Dream config.json for `cfg`: `base` (else DREAM_TEMPLATE, with bos = eos) with the mapped
    keys set from `cfg`; a null num_key_value_heads that still resolves to cfg's stays null."""
    out = copy.deepcopy(base if base is not None else {**DREAM_TEMPLATE, "bos_token_id": cfg.eos_token_id})
    if not (out.get("num_key_value_heads", 0) is None and cfg.n_kv_heads == cfg.n_heads):
        out["num_key_value_heads"] = cfg.n_kv_heads
    for key, field in DREAM_KEYS.items():
        out[key] = getattr(cfg, field)
    out["eos_token_id"] = cfg.eos_token_id
    out["torch_dtype"] = dtype
    return dict(sorted(out.items()))

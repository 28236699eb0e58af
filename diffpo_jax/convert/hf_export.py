"""Write a `Transformer` (LLaDA or Dream) as an HF checkpoint directory of its family (and LoRA
as a PEFT adapter); the family, and so the mapping table, is `model.cfg.family`.

`save_hf` writes `model-0000k-of-0000n.safetensors` shards (tensor names/layout of the
family's released checkpoint, `[out, in]` Linear weights, one tensor per layer) +
`model.safetensors.index.json` + `config.json`, and copies the tokenizer files, the
remote-code `*.py` files and `generation_config.json` from `source_dir` (this project ships
neither LLaDA's nor Dream's remote code). LoRA is merged per target as `W' = W + A @ B * alpha / r`
(computed in fp32, cast to the output dtype) unless `merge_lora=False`.

Multi-host: every process must call these functions (gathers are collective); only
process 0 writes files. Host memory: one output shard (<= max_shard_bytes) + one tensor.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Optional

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from diffpo_jax import storage
from diffpo_jax.convert import mapping
from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.convert.hf_config import config_to_hf
from diffpo_jax.models.llada import LLaDA

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # HF's default "5GB"
COPY_PATTERNS = ("*.py", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                 "merges.txt", "chat_template*", "generation_config.json")
# per family: the files AutoModel / AutoTokenizer.from_pretrained(..., trust_remote_code=True) read
NEEDED_FOR_AUTOMODEL = {
    "llada": ("configuration_llada.py", "modeling_llada.py", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json"),
    "dream": ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py",
              "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json"),
}


def _host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host sharded) array as a full numpy array on this host."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name  # 'bfloat16', 'float32', 'float16'


def hf_tensor_iter(model: LLaDA, merge_lora: bool = True, dtype=None):
    """Yield (HF name, numpy tensor in HF layout) in checkpoint order, one tensor at a time."""
    cfg = model.cfg
    state = nnx.to_pure_dict(nnx.state(model))
    scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0
    lora_on = merge_lora and cfg.lora_rank > 0
    for name, rule, layer in mapping.hf_tensors(cfg.n_layers, mapping.rules_for(cfg.family)):
        param = mapping.get_path(state, rule.path)
        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(param.dtype)
        w = _host(param if layer is None else param[layer])
        target = rule.path[-1]
        if lora_on and rule.path[0] == "blocks" and target in state.get("lora_a", {}):
            a = _host(state["lora_a"][target][layer]).astype(np.float32)
            b = _host(state["lora_b"][target][layer]).astype(np.float32)
            w = w.astype(np.float32) + (a @ b) * scale
        yield name, mapping.to_hf(w.astype(out_dtype, copy=False), rule)


def _plan_shards(model: LLaDA, dtype, max_shard_bytes: int) -> list[list[str]]:
    """Group HF names (checkpoint order) into shards of at most max_shard_bytes (one tensor may exceed)."""
    state = nnx.to_pure_dict(nnx.state(model))
    shards, cur, cur_bytes = [], [], 0
    for name, rule, _ in mapping.hf_tensors(model.cfg.n_layers, mapping.rules_for(model.cfg.family)):
        param = mapping.get_path(state, rule.path)
        item = np.dtype(dtype if dtype is not None else param.dtype).itemsize
        nbytes = int(np.prod(mapping.hf_shape(rule, param.shape))) * item
        if cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += nbytes
    return shards + [cur]


def save_hf(model: LLaDA, out_dir: str, source_dir: Optional[str] = None, merge_lora: bool = True,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype=None, hf_config: Optional[dict] = None) -> dict:
    """Write `model` to `out_dir` in its family's HF layout. Returns {'files': [...], 'missing': [...]}.

    dtype: output dtype (default: the param dtype, bf16 for imported checkpoints).
    hf_config: base config.json dict (default: `source_dir/config.json`, else the family's template:
    LLaDA-8B / Dream-v0-7B), of the model's family; the keys the config determines are overwritten
    from `model.cfg`.
    Atomic: everything is written into a staging directory beside `out_dir`, then swapped in
    (`_swap_in`); an existing `out_dir` loses its old `model*.safetensors` + index and keeps
    its other files. A failed export removes its staging directory and leaves `out_dir` as it was.
    """
    if source_dir is not None and not os.path.isdir(source_dir):
        raise ConversionError(f"source_dir {source_dir}: not a directory")
    if source_dir is not None and os.path.realpath(source_dir) == os.path.realpath(out_dir):
        raise ConversionError(f"out_dir {out_dir} is the source_dir; export into a new directory")
    config_source = "hf_config"
    if hf_config is None and source_dir is not None and os.path.isfile(os.path.join(source_dir, "config.json")):
        config_source = os.path.join(source_dir, "config.json")
        with open(config_source) as f:
            hf_config = json.load(f)
    config_to_hf(model.cfg, hf_config, source=config_source)  # a family mismatch fails before any gather
    if jax.process_index() != 0:  # the gathers are collective: walk the tensors, write nothing
        files = _write_hf_files(model, None, merge_lora, max_shard_bytes, dtype, hf_config)
        return {"files": files, "missing": []}
    staging = _staging_dir(out_dir)
    try:
        files = _write_hf_files(model, staging, merge_lora, max_shard_bytes, dtype, hf_config)
        copied = _copy_side_files(source_dir, staging) if source_dir else []
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    missing = [m for m in NEEDED_FOR_AUTOMODEL[model.cfg.family] if m not in copied]
    if missing:
        print(f"save_hf: {out_dir} has the weights and config.json but not {missing} "
              f"(needed by AutoModel/AutoTokenizer.from_pretrained(..., trust_remote_code=True)); "
              f"pass source_dir=<original HF checkpoint directory> to copy them")
    return {"files": files + copied, "missing": missing}


def _write_hf_files(model: LLaDA, out_dir: Optional[str], merge_lora: bool, max_shard_bytes: int, dtype,
                    hf_config: Optional[dict]) -> list[str]:
    """Write the weight shards, the index (several shards) and config.json into `out_dir`
    (None: gather every tensor but write nothing). Returns the file names."""
    plan = _plan_shards(model, dtype, max_shard_bytes)
    n = len(plan)
    weight_map, total, written_dtype = {}, 0, None
    tensors = hf_tensor_iter(model, merge_lora, dtype)
    for k, names in enumerate(plan):
        fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        buf = {}
        for name in names:
            got, t = next(tensors)
            assert got == name
            buf[name] = t
            written_dtype = _dtype_name(t.dtype)
            weight_map[name] = fname
            total += t.nbytes
        if out_dir is not None:
            save_file(buf, os.path.join(out_dir, fname), metadata={"format": "pt"})
    files = sorted(set(weight_map.values()))
    if n > 1:
        files.append("model.safetensors.index.json")
        if out_dir is not None:
            with open(os.path.join(out_dir, files[-1]), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    files.append("config.json")
    if out_dir is not None:
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config_to_hf(model.cfg, hf_config, written_dtype), f, indent=2)
    return files


def _staging_dir(out_dir: str) -> str:
    """A fresh empty directory beside `out_dir` (same filesystem, so the final renames are atomic)."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.partial-", dir=parent)


def _is_weight_file(name: str) -> bool:
    return name == "model.safetensors.index.json" or (name.startswith("model") and name.endswith(".safetensors"))


def _swap_in(staging: str, out_dir: str) -> None:
    """Make the complete export in `staging` the directory `out_dir`. An existing `out_dir` keeps
    its other files (not its old weights) and is replaced by two renames, so a crash at any
    point leaves either the old directory or the new one whole (between the renames: the old one
    under `.<name>.old-*`, the new one under `.<name>.partial-*`)."""
    if not os.path.exists(out_dir):
        os.replace(staging, out_dir)
        return
    if not os.path.isdir(out_dir):
        shutil.rmtree(staging)
        raise ConversionError(f"out_dir {out_dir} exists and is not a directory; choose another path")
    for name in os.listdir(out_dir):  # keep what the export does not write (e.g. a README)
        src, dst = os.path.join(out_dir, name), os.path.join(staging, name)
        if _is_weight_file(name) or os.path.exists(dst):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    parent, base = os.path.split(os.path.abspath(out_dir))
    old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
    os.rmdir(old)
    os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _copy_side_files(source_dir: str, out_dir: str) -> list[str]:
    copied = []
    for pattern in COPY_PATTERNS:
        for path in sorted(glob.glob(os.path.join(source_dir, pattern))):
            if os.path.isfile(path):
                shutil.copy2(path, os.path.join(out_dir, os.path.basename(path)))
                copied.append(os.path.basename(path))
    return copied


def save_peft_adapter(model: LLaDA, out_dir: str, base_model_name_or_path: Optional[str] = None) -> list[str]:
    """Write the model's LoRA as a PEFT adapter: `adapter_config.json` + `adapter_model.safetensors`
    with `base_model.model.<HF module>.lora_A.weight [r, in]` (= A[i].T) and `lora_B.weight [out, r]`
    (= B[i].T), module names of the model's family (LLaDA: `model.transformer.blocks.{i}.q_proj`,
    Dream: `model.layers.{i}.self_attn.q_proj`, `mapping.peft_names`); PEFT computes
    `B(A(x)) * lora_alpha / r`, the same delta as ours."""
    cfg = model.cfg
    if cfg.lora_rank <= 0:
        raise ConversionError("save_peft_adapter: the model has no LoRA (cfg.lora_rank == 0)")
    rules = mapping.rules_for(cfg.family)
    tensors = {}
    for target in cfg.lora_targets:
        a = _host(model.lora_a[target][...])
        b = _host(model.lora_b[target][...])
        for i in range(cfg.n_layers):
            name_a, name_b = mapping.peft_names(i, target, rules)
            tensors[name_a] = np.ascontiguousarray(a[i].T)
            tensors[name_b] = np.ascontiguousarray(b[i].T)
    adapter_config = {
        "peft_type": "LORA", "task_type": None, "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
        "lora_dropout": 0.0, "target_modules": mapping.peft_target_regex(cfg.lora_targets, rules), "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False,
        "base_model_name_or_path": base_model_name_or_path,
    }
    if jax.process_index() == 0:  # each file written under a temporary name, then renamed
        os.makedirs(out_dir, exist_ok=True)
        storage.write_atomic(os.path.join(out_dir, "adapter_model.safetensors"),
                             lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        storage.write_text(os.path.join(out_dir, "adapter_config.json"), json.dumps(adapter_config, indent=2))
    return ["adapter_config.json", "adapter_model.safetensors"]

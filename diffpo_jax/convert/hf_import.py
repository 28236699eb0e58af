"""Load an HF LLaDA or Dream checkpoint directory into a (sharded) `Transformer` NNX module.

    model = load_hf("/ckpt/LLaDA-8B-Instruct", mesh=make_mesh(fsdp=-1), compute_dtype="bfloat16")
    model = load_hf("/ckpt/Dream-v0-Instruct-7B", mesh=make_mesh(fsdp=-1), family="dream")

The family (and so the mapping table, `mapping.rules_for`) comes from config.json; an
override `family=` is the family the caller expects (another one is a ConversionError).

Reads `config.json` and `model.safetensors.index.json` (or a single `model.safetensors`),
checks every tensor's name, shape and dtype before reading data, then builds each parameter
with `jax.make_array_from_callback`: every process reads (lazily, via safetensors
`get_slice`) only the blocks of its own addressable shards, transposes HF `[out, in]` to
`[in, out]` and stacks layers. No device and no host ever holds a full unsharded copy of a
parameter unless the sharding itself replicates it. LoRA factors (if `lora_rank` is
overridden > 0) are freshly initialised, directly sharded (`lora_b = 0`, so the model
equals the checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open

from diffpo_jax import sharding as shd
from diffpo_jax.convert import mapping
from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.convert.hf_config import config_from_hf, read_config
from diffpo_jax.models.llada import LLaDA, LLaDAConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def read_weight_map(model_dir: str) -> dict[str, str]:
    """tensor name -> shard file name, from the index (or the single-file checkpoint)."""
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConversionError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e!r}") from None
        for fname in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(model_dir, fname)):
                users = [n for n, v in weight_map.items() if v == fname]
                raise ConversionError(f"{index} points at shard file {fname!r} (e.g. for tensor {users[0]!r}), "
                                      f"but {os.path.join(model_dir, fname)} does not exist; download the "
                                      f"missing shard or fix the index")
        return dict(weight_map)
    single = os.path.join(model_dir, SINGLE_FILE)
    if os.path.isfile(single):
        with safe_open(single, framework="np") as f:
            return {name: SINGLE_FILE for name in f.keys()}
    found = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else "directory does not exist"
    raise ConversionError(f"{model_dir}: no {INDEX_FILE} or {SINGLE_FILE} (found: {found}); only safetensors "
                          f"checkpoints are supported (convert *.bin files with safetensors first)")


def _expected_shapes(cfg: LLaDAConfig) -> tuple[dict, dict]:
    """Abstract pure-dict state of the model and {HF name: (rule, layer, HF shape)} (cfg.family's table)."""
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0)))))
    table = {}
    for name, rule, layer in mapping.hf_tensors(cfg.n_layers, mapping.rules_for(cfg.family)):
        shape = mapping.get_path(abstract, rule.path).shape
        table[name] = (rule, layer, mapping.hf_shape(rule, shape))
    return abstract, table


def _validate(cfg: LLaDAConfig, table: dict, weight_map: dict, handles: dict, model_dir: str) -> None:
    """One clear ConversionError for the first problem found; nothing is read but headers."""
    rules = mapping.rules_for(cfg.family)
    family = mapping.FAMILY_NAMES[cfg.family]
    embed, lm_head = mapping.name_of(("embed",), rules), mapping.name_of(("lm_head",), rules)
    for other, other_rules in mapping.RULES.items():  # weights of another family under this config.json
        other_embed = mapping.name_of(("embed",), other_rules)
        if other != cfg.family and other_embed in weight_map and embed not in weight_map:
            raise ConversionError(f"{model_dir}: config.json describes a {family} model, but the weights are "
                                  f"{mapping.FAMILY_NAMES[other]}'s (tensor {other_embed!r}, not {embed!r}); "
                                  f"config.json and the safetensors files come from different models")
    missing = [n for n in table if n not in weight_map]
    if missing:
        raise ConversionError(f"{model_dir}: tensor {missing[0]!r} is missing from the checkpoint "
                              f"({len(missing)} missing in all; expected {family} names like {embed!r})")
    unexpected = [n for n in weight_map if n not in table]
    if unexpected:
        raise ConversionError(f"{os.path.join(model_dir, weight_map[unexpected[0]])}: unexpected tensor "
                              f"{unexpected[0]!r} ({len(unexpected)} unexpected in all); the checkpoint has "
                              f"parameters this {family} config does not (n_layers={cfg.n_layers}?)")
    for name, (rule, _, want) in table.items():
        fpath = os.path.join(model_dir, weight_map[name])
        f = handles[weight_map[name]]
        if name not in f.keys():
            raise ConversionError(f"{fpath}: tensor {name!r} is listed in the index but not stored in this file")
        sl = f.get_slice(name)
        dtype, shape = sl.get_dtype(), tuple(sl.get_shape())
        if dtype not in FLOAT_DTYPES:
            raise ConversionError(f"{fpath}: tensor {name!r} has dtype {dtype}; expected a float dtype "
                                  f"{FLOAT_DTYPES} (quantized checkpoints are not supported)")
        if name in (embed, lm_head) and shape and shape[0] != cfg.vocab_size:
            vocab_key = "embedding_size, else vocab_size" if cfg.family == "llada" else "vocab_size"
            raise ConversionError(f"{fpath}: tensor {name!r} has {shape[0]} rows but config.json says the "
                                  f"vocabulary ({vocab_key}) is {cfg.vocab_size}; "
                                  f"config and weights come from different models")
        if shape != want:
            raise ConversionError(f"{fpath}: tensor {name!r} has shape {list(shape)}, expected {list(want)} "
                                  f"from config.json (d_model={cfg.d_model}, mlp_hidden={cfg.mlp_hidden}, "
                                  f"n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads})")


def _leaf_shardings(abstract: dict, mesh) -> dict:
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda _: one, abstract)
    return shd.state_shardings(abstract, mesh)


def _load_param(rule: mapping.Rule, names: list[str], files: list, shape, dtype, sharding) -> jax.Array:
    """One parameter from its HF tensor(s) `names` (one per layer if per-layer), directly sharded."""
    cache: dict = {}

    def block(index):
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in cache:
            if rule.per_layer:
                rest = mapping.hf_index(rule, index[1:])
                parts = [mapping.from_hf(files[i].get_slice(names[i])[rest], rule)
                         for i in range(*index[0].indices(shape[0]))]
                arr = np.stack(parts, axis=0)
            else:
                arr = mapping.from_hf(files[0].get_slice(names[0])[mapping.hf_index(rule, index)], rule)
            cache[key] = np.ascontiguousarray(arr.astype(dtype, copy=False))
        return cache[key]

    return jax.make_array_from_callback(tuple(shape), sharding, block)


def load_hf(model_dir: str, mesh: Optional[jax.sharding.Mesh] = None, *, seed: int = 0,
            **config_overrides) -> LLaDA:
    """HF LLaDA or Dream directory -> `Transformer` module (alias LLaDA), params on `mesh` per
    `sharding.LOGICAL_RULES` (mesh None: one device). `config_overrides` set TransformerConfig
    fields (param_dtype defaults to bfloat16, the released checkpoints' dtype; compute_dtype,
    remat, lora_rank, ...; `family` = the family expected, checked against config.json).
    Raises ConversionError naming the file and tensor/key for any bad input."""
    cfg = config_from_hf(read_config(model_dir), os.path.join(model_dir, "config.json"), **config_overrides)
    weight_map = read_weight_map(model_dir)
    abstract, table = _expected_shapes(cfg)
    shardings = _leaf_shardings(abstract, mesh)
    with contextlib.ExitStack() as stack:
        handles = {fname: stack.enter_context(safe_open(os.path.join(model_dir, fname), framework="np"))
                   for fname in sorted(set(weight_map.values()))}
        _validate(cfg, table, weight_map, handles, model_dir)
        by_path: dict = {}
        for name, (rule, layer, _) in table.items():
            by_path.setdefault(rule.path, (rule, []))[1].append(name)
        params = jax.tree.map(lambda x: x, abstract)  # a fresh dict tree to fill in
        for path, (rule, names) in by_path.items():
            leaf = mapping.get_path(abstract, path)
            files = [handles[weight_map[n]] for n in names]
            arr = _load_param(rule, names, files, leaf.shape, leaf.dtype, mapping.get_path(shardings, path))
            mapping.get_path(params, path[:-1])[path[-1]] = arr
    if cfg.lora_rank > 0:
        lora = _init_lora(cfg, shardings, seed)
        params["lora_a"], params["lora_b"] = lora["lora_a"], lora["lora_b"]
    model = nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def _init_lora(cfg: LLaDAConfig, shardings: dict, seed: int) -> dict:
    """Fresh LoRA factors (as LLaDA.__init__ makes them), created directly on their shardings."""
    out_sh = {"lora_a": shardings["lora_a"], "lora_b": shardings["lora_b"]}

    def init():
        state = nnx.to_pure_dict(nnx.state(LLaDA(cfg, rngs=nnx.Rngs(seed))))
        return {"lora_a": state["lora_a"], "lora_b": state["lora_b"]}  # base params are dead code

    return jax.jit(init, out_shardings=out_sh)()

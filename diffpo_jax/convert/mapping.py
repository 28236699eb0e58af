"""The mapping tables HF tensor names <-> NNX parameter paths, ONE per model family, each used
in both directions (import and export).

HF (PyTorch) Linear weights are `[out, in]`, one tensor per layer; our kernels are `[in, out]`
stacked on a leading layer axis `[N, in, out]`. A rule says how to get from one to the other:
  hf         tensor name, with `{i}` for the layer index of per-layer tensors
  path       path of the parameter in `nnx.to_pure_dict(nnx.state(model))`
  transpose  HF `[out, in]` <-> ours `[in, out]` (True for every Linear weight; False for
             embeddings, norms and biases, which have the same layout on both sides)
Per-layer rules (`{i}` in the name) are stacked on axis 0 of our parameter.

  LLADA_RULES  GSAI-ML/LLaDA-8B-Instruct (OLMo-style `model.transformer.blocks.{i}.q_proj.weight`)
  DREAM_RULES  Dream-org/Dream-v0-Instruct-7B (Qwen2-style `model.layers.{i}.self_attn.q_proj.weight`,
               plus the q/k/v biases `[out]` per layer, ours `blocks[q_bias] [N, out]`)
`rules_for(family)` picks the table of a `TransformerConfig.family`.

LoRA adapters use PEFT names: `base_model.model.` + the HF module name of the adapted
projection (its rule's name without `.weight`) + `.lora_A.weight [r, in]` / `.lora_B.weight
[out, r]`; ours are `lora_a[target] [N, in, r]`, `lora_b[target] [N, r, out]`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Optional, Sequence

import numpy as np

from diffpo_jax.models.llada import LAYER_NORMS, PROJECTIONS, QKV_BIASES

PREFIX = "model.transformer."  # LLaDA's
PEFT_PREFIX = "base_model.model.model.transformer."  # LLaDA's
PEFT_MODEL_PREFIX = "base_model.model."  # PeftModel(LoraModel(model)): every family's module names under it


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    path: tuple
    transpose: bool

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


LLADA_RULES: tuple[Rule, ...] = (
    Rule(PREFIX + "wte.weight", ("embed",), False),  # [V, D] both sides
    *(Rule(PREFIX + f"blocks.{{i}}.{n}.weight", ("blocks", n), False) for n in LAYER_NORMS),
    *(Rule(PREFIX + f"blocks.{{i}}.{n}.weight", ("blocks", n), True) for n in PROJECTIONS),
    Rule(PREFIX + "ln_f.weight", ("ln_f",), False),
    Rule(PREFIX + "ff_out.weight", ("lm_head",), True),  # the untied LM head, [V, D] <-> [D, V]
)
EMBED_NAME = PREFIX + "wte.weight"
LM_HEAD_NAME = PREFIX + "ff_out.weight"

# Our per-layer parameter -> Dream's (Qwen2's) module inside `model.layers.{i}`, in the
# checkpoint's order (the modules' registration order in modeling_dream.py).
DREAM_MODULES = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
}
DREAM_BIASES = dict(zip(("q_proj", "k_proj", "v_proj"), QKV_BIASES))  # q_proj -> its bias, blocks[q_bias]
_DREAM_LAYER = "model.layers.{i}."


def _dream_layer_rules() -> Iterator[Rule]:
    for ours, module in DREAM_MODULES.items():
        yield Rule(_DREAM_LAYER + module + ".weight", ("blocks", ours), ours in PROJECTIONS)
        if ours in DREAM_BIASES:  # [out] per layer, same layout both sides
            yield Rule(_DREAM_LAYER + module + ".bias", ("blocks", DREAM_BIASES[ours]), False)


DREAM_RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", ("embed",), False),  # [V, D] both sides
    *_dream_layer_rules(),
    Rule("model.norm.weight", ("ln_f",), False),
    Rule("lm_head.weight", ("lm_head",), True),  # untied (tie_word_embeddings false), [V, D] <-> [D, V]
)

RULES = {"llada": LLADA_RULES, "dream": DREAM_RULES}
FAMILY_NAMES = {"llada": "LLaDA", "dream": "Dream"}  # for messages


def rules_for(family: str) -> tuple[Rule, ...]:
    """The mapping table of a `TransformerConfig.family` ('llada' | 'dream')."""
    if family not in RULES:
        raise ValueError(f"family={family!r} has no conversion table; choose one of {sorted(RULES)}")
    return RULES[family]


def name_of(path: tuple, rules: Sequence[Rule] = LLADA_RULES) -> str:
    """The HF name (with `{i}` if per layer) of our parameter at `path`, e.g. ('embed',)."""
    for r in rules:
        if r.path == tuple(path):
            return r.hf
    raise KeyError(f"no rule for parameter {path}")


def hf_tensors(n_layers: int, rules: Sequence[Rule] = LLADA_RULES) -> Iterator[tuple[str, Rule, Optional[int]]]:
    """(HF name, rule, layer index or None) for every tensor of a checkpoint, in file order:
    embedding, then layer by layer, then final norm and LM head."""
    glob = [r for r in rules if not r.per_layer]
    layer = [r for r in rules if r.per_layer]
    yield glob[0].hf, glob[0], None
    for i in range(n_layers):
        for r in layer:
            yield r.hf.format(i=i), r, i
    for r in glob[1:]:
        yield r.hf, r, None


def hf_shape(rule: Rule, param_shape: Sequence[int]) -> tuple:
    """Shape of one HF tensor given our parameter's shape (drop the layer axis, reverse if transposed)."""
    shape = tuple(param_shape[1:] if rule.per_layer else param_shape)
    return shape[::-1] if rule.transpose else shape


def to_hf(x: np.ndarray, rule: Rule) -> np.ndarray:
    """One layer's slice of our parameter -> the HF tensor (contiguous)."""
    return np.ascontiguousarray(x.T if rule.transpose else x)


def hf_index(rule: Rule, index: tuple) -> tuple:
    """Index into the HF tensor that reads our (per-layer-stripped) index block `index`."""
    return tuple(index[::-1]) if rule.transpose else tuple(index)


def from_hf(x: np.ndarray, rule: Rule) -> np.ndarray:
    """An HF tensor (or a block read with `hf_index`) -> our layout."""
    return x.T if rule.transpose else x


def get_path(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def _module(target: str, rules: Sequence[Rule]) -> str:
    """HF module name (with `{i}`) of the projection `target`, e.g. 'model.layers.{i}.self_attn.q_proj'."""
    return name_of(("blocks", target), rules).removesuffix(".weight")


def peft_names(layer: int, target: str, rules: Sequence[Rule] = LLADA_RULES) -> tuple[str, str]:
    """PEFT tensor names (lora_A `[r, in]`, lora_B `[out, r]`) of one layer's adapter on `target`
    (e.g. Dream: `base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight`)."""
    base = PEFT_MODEL_PREFIX + _module(target, rules).format(i=layer)
    return base + ".lora_A.weight", base + ".lora_B.weight"


def peft_target_regex(targets: Sequence[str], rules: Sequence[Rule] = LLADA_RULES) -> str:
    """PEFT `target_modules` for our adapters: a regex PEFT `fullmatch`es against module names, so
    only the blocks' projections match (a plain list would match by suffix, and 'ff_out' would
    also hit LLaDA's LM head `model.transformer.ff_out`). LLaDA: `.*\\.blocks\\.\\d+\\.(q_proj|...)`,
    Dream: `.*\\.layers\\.\\d+\\.(self_attn\\.q_proj|...|mlp\\.down_proj)`."""
    modules = [_module(t, rules) for t in targets]
    stack = modules[0].split(".{i}.")[0].rsplit(".", 1)[-1]  # the layer list: 'blocks' / 'layers'
    inner = [re.escape(m.split(".{i}.", 1)[1]) for m in modules]
    return r".*\." + stack + r"\.\d+\.(" + "|".join(inner) + ")"

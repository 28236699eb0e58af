"""The ONE table mapping HF LLaDA tensor names <-> NNX parameter paths, used in both directions.

HF (PyTorch) Linear weights are `[out, in]`, one tensor per layer; our kernels are `[in, out]`
stacked on a leading layer axis `[N, in, out]`. A rule says how to get from one to the other:
  hf         tensor name, with `{i}` for the layer index of per-layer tensors
  path       path of the parameter in `nnx.to_pure_dict(nnx.state(model))`
  transpose  HF `[out, in]` <-> ours `[in, out]` (True for every Linear weight)
Per-layer rules (`{i}` in the name) are stacked on axis 0 of our parameter.

LoRA adapters use PEFT names (`PEFT_PREFIX + blocks.{i}.{target}.lora_A.weight [r, in]`,
`lora_B.weight [out, r]`); ours are `lora_a[target] [N, in, r]`, `lora_b[target] [N, r, out]`.
A Dream-7B table would be a second tuple of rules next to LLADA_RULES.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence

import numpy as np

from diffpo_jax.models.llada import LAYER_NORMS, PROJECTIONS

PREFIX = "model.transformer."
PEFT_PREFIX = "base_model.model.model.transformer."


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


def peft_names(layer: int, target: str) -> tuple[str, str]:
    """PEFT tensor names (lora_A `[r, in]`, lora_B `[out, r]`) of one layer's adapter on `target`."""
    base = f"{PEFT_PREFIX}blocks.{layer}.{target}"
    return base + ".lora_A.weight", base + ".lora_B.weight"


def peft_target_regex(targets: Sequence[str]) -> str:
    """PEFT `target_modules` for our adapters: a regex PEFT `fullmatch`es against module names, so
    only the blocks' projections match (a plain list would match by suffix, and 'ff_out' would
    also hit the model's LM head `model.transformer.ff_out`)."""
    return r".*\.blocks\.\d+\.(" + "|".join(targets) + ")"

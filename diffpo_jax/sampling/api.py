"""Compiled entry points: `make_sampler` (pure, takes the model's split state) and `generate`.

    sampler = make_sampler(graphdef, SamplerConfig(rule="eb", gen_length=256, block_length=32))
    out = sampler(state, prompt_tokens [B, P], prompt_mask [B, P], key, gamma=[B], threshold=[B],
                  temperature=[B] or scalar)            # -> SampleOutput
    out = sampler(state, ..., head=HeadGamma.of(threshold_head, sigma))   # EB with the head's γ

One compile per (batch, prompt length, SamplerConfig) - the config fixes gen/block length,
rule and the static step bound. `state` (any weights with the same structure), `key`,
`gamma`, `threshold` and `temperature` are array inputs: changing them never recompiles
(`sampler.trace_count` counts traces); so are a head's parameters and σ (its graph is static). With a mesh, the batch is sharded over
('data', 'fsdp') (`sharding.batch_sharding`) and the model state is expected on its
`sharding.create_sharded` shardings; results equal the single-device ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models.threshold_head import HeadGamma
from diffpo_jax.sampling.config import SamplerConfig
from diffpo_jax.sampling.loop import SampleOutput, decode


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: Optional[int] = None):
    """Left-pad token lists to a common length P (the longest, or `length`).

    Returns (tokens `[B, P]` int32, mask `[B, P]` bool, True = real token) as NumPy arrays.
    """
    if not len(prompts):
        raise ValueError("left_pad: no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"left_pad: prompt {lengths.index(0)} is empty")
    width = max(lengths) if length is None else length
    if max(lengths) > width:
        raise ValueError(f"left_pad: a prompt has {max(lengths)} tokens, more than length={width}; "
                         "truncate it (d1 keeps the last max_prompt_length tokens) or raise length")
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = np.asarray(p, np.int32)
        mask[i, width - len(p):] = True
    return tokens, mask


class Sampler:
    """A jit-compiled sampler for one model graph and one SamplerConfig (see module doc)."""

    def __init__(self, graphdef, cfg: SamplerConfig, mesh: Optional[jax.sharding.Mesh] = None):
        if not isinstance(cfg, SamplerConfig):
            raise TypeError(f"make_sampler: cfg must be a SamplerConfig, got {type(cfg).__name__}")
        self.graphdef, self.cfg, self.mesh = graphdef, cfg, mesh
        self.trace_count = 0
        self._model_cfg = None
        self.jitted = jax.jit(self._traced)  # public for ahead-of-time lowering (bench/tpu_compile.py)

    def _traced(self, state, prompt_tokens, prompt_mask, key, gamma, threshold, temperature,
                head=None) -> SampleOutput:
        self.trace_count += 1  # runs only while tracing: counts compiles
        model = nnx.merge(self.graphdef, state)
        return decode(model, self.cfg, prompt_tokens, prompt_mask, key, gamma, threshold, temperature, head)

    def _check(self, state, prompt_tokens, prompt_mask):
        if self._model_cfg is None:
            self._model_cfg = getattr(nnx.merge(self.graphdef, state), "cfg", None)
        if prompt_tokens.ndim != 2:
            raise ValueError(f"prompt_tokens must be [B, P], got shape {tuple(prompt_tokens.shape)}")
        if prompt_mask.shape != prompt_tokens.shape:
            raise ValueError(f"prompt_mask shape {tuple(prompt_mask.shape)} != prompt_tokens shape "
                             f"{tuple(prompt_tokens.shape)}")
        mcfg, total = self._model_cfg, prompt_tokens.shape[1] + self.cfg.gen_length
        if mcfg is not None and total > mcfg.max_sequence_length:
            raise ValueError(f"prompt length {prompt_tokens.shape[1]} + gen_length {self.cfg.gen_length} = {total} "
                             f"exceeds the model's max_sequence_length={mcfg.max_sequence_length}")
        mask_id = self.cfg.mask_token_id if self.cfg.mask_token_id is not None else getattr(mcfg, "mask_token_id", None)
        if mask_id is not None and getattr(prompt_tokens, "is_fully_addressable", True):
            if np.any(np.asarray(prompt_tokens) == mask_id):
                raise ValueError(f"prompt_tokens contain the mask id {mask_id}; prompts must be fully visible")
        if self.mesh is not None:
            shards = int(np.prod([self.mesh.shape[a] for a in ("data", "fsdp") if a in self.mesh.shape]))
            if prompt_tokens.shape[0] % shards:
                raise ValueError(f"batch {prompt_tokens.shape[0]} is not divisible by the mesh's data*fsdp={shards}")

    def _per_row(self, value, default: float, b: int, name: str) -> jax.Array:
        value = default if value is None else value
        arr = jnp.asarray(value, jnp.float32)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, b)):
            raise ValueError(f"{name} must be a scalar or shape [B={b}], got shape {tuple(arr.shape)}")
        return jnp.broadcast_to(arr, (b,))

    def __call__(self, state, prompt_tokens, prompt_mask=None, key=None, gamma=None, threshold=None,
                 temperature=None, head: Optional[HeadGamma] = None) -> SampleOutput:
        """state: `nnx.split(model)[1]`; prompt_tokens `[B, P]` int (left-padded); prompt_mask
        `[B, P]` bool (None = no padding); key: PRNG key (None = key(0)); gamma / threshold /
        temperature: scalar or `[B]` (None = the config's value); head: a threshold head whose γ
        replaces `gamma` (rule 'eb'; `loop.decode`), its draws in `out.head`."""
        if head is not None and self.cfg.rule != "eb":
            raise ValueError(f"Sampler: a threshold head sets EB's gamma; this sampler's rule is {self.cfg.rule!r}")
        prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
        if prompt_mask is None:
            prompt_mask = jnp.ones(prompt_tokens.shape, bool)
        prompt_mask = jnp.asarray(prompt_mask, bool)
        self._check(state, prompt_tokens, prompt_mask)
        b = prompt_tokens.shape[0]
        key = jax.random.key(0) if key is None else key
        per_row = [self._per_row(gamma, self.cfg.gamma, b, "gamma"),
                   self._per_row(threshold, self.cfg.threshold, b, "threshold"),
                   self._per_row(temperature, self.cfg.temperature, b, "temperature")]
        if self.mesh is not None:
            prompt_tokens, prompt_mask = (jax.device_put(a, shd.batch_sharding(self.mesh, 2))
                                          for a in (prompt_tokens, prompt_mask))
            per_row = [jax.device_put(a, shd.batch_sharding(self.mesh, 1)) for a in per_row]
        with shd.use_mesh(self.mesh):
            return self.jitted(state, prompt_tokens, prompt_mask, key, *per_row, head)


def make_sampler(graphdef, cfg: SamplerConfig, mesh: Optional[jax.sharding.Mesh] = None) -> Sampler:
    """A compiled sampler `fn(state, prompt_tokens, prompt_mask, key, gamma, threshold,
    temperature) -> SampleOutput` for the model graph `graphdef` (from `nnx.split`)."""
    return Sampler(graphdef, cfg, mesh)


_CACHE: "OrderedDict[tuple, Sampler]" = OrderedDict()


def _cached_sampler(graphdef, cfg: SamplerConfig, mesh) -> Sampler:
    key = (graphdef, cfg, mesh)
    if key not in _CACHE:
        _CACHE[key] = make_sampler(graphdef, cfg, mesh)
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    return _CACHE[key]


def generate(model: nnx.Module, prompts, cfg: Optional[SamplerConfig] = None, *, prompt_mask=None,
             key=None, gamma=None, threshold=None, temperature=None,
             mesh: Optional[jax.sharding.Mesh] = None, **overrides) -> SampleOutput:
    """Convenience wrapper: decode after `prompts` with `model`.

    prompts: a list of token-id lists (left-padded here with the model's pad id) or a
    `[B, P]` array (then pass `prompt_mask` if it is padded). `cfg` defaults to
    `SamplerConfig()`; keyword `overrides` replace its fields (e.g. rule="eb", gamma=0.2).
    Samplers are cached per (graph, config, mesh), so repeated calls do not recompile.
    """
    cfg = (cfg or SamplerConfig()).replace(**overrides) if overrides else (cfg or SamplerConfig())
    if isinstance(prompts, (list, tuple)) and prompts and not np.isscalar(prompts[0]):
        pad_id = model.cfg.pad_token_id if hasattr(model, "cfg") else cfg.eos_token_id
        prompts, prompt_mask = left_pad(prompts, pad_id)
    graphdef, state = nnx.split(model)
    return _cached_sampler(graphdef, cfg, mesh)(state, prompts, prompt_mask, key, gamma, threshold, temperature)

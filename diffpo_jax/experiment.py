"""From an ml-collections experiment config (configs/base.py) to the typed objects the code uses.

    rl_cfg = rl_config(config)                       # rl.RLConfig
    sampler_cfg = sampler_config(config.sampler, llm.cfg)
    mesh = build_mesh(config)
    llm, tokenizer = build_llm(config, mesh)          # HF checkpoint (hf_dir) or a preset
    policy = build_policy(config, llm, rl_cfg)        # Policy(llm, ThresholdHead | None)

Every error names the config field (`config.rl.lr`, `config.model.hf_dir`, ...) and what to do.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import ml_collections
from flax import nnx

from diffpo_jax import sharding as shd
from diffpo_jax.models import llada
from diffpo_jax.models.threshold_head import STEP_FEATURES, Policy, ThresholdHead
from diffpo_jax.rl.config import RLConfig
from diffpo_jax.sampling import SamplerConfig

TINY_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny_tokenizer")
# LLaDAConfig fields the `model` section may set (the rest come from hf_dir or the preset).
MODEL_FIELDS = ("param_dtype", "compute_dtype", "lora_dtype", "remat", "attention_impl", "lora_rank",
                "lora_alpha", "lora_targets")


CHECKPOINT_NAMES = {"llada": "LLaDA-8B-Instruct", "dream": "Dream-v0-Instruct-7B"}


class ConfigError(ValueError):
    """A bad experiment config; the message names the field (`config.section.field`)."""


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(value)
    return value


def make_dataclass(cls, section: ml_collections.ConfigDict, prefix: str, skip: tuple = (), **extra):
    """`cls(**section, **extra)` with errors that name `config.<prefix>.<field>`."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: _plain(v) for k, v in section.items() if k not in skip}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"config.{prefix}.{unknown[0]}: unknown field for {cls.__name__}; "
                          f"valid fields: {sorted(fields)}")
    try:
        return cls(**{**values, **extra})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{prefix}: {e}") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict | None) -> None:
    """Set each `{"section.field": value}` of `overrides` on `config` (in place), as the paper
    table's `--set section.field=value` budget."""
    for key, value in (overrides or {}).items():
        section, field = key.split(".", 1)
        config[section][field] = value


def generator_kwargs(config: ml_collections.ConfigDict) -> dict:
    """Countdown / Sudoku puzzle-generator kwargs from `config.task.generator` (plain dict)."""
    return _plain(config.task.get("generator", ml_collections.ConfigDict()))


def config_flag_value(holder) -> ml_collections.ConfigDict:
    """The config of a `config_flags.DEFINE_config_file` flag, or SystemExit with one line naming
    the problem (no --config, a mistyped file, a failing get_config) instead of a traceback."""
    try:
        config = holder.value
        if config is not None:
            config.keys()  # a file that failed to load is a placeholder that raises on first use
    except (OSError, ValueError, TypeError, AttributeError) as e:
        cause = e.__cause__ or e
        detail = " ".join(str(cause).split())
        raise SystemExit(f"--config: cannot load the config file: {detail}") from None
    if config is None:
        raise SystemExit("--config is required, e.g. --config configs/demo_sudoku.py (the paper's runs: "
                         "--config configs/llada8b.py:TASK,METHOD)")
    return config


def check_task(config: ml_collections.ConfigDict) -> None:
    """ConfigError for a `config.task.name` that is not a registered task."""
    from diffpo_jax.tasks.registry import TASKS

    if str(config.task.name).lower() not in TASKS:
        raise ConfigError(f"config.task.name={config.task.name!r}: unknown task; choose one of {sorted(TASKS)}")


def rl_config(config: ml_collections.ConfigDict) -> RLConfig:
    """RLConfig of `config.rl`; with joint_sampler, the rollout and eval samplers must be EB:
    the threshold head's γ is EB's threshold, which every other rule would silently ignore."""
    rl = make_dataclass(RLConfig, config.rl, "rl")
    if rl.joint_sampler:
        for section in (s for s in ("sampler", "eval") if s in config):
            rule = config[section].get("rule", SamplerConfig.rule)
            if rule != "eb":
                raise ConfigError(f"config.{section}.rule={rule!r}: config.rl.joint_sampler trains the EB "
                                  f"threshold γ, which rule {rule!r} ignores; set config.{section}.rule = 'eb' "
                                  "(or joint_sampler = False)")
    return rl


def sampler_config(section: ml_collections.ConfigDict, model_cfg: llada.LLaDAConfig, prefix: str = "sampler",
                   **extra) -> SamplerConfig:
    """The sampler of a config section (`sampler` or `eval`), ids taken from the model."""
    skip = tuple(k for k in ("gammas", "thresholds", "items", "batch", "pad_multiple") if k in section)
    return make_dataclass(SamplerConfig, section, prefix, skip=skip, mask_token_id=model_cfg.mask_token_id,
                          eos_token_id=model_cfg.eos_token_id, **extra)


def check_rollout_input(rl: RLConfig, sampler: SamplerConfig) -> None:
    """ConfigError when rollouts and the likelihoods that score them would feed the model
    different inputs: with padding masked in one and not the other, ρ and w != 1 at θ = θ_old."""
    if rl.use_padding_mask != sampler.use_padding_mask:
        raise ConfigError(f"config.rl.use_padding_mask={rl.use_padding_mask} but config.sampler.use_padding_mask="
                          f"{sampler.use_padding_mask}: the rollout sampler and the likelihoods that score its "
                          "completions must see the same model input; set both to the same value")


def behaviour_logp_warnings(rl: RLConfig, sampler: SamplerConfig) -> list[str]:
    """Rollout settings under which an IS method's behaviour log-probs are not the surrogate's
    own computation (so w != 1 even where the 2-MF context is exact), or under which the exact
    likelihood is not the sampled distribution's. Allowed, but said."""
    fields = [f for f, on in (("kv_cache", sampler.kv_cache != "none"), ("cfg_scale", sampler.cfg_scale > 0),
                              ("logits_eos_inf", sampler.logits_eos_inf)) if on]
    filters = [f"config.sampler.{f}={getattr(sampler, f)} filters the sampled distribution, which no likelihood "
               "applies: with temperature > 0 the behaviour log-probs (of the filtered softmax) and the "
               "likelihoods (of the full one) differ even on-policy"
               for f, on in (("top_p", sampler.top_p < 1.0), ("top_k", sampler.top_k > 0)) if on]
    if rl.method == "exact":
        return [f"config.sampler.{f} changes the rollout forward, so rl.method='exact' scores another "
                "distribution than the one sampled (on-policy it equals the sampler's behaviour log-probs only "
                "without kv_cache, cfg_scale and logits_eos_inf)" for f in fields] + filters
    if not rl.method.endswith("_is"):
        return []
    return [f"config.sampler.{f} changes the rollout forward, so the behaviour log-probs in {rl.method}'s IS "
            "weights come from another computation than the surrogate's: w != 1 even where the 2-MF context "
            "is exact (docs/benchmarks.md, 'In the RL loop', measures it for kv_cache)" for f in fields] + filters


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    try:
        return shd.make_mesh(int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.tp))
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None


def model_overrides(config: ml_collections.ConfigDict) -> dict:
    """LLaDAConfig overrides from `config.model` (MODEL_FIELDS + the free-form `overrides` dict)."""
    m = config.model
    out = {k: _plain(m[k]) for k in MODEL_FIELDS if k in m}
    out.update(_plain(m.get("overrides", ml_collections.ConfigDict())))
    return out


def _preset_family(config: ml_collections.ConfigDict) -> Optional[str]:
    """The model family of `config.model.preset` (None for an unknown preset: build_llm reports it)."""
    try:
        return llada.get_preset(config.model.preset).family
    except (TypeError, ValueError):
        return None


def load_tokenizer(config: ml_collections.ConfigDict):
    """`config.model.tokenizer_dir`, else hf_dir, else the preset family's tiny char tokenizer,
    loaded without remote code (tasks/model_tokenizers.load) and checked against the model:
    the family and special ids of hf_dir's config.json, else the preset's family."""
    import transformers
    from diffpo_jax.tasks import model_tokenizers, tiny_tokenizer

    transformers.logging.set_verbosity_error()  # model-type notices about LLaDA's config.json

    m = config.model
    family = None if m.hf_dir else _preset_family(config)
    tiny = tiny_tokenizer.asset_dir(family) if family in tiny_tokenizer.TINY_FAMILIES else TINY_TOKENIZER
    path = m.get("tokenizer_dir", "") or m.hf_dir or tiny
    if not os.path.isdir(path):
        raise ConfigError(f"config.model.tokenizer_dir: {path!r} is not a directory; point it (or "
                          "config.model.hf_dir) at a local tokenizer (tokenizer.json + tokenizer_config.json)")
    field = "config.model.tokenizer_dir" if m.get("tokenizer_dir", "") else "config.model.hf_dir"
    try:
        tokenizer = model_tokenizers.load(path)
        if m.hf_dir:
            model_tokenizers.check_checkpoint(tokenizer, m.hf_dir, tokenizer_source=path)
        else:
            model_tokenizers.check_ids(tokenizer, {}, family, None, tokenizer_source=path,
                                       model_source=f"config.model.preset={m.preset!r}")
    except model_tokenizers.TokenizerError as e:
        raise ConfigError(f"{field}: {e}") from None
    return tokenizer


def check_tensor_parallel(cfg, mesh: Optional[jax.sharding.Mesh]) -> None:
    """ConfigError unless the mesh's tp axis splits both the query and the key/value heads into
    whole heads (the flattened head axis is what tp shards: tp = 8 on Dream-7B's 28 / 4 heads
    would cut heads in half and add all-to-alls to every layer)."""
    tp = int(mesh.shape.get("tp", 1)) if mesh is not None else 1
    if tp > 1 and (cfg.n_heads % tp or cfg.n_kv_heads % tp):
        ok = [d for d in range(1, cfg.n_kv_heads + 1) if cfg.n_heads % d == 0 and cfg.n_kv_heads % d == 0]
        raise ConfigError(f"config.mesh.tp={tp} does not divide the model's {cfg.n_heads} query / {cfg.n_kv_heads} "
                          f"key-value heads, so tensor parallelism would split heads across chips; use tp in "
                          f"{ok} (and fsdp for the rest of the devices)")


def build_llm(config: ml_collections.ConfigDict, mesh: Optional[jax.sharding.Mesh]):
    """(LLaDA on `mesh`, tokenizer). `config.model.hf_dir` = HF checkpoint (convert/hf_import),
    else a random-init `config.model.preset` (tests, benchmarks)."""
    overrides = model_overrides(config)
    seed = int(config.seed)
    if config.model.hf_dir and not os.path.isdir(config.model.hf_dir):
        raise ConfigError(f"config.model.hf_dir: {config.model.hf_dir!r} is not a directory; convert or "
                          "download the checkpoint first (README: Converting a real checkpoint)")
    tokenizer = load_tokenizer(config)
    if config.model.hf_dir:
        from diffpo_jax.convert.errors import ConversionError
        from diffpo_jax.convert.hf_import import load_hf

        family = config.model.get("family", "")  # "" = whatever config.json says
        try:
            from diffpo_jax.convert.hf_config import config_from_hf, read_config

            check_tensor_parallel(config_from_hf(read_config(config.model.hf_dir)), mesh)
            llm = load_hf(config.model.hf_dir, mesh, seed=seed, **overrides, **({"family": family} if family else {}))
        except ConversionError as e:
            raise ConfigError(f"config.model.hf_dir: {e}") from None
        return llm, tokenizer
    try:
        cfg = llada.get_preset(config.model.preset, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from None
    if cfg.mask_token_id >= len(tokenizer):  # e.g. llada_8b_instruct with the tiny demo tokenizer
        raise ConfigError(
            f"config.model.hf_dir is empty, so this would train a randomly initialised "
            f"{config.model.preset!r} model, and its mask token id {cfg.mask_token_id} is outside the "
            f"{len(tokenizer)}-token tokenizer {tokenizer.name_or_path!r}; set "
            f"--config.model.hf_dir=/path/to/{CHECKPOINT_NAMES.get(cfg.family, 'the checkpoint')} (or "
            "config.model.tokenizer_dir for a "
            "deliberate random-init run)")
    check_tensor_parallel(cfg, mesh)
    make = lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(seed))  # noqa: E731
    return (shd.create_sharded(make, mesh) if mesh is not None else make()), tokenizer


def build_policy(llm: llada.LLaDA, rl_cfg: RLConfig, seed: int = 0) -> Policy:
    """Policy(llm, head): the threshold head (replicated, fp32) only for the joint sampler; a step
    head (`rl.head='step'`) also reads the decoding state (`threshold_head.STEP_FEATURES`)."""
    if llm.cfg.lora_rank < 1:
        raise ConfigError("config.model.lora_rank: RL trains LoRA adapters; set lora_rank >= 1")
    head = None
    if rl_cfg.joint_sampler:
        head = ThresholdHead(llm.cfg.d_model, gamma_max=rl_cfg.gamma_max, gamma_init=rl_cfg.gamma_init,
                             hidden=rl_cfg.head_hidden, rngs=nnx.Rngs(seed + 1),
                             n_step_features=len(STEP_FEATURES) if rl_cfg.head == "step" else 0)
    return Policy(llm, head)

"""HF Dream checkpoint (written by tests/torch_dream.py) <-> NNX: import (one device and a mesh),
export (merged LoRA, PEFT adapter), bf16 round trip, CLI, and family / shape / switch errors.
With `DIFFPO_DREAM_REF=/path/to/Fast-dLLM/dream/model`, the export also runs in Dream's released
modeling code (run locally only, never shipped)."""
import importlib.util
import json
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from diffpo_jax import sharding as shd
from diffpo_jax.convert import (ConversionError, config_from_hf, config_to_hf, detect_family, load_hf, save_hf,
                                save_peft_adapter)
from diffpo_jax.convert.__main__ import main as cli_main
from diffpo_jax.convert.hf_config import DREAM_TEMPLATE
from diffpo_jax.convert.hf_export import NEEDED_FOR_AUTOMODEL
from diffpo_jax.models import dream
import torch_llada
from torch_dream import TorchDream, TorchDreamConfig, hf_config_dict, write_hf_checkpoint
from torch_llada import load_hf_state_dict

TCFG = TorchDreamConfig(vocab_size=352, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, mask_token_id=340, pad_token_id=341,
                        eos_token_id=341, bos_token_id=341)
F32 = dict(param_dtype="float32", compute_dtype="float32")
TOL = 1e-4
MAPPED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "vocab_size", "rope_theta", "rms_norm_eps", "max_position_embeddings", "mask_token_id",
               "eos_token_id", "pad_token_id")
SIDE_FILES = NEEDED_FOR_AUTOMODEL["dream"] + ("special_tokens_map.json",)
TOKENS = np.random.RandomState(0).randint(0, TCFG.vocab_size, (2, 19)).astype(np.int32)
PEFT_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")  # our q_proj .. ff_out, in lora_targets order
QB1 = "model.layers.1.self_attn.q_proj.bias"


@pytest.fixture(scope="module")
def torch_model():
    return TorchDream(TCFG, seed=3).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, torch_model):
    """fp32 checkpoint in 3 shards + index + config.json + fake tokenizer/remote-code files."""
    d = str(tmp_path_factory.mktemp("dream_f32"))
    write_hf_checkpoint(torch_model, d, n_shards=3, dtype=torch.float32)
    for name in SIDE_FILES:
        with open(os.path.join(d, name), "w") as f:
            f.write(f"placeholder {name}\n")
    return d


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("llada"))
    tcfg = torch_llada.TorchLLaDAConfig(vocab_size=352, n_layers=2, mask_token_id=340, eos_token_id=341,
                                        pad_token_id=341)
    torch_llada.write_hf_checkpoint(torch_llada.TorchLLaDA(tcfg, seed=1), d, n_shards=1)
    return d


@nnx.jit
def forward(model, tokens, padding_mask=None):
    return model(tokens, padding_mask)


def torch_logits(tm, tokens=TOKENS, padding_mask=None):
    with torch.no_grad():
        pm = None if padding_mask is None else torch.from_numpy(padding_mask)
        return tm(torch.from_numpy(tokens.astype(np.int64)), pm, shifted=True).numpy()


def torch_from_dir(d):
    """TorchDream holding the tensors of HF directory `d` (strict load_state_dict, fp32)."""
    tm = TorchDream(TCFG)
    tm.load_state_dict({k: v.float() for k, v in load_hf_state_dict(d).items()}, strict=True)
    return tm.eval()


def assert_same_tensors(dir_a, dir_b):
    a, b = load_hf_state_dict(dir_a), load_hf_state_dict(dir_b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8)), k  # bits


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, d):
    with open(path, "w") as f:
        json.dump(d, f)


# ----------------------------------------------------------------------------- config mapping


def test_config_from_hf_maps_dream_keys():
    hf = hf_config_dict(TCFG)
    cfg = config_from_hf(hf)
    assert (cfg.family, cfg.qkv_bias, cfg.logits_shift, cfg.pad_positions) == ("dream", True, True, True)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden, cfg.vocab_size) == \
        (64, 2, 4, 2, 128, 352)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.rms_norm_eps) == (340, 341, 341, 1e-6)
    assert cfg.param_dtype == "bfloat16"
    assert config_from_hf({**hf, "num_key_value_heads": None}).n_kv_heads == 4  # null: one per head
    assert config_from_hf(DREAM_TEMPLATE) == dream.dream_7b_instruct()  # the released config = the preset
    assert detect_family({"architectures": ["DreamModel"]}) == "dream" and detect_family({}) == "llada"


def test_config_to_hf_round_trips_dream_keys():
    hf = {**hf_config_dict(TCFG), "num_key_value_heads": None, "num_attention_heads": 2}
    cfg = config_from_hf(hf)
    assert config_to_hf(cfg, hf, dtype="float32") == {**hf, "torch_dtype": "float32"}  # a resolving null stays
    fresh = config_to_hf(cfg)  # no source config: the Dream-7B template with our values
    assert config_from_hf(fresh) == cfg and fresh["bos_token_id"] == cfg.eos_token_id
    assert fresh["auto_map"]["AutoModel"] == "modeling_dream.DreamModel" and fresh["model_type"] == "Dream"
    assert set(fresh) == set(DREAM_TEMPLATE)


@pytest.mark.parametrize("key,value", [("use_sliding_window", True), ("tie_word_embeddings", True),
                                       ("rope_scaling", {"type": "linear", "factor": 2.0}), ("hidden_act", "gelu"),
                                       ("attention_dropout", 0.1)])
def test_config_from_hf_refuses_unsupported_dream_switches(key, value):
    with pytest.raises(ConversionError, match=rf"x/config.json: {key}={re.escape(repr(value))} is not supported by "
                                              r"diffpo-jax's Dream"):
        config_from_hf({**hf_config_dict(TCFG), key: value}, source="x/config.json")


def test_config_from_hf_bad_dream_keys():
    hf = hf_config_dict(TCFG)
    with pytest.raises(ConversionError, match=r"x/config.json: model_type='qwen2' is not supported; diffpo-jax "
                                              r"converts LLaDA .* and Dream"):
        config_from_hf({**hf, "model_type": "qwen2"}, source="x/config.json")
    with pytest.raises(ConversionError, match=r"x/config.json: hidden_size='64' \(str\); expected a positive integer"):
        config_from_hf({**hf, "hidden_size": "64"}, source="x/config.json")
    with pytest.raises(ConversionError, match=r"x/config.json: required key 'intermediate_size' is missing or null"):
        config_from_hf({k: v for k, v in hf.items() if k != "intermediate_size"}, source="x/config.json")
    with pytest.raises(ConversionError, match=r"x/config.json: required key 'num_key_value_heads' is missing"):
        config_from_hf({k: v for k, v in hf.items() if k != "num_key_value_heads"}, source="x/config.json")
    with pytest.raises(ConversionError, match=r"x/config.json: head_dim=32 differs from hidden_size / "
                                              r"num_attention_heads = 16"):
        config_from_hf({**hf, "head_dim": 32}, source="x/config.json")
    with pytest.raises(ConversionError, match=r"x/config.json: eos_token_id=\[341, 342\] \(list\); expected a token"):
        config_from_hf({**hf, "eos_token_id": [341, 342]}, source="x/config.json")


# ----------------------------------------------------------------------------- import / export


def test_import_matches_torch(hf_dir, torch_model):
    model = load_hf(hf_dir, **F32)
    assert model.cfg.family == "dream" and model.blocks["k_bias"][...].shape == (2, 32)
    np.testing.assert_allclose(np.asarray(forward(model, jnp.asarray(TOKENS))), torch_logits(torch_model),
                               atol=TOL, rtol=0)
    pm = np.arange(TOKENS.shape[1])[None, :] >= np.array([[0], [5]])  # left padding: real-token positions
    ours = np.asarray(forward(model, jnp.asarray(TOKENS), jnp.asarray(pm)))
    assert np.abs(np.where(pm[..., None], ours - torch_logits(torch_model, padding_mask=pm), 0.0)).max() <= TOL


def test_import_onto_mesh(hf_dir):
    mesh = shd.make_mesh(data=2, fsdp=2, tp=2)
    model = load_hf(hf_dir, mesh=mesh, family="dream", **F32)
    assert model.blocks["q_proj"][...].sharding.spec == P(None, "fsdp", "tp")
    assert model.blocks["q_bias"][...].sharding.spec == P(None, "tp")
    assert model.blocks["k_proj"][...].addressable_shards[0].data.shape == (2, 32, 16)
    ref = load_hf(hf_dir, **F32)
    tokens = jnp.asarray(np.concatenate([TOKENS, TOKENS[:, ::-1]]))  # batch 4 = data * fsdp
    with shd.use_mesh(mesh):
        out = forward(model, jax.device_put(tokens, shd.batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(forward(ref, tokens)), atol=1e-5)


def test_export_round_trip_is_bit_identical(hf_dir, tmp_path, capsys):
    model = load_hf(hf_dir, **F32)
    out = str(tmp_path / "out")
    res = save_hf(model, out, source_dir=hf_dir, max_shard_bytes=60_000)
    assert len([f for f in res["files"] if f.endswith(".safetensors")]) >= 2 and res["missing"] == []
    assert_same_tensors(hf_dir, out)
    assert read_json(os.path.join(out, "config.json")) == read_json(os.path.join(hf_dir, "config.json"))
    for name in SIDE_FILES:
        assert open(os.path.join(out, name)).read() == f"placeholder {name}\n"
    bare = str(tmp_path / "bare")  # no source dir: weights + the Dream template config, missing files named
    res = save_hf(model, bare)
    assert {"modeling_dream.py", "generation_utils.py"} <= set(res["missing"])
    assert "modeling_dream.py" in capsys.readouterr().out
    assert_same_tensors(hf_dir, bare)
    cfg_bare, cfg_src = read_json(os.path.join(bare, "config.json")), read_json(os.path.join(hf_dir, "config.json"))
    assert {k: cfg_bare[k] for k in MAPPED_KEYS} == {k: cfg_src[k] for k in MAPPED_KEYS}
    assert cfg_bare["model_type"] == "Dream" and cfg_bare["tie_word_embeddings"] is False


def test_bf16_checkpoint_round_trip(hf_dir, torch_model, tmp_path):
    src = str(tmp_path / "bf16")
    write_hf_checkpoint(torch_model, src, n_shards=2, dtype=torch.bfloat16)
    model = load_hf(src)  # defaults: bf16 params
    assert model.blocks["v_bias"][...].dtype == jnp.bfloat16
    out = str(tmp_path / "out")
    save_hf(model, out, max_shard_bytes=30_000)
    assert_same_tensors(src, out)
    assert read_json(os.path.join(out, "config.json"))["torch_dtype"] == "bfloat16"
    np.testing.assert_allclose(torch_logits(torch_from_dir(out)), torch_logits(torch_model), atol=0.05)


def _lora_model(hf_dir):
    model = load_hf(hf_dir, lora_rank=4, lora_alpha=8.0, **F32)
    key = jax.random.key(0)
    for i, name in enumerate(model.cfg.lora_targets):
        b = model.lora_b[name][...]
        model.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.fold_in(key, i), b.shape)
    return model


def test_lora_merged_export_matches_torch_and_peft_adapter(hf_dir, torch_model, tmp_path):
    model = _lora_model(hf_dir)
    lora_logits = np.asarray(forward(model, jnp.asarray(TOKENS)))
    assert np.abs(lora_logits - torch_logits(torch_model)).max() > 1e-3
    merged_dir, base_dir = str(tmp_path / "merged"), str(tmp_path / "base")
    save_hf(model, merged_dir, source_dir=hf_dir, max_shard_bytes=60_000)
    save_hf(model, base_dir, merge_lora=False)
    np.testing.assert_allclose(torch_logits(torch_from_dir(merged_dir)), lora_logits, atol=TOL, rtol=0)
    assert_same_tensors(hf_dir, base_dir)  # no merge: the original weights (biases untouched by LoRA)
    # PEFT adapter: Dream's module names, lora_A [r, in], lora_B [out, r]; W_merged = W + B @ A * alpha / r.
    peft = str(tmp_path / "peft")
    files = save_peft_adapter(model, peft, base_model_name_or_path=hf_dir)
    adapter, conf = load_file(os.path.join(peft, files[1])), read_json(os.path.join(peft, files[0]))
    assert (conf["r"], conf["lora_alpha"], conf["base_model_name_or_path"]) == (4, 8.0, hf_dir)
    dims = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 32), "self_attn.v_proj": (64, 32),
            "self_attn.o_proj": (64, 64), "mlp.gate_proj": (64, 128), "mlp.up_proj": (64, 128),
            "mlp.down_proj": (128, 64)}  # (in, out)
    want = {}
    for i in range(TCFG.num_hidden_layers):
        for m, (d_in, d_out) in dims.items():
            want[f"base_model.model.model.layers.{i}.{m}.lora_A.weight"] = (4, d_in)
            want[f"base_model.model.model.layers.{i}.{m}.lora_B.weight"] = (d_out, 4)
    assert {k: v.shape for k, v in adapter.items()} == want
    modules = [f"model.layers.{i}.{m}" for i in range(2) for m in PEFT_MODULES]
    assert all(re.fullmatch(conf["target_modules"], m) for m in modules)
    assert not any(re.fullmatch(conf["target_modules"], m) for m in ("lm_head", "model.embed_tokens", "model.norm",
                                                                     "model.layers.0.mlp", "model.layers.0.self_attn"))
    pre = "base_model.model.model.layers.1.mlp.down_proj"
    w0 = load_hf_state_dict(hf_dir)["model.layers.1.mlp.down_proj.weight"].numpy()
    w1 = load_hf_state_dict(merged_dir)["model.layers.1.mlp.down_proj.weight"].numpy()
    np.testing.assert_allclose(w1, w0 + adapter[pre + ".lora_B.weight"] @ adapter[pre + ".lora_A.weight"] * 2.0,
                               atol=1e-6)


def test_peft_adapter_loads_in_peft(hf_dir, tmp_path):
    peft = pytest.importorskip("peft")
    model = _lora_model(hf_dir)
    save_peft_adapter(model, str(tmp_path / "peft"))
    tm = peft.PeftModel.from_pretrained(torch_from_dir(hf_dir), str(tmp_path / "peft")).eval()
    np.testing.assert_allclose(torch_logits(tm), np.asarray(forward(model, jnp.asarray(TOKENS))), atol=TOL)


def test_cli_import_export_round_trip(hf_dir, llada_dir, tmp_path, capsys):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    assert cli_main(["import", "--hf_dir", hf_dir, "--out", ckpt, "--param_dtype", "float32", "--mesh", "2,2,2",
                     "--family", "dream"]) == 0
    assert "(dream," in capsys.readouterr().out
    assert cli_main(["export", "--ckpt", ckpt, "--out", out, "--source_dir", hf_dir, "--max_shard_gb", "6e-5"]) == 0
    assert_same_tensors(hf_dir, out)
    assert read_json(os.path.join(out, "config.json")) == read_json(os.path.join(hf_dir, "config.json"))
    assert os.path.isfile(os.path.join(out, "modeling_dream.py"))
    assert cli_main(["import", "--hf_dir", hf_dir, "--out", str(tmp_path / "x"), "--family", "llada"]) == 2
    assert "is a Dream checkpoint, but a LLaDA model (family='llada') was expected" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "LLaDA" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["import", "--help"])
    assert "Dream-org/Dream-v0-Instruct-7B" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input


def _copy(src, tmp_path, name="bad"):
    d = str(tmp_path / name)
    shutil.copytree(src, d)
    return d


def _rewrite(d, name, fn):
    """Apply `fn` to the tensors of the shard holding `name` (and fix the index's entries)."""
    index_path = os.path.join(d, "model.safetensors.index.json")
    index = read_json(index_path)
    fname = index["weight_map"][name]
    tensors = load_file(os.path.join(d, fname))
    fn(tensors)
    save_file(tensors, os.path.join(d, fname), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != fname or k in tensors}
    index["weight_map"].update({k: fname for k in tensors})
    write_json(index_path, index)
    return fname


def test_family_mismatch_errors(hf_dir, llada_dir, tmp_path):
    with pytest.raises(ConversionError, match=r"llada\w*/config.json is a LLaDA checkpoint, but a Dream model "
                                              r"\(family='dream'\) was expected"):
        load_hf(llada_dir, family="dream")
    with pytest.raises(ConversionError, match=r"config.json is a Dream checkpoint, but a LLaDA model"):
        load_hf(hf_dir, family="llada")
    mixed = _copy(llada_dir, tmp_path, "mixed")  # Dream's config.json beside LLaDA's weights
    shutil.copy(os.path.join(hf_dir, "config.json"), os.path.join(mixed, "config.json"))
    with pytest.raises(ConversionError, match=r"mixed: config.json describes a Dream model, but the weights are "
                                              r"LLaDA's \(tensor 'model.transformer.wte.weight'"):
        load_hf(mixed)
    model = load_hf(hf_dir, **F32)  # exporting a Dream model with a LLaDA source config
    with pytest.raises(ConversionError, match=r"llada\w*/config.json is a LLaDA config, but the model to export is "
                                              r"Dream \(family='dream'\)"):
        save_hf(model, str(tmp_path / "o"), source_dir=llada_dir)
    assert not os.path.exists(tmp_path / "o")


def test_error_wrong_bias_shape(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    fname = _rewrite(d, QB1, lambda t: t.update({QB1: np.zeros((32,), np.float32)}))
    with pytest.raises(ConversionError, match=rf"{fname}: tensor '{QB1}' has shape \[32\], expected \[64\]"):
        load_hf(d)


def test_error_missing_bias(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    _rewrite(d, QB1, lambda t: t.pop(QB1))
    with pytest.raises(ConversionError, match=rf"tensor '{QB1}' is missing .* expected Dream names like "
                                              r"'model.embed_tokens.weight'"):
        load_hf(d)


def test_error_config_shapes_differ_from_weights(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    write_json(os.path.join(d, "config.json"), {**read_json(os.path.join(d, "config.json")), "vocab_size": 400})
    with pytest.raises(ConversionError, match=r"'model.embed_tokens.weight' has 352 rows but config.json says the "
                                              r"vocabulary \(vocab_size\) is 400"):
        load_hf(d)
    write_json(os.path.join(d, "config.json"), {**read_json(os.path.join(hf_dir, "config.json")),
                                                "num_key_value_heads": 4})
    with pytest.raises(ConversionError, match=r"self_attn.k_proj.weight' has shape \[32, 64\], expected \[64, 64\]"):
        load_hf(d)
    write_json(os.path.join(d, "config.json"), {**read_json(os.path.join(hf_dir, "config.json")),
                                                "num_hidden_layers": 1})
    with pytest.raises(ConversionError, match=r"unexpected tensor 'model.layers.1.\S+' .* this Dream config does "
                                              r"not \(n_layers=1\?\)"):
        load_hf(d)


# ----------------------------------------------------------------------------- released code

REF_DIR = os.environ.get("DIFFPO_DREAM_REF", "")


@pytest.mark.skipif(not os.path.isfile(os.path.join(REF_DIR, "modeling_dream.py")),
                    reason="set DIFFPO_DREAM_REF to Dream's released model code (Fast-dLLM dream/model)")
def test_export_runs_in_released_dream_code(hf_dir, tmp_path):
    """The merged-LoRA export, read by Dream's own code: transformers' from_pretrained finds every
    tensor (none missing, unexpected or mismatched), DreamConfig reads our config.json, and the
    DreamModel holding what from_pretrained read gives our LoRA model's logits (shifted as its
    generate does). The model from_pretrained returns is not run itself: on transformers 5 this
    4.46-era code leaves its RoPE `inv_freq` buffers uninitialised, so a model built directly takes its weights."""
    pkg = "dream_ref"
    if pkg not in sys.modules:
        spec = importlib.util.spec_from_file_location(pkg, os.path.join(REF_DIR, "__init__.py"),
                                                      submodule_search_locations=[REF_DIR])
        sys.modules[pkg] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[pkg])
    from dream_ref import modeling_dream
    from dream_ref.configuration_dream import DreamConfig

    if "default" not in modeling_dream.ROPE_INIT_FUNCTIONS:  # written for transformers 4.46; 5.x dropped it
        def default_rope(config, device=None, **_):
            hd = config.hidden_size // config.num_attention_heads
            return 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)), 1.0

        modeling_dream.ROPE_INIT_FUNCTIONS["default"] = default_rope
    model = _lora_model(hf_dir)
    out = str(tmp_path / "out")
    save_hf(model, out, max_shard_bytes=60_000)  # no source dir: config.json from the Dream-7B template
    # Dream's own from_pretrained then reads generation_config.json with an API transformers 5 changed: skip it.
    loaded, info = super(modeling_dream.DreamPreTrainedModel, modeling_dream.DreamModel).from_pretrained(
        out, attn_implementation="sdpa", output_loading_info=True)
    assert not any(info.values()), info
    config = DreamConfig.from_pretrained(out, attn_implementation="sdpa")
    assert (config.hidden_size, config.num_key_value_heads, config.vocab_size) == (64, 2, 352)
    ref = modeling_dream.DreamModel(config).float().eval()
    missing, unexpected = ref.load_state_dict(loaded.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        logits = ref(torch.from_numpy(TOKENS.astype(np.int64)), "full").logits.float().numpy()
    shifted = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
    assert np.abs(np.asarray(forward(model, jnp.asarray(TOKENS))) - shifted).max() <= TOL

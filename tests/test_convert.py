"""HF LLaDA checkpoint (written by the torch reference) <-> NNX: import, export, LoRA merge, CLI, errors."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from diffpo_jax import sharding as shd
from diffpo_jax.convert import (ConversionError, config_from_hf, config_to_hf, load_hf, load_orbax, save_hf,
                                save_peft_adapter)
from diffpo_jax.convert.__main__ import main as cli_main
from diffpo_jax.convert.hf_config import LLADA_TEMPLATE
from torch_llada import TorchLLaDA, TorchLLaDAConfig, hf_config_dict, load_hf_state_dict, write_hf_checkpoint

TCFG = TorchLLaDAConfig(vocab_size=352, n_layers=2, n_kv_heads=2, mask_token_id=340, eos_token_id=341,
                        pad_token_id=341)
F32 = dict(param_dtype="float32", compute_dtype="float32")
MAPPED_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size", "embedding_size",
               "rope_theta", "rms_norm_eps", "max_sequence_length", "mask_token_id", "eos_token_id", "pad_token_id")
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "configuration_llada.py",
              "modeling_llada.py", "generation_config.json")


@pytest.fixture(scope="module")
def torch_model():
    return TorchLLaDA(TCFG, seed=3).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, torch_model):
    """fp32 checkpoint in 3 shards + index + config.json + fake tokenizer/remote-code files."""
    d = str(tmp_path_factory.mktemp("hf_f32"))
    write_hf_checkpoint(torch_model, d, n_shards=3, dtype=torch.float32)
    for name in SIDE_FILES:
        with open(os.path.join(d, name), "w") as f:
            f.write(f"placeholder {name}\n")
    return d


@pytest.fixture(scope="module")
def hf_dir_bf16(tmp_path_factory, torch_model):
    d = str(tmp_path_factory.mktemp("hf_bf16"))
    write_hf_checkpoint(torch_model, d, n_shards=2, dtype=torch.bfloat16)
    return d


@nnx.jit
def forward(model, tokens):
    return model(tokens)


TOKENS = np.random.RandomState(0).randint(0, TCFG.vocab_size, (2, 19)).astype(np.int32)


def torch_logits(tm, tokens=TOKENS):
    with torch.no_grad():
        return tm(torch.from_numpy(tokens.astype(np.int64))).numpy()


def assert_same_tensors(dir_a, dir_b):
    a, b = load_hf_state_dict(dir_a), load_hf_state_dict(dir_b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8)), k  # bits


def read_json(path):
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- config mapping


def test_config_from_hf_maps_keys_and_resolves_nulls():
    hf = hf_config_dict(TCFG)
    cfg = config_from_hf(hf)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden, cfg.vocab_size) == \
        (64, 2, 4, 2, 128, 352)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.rope_theta) == (340, 341, 341, 10000.0)
    assert cfg.param_dtype == "bfloat16"  # default for real checkpoints
    nulls = config_from_hf({**hf, "n_kv_heads": None, "mlp_hidden_size": None, "mlp_ratio": 3,
                            "embedding_size": 384, "vocab_size": 350})
    assert (nulls.n_kv_heads, nulls.mlp_hidden, nulls.vocab_size) == (4, 192, 384)
    real = config_from_hf(LLADA_TEMPLATE)  # the LLaDA-8B-Instruct config
    assert real.param_count() == pytest.approx(8.02e9, rel=1e-2)
    assert (real.vocab_size, real.mask_token_id, real.mlp_hidden, real.rope_theta) == (126464, 126336, 12288, 5e5)


@pytest.mark.parametrize("key,value", [("scale_logits", True), ("alibi", True), ("input_emb_norm", True),
                                       ("weight_tying", True), ("include_bias", True), ("block_type", "sequential"),
                                       ("model_type", "dream"), ("block_group_size", 2)])
def test_config_from_hf_refuses_unsupported_switches(key, value):
    with pytest.raises(ConversionError, match=rf"x/config.json: {key}={value!r} is not supported"):
        config_from_hf({**hf_config_dict(TCFG), key: value}, source="x/config.json")


@pytest.mark.parametrize("key,value,want", [("d_model", "64", "a positive integer"),
                                            ("n_layers", 0, "a positive integer"),
                                            ("n_kv_heads", True, "a positive integer"),
                                            ("mlp_ratio", "4", "a positive number"),
                                            ("rope_theta", -1.0, "a positive number"),
                                            ("eos_token_id", 1.5, "a token id")])
def test_config_from_hf_names_a_key_of_the_wrong_type(key, value, want):
    with pytest.raises(ConversionError, match=rf"x/config.json: {key}={value!r} \(\w+\); expected {want}"):
        config_from_hf({**hf_config_dict(TCFG), key: value}, source="x/config.json")
    with pytest.raises(ConversionError, match=r"x/config.json: mlp_hidden_size and mlp_ratio are both null"):
        config_from_hf({**hf_config_dict(TCFG), "mlp_hidden_size": None, "mlp_ratio": None}, source="x/config.json")


def test_config_to_hf_round_trips_mapped_keys():
    hf = {**hf_config_dict(TCFG), "n_kv_heads": None, "n_heads": 2}
    cfg = config_from_hf(hf)
    back = config_to_hf(cfg, hf, dtype="float32")
    assert back == {**hf, "torch_dtype": "float32"}  # nulls that resolve to the same value stay null
    fresh = config_to_hf(cfg)  # no source config: the LLaDA template with our values
    assert config_from_hf(fresh).replace(param_dtype="bfloat16") == cfg
    assert fresh["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"


# ----------------------------------------------------------------------------- import / export


def test_import_matches_torch(hf_dir, torch_model):
    model = load_hf(hf_dir, **F32)
    assert model.embed[...].dtype == jnp.float32 and model.cfg.n_kv_heads == 2
    np.testing.assert_allclose(np.asarray(forward(model, jnp.asarray(TOKENS))), torch_logits(torch_model),
                               atol=1e-4, rtol=0)


def test_export_round_trip_is_bit_identical(hf_dir, tmp_path, capsys):
    model = load_hf(hf_dir, **F32)
    out = str(tmp_path / "out")
    res = save_hf(model, out, source_dir=hf_dir, max_shard_bytes=60_000)
    shards = [f for f in res["files"] if f.endswith(".safetensors")]
    assert len(shards) >= 2 and "model.safetensors.index.json" in res["files"] and res["missing"] == []
    assert_same_tensors(hf_dir, out)
    assert read_json(os.path.join(out, "config.json")) == read_json(os.path.join(hf_dir, "config.json"))
    for name in SIDE_FILES:
        assert open(os.path.join(out, name)).read() == f"placeholder {name}\n"
    index = read_json(os.path.join(out, "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(shards)
    # Without a source dir: weights + config.json, and a message naming what is missing.
    bare = str(tmp_path / "bare")
    res = save_hf(model, bare, max_shard_bytes=60_000)
    assert "modeling_llada.py" in res["missing"] and "modeling_llada.py" in capsys.readouterr().out
    assert_same_tensors(hf_dir, bare)
    cfg_bare = read_json(os.path.join(bare, "config.json"))
    cfg_src = read_json(os.path.join(hf_dir, "config.json"))
    assert {k: cfg_bare[k] for k in MAPPED_KEYS} == {k: cfg_src[k] for k in MAPPED_KEYS}


def test_bf16_checkpoint_round_trip_and_plain_load_state_dict(hf_dir_bf16, torch_model, tmp_path):
    model = load_hf(hf_dir_bf16)  # defaults: bf16 params
    assert model.embed[...].dtype == jnp.bfloat16
    out = str(tmp_path / "out")
    save_hf(model, out, max_shard_bytes=30_000)
    assert_same_tensors(hf_dir_bf16, out)
    assert read_json(os.path.join(out, "config.json"))["torch_dtype"] == "bfloat16"
    # A plain torch module loads the export with load_state_dict (strict) on any transformers version.
    tm = TorchLLaDA(TCFG)
    tm.load_state_dict({k: v.float() for k, v in load_hf_state_dict(out).items()}, strict=True)
    np.testing.assert_allclose(torch_logits(tm), torch_logits(torch_model), atol=0.05)


def test_import_onto_mesh(hf_dir):
    mesh = shd.make_mesh(data=2, fsdp=2, tp=2)
    model = load_hf(hf_dir, mesh=mesh, **F32)
    assert model.blocks["q_proj"][...].sharding.spec == P(None, "fsdp", "tp")
    assert model.lm_head[...].sharding.spec == P("fsdp", "tp")
    assert model.blocks["q_proj"][...].addressable_shards[0].data.shape == (2, 32, 32)
    ref = load_hf(hf_dir, **F32)
    tokens = jnp.asarray(np.concatenate([TOKENS, TOKENS[:, ::-1]]))  # batch 4 = data * fsdp
    with shd.use_mesh(mesh):
        out = forward(model, jax.device_put(tokens, shd.batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(forward(ref, tokens)), atol=1e-5)


def test_lora_merge_export_and_peft_adapter(hf_dir, tmp_path):
    model = load_hf(hf_dir, lora_rank=4, lora_alpha=8.0, **F32)
    base_logits = np.asarray(forward(model, jnp.asarray(TOKENS)))
    key = jax.random.key(0)
    for i, name in enumerate(model.cfg.lora_targets):
        b = model.lora_b[name][...]
        model.lora_b[name][...] = 0.05 * jax.random.normal(jax.random.fold_in(key, i), b.shape)
    lora_logits = np.asarray(forward(model, jnp.asarray(TOKENS)))
    assert np.abs(lora_logits - base_logits).max() > 1e-3
    merged_dir, base_dir = str(tmp_path / "merged"), str(tmp_path / "base")
    save_hf(model, merged_dir, max_shard_bytes=60_000)
    save_hf(model, base_dir, merge_lora=False)
    merged = load_hf(merged_dir, **F32)
    np.testing.assert_allclose(np.asarray(forward(merged, jnp.asarray(TOKENS))), lora_logits, atol=1e-5, rtol=0)
    assert_same_tensors(hf_dir, base_dir)  # no merge: the original weights
    # PEFT adapter: W_merged = W + lora_B @ lora_A * alpha / r in torch layout.
    files = save_peft_adapter(model, str(tmp_path / "peft"))
    adapter = load_file(str(tmp_path / "peft" / files[1]))
    conf = read_json(str(tmp_path / "peft" / files[0]))
    assert conf["r"] == 4 and conf["lora_alpha"] == 8.0
    # PEFT fullmatches a string target_modules: every block projection, never the LM head (`ff_out` too)
    modules = [f"model.transformer.blocks.{i}.{t}" for i in range(2) for t in model.cfg.lora_targets]
    assert all(re.fullmatch(conf["target_modules"], m) for m in modules)
    assert not any(re.fullmatch(conf["target_modules"], m) for m in ("model.transformer.ff_out",
                                                                     "model.transformer.wte", "model.transformer.ln_f"))
    pre = "base_model.model.model.transformer.blocks.1.ff_out"
    lora_a, lora_b = adapter[pre + ".lora_A.weight"], adapter[pre + ".lora_B.weight"]
    assert lora_a.shape == (4, TCFG.mlp_hidden_size) and lora_b.shape == (TCFG.d_model, 4)
    w0 = load_hf_state_dict(hf_dir)["model.transformer.blocks.1.ff_out.weight"].numpy()
    w1 = load_hf_state_dict(merged_dir)["model.transformer.blocks.1.ff_out.weight"].numpy()
    np.testing.assert_allclose(w1, w0 + lora_b @ lora_a * 8.0 / 4, atol=1e-6)


def test_lora_factors_are_fp32_master_weights_of_a_bf16_model(hf_dir_bf16):
    """bf16 base weights, fp32 LoRA (PEFT upcasts adapters too): in bf16 one AdamW step at d1's
    lr 3e-6 would round away for most entries of lora_a (|a| ~ 1/sqrt(in) >> 3e-6 / 2^-8)."""
    model = load_hf(hf_dir_bf16, lora_rank=4)
    assert model.embed[...].dtype == jnp.bfloat16 and model.blocks["q_proj"][...].dtype == jnp.bfloat16
    for name in model.cfg.lora_targets:
        assert model.lora_a[name][...].dtype == jnp.float32 and model.lora_b[name][...].dtype == jnp.float32
    a = model.lora_a["q_proj"][...]
    opt = optax.adamw(3e-6, weight_decay=0.0)
    updates, _ = opt.update(jnp.ones_like(a), opt.init(a), a)
    assert np.mean(np.asarray(optax.apply_updates(a, updates) != a)) > 0.99
    assert forward(model, jnp.asarray(TOKENS)).dtype == jnp.bfloat16  # fp32 factors do not upcast the compute


def test_export_is_atomic_and_keeps_other_files(hf_dir, tmp_path, monkeypatch):
    """An export into an existing directory replaces its weights only when complete; a crash
    mid-export leaves the old directory untouched and no staging directory behind."""
    from diffpo_jax.convert import hf_export

    model = load_hf(hf_dir, **F32)
    out = tmp_path / "out"
    save_hf(model, str(out), max_shard_bytes=60_000)  # several shards
    (out / "NOTES.md").write_text("mine\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(hf_export, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_hf(model, str(out), max_shard_bytes=60_000)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    save_hf(model, str(out))  # one file now: the old shards and index go, NOTES.md stays
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old directories left
    assert_same_tensors(hf_dir, str(out))


REMOTE = os.environ.get("LLADA_REMOTE_CODE")


@pytest.mark.skipif(not REMOTE, reason="set LLADA_REMOTE_CODE=<dir with LLaDA's configuration_llada.py and "
                                       "modeling_llada.py> to check the export against the released code")
def test_export_runs_in_released_remote_code(hf_dir, torch_model, tmp_path):
    pytest.importorskip("einops")  # the remote code imports it
    import transformers
    from transformers import AutoConfig, AutoModel

    out = str(tmp_path / "out")
    save_hf(load_hf(hf_dir, **F32), out, source_dir=hf_dir)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        shutil.copy(os.path.join(REMOTE, name), os.path.join(out, name))
    if transformers.__version__.startswith("4."):
        model = AutoModel.from_pretrained(out, trust_remote_code=True, torch_dtype=torch.float32)
    else:  # transformers 5 cannot from_pretrained the 4.x remote code (research/llada.md): build + load
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        config = AutoConfig.from_pretrained(out, trust_remote_code=True)
        config.init_device = "cpu"
        model = get_class_from_dynamic_module("modeling_llada.LLaDAModelLM", out)(config)
        model.load_state_dict(load_hf_state_dict(out), strict=True)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(TOKENS.astype(np.int64)), use_cache=False).logits.numpy()
    np.testing.assert_allclose(logits, torch_logits(torch_model), atol=1e-5, rtol=0)


def test_cli_import_export_round_trip(hf_dir, tmp_path):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    assert cli_main(["import", "--hf_dir", hf_dir, "--out", ckpt, "--param_dtype", "float32", "--mesh", "2,2,2"]) == 0
    assert cli_main(["export", "--ckpt", ckpt, "--out", out, "--source_dir", hf_dir, "--max_shard_gb", "6e-5"]) == 0
    assert_same_tensors(hf_dir, out)
    assert read_json(os.path.join(out, "config.json")) == read_json(os.path.join(hf_dir, "config.json"))
    assert os.path.isfile(os.path.join(out, "modeling_llada.py"))
    mesh = shd.make_mesh(data=1, fsdp=4, tp=2)
    model = load_orbax(ckpt, mesh, compute_dtype="float32")
    assert model.blocks["ff_proj"][...].sharding.spec == P(None, "fsdp", "tp")
    ref = load_hf(hf_dir, **F32)
    np.testing.assert_array_equal(np.asarray(model.lm_head[...]), np.asarray(ref.lm_head[...]))
    assert cli_main(["import", "--hf_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit, match=r"--mesh '2,2,3'.*needs 12 devices, but 8 are available"):
        cli_main(["import", "--hf_dir", hf_dir, "--out", str(tmp_path / "y"), "--mesh", "2,2,3"])
    with pytest.raises(ConversionError, match="is the source_dir"):
        save_hf(model, hf_dir, source_dir=hf_dir)


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "diffpo_jax.convert", "import", "--help"], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "--hf_dir" in out.stdout and "16 GB" in out.stdout


# ----------------------------------------------------------------------------- bad input


def _copy(hf_dir, tmp_path):
    d = str(tmp_path / "bad")
    shutil.copytree(hf_dir, d)
    return d


def _shard_of(d, name):
    return read_json(os.path.join(d, "model.safetensors.index.json"))["weight_map"][name]


def _rewrite(d, fname, fn):
    path = os.path.join(d, fname)
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _reindex(d, fn):
    path = os.path.join(d, "model.safetensors.index.json")
    index = read_json(path)
    fn(index["weight_map"])
    with open(path, "w") as f:
        json.dump(index, f)


Q1 = "model.transformer.blocks.1.q_proj.weight"


def test_error_missing_tensor(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    fname = _shard_of(d, Q1)
    _rewrite(d, fname, lambda t: t.pop(Q1))
    _reindex(d, lambda m: m.pop(Q1))
    with pytest.raises(ConversionError, match=rf"tensor '{Q1}' is missing"):
        load_hf(d)


def test_error_tensor_in_index_but_not_in_file(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    fname = _shard_of(d, Q1)
    _rewrite(d, fname, lambda t: t.pop(Q1))
    with pytest.raises(ConversionError, match=rf"{fname}: tensor '{Q1}' is listed in the index but not stored"):
        load_hf(d)


def test_error_unexpected_tensor(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    extra = "model.transformer.blocks.2.q_proj.weight"
    fname = _shard_of(d, Q1)
    _rewrite(d, fname, lambda t: t.update({extra: np.zeros((64, 64), np.float32)}))
    _reindex(d, lambda m: m.update({extra: fname}))
    with pytest.raises(ConversionError, match=rf"{fname}: unexpected tensor '{extra}'"):
        load_hf(d)


def test_error_wrong_shape(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    fname = _shard_of(d, Q1)
    _rewrite(d, fname, lambda t: t.update({Q1: np.zeros((64, 32), np.float32)}))
    with pytest.raises(ConversionError, match=rf"{fname}: tensor '{Q1}' has shape \[64, 32\], expected \[64, 64\]"):
        load_hf(d)


def test_error_vocab_mismatch(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    cfg = read_json(os.path.join(d, "config.json"))
    cfg["embedding_size"] = cfg["vocab_size"] = 400
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ConversionError, match=r"model.transformer.wte.weight' has 352 rows but config.json says "
                                              r"the vocabulary .* is 400"):
        load_hf(d)


def test_error_non_float_dtype(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    fname = _shard_of(d, Q1)
    _rewrite(d, fname, lambda t: t.update({Q1: np.zeros((64, 64), np.int8)}))
    with pytest.raises(ConversionError, match=rf"{fname}: tensor '{Q1}' has dtype I8; expected a float dtype"):
        load_hf(d)


def test_error_index_points_at_missing_shard(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    fname = _shard_of(d, Q1)
    os.remove(os.path.join(d, fname))
    with pytest.raises(ConversionError, match=rf"index.json points at shard file '{fname}'.* does not exist"):
        load_hf(d)


def test_error_missing_config_and_missing_weights(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path)
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(ConversionError, match=r"bad/config.json: config.json is missing"):
        load_hf(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(hf_dir, "config.json"), empty / "config.json")
    with pytest.raises(ConversionError, match=r"no model.safetensors.index.json or model.safetensors"):
        load_hf(str(empty))
    with pytest.raises(ConversionError, match=r"nope: directory does not exist"):
        load_hf(str(tmp_path / "nope"))


def test_orbax_checkpoint_errors_name_the_field(hf_dir, tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    assert cli_main(["import", "--hf_dir", hf_dir, "--out", ckpt, "--param_dtype", "float32", "--mesh", "none"]) == 0
    with pytest.raises(ConversionError, match=r"llada_config.json: override\(s\) \['lora_rank: 0 -> 4'\] would "
                                              r"change parameter shapes"):
        load_orbax(ckpt, lora_rank=4)
    assert cli_main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "o"), "--peft_dir", str(tmp_path / "p"),
                     "--mesh", "none"]) == 2
    assert "has no LoRA (lora_rank 0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
    cfg_path = os.path.join(ckpt, "llada_config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    with open(cfg_path, "w") as f:
        json.dump({**saved, "n_expertz": 2}, f)
    with pytest.raises(ConversionError, match=r"llada_config.json: unknown LLaDAConfig field\(s\) \['n_expertz'\]"):
        load_orbax(ckpt)


def test_single_file_checkpoint_loads(hf_dir, tmp_path):
    d = tmp_path / "single"
    d.mkdir()
    shutil.copy(os.path.join(hf_dir, "config.json"), d / "config.json")
    tensors = {k: v.numpy() for k, v in load_hf_state_dict(hf_dir).items()}
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}, str(d / "model.safetensors"))
    model = load_hf(str(d), param_dtype="float32")  # bf16 file -> fp32 params
    np.testing.assert_array_equal(np.asarray(model.embed[...]),
                                  tensors["model.transformer.wte.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))

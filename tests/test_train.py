"""The trainer: configs (all paper experiments load; errors name the field), a short joint
DiFFPO run on a tiny HF-format model (metrics, checkpoints, export), and exact resume after
SIGKILL (a killed-and-resumed run reproduces the uninterrupted run's metrics)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import base, demo_sudoku, llada8b, tiny_model
from diffpo_jax import experiment
from diffpo_jax.convert import load_hf
from diffpo_jax.convert.hf_export import save_hf
from diffpo_jax.models.threshold_head import HEAD_PARAMS, load_threshold_head
from diffpo_jax.models import llada

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A random 2-layer LLaDA on the char tokenizer, written as a real HF checkpoint."""
    out = str(tmp_path_factory.mktemp("tiny_hf"))
    cfg = llada.tiny(**{**tiny_model.TINY_LLADA, "d_model": 64, "n_layers": 2, "mlp_hidden": 128})
    save_hf(llada.LLaDA(cfg, rngs=nnx.Rngs(3)), out, dtype="float32")
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(experiment.TINY_TOKENIZER).save_pretrained(out)
    return out


def small_config(hf_dir: str, out_dir: str, method: str = "joint", steps: int = 3) -> ml_collections.ConfigDict:
    c = demo_sudoku.get_config(method)
    c.model.hf_dir = hf_dir
    c.model.lora_rank = 4
    c.rl.num_generations = 4
    c.rl.head_hidden = 16
    c.train.prompts_per_step = 2
    c.train.steps = steps
    c.train.save_every = 1
    c.train.eval_items = 8
    c.train.eval_batch = 8
    c.train.eval_every = steps
    c.train.out_dir = out_dir
    c.train.tensorboard = True
    return c


def _flags(c: ml_collections.ConfigDict) -> list[str]:
    keys = ["model.hf_dir", "model.lora_rank", "rl.num_generations", "rl.head_hidden", "train.prompts_per_step",
            "train.steps", "train.save_every", "train.eval_items", "train.out_dir", "train.tensorboard"]
    out = []
    for k in keys:
        sec, f = k.split(".")
        out.append(f"--config.{k}={c[sec][f]}")
    return out


@pytest.mark.parametrize("task", llada8b.TASKS)
@pytest.mark.parametrize("method", llada8b.METHODS)
def test_every_paper_config_builds(task, method):
    c = llada8b.get_config(f"{task},{method}")
    rl = experiment.rl_config(c)
    cfg8b = llada.llada_8b_instruct()
    s = experiment.sampler_config(c.sampler, cfg8b)
    experiment.sampler_config(c.eval, cfg8b, "eval")
    assert rl.method == ("2mf_is" if method == "joint" else method)
    assert rl.joint_sampler == (method == "joint") and (s.rule == "eb") == (method == "joint")
    assert c.task.name == task and c.model.preset == "llada_8b_instruct"


def test_config_errors_name_the_field():
    c = base.get_config()
    c.rl.lr = -1.0
    with pytest.raises(experiment.ConfigError, match=r"config\.rl: .*lr=-1"):
        experiment.rl_config(c)
    c = base.get_config()
    c.rl.bogus = 1
    with pytest.raises(experiment.ConfigError, match=r"config\.rl\.bogus: unknown field"):
        experiment.rl_config(c)
    c = base.get_config()
    c.rl.joint_sampler = True  # the head's γ is EB's threshold: base's fixed-rule rollouts would ignore it
    with pytest.raises(experiment.ConfigError, match=r"config\.sampler\.rule='fixed'.*set config\.sampler\.rule = 'eb'"):
        experiment.rl_config(c)
    c = base.get_config()
    c.sampler.rule = "greedy"
    with pytest.raises(experiment.ConfigError, match=r"config\.sampler: .*rule='greedy'"):
        experiment.sampler_config(c.sampler, llada.tiny())
    c = base.get_config()
    c.model.hf_dir = "/nonexistent/llada"
    with pytest.raises(experiment.ConfigError, match=r"config\.model\.hf_dir"):
        experiment.build_llm(c, None)
    c = base.get_config()
    c.model.attention_impl = "flash"
    with pytest.raises(experiment.ConfigError, match=r"config\.model.*attention_impl='flash'"):
        experiment.build_llm(c, None)
    c = base.get_config()
    c.sampler.kv_cache = "full"
    with pytest.raises(experiment.ConfigError, match=r"config\.sampler: .*kv_cache='full'"):
        experiment.sampler_config(c.sampler, llada.tiny())
    with pytest.raises(ValueError, match="TASK,METHOD"):
        llada8b.get_config("gsm8k")
    c = base.get_config()
    c.rl.use_padding_mask = True  # scoring masked, rollouts not: IS weights != 1 at θ = θ_old
    with pytest.raises(experiment.ConfigError, match=r"config\.rl\.use_padding_mask=True but config\.sampler"):
        experiment.check_rollout_input(experiment.rl_config(c), experiment.sampler_config(c.sampler, llada.tiny()))
    c = base.get_config()
    c.task.name = "gsm9k"
    with pytest.raises(experiment.ConfigError, match=r"config\.task\.name='gsm9k': unknown task"):
        experiment.check_task(c)
    c = llada8b.get_config("gsm8k,d1")  # hf_dir forgotten: not a random 8B with the tiny tokenizer
    with pytest.raises(experiment.ConfigError, match=r"config\.model\.hf_dir is empty.*mask token id 126336"):
        experiment.build_llm(c, None)


def test_joint_training_run_logs_checkpoints_and_exports(tiny_hf, tmp_path):
    from diffpo_jax.train import export_checkpoint, train

    c = small_config(tiny_hf, str(tmp_path / "run"), steps=2)
    c.rl.num_inner = 1
    c.train.export_hf = True
    c.sampler.kv_cache = "prefix"  # the approximate cache in rollouts (the resume tests run without)
    c.eval.kv_cache = "dual"
    result = train(c, progress=False)
    m = result.metrics
    for k in ("reward/mean", "rollout/nfe_mean", "rollout/gamma_mean", "train/loss", "train/mu_mean",
              "train/head_loss", "eval/accuracy", "eval/nfe_mean"):
        assert k in m and m[k] == m[k], k
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [1, 2]
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")
    assert os.listdir(tmp_path / "run" / "tb")
    assert os.path.isfile(tmp_path / "run" / "hf" / "config.json")
    assert os.path.isfile(tmp_path / "run" / "peft" / "adapter_model.safetensors")
    assert m["train/skipped"] == 0 and m["train/grad_norm"] == m["train/grad_norm"]
    head = load_threshold_head(str(tmp_path / "run" / "head"))  # the joint head, for use outside JAX
    for k in HEAD_PARAMS:
        np.testing.assert_array_equal(np.asarray(getattr(head, k)[...]), np.asarray(getattr(result.policy.head, k)[...]))

    # an intermediate checkpoint exports the same way (--export_step)
    dest = export_checkpoint(c, step=1)
    assert dest == str(tmp_path / "run" / "export-step1")
    exported = load_hf(os.path.join(dest, "hf"), param_dtype="float32")
    assert exported.cfg.n_layers == 2 and os.path.isfile(os.path.join(dest, "peft", "adapter_config.json"))
    assert os.path.isfile(os.path.join(dest, "head", "threshold_head.safetensors"))
    with pytest.raises(experiment.ConfigError, match=r"holds steps \[1, 2\]"):
        export_checkpoint(c, step=7)

    # resuming with a config whose parameters do not fit the checkpoint names the changed field
    c.model.lora_rank = 8
    c.train.steps = 3
    with pytest.raises(experiment.ConfigError, match=r"model\.lora_rank: 4 -> 8"):
        train(c, progress=False)


def test_cli_mistakes_give_one_line_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    cases = [(["--config", "configs/nope.py"], "--config: cannot load the config file: .*configs/nope.py"),
             ([], "--config is required"),
             (["--config", "configs/demo_sudoku.py", "--config.task.data_dir=/nope",
               f"--config.train.out_dir={tmp_path / 'run'}"], r"config error: /nope/sudoku_4x4_test.csv not found.*"
                                                              r"--config\.task\.data_dir")]
    for args, want in cases:
        r = subprocess.run([sys.executable, "-m", "diffpo_jax.train", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert re.search(want, r.stderr.strip().splitlines()[-1]), r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "diffpo_jax.train", "--config", "configs/llada8b.py:gsm8k,joint",
                        "--show_config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and '--config.rl.joint_sampler=true' in r.stdout.splitlines(), r.stdout[-2000:]


def test_inner_step_metrics_keep_maxima_and_minima():
    from diffpo_jax.train import _mean_metrics

    out = _mean_metrics([{"loss": 1.0, "is_weight_max": 2.0, "mu_min": 0.3},
                         {"loss": 3.0, "is_weight_max": 1.5, "mu_min": 0.1}])
    assert out == {"train/loss": 2.0, "train/is_weight_max": 2.0, "train/mu_min": 0.1}


@pytest.mark.parametrize("method,p_mask,scorings", [("exact", 0.15, 1), ("d1", 0.0, 1), ("d1", 0.15, 3),
                                                     ("2mf_is", 0.0, 3)])
def test_theta_old_is_scored_once_when_the_likelihood_ignores_the_key(method, p_mask, scorings):
    """train.update with μ = 3: θ_old's log-probs are rescored per inner key only for likelihoods
    that draw from the key (2-MF's τ, MF's prompt mask); exact's are computed once and reused."""
    import jax.numpy as jnp

    from diffpo_jax.rl import RLConfig
    from diffpo_jax.train import update

    calls, seen = [], []

    def score_fn(old, frozen, batch, rng):
        calls.append(rng)
        return {"old_logp": jnp.full((2, 3), float(len(calls)))}

    def step_fn(trainable, opt_state, frozen, inner, rng):
        seen.append(float(inner["old_logp"][0, 0]))
        return trainable, opt_state, {"loss": jnp.float32(0.0)}

    cfg = RLConfig(method=method, p_mask=p_mask, num_inner=3)
    update({"w": jnp.zeros(2)}, None, None, {"nfe": jnp.ones(2, jnp.int32)}, jax.random.key(0), cfg, step_fn, score_fn)
    assert len(calls) == scorings
    assert seen == ([1.0, 1.0, 1.0] if scorings == 1 else [1.0, 2.0, 3.0])


def test_metrics_log_resume_drops_later_and_torn_lines(tmp_path):
    from diffpo_jax.train import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n\n{"step": 3, "a": 3}\n{"step": 4, "a"')
    MetricsLog(str(tmp_path), resume_step=2, tensorboard=False).close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def _tb_events(tb_dir):
    """Every Event proto in the TFRecord event files of `tb_dir`, file by file in name order."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for name in sorted(os.listdir(tb_dir)):
        data = open(os.path.join(tb_dir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[pos + 12:pos + 12 + n])
            out.append(ev)
            pos += 12 + n + 4
    return out


def test_tensorboard_resume_purges_later_steps(tmp_path):
    from tensorboardX.proto import event_pb2

    from diffpo_jax.train import MetricsLog

    log = MetricsLog(str(tmp_path), resume_step=0)
    for step in (1, 2, 3, 4):
        log.write(step, {"loss": float(step)})
    log.close()
    MetricsLog(str(tmp_path), resume_step=2).close()
    starts = [ev.step for ev in _tb_events(tmp_path / "tb")
              if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START]
    assert starts == [3]  # TensorBoard drops the first run's events from step 3 on


def _train_cmd(c):
    return [sys.executable, "-m", "diffpo_jax.train", "--config", "configs/demo_sudoku.py:2mf_is", *_flags(c),
            "--config.train.eval_items=0"]


def _metrics(path):
    out = {}
    for line in open(path):
        d = json.loads(line)
        out[d["step"]] = {k: v for k, v in d.items() if not k.startswith("time/")}
    return out


def test_resume_after_sigkill_is_exact(tiny_hf, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}  # 8 fake devices (conftest): a sharded run
    full = small_config(tiny_hf, str(tmp_path / "full"), "2mf_is", steps=4)
    subprocess.run(_train_cmd(full), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    killed = small_config(tiny_hf, str(tmp_path / "killed"), "2mf_is", steps=4)
    proc = subprocess.Popen(_train_cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt2 = tmp_path / "killed" / "checkpoints" / "2"
    deadline = time.time() + 600
    while not ckpt2.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(d) for d in os.listdir(tmp_path / "killed" / "checkpoints") if d.isdigit())
    assert done and done[-1] < 4, f"the run finished before it could be killed: {done}"
    subprocess.run(_train_cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    a, b = _metrics(tmp_path / "full" / "metrics.jsonl"), _metrics(tmp_path / "killed" / "metrics.jsonl")
    assert sorted(b) == [1, 2, 3, 4]
    for step in range(done[-1] + 1, 5):
        diff = {k: (a[step][k], b[step].get(k)) for k in a[step] if a[step][k] != b[step].get(k)}
        assert not diff, f"step {step} differs after resume (uninterrupted, resumed): {diff}"
    assert jax.tree.leaves(a[4])  # not empty


def test_two_processes_train_and_checkpoint_like_one(tiny_hf, tmp_path):
    """2 real processes (CPU collectives, 2 devices each) train the joint method with per-process
    data shards, evaluate and checkpoint; 1 process with 4 devices and the same 2 data shards
    (= the same global batches) gives the same metrics."""
    from diffpo_jax import distributed as dist

    def cmd(out):
        c = small_config(tiny_hf, str(out), "joint", steps=2)
        return [sys.executable, "-m", "diffpo_jax.train", "--config", "configs/demo_sudoku.py:joint", *_flags(c),
                "--config.train.data_shards=2", "--config.train.eval_every=2", "--config.rl.num_inner=1"]

    env = {**os.environ, "PYTHONPATH": ROOT}
    results = dist.run_local(cmd(tmp_path / "multi"), num_processes=2, devices_per_process=2, timeout_s=600,
                             env=env, cwd=ROOT, log_dir=str(tmp_path / "logs"))
    assert all(r.returncode == 0 for r in results), dist.format_results(results)
    single_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run(cmd(tmp_path / "single"), cwd=ROOT, env=single_env, check=True, capture_output=True, timeout=600)

    multi, single = _metrics(tmp_path / "multi" / "metrics.jsonl"), _metrics(tmp_path / "single" / "metrics.jsonl")
    assert sorted(multi) == sorted(single) == [1, 2]
    for step in (1, 2):
        assert multi[step].keys() == single[step].keys()
        for k, v in single[step].items():
            assert multi[step][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (step, k)
    assert "eval/accuracy" in multi[2]
    state = tmp_path / "multi" / "checkpoints" / "2" / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()


def test_is_methods_warn_when_rollouts_change_the_forward():
    from diffpo_jax.rl import RLConfig
    from diffpo_jax.sampling import SamplerConfig
    cached = SamplerConfig(rule="eb", kv_cache="prefix")
    assert experiment.behaviour_logp_warnings(RLConfig(method="2mf"), cached) == []
    assert experiment.behaviour_logp_warnings(RLConfig(method="2mf_is"), SamplerConfig(rule="eb")) == []
    (w,) = experiment.behaviour_logp_warnings(RLConfig(method="2mf_is"), cached)
    assert w.startswith("config.sampler.kv_cache") and "w != 1" in w

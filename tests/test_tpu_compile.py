"""bench/tpu_compile.py: ahead-of-time compiles for a TPU topology from this CPU host.

With libtpu installed (the test extra installs jax[tpu] on x86-64 Linux) the TPU compiler
lowers the model's programs for a v5e slice without the chips: attention_impl='auto' must
resolve to the splash kernel there and the Mosaic kernel must be in every compiled program
(forward, sampler loop, joint train step with its backward). Without libtpu only the
mechanics run, on this host's CPU devices.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from bench import tpu_compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
COLUMNS = 12  # of the markdown table


def _rows(capsys) -> list:
    return _table_rows(capsys.readouterr().out)


def _table_rows(text: str) -> list:
    lines = [line for line in text.splitlines() if line.startswith("| ") and "topology" not in line]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert all(len(r) == COLUMNS for r in rows), rows
    return rows


def test_mechanics_on_cpu_devices(capsys, tmp_path):
    out = tmp_path / "tpu.md"
    tpu_compile.main(["--topology", "cpu:8", "--config", "tiny", "--train_rows", "2", "--group", "2",
                      "--prompt_len", "16", "--gen_length", "32", "--lora_rank", "4", "--out", str(out)])
    rows = _rows(capsys)
    assert [r[3] for r in rows] == ["forward", "sampler", "train_step"]
    assert all(r[2] == "1x8x1" and r[6] == "xla" and r[7] == "no" and r[-1] == "n/a" for r in rows), rows
    assert all(float(r[8]) > 0 for r in rows)
    text = out.read_text()
    assert text.startswith("# jax ") and "command: python -m bench.tpu_compile --topology cpu:8" in text
    assert text.count("\n| cpu:8 |") == 3


@pytest.mark.parametrize("accelerator, topology", [
    ("v4-8", "v4:2x2x1"), ("v4-32", "v4:2x2x4"), ("v4-128", "v4:4x4x4"), ("v5p-64", "v5p:2x4x4"),
    ("v5litepod-8", "v5e:2x4"), ("v5litepod-32", "v5e:4x8"), ("v5e-16", "v5e:4x4"), ("v6e-256", "v6e:16x16")])
def test_accelerator_types_map_to_topologies(accelerator, topology):
    assert tpu_compile.topology_for_accelerator(accelerator) == topology


def test_bad_arguments_name_the_fix(capsys):
    for bad in ("v4-6", "v5p-4", "tpu-8"):
        with pytest.raises(SystemExit, match=f"--accelerator {bad}: "):
            tpu_compile.topology_for_accelerator(bad)
    with pytest.raises(SystemExit, match=r"--topology cpu:64: only \d+ CPU devices"):
        tpu_compile.main(["--topology", "cpu:64", "--config", "tiny"])
    with pytest.raises(SystemExit):
        tpu_compile.main(["--workloads", "backward"])
    assert "unknown ['backward']" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_LIBTPU, reason="needs libtpu (pip install -e '.[tpu]')")
def test_splash_lowers_for_tpu_in_every_workload():
    # head_dim 128 (splash's unit): d_model 256 with 2 heads; a 2x2 v5e slice, FSDP over its 4 chips.
    # A subprocess: libtpu stays loaded (and holds its lockfile) for the life of the process that used it.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", "bench.tpu_compile", "--topology", "v5e:2x2", "--config", "tiny",
                           "--n_layers", "2", "--d_model", "256", "--n_heads", "2", "--train_rows", "2",
                           "--group", "2", "--prompt_len", "16", "--gen_length", "64", "--lora_rank", "4", "--joint"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table_rows(proc.stdout)
    assert [r[3] for r in rows] == ["forward", "sampler", "train_step"]
    for r in rows:
        assert r[1] == "TPU v5 lite" and r[2] == "1x4x1", r
        assert r[6] == "splash" and r[7] == "yes", r  # auto -> splash; the Mosaic kernel is in the program
        assert r[-1] == "yes" and 0 < float(r[8]) < 16, r


@pytest.mark.skipif(not HAVE_LIBTPU, reason="needs libtpu (pip install -e '.[tpu]')")
def test_dream_shapes_lower_for_tpu():
    # A scaled-down Dream-7B: head_dim 128 with GQA (4 query / 2 kv heads), q/k/v biases, shifted logits,
    # Dream's sampler rule over one block of the whole completion (configs/dream7b.py); v5e 2x2 with tp = 2
    # (a kv head per tp shard).
    # The full Dream-7B compile is the bench command of docs/benchmarks.md (minutes on a CPU host).
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", "bench.tpu_compile", "--topology", "v5e:2x2", "--config", "dream_tiny",
                           "--mesh", "1,2,2", "--n_layers", "2", "--d_model", "512", "--n_heads", "4", "--n_kv_heads",
                           "2", "--workloads", "sampler,train_step", "--train_rows", "2", "--group", "2",
                           "--prompt_len", "16", "--gen_length", "64", "--block_length", "64", "--sampler_rule",
                           "dream", "--lora_rank", "4", "--joint"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table_rows(proc.stdout)
    assert [r[3] for r in rows] == ["sampler", "train_step"] and "dream, blocks of 64" in rows[0][4]
    for r in rows:
        assert r[1] == "TPU v5 lite" and r[2] == "1x2x2", r
        assert r[6] == "splash" and r[7] == "yes", r
        assert r[-1] == "yes" and 0 < float(r[8]) < 16, r

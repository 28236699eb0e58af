"""Smoke test of the benchmark runner (no speed asserted): the likelihood and train-step
benchmarks run end to end on the tiny config, agree with the torch reference, print ratios;
the 8B config is refused on CPU."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_run_likelihood_and_train_step_print_ratios(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one CPU device, as a user's run
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--only", "likelihood,train_step", "--config", "tiny",
                           "--quick", "--torch_threads", "1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for label in ("jax / torch tokens/s, mf", "jax / torch tokens/s, 2mf", "jax / torch steps/s"):
        assert re.search(rf"ratio {re.escape(label)}: \d+\.\d\dx", text), text
    assert "n/a (CPU)" in text
    res = json.loads(out.read_text())
    assert [r["bench"] for r in res["results"]] == ["likelihood", "train_step"]
    # the two implementations computed the same thing before they were timed
    diffs = [float(x) for x in re.findall(r"max \|logp_jax - logp_torch\| = (\S+)", text)]
    assert len(diffs) == 2 and max(diffs) < 1e-4, diffs
    m = re.search(r"initial loss jax (\S+) / torch (\S+); grad norm jax (\S+) / torch (\S+)", text)
    assert m, text
    loss_j, loss_t, gn_j, gn_t = map(float, m.groups())
    assert loss_j == pytest.approx(loss_t, abs=1e-4) and gn_j == pytest.approx(gn_t, rel=1e-3)


def test_bench_run_refuses_llada8b_on_cpu():
    from bench import run
    with pytest.raises(SystemExit, match="needs a GPU or TPU"):
        run.main(["--config", "llada8b", "--only", "forward"])


def test_kv_cache_demo_bench_on_the_shipped_model():
    """bench/kv_cache_demo.py on a few real puzzles: the uncached rows are the reference
    (agreement 1, replay Δ at the float floor), the cached ones are scored the same way."""
    from bench import kv_cache_demo
    res = kv_cache_demo.run(kv_cache_demo.parse_args(["--n", "8", "--batch", "8", "--iters", "1",
                                                      "--block_lengths", "8", "--gammas", "1"]))
    rows = {r[1]: r for r in res["rows"]}
    assert set(rows) == {"none", "prefix", "dual"}
    cols = res["columns"]
    none = dict(zip(cols, rows["none"]))
    assert none["token agreement"] == "1.000" and float(none["max abs Δ logp"]) < 1e-4
    for mode in ("prefix", "dual"):
        r = dict(zip(cols, rows[mode]))
        assert 0.0 <= float(r["cell acc. %"]) <= 100.0 and 0.0 <= float(r["token agreement"]) <= 1.0
        assert 1.0 <= float(r["mean NFE"]) <= 24.0


def test_bench_help_lists_attention_impl():
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--attention_impl" in proc.stdout

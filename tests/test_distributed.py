"""Multi-host start-up: environment parsing, and a real 2-process CPU cluster on localhost.

The cluster test starts 2 processes (2 fake CPU devices each) through
`python -m diffpo_jax.distributed WORKER`, builds one mesh over the 4 global devices, puts a
[16, 3] batch on it from per-process halves (`jax.make_array_from_process_local_data`) and
checks a jitted all-reduce against the single-process result computed here.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from diffpo_jax import distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import json
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from diffpo_jax import distributed as dist, sharding as shd

    assert dist.maybe_initialize() is True          # already done by the wrapper: idempotent
    pid, n = jax.process_index(), jax.process_count()
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)     # all 4 global devices
    batch = np.arange(16 * 3, dtype=np.float32).reshape(16, 3) ** 1.5
    rows = 16 // n
    local = batch[pid * rows:(pid + 1) * rows]       # this process's data shard only
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P(("data", "fsdp"))), local, (16, 3))
    out = jax.jit(lambda a: (a.sum(0), (a * a).mean()), out_shardings=NamedSharding(mesh, P()))(x)
    s, m = (np.asarray(jax.device_get(o)) for o in out)
    print("RESULT " + json.dumps(dict(pid=pid, n=n, devices=jax.device_count(), local=jax.local_device_count(),
                                      primary=dist.is_primary(), info=dist.process_info(),
                                      sum=s.tolist(), mean_sq=float(m))), flush=True)
''')


def test_two_processes_allreduce_matches_single_process(tmp_path):
    (tmp_path / "allreduce_worker.py").write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    t0 = time.monotonic()
    results = dist.run_local([sys.executable, "-m", "diffpo_jax.distributed", "allreduce_worker"],
                             num_processes=2, devices_per_process=2, timeout_s=45, env=env, cwd=ROOT,
                             log_dir=str(tmp_path / "logs"))
    assert all(r.returncode == 0 for r in results), dist.format_results(results)
    assert time.monotonic() - t0 < 50
    batch = np.arange(16 * 3, dtype=np.float32).reshape(16, 3) ** 1.5
    for r in results:
        line = [ln for ln in r.output.splitlines() if ln.startswith("RESULT ")]
        assert line, dist.format_results([r])
        got = json.loads(line[-1][len("RESULT "):])
        assert (got["pid"], got["n"], got["devices"], got["local"]) == (r.process_id, 2, 4, 2)
        assert got["primary"] == (r.process_id == 0)
        assert got["info"].startswith(f"process {r.process_id}/2 on ") and "2 local of 4 devices (cpu)" in got["info"]
        np.testing.assert_allclose(got["sum"], batch.sum(0), rtol=1e-6)
        np.testing.assert_allclose(got["mean_sq"], (batch * batch).mean(), rtol=1e-6)
        assert "[diffpo_jax.distributed] process" in r.output  # the wrapper's log line


CKPT_WORKER = textwrap.dedent('''
    import json, os, sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from diffpo_jax import distributed as dist, sharding as shd
    from diffpo_jax.checkpointing import Checkpointer

    dist.maybe_initialize()
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    full = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    w = jax.make_array_from_callback(full.shape, NamedSharding(mesh, P("fsdp", None)), lambda i: full[i])
    # a host-local key and step counter: orbax refuses them in multi-host runs until replicated
    state = {"w": w, **dist.replicate({"key": jax.random.key(7), "count": np.int32(5)}, mesh)}
    ck = Checkpointer(sys.argv[1], max_to_keep=2)
    ck.save(3, state, {"step": 3})
    ck.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    step, got, meta = ck.restore(abstract)
    ck.close()
    print("RESULT " + json.dumps(dict(
        step=step, meta=meta,
        w_ok=all(np.array_equal(np.asarray(s.data), full[s.index]) for s in got["w"].addressable_shards),
        w_spec=list(got["w"].sharding.spec),
        key_ok=bool((jax.random.key_data(got["key"]) == jax.random.key_data(jax.random.key(7))).all()),
        count=int(got["count"]))), flush=True)
''')


def test_two_processes_checkpoint_save_restore(tmp_path):
    """Orbax save + restore from both processes into one directory (each writes its shards)."""
    (tmp_path / "ckpt_worker.py").write_text(CKPT_WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    out = tmp_path / "ckpt"
    results = dist.run_local([sys.executable, "-m", "diffpo_jax.distributed", "ckpt_worker", str(out)],
                             num_processes=2, timeout_s=45, env=env, cwd=ROOT, log_dir=str(tmp_path / "logs"))
    assert all(r.returncode == 0 for r in results), dist.format_results(results)
    for r in results:
        got = json.loads([ln for ln in r.output.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
        assert got == dict(step=3, meta={"step": 3}, w_ok=True, w_spec=["fsdp", None], key_ok=True,
                           count=5), got
    assert (out / "3" / "state" / "ocdbt.process_0").is_dir() and (out / "3" / "state" / "ocdbt.process_1").is_dir()


def test_replicate_single_process():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from diffpo_jax import sharding as shd

    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    sharded = jax.device_put(np.ones((8, 2), np.float32), NamedSharding(mesh, P("fsdp")))
    out = dist.replicate({"s": sharded, "n": np.float32(2.5), "k": jax.random.key(3), "a": jax.numpy.arange(3)},
                         mesh)
    assert out["s"] is sharded
    for name in ("n", "k", "a"):
        assert out[name].sharding.device_set == set(mesh.devices.flat) and out[name].sharding.is_fully_replicated
    assert float(out["n"]) == 2.5 and out["a"].tolist() == [0, 1, 2]
    assert (jax.random.key_data(out["k"]) == jax.random.key_data(jax.random.key(3))).all()


def test_host_tree_single_process():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from diffpo_jax import sharding as shd

    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    sharded = jax.device_put(np.arange(16, dtype=np.float32).reshape(8, 2), NamedSharding(mesh, P("fsdp")))
    out = dist.host_tree([{"loss": jax.numpy.float32(1.5), "rows": sharded}, {"loss": np.float32(2.0), "rows": sharded}])
    assert isinstance(out[0]["rows"], np.ndarray) and out[0]["rows"].tolist() == np.arange(16).reshape(8, 2).tolist()
    assert [float(m["loss"]) for m in out] == [1.5, 2.0]


def test_run_local_kills_peers_when_one_fails(tmp_path):
    code = "import os, sys, time\nif os.environ['DIFFPO_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(60)"
    t0 = time.monotonic()
    results = dist.run_local([sys.executable, "-c", code], num_processes=2, timeout_s=30, log_dir=str(tmp_path))
    assert time.monotonic() - t0 < 15
    assert results[1].returncode == 3 and not results[1].killed
    assert results[0].killed and results[0].returncode is None
    assert "process 0: killed" in dist.format_results(results)


def test_local_cluster_env_replaces_device_count():
    env = dist.local_cluster_env(1, 2, 1234, devices_per_process=3,
                                 base={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo=1"})
    assert env["XLA_FLAGS"] == "--foo=1 --xla_force_host_platform_device_count=3"
    assert env["DIFFPO_COORDINATOR"] == "127.0.0.1:1234" and env["DIFFPO_PROCESS_ID"] == "1"
    assert dist.cluster_from_env(env) == dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
                                              initialization_timeout=60)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"DIFFPO_DISTRIBUTED": "0", "DIFFPO_COORDINATOR": "h:1"}, None),      # 0 wins over everything
    ({"TPU_WORKER_HOSTNAMES": "only-one"}, None),                           # single-host TPU VM
    ({"DIFFPO_DISTRIBUTED": "1"}, {"initialization_timeout": 300}),         # TPU pod: JAX detects it
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, {"initialization_timeout": 300}),
    ({"DIFFPO_COORDINATOR": "10.0.0.2:8476", "DIFFPO_NUM_PROCESSES": "4", "DIFFPO_PROCESS_ID": "3",
      "DIFFPO_INIT_TIMEOUT": "20"},
     dict(coordinator_address="10.0.0.2:8476", num_processes=4, process_id=3, initialization_timeout=20)),
])
def test_cluster_from_env(env, expected):
    assert dist.cluster_from_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"DIFFPO_COORDINATOR": "h:1", "DIFFPO_NUM_PROCESSES": "2"}, "DIFFPO_PROCESS_ID missing"),
    ({"DIFFPO_COORDINATOR": "h", "DIFFPO_NUM_PROCESSES": "2", "DIFFPO_PROCESS_ID": "0"}, "expected HOST:PORT"),
    ({"DIFFPO_COORDINATOR": "h:1", "DIFFPO_NUM_PROCESSES": "two", "DIFFPO_PROCESS_ID": "0"}, "not an integer"),
    ({"DIFFPO_COORDINATOR": "h:1", "DIFFPO_NUM_PROCESSES": "2", "DIFFPO_PROCESS_ID": "2"}, "must be < "),
    ({"DIFFPO_DISTRIBUTED": "maybe"}, "use 1 (multi-host) or 0"),
    ({"DIFFPO_DISTRIBUTED": "1", "DIFFPO_INIT_TIMEOUT": "0"}, "DIFFPO_INIT_TIMEOUT=0 must be >= 1"),
])
def test_cluster_from_env_errors(env, message):
    with pytest.raises(dist.DistributedConfigError) as e:
        dist.cluster_from_env(env)
    assert message in str(e.value)


def test_single_host_is_a_noop():
    assert dist.maybe_initialize({}) is False
    assert dist.maybe_initialize({"DIFFPO_DISTRIBUTED": "0"}) is False
    assert dist.is_primary()  # single process is process 0


def _run(code_or_module, env_extra, timeout=30):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **env_extra)
    env.pop("DIFFPO_COORDINATOR", None)
    return subprocess.run([sys.executable, *code_or_module], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_flag_without_cluster_gives_clear_error():
    r = _run(["-m", "diffpo_jax.distributed", "json.tool", os.devnull], {"DIFFPO_DISTRIBUTED": "1"})
    assert r.returncode == 2, r.stderr
    assert "JAX found no cluster" in r.stderr and "Traceback" not in r.stderr


def test_initialize_after_device_use_gives_clear_error():
    code = ("import jax; jax.devices()\nfrom diffpo_jax import distributed as d\n"
            "d.maybe_initialize({'DIFFPO_COORDINATOR': '127.0.0.1:1', 'DIFFPO_NUM_PROCESSES': '1', "
            "'DIFFPO_PROCESS_ID': '0'})")
    r = _run(["-c", code], {})
    assert r.returncode != 0
    assert "must run before any JAX device use" in r.stderr


EVAL_WORKER = textwrap.dedent('''
    import json
    import jax
    import numpy as np
    from transformers import AutoTokenizer
    from configs import demo_sudoku
    from diffpo_jax import distributed as dist, evaluate, tasks
    from diffpo_jax.convert.hf_import import load_hf
    from diffpo_jax.sampling import SamplerConfig

    dist.maybe_initialize()
    llm = load_hf(demo_sudoku.DEMO_MODEL, param_dtype="float32", compute_dtype="float32")
    tok = AutoTokenizer.from_pretrained(demo_sudoku.DEMO_MODEL, local_files_only=True, trust_remote_code=False)
    items = tasks.load_eval_items("sudoku", n=5)
    ids = evaluate.encode_prompts("sudoku", items, tok, 0,
                                  lambda it: tasks.format_prompt("sudoku", it, tok, "eval", False, "compact"))
    calls, make = [], evaluate.make_sampler
    def counting(*a, **k):
        sampler = make(*a, **k)
        return lambda *aa, **kk: calls.append(1) or sampler(*aa, **kk)
    evaluate.make_sampler = counting
    gamma_fn = lambda p, m: (0.05 + 0.2 * (np.asarray(p).astype(np.int64).sum(1) % 7)).astype(np.float32)
    records, summary = evaluate.run_eval(llm, tok, "sudoku", items, SamplerConfig(rule="eb", gen_length=24,
                                         block_length=24), batch_size=2, gamma_fn=gamma_fn, key=jax.random.key(5),
                                         prompt_ids=ids, progress=False)
    print("RESULT " + json.dumps(dict(calls=len(calls), records=records, summary=summary)), flush=True)
''')


def test_two_processes_split_evaluation_batches(tmp_path):
    """evaluate.run_eval without a mesh on 2 processes: process 0 decodes batches 0 and 2, process 1
    batch 1 (5 items, 2 per batch), and both return exactly the single-process records."""
    (tmp_path / "eval_worker.py").write_text(EVAL_WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    results = dist.run_local([sys.executable, "-m", "diffpo_jax.distributed", "eval_worker"], num_processes=2,
                             timeout_s=120, env=env, cwd=ROOT, log_dir=str(tmp_path / "logs"))
    assert all(r.returncode == 0 for r in results), dist.format_results(results)
    single = subprocess.run([sys.executable, "-m", "eval_worker"], env=dict(env, DIFFPO_DISTRIBUTED="0"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-4000:]
    want = json.loads([ln for ln in single.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    assert want["calls"] == 3 and len(want["records"]) == 5
    for r in results:
        got = json.loads([ln for ln in r.output.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
        assert got["calls"] == (2 if r.process_id == 0 else 1)
        assert json.dumps(got["records"]) == json.dumps(want["records"]) and got["summary"] == want["summary"]

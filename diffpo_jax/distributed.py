"""Multi-host start-up: call `maybe_initialize()` first thing in every entry point's `main()`.

JAX runs one process per host; `jax.distributed.initialize()` connects them before any
device is touched. Whether this run is one of several processes is read from the
environment, checked in this order:

| environment                                              | action                           |
|----------------------------------------------------------|----------------------------------|
| `DIFFPO_DISTRIBUTED=0`                                   | single process, nothing else read |
| `DIFFPO_COORDINATOR=host:port`, `DIFFPO_NUM_PROCESSES=n`,| `initialize(host:port, n, i)`:   |
| `DIFFPO_PROCESS_ID=i` (all three)                        | CPU / GPU clusters you start     |
| `DIFFPO_DISTRIBUTED=1` (set by `launch/tpu_pod.sh`)      | `initialize()`: JAX finds the    |
|                                                          | cluster (Cloud TPU metadata,     |
|                                                          | SLURM, Open MPI, GKE)            |
| `TPU_WORKER_HOSTNAMES` listing more than one host        | `initialize()` (GKE TPU pods)    |
| none of these                                            | single host: nothing to do       |

`DIFFPO_INIT_TIMEOUT` (seconds, default 300) bounds the wait for the other processes.

After initialisation every process runs the same program on its own addressable shards;
`is_primary()` is for logging only: data loading, checkpoint saves (orbax) and evaluation
run on all processes alike (`evaluate.run_eval` without a mesh decodes only this process's
share of the batches and gathers the rest with `process_stack`). `replicate(tree, mesh)` turns host-local values (RNG keys,
numpy scalars) into global replicated arrays, which multi-host orbax saves require.

`run_local(argv, num_processes)` starts a small CPU cluster on this machine (each process
with its own fake CPU devices, one log file each) for tests and for trying multi-host code
without a pod; `python -m diffpo_jax.distributed --local 2 MODULE ARGS...` does the same
from the shell, and `python -m diffpo_jax.distributed MODULE ARGS...` runs any module
(e.g. `diffpo_jax.convert`) after `maybe_initialize()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import runpy
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffpo_jax.sharding import batch_sharding

ENV_FLAG = "DIFFPO_DISTRIBUTED"
ENV_COORDINATOR = "DIFFPO_COORDINATOR"
ENV_NUM_PROCESSES = "DIFFPO_NUM_PROCESSES"
ENV_PROCESS_ID = "DIFFPO_PROCESS_ID"
ENV_TIMEOUT = "DIFFPO_INIT_TIMEOUT"
_EXPLICIT = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


class DistributedConfigError(ValueError):
    """The environment describes a multi-host run that cannot be set up; the message says why."""


def _int_env(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise DistributedConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise DistributedConfigError(f"{name}={value} must be >= {minimum}")
    return value


def cluster_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """Keyword arguments for `jax.distributed.initialize` from the environment (table above).

    Returns None for a single-process run, `{}` when JAX should detect the cluster itself,
    or `{coordinator_address, num_processes, process_id}` for an explicit cluster; every
    result other than None also carries `initialization_timeout`.
    Raises DistributedConfigError for a partial or invalid explicit cluster.
    """
    env = os.environ if env is None else env
    flag = env.get(ENV_FLAG, "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return None
    if flag not in ("", "1", "true", "yes", "on"):
        raise DistributedConfigError(f"{ENV_FLAG}={env[ENV_FLAG]!r}: use 1 (multi-host) or 0 (single process)")
    timeout = _int_env(env, ENV_TIMEOUT, 1) if env.get(ENV_TIMEOUT) else 300
    given = [k for k in _EXPLICIT if env.get(k)]
    if given:
        if len(given) != len(_EXPLICIT):
            missing = ", ".join(k for k in _EXPLICIT if k not in given)
            raise DistributedConfigError(f"{', '.join(given)} set but {missing} missing: an explicit cluster needs "
                                         f"all of {', '.join(_EXPLICIT)} (or unset them on a single host)")
        address = env[ENV_COORDINATOR].strip()
        if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", address):
            raise DistributedConfigError(f"{ENV_COORDINATOR}={address!r}: expected HOST:PORT of process 0, "
                                         f"e.g. 10.0.0.2:8476")
        num = _int_env(env, ENV_NUM_PROCESSES, 1)
        pid = _int_env(env, ENV_PROCESS_ID, 0)
        if pid >= num:
            raise DistributedConfigError(f"{ENV_PROCESS_ID}={pid} must be < {ENV_NUM_PROCESSES}={num}")
        return dict(coordinator_address=address, num_processes=num, process_id=pid, initialization_timeout=timeout)
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if flag or len(hosts) > 1:
        return dict(initialization_timeout=timeout)
    return None


def maybe_initialize(env: Optional[Mapping[str, str]] = None) -> bool:
    """Connect this process to the others if the environment says multi-host (see module doc).

    Idempotent: later calls return at once. Must run before anything touches a JAX device
    (`jax.devices()`, any computation). Returns True when running as one of several
    processes under `jax.distributed`, False on a single host.
    """
    if jax.distributed.is_initialized():
        return True
    kwargs = cluster_from_env(env)
    if kwargs is None:
        return False
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise RuntimeError("diffpo_jax.distributed.maybe_initialize() must run before any JAX device use "
                               "(jax.devices(), building a mesh or model): call it first in main()") from e
        raise
    except ValueError as e:
        if kwargs.keys() == {"initialization_timeout"}:
            raise DistributedConfigError(
                f"multi-host start requested ({ENV_FLAG}=1 or TPU_WORKER_HOSTNAMES) but JAX found no cluster "
                f"({e}). On a Cloud TPU pod run this on every worker (launch/tpu_pod.sh train); elsewhere set "
                f"{', '.join(_EXPLICIT)}, or set {ENV_FLAG}=0 for one host.") from e
        raise
    return True


def is_primary() -> bool:
    """True on process 0. For printing and logging only, never for deciding what to compute
    or save: every process must run the same jitted programs and orbax saves."""
    return jax.process_index() == 0


def process_info() -> str:
    """One line for logs: `process 0/2 on host-a: 2 local of 4 devices (cpu)`."""
    return (f"process {jax.process_index()}/{jax.process_count()} on {socket.gethostname()}: "
            f"{jax.local_device_count()} local of {jax.device_count()} devices ({jax.default_backend()})")


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host-local leaves (numpy arrays, scalars, single-device or other-mesh jax arrays,
    typed PRNG keys) -> jax arrays replicated over every device of `mesh`; arrays already
    spread over all of `mesh`'s devices pass through unchanged.

    Multi-host checkpoints need this: orbax refuses host-local arrays (e.g. an RNG key made
    with `jax.random.key(0)` outside jit). Every process must pass the same values.
    """
    sharding = NamedSharding(mesh, P())
    devices = set(mesh.devices.flat)

    def put(x):
        if isinstance(x, jax.Array):
            if x.sharding.device_set == devices:
                return x
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
            x = jax.device_get(x)
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)


def global_batch(local: np.ndarray, mesh: Optional[jax.sharding.Mesh]) -> jax.Array:
    """This process's rows `[B_local, ...]` -> the global batch `[B_local · n_processes, ...]`
    sharded over ('data', 'fsdp'); process i's rows come i-th. One process: `jnp.asarray`
    (placed on the mesh's batch sharding when a mesh is given)."""
    local = np.asarray(local)
    if mesh is None:
        return jax.numpy.asarray(local)
    sharding = batch_sharding(mesh, local.ndim)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)


def from_host(x: np.ndarray, mesh: Optional[jax.sharding.Mesh]) -> jax.Array:
    """A host array that every process holds identically `[B, ...]` -> a global array sharded
    over ('data', 'fsdp') (each process places only its own shards). No mesh: `jnp.asarray`."""
    x = np.asarray(x)
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim), lambda index: x[index])


def local_rows(x: jax.Array, mesh: Optional[jax.sharding.Mesh]) -> np.ndarray:
    """Inverse of `global_batch`: this process's rows of a batch-sharded global array, as numpy."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils
    spec = batch_sharding(mesh, x.ndim).spec
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def host_value(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on every process (all-gather if needed)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_stack(tree):
    """Every process's value of a pytree of host (numpy) arrays, stacked in process order on a
    new leading axis: leaves `[...]` -> `[n_processes, ...]`. Shapes and dtypes must agree
    across processes, and every process must call it (a collective). One process: `x[None]`."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x)[None], tree)
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=False))


def host_tree(tree):
    """`host_value` of every leaf of a pytree; one batched device-to-host transfer (a single
    sync) when every leaf is fully addressable, per-leaf gathers otherwise."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return jax.tree.map(host_value, tree)


# ---------------------------------------------------------------- local CPU clusters

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cluster_env(process_id: int, num_processes: int, port: int, devices_per_process: int = 2,
                      init_timeout_s: int = 60, base: Optional[Mapping[str, str]] = None) -> dict:
    """Environment for member `process_id` of a CPU cluster on this machine: the explicit
    `DIFFPO_*` cluster variables, `JAX_PLATFORMS=cpu` and `devices_per_process` fake CPU
    devices (any `--xla_force_host_platform_device_count` in `base`'s XLA_FLAGS is replaced)."""
    env = dict(os.environ if base is None else base)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).split()
    env.update({
        "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]),
        "JAX_PLATFORMS": "cpu",
        ENV_FLAG: "1",
        ENV_COORDINATOR: f"127.0.0.1:{port}",
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
        ENV_TIMEOUT: str(init_timeout_s),
    })
    return env


@dataclasses.dataclass
class LocalResult:
    """One process of a `run_local` cluster: exit code (None if killed at the time limit),
    whether it was killed, its log file (stdout + stderr) and the log's text."""

    process_id: int
    returncode: Optional[int]
    killed: bool
    log_path: str
    output: str


def run_local(argv: Sequence[str], num_processes: int = 2, devices_per_process: int = 2, timeout_s: float = 60.0,
              log_dir: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
              cwd: Optional[str] = None) -> list[LocalResult]:
    """Run `argv` as `num_processes` cooperating processes on this machine (CPU) and wait.

    Each process gets `local_cluster_env(i, ...)` and writes stdout+stderr to
    `log_dir/process_{i}.log` (a new temporary directory by default). As soon as one process
    fails, or `timeout_s` passes, the others are killed (a process waiting in a collective
    for a dead peer would otherwise hang). Results are in process order.
    """
    log_dir = log_dir or tempfile.mkdtemp(prefix="diffpo_local_")
    os.makedirs(log_dir, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    try:
        for i in range(num_processes):
            path = os.path.join(log_dir, f"process_{i}.log")
            logs.append(open(path, "wb"))
            child_env = local_cluster_env(i, num_processes, port, devices_per_process,
                                          init_timeout_s=max(1, int(timeout_s)), base=env)
            procs.append(subprocess.Popen(list(argv), env=child_env, cwd=cwd, stdout=logs[-1],
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout_s
        killed = [False] * num_processes
        while any(p.poll() is None for p in procs):
            failed = any(p.poll() not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()
                        killed[i] = True
                break
            time.sleep(0.05)
        for p in procs:
            p.wait()
    finally:
        for p in procs:  # only on an exception above (e.g. KeyboardInterrupt): never leave strays
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    out = []
    for i, p in enumerate(procs):
        path = os.path.join(log_dir, f"process_{i}.log")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        out.append(LocalResult(i, None if killed[i] else p.returncode, killed[i], path, text))
    return out


def format_results(results: Sequence[LocalResult], tail_chars: int = 4000) -> str:
    """The end of every process's log, labelled, for error messages."""
    parts = []
    for r in results:
        state = "killed (time limit or a peer failed)" if r.killed else f"exit {r.returncode}"
        parts.append(f"--- process {r.process_id}: {state}, log {r.log_path}\n{r.output[-tail_chars:]}")
    return "\n".join(parts)


# ---------------------------------------------------------------- command line

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m diffpo_jax.distributed",
        description="Run a Python module after maybe_initialize() (multi-host from the environment), "
                    "or as a local CPU cluster with --local N.")
    p.add_argument("--local", type=int, default=0, metavar="N", help="start N local CPU processes (testing)")
    p.add_argument("--devices_per_process", type=int, default=2, help="fake CPU devices per local process")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before local processes are killed")
    p.add_argument("--log_dir", default=None, help="where local processes write process_{i}.log")
    p.add_argument("module", help="module to run as __main__, e.g. diffpo_jax.convert")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the module")
    a = p.parse_args(argv)
    if a.local:
        cmd = [sys.executable, "-m", "diffpo_jax.distributed", a.module, *a.args]
        results = run_local(cmd, a.local, a.devices_per_process, a.timeout, a.log_dir)
        print(format_results(results))
        return 0 if all(r.returncode == 0 for r in results) else 1
    try:
        maybe_initialize()
    except DistributedConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[diffpo_jax.distributed] {process_info()}", file=sys.stderr, flush=True)
    sys.argv = [a.module, *a.args]
    runpy.run_module(a.module, run_name="__main__", alter_sys=True)  # its SystemExit propagates as is
    return 0


if __name__ == "__main__":
    sys.exit(main())

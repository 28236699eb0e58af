"""The Colab notebooks in notebooks/: each runs top to bottom (small setting) and is committed stripped.

Execution uses nbclient + ipykernel (the `test` extra) in a child process with its own environment:
DIFFPO_NOTEBOOK_SMALL=1 (tiny sizes), 2 fake CPU devices instead of conftest's 8 (the mesh code still
shards), output files under a temporary directory. No network: the notebooks install nothing outside Colab.
"""
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NB_DIR, "*.ipynb")))
NAMES = [os.path.basename(p) for p in NOTEBOOKS]

RUNNER = r"""
import sys
try:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
except ImportError as e:
    sys.exit(f"notebook tests need nbclient, nbformat and ipykernel: pip install -e '.[test]' ({e})")
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, timeout=int(sys.argv[2]), kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[3]}})
try:
    client.execute()
except CellExecutionError as e:
    sys.exit(f"{path} failed:\n{e}")
for cell in nb.cells:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            sys.stdout.write(out["text"])
"""


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A JAX compilation cache shared by the notebook runs: run_eval builds a new sampler per γ, and
    identical programs (γ is an array input) then compile once."""
    return tmp_path_factory.mktemp("jax_cache")


def _env(tmp_path, jax_cache) -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    # tiny models: compiling dominates, so XLA's CPU backend optimisations are switched off (~1/3 faster)
    flags += " --xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    env.update(DIFFPO_NOTEBOOK_SMALL="1", DIFFPO_NOTEBOOK_OUT=str(tmp_path), JAX_PLATFORMS="cpu",
               XLA_FLAGS=flags.strip(),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p]),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter_runtime"), IPYTHONDIR=str(tmp_path / "ipython"),
               MPLBACKEND="Agg", TQDM_DISABLE="1", JAX_COMPILATION_CACHE_DIR=str(jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def test_three_notebooks_present():
    assert NAMES == ["01_quickstart.ipynb", "02_surrogate_kl.ipynb", "03_eb_gamma_sweep.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_committed_stripped_with_colab_setup_and_parameters(path):
    sys.path.insert(0, NB_DIR)
    try:
        import strip
    finally:
        sys.path.remove(NB_DIR)
    assert not strip.needs_strip(path), f"{path} holds outputs: run `python notebooks/strip.py` before committing"
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    first = "".join(code[0]["source"])
    assert 'if "google.colab" in sys.modules:' in first and "!pip install" in first
    assert "jax.default_backend()" in first and "jax.device_count()" in first
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and 'os.environ.get("DIFFPO_NOTEBOOK_SMALL") == "1"' in "".join(params[0]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_runs_top_to_bottom(path, tmp_path, jax_cache):
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", RUNNER, path, "300", NB_DIR], env=_env(tmp_path, jax_cache), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{os.path.basename(path)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    print(f"{os.path.basename(path)}: {time.time() - start:.1f} s")
    if "quickstart" in path:
        for rule in ("fixed", "topk", "threshold", "eb", "adaptive"):
            assert re.search(rf"{rule}: NFE per row \[", proc.stdout), rule
        assert "weights round-trip exactly: True" in proc.stdout
        assert re.search(r"grad_norm\s+\d", proc.stdout) and "skipped  0.0" in proc.stdout
    if "surrogate" in path:
        assert (tmp_path / "surrogate_kl.png").stat().st_size > 10_000
    if "gamma_sweep" in path:
        assert (tmp_path / "countdown_pareto.png").stat().st_size > 10_000
        assert "adaptive: γ per prompt" in proc.stdout

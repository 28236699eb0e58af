"""Run outputs in a bucket: gs:// paths stay URIs and the small files and exports go through epath.

A fake gs:// filesystem (fsspec's in-memory one registered for the gs/gcs protocols) stands in
for GCS; orbax's own bucket writes (tensorstore, google-cloud-storage) are not exercised here.
"""

import json
import os

import fsspec
import ml_collections
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from diffpo_jax import storage


class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes finalize_on_close
        super().__init__(*args, **kwargs)


@pytest.fixture
def gcs():
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    for proto in FakeGCS.protocol:
        fsspec.register_implementation(proto, FakeGCS, clobber=True)
    yield FakeGCS
    FakeGCS.store.clear()


def test_uri_stays_a_uri():
    assert storage.absolute("gs://bucket/runs/x") == "gs://bucket/runs/x"
    assert storage.absolute("runs/x") == os.path.abspath("runs/x")
    assert storage.is_uri("s3://b/x") and not storage.is_uri("/tmp/x")


def test_metrics_log_and_config_on_a_bucket(gcs):
    from diffpo_jax.train import MetricsLog, config_changes

    out = "gs://bucket/runs/x"
    log = MetricsLog(out, tensorboard=False)
    for step in (1, 2, 3):
        log.write(step, {"loss": float(step)})
    log.close()
    MetricsLog(out, resume_step=2, tensorboard=False).write(3, {"loss": 30.0})
    lines = storage.read_text(f"{out}/metrics.jsonl").splitlines()
    assert [json.loads(ln)["loss"] for ln in lines] == [1.0, 2.0, 30.0]

    config = ml_collections.ConfigDict({"seed": 1, "model": {"lora_rank": 4}})
    storage.write_text(f"{out}/config.json", config.to_json_best_effort())
    config.model.lora_rank = 8
    assert config_changes(out, config) == ["model.lora_rank: 4 -> 8"]


def test_export_to_a_bucket_uploads_a_local_build(gcs, tmp_path, monkeypatch):
    import types

    from flax import nnx

    from diffpo_jax.models import llada
    from diffpo_jax.train import _export

    monkeypatch.setattr(storage.tempfile, "tempdir", str(tmp_path))  # the local build goes here
    model = llada.LLaDA(llada.tiny(lora_rank=4), rngs=nnx.Rngs(0))
    config = ml_collections.ConfigDict({"model": {"hf_dir": ""}})
    _export(types.SimpleNamespace(llm=model, head=None), config, "gs://bucket/runs/x")
    names = sorted(k.split("bucket/runs/x/", 1)[-1] for k in gcs.store)
    assert "hf/config.json" in names and "peft/adapter_config.json" in names, names
    assert any(n.startswith("hf/model") and n.endswith(".safetensors") for n in names), names
    assert json.loads(storage.read_text("gs://bucket/runs/x/hf/config.json"))["d_model"] == model.cfg.d_model
    assert os.listdir(tmp_path) == []  # the local build is removed after the upload

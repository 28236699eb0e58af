"""Run outputs on a local disk or in a bucket (`gs://`, `s3://`): small path helpers over `etils.epath`.

Orbax writes checkpoints to a bucket itself (tensorstore); these helpers cover the rest of a
run's outputs (config.json, metrics.jsonl, exports). A bucket needs its fsspec backend and
credentials: `pip install -e ".[tpu]"` (or `.[gcs]`) installs gcsfs and google-cloud-storage.

    storage.absolute("runs/x")          -> "/home/me/diffpo-jax/runs/x"
    storage.absolute("gs://b/runs/x")   -> "gs://b/runs/x"   (os.path.abspath would make "./gs:/b/...")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from etils import epath


def is_uri(path: str) -> bool:
    """True for a bucket URI (`scheme://...`), False for a local path."""
    return "://" in str(path)


def absolute(path: str) -> str:
    """`path` made absolute if local; a URI as it is."""
    return str(path) if is_uri(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


def makedirs(path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` whole: locally via a temporary file and `os.replace` (a crash
    leaves the old file or the new one); a bucket object write is atomic by itself."""
    if is_uri(path):
        epath.Path(path).write_text(text)
        return

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    write_atomic(path, write)


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` into `<path>.partial`, then rename it to the local `path`: a crash leaves
    the old file or the new one, never half of one."""
    tmp = f"{path}.partial"
    write(tmp)
    os.replace(tmp, path)


def local_staging(dest: str) -> str:
    """A local directory to build `dest` in: `dest` itself when local, else a fresh temporary
    directory that `publish(staging, dest)` uploads and removes."""
    return dest if not is_uri(dest) else tempfile.mkdtemp(prefix="diffpo-export-")


def publish(staging: str, dest: str, upload: bool = True) -> None:
    """Upload the local tree `staging` to the URI `dest` (file by file, replacing what is there;
    upload=False: only this host's copy is dropped), then delete `staging`. A no-op when
    `staging` is `dest` (a local destination)."""
    if staging == dest:
        return
    for root, _, files in os.walk(staging) if upload else ():
        rel = os.path.relpath(root, staging)
        target = epath.Path(dest) if rel == "." else epath.Path(dest) / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            epath.Path(os.path.join(root, name)).copy(target / name, overwrite=True)
    shutil.rmtree(staging)

"""Atomic, resumable training checkpoints (orbax `CheckpointManager`).

One checkpoint = one step directory holding
  `state`: a pytree of arrays (trainable params, optimizer state, RNG key data, ...),
           restored straight into the given abstract shardings;
  `meta`:  JSON (step, data-iterator state, config, metrics so far).
Orbax writes into a temporary directory and renames it on commit, so a run killed mid-save
leaves the previous checkpoint intact; `latest()` only ever sees committed steps.
Every process calls `save`/`restore` (orbax coordinates multi-host writes itself).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """`save(step, state, meta)` / `restore(abstract_state)` with keep-N and async writes."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start writing checkpoint `step` (async); `wait()` blocks until it is committed."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._mgr.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[int, Any, dict]:
        """Restore `step` (default: latest) into the shapes/shardings of `abstract_state`.

        `abstract_state` is a pytree of arrays or `jax.ShapeDtypeStruct`s with `.sharding`.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                              meta=ocp.args.JsonRestore()))
        return step, out["state"], dict(out["meta"])

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

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

from collections import Counter
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from diffpo_jax import storage


class CheckpointMismatch(ValueError):
    """The checkpoint's arrays do not fit the restore target (another model / LoRA / head config)."""


class Checkpointer:
    """`save(step, state, meta)` / `restore(abstract_state)` with keep-N and async writes."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep < 1:
            raise ValueError(f"Checkpointer: max_to_keep={max_to_keep} (config.train.keep) would keep no "
                             "checkpoint, so nothing could resume; use 1 or more")
        self.directory = storage.absolute(directory)  # a gs:// URI stays one (orbax writes buckets)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        """The committed steps, ascending."""
        return sorted(self._mgr.all_steps())

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
        self._check_shapes(step, abstract)
        out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                              meta=ocp.args.JsonRestore()))
        return step, out["state"], dict(out["meta"])

    def _check_shapes(self, step: int, abstract: Any) -> None:
        """Raise CheckpointMismatch before orbax reads anything (its own shape errors surface from
        background tasks) when the stored array shapes differ from `abstract`'s (as a multiset:
        dtypes may differ, restore casts them)."""
        stored = self._mgr.item_metadata(step)["state"]
        if stored is None:
            return
        have = Counter(tuple(x.shape) for x in jax.tree.leaves(stored))
        want = Counter(_stored_shape(x) for x in jax.tree.leaves(abstract))
        if have != want:
            only_ckpt, only_cfg = sorted((have - want).elements()), sorted((want - have).elements())
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} holds {sum(have.values())} arrays, the restore target "
                f"{sum(want.values())}; shapes only in the checkpoint: {only_ckpt[:6]}, only in the target: "
                f"{only_cfg[:6]}")

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()


def _stored_shape(x) -> tuple:
    """The shape orbax stores for `x`: a typed PRNG key array is stored as its raw key data."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, x).shape)
    return tuple(x.shape)

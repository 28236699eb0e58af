"""Run metrics on disk: `<out_dir>/metrics.jsonl` (one JSON object per step) and TensorBoard
events in `<out_dir>/tb`, both truncated to the resumed step when a run resumes. `out_dir` may
be a bucket URI (`diffpo_jax.storage`)."""

from __future__ import annotations

import json
import os

from diffpo_jax import distributed, experiment, storage


class MetricsLog:
    """Metrics to `<out_dir>/metrics.jsonl` and TensorBoard (`<out_dir>/tb`); on resume both drop
    what the earlier run logged after `resume_step`."""

    def __init__(self, out_dir: str, resume_step: int = 0, tensorboard: bool = True):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.primary = distributed.is_primary()
        self.tb = None
        self.lines: list[str] = []  # the whole log: a bucket object cannot be appended to, only rewritten
        if not self.primary:
            return
        storage.makedirs(out_dir)
        if storage.exists(self.path):
            self.lines = [ln for ln in storage.read_text(self.path).splitlines(keepends=True)
                          if _logged_step(ln) <= resume_step]
        storage.write_text(self.path, "".join(self.lines))
        if tensorboard:
            self.tb = _summary_writer(os.path.join(out_dir, "tb"), resume_step)

    def write(self, step: int, metrics: dict) -> None:
        if not self.primary:
            return
        line = json.dumps({"step": step, **metrics}) + "\n"
        self.lines.append(line)
        if storage.is_uri(self.path):
            storage.write_text(self.path, "".join(self.lines))
        else:
            with open(self.path, "a") as f:
                f.write(line)
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _summary_writer(tb_dir: str, resume_step: int):
    """A tensorboardX writer; purge_step makes TensorBoard drop the earlier run's events after
    the resumed step."""
    from tensorboardX import SummaryWriter

    try:
        return SummaryWriter(tb_dir, purge_step=resume_step + 1 if resume_step else None)
    except ImportError as e:  # gs:// / s3:// event files need google-cloud-storage / boto3
        raise experiment.ConfigError(f"config.train.tensorboard: cannot write events to {tb_dir} ({e}); install "
                                     "it (pip install -e '.[gcs]') or set --config.train.tensorboard=False") from None


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; inf for a blank or torn line (a crash mid-write), so
    the resume drops it."""
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return float("inf")

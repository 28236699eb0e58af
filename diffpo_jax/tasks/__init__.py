"""Tasks: GSM8K, MATH500, Countdown, 4x4 Sudoku - d1's prompts, rewards and evaluation
parsing (bounded, never `eval`), puzzle generators, and grain data pipelines (`tasks.data`,
imported on demand)."""

from diffpo_jax.tasks.prompts import format_prompt
from diffpo_jax.tasks.registry import TASKS, Task, aggregate, batch_rewards, get_task, score

__all__ = ["TASKS", "Task", "aggregate", "batch_rewards", "format_prompt", "get_task", "score",
           "load_eval_items"]


def load_eval_items(task, data_dir=None, n=None, seed=42):
    """d1's evaluation items for `task` (see `diffpo_jax.tasks.data.load_eval_items`)."""
    from diffpo_jax.tasks.data import load_eval_items as _load

    return _load(task, data_dir, n=n, seed=seed)

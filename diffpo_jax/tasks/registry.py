"""The task registry: one `Task` per benchmark with rewards, evaluation scoring and prompts.

    task = TASKS["countdown"]
    task.reward_components(completion, item)  # {"correctness": 1.0, "format": 0.0}
    task.reward(completion, item)             # their sum (the GRPO reward)
    task.score(completion, item)              # eval record, always with "correct" (bool)
    batch_rewards("countdown", completions, items) -> (rewards [B] float32, {name: [B] float32})
    aggregate("sudoku", scores)                 # {"accuracy": pooled cell acc., "puzzle_accuracy": ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from diffpo_jax.tasks import countdown, gsm8k, math500, prompts, sudoku


@dataclass(frozen=True)
class Task:
    name: str
    reward_components: Callable[[str, dict], dict]
    score: Callable[[str, dict], dict]
    component_names: tuple[str, ...]
    max_reward: float
    accuracy_note: str

    def reward(self, completion: str, item: dict) -> float:
        return float(sum(self.reward_components(completion, item).values()))

    def correct(self, completion: str, item: dict) -> bool:
        return bool(self.score(completion, item)["correct"])

    def messages(self, item: dict, split: str = "eval", style: str = "d1") -> list[dict]:
        return prompts.messages(self.name, item, split, style)

    def format_prompt(self, item: dict, tokenizer, split: str = "eval", add_reasoning=None,
                      style: str = "d1") -> str:
        return prompts.format_prompt(self.name, item, tokenizer, split, add_reasoning, style)


TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", gsm8k.reward_components, gsm8k.score,
                  ("correctness", "int", "strict_format", "soft_format", "xmlcount"), 4.0,
                  "fraction of problems whose boxed (else last) number equals the #### answer"),
    "math500": Task("math500", math500.reward_components, math500.score, ("correctness", "format"), 3.0,
                    "fraction of problems whose last boxed answer is equivalent to the answer"),
    "countdown": Task("countdown", countdown.reward_components, countdown.score,
                      ("correctness", "format"), 1.0,
                      "fraction of puzzles whose expression uses each number once and hits the target"),
    "sudoku": Task("sudoku", sudoku.reward_components, sudoku.score, ("correctness",), 1.0,
                   "d1's cell accuracy: correct empty cells / all empty cells, pooled over puzzles"),
}
_ALIASES = {"gsm": "gsm8k", "math": "math500", "cd": "countdown", "ctd": "countdown"}


def get_task(name: str) -> Task:
    key = _ALIASES.get(name, name)
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[key]


def score(task: str, completion: str, item: dict) -> dict:
    """Evaluation record for one completion; always has `correct` (bool)."""
    return get_task(task).score(completion, item)


def batch_rewards(task: str, completions: Sequence[str], items: Sequence[dict]):
    """Rewards for a rollout batch: (total `[B]` float32, {component: `[B]` float32})."""
    t = get_task(task)
    if len(completions) != len(items):
        raise ValueError(f"{len(completions)} completions but {len(items)} items")
    parts = [t.reward_components(c, it) for c, it in zip(completions, items)]
    comps = {k: np.asarray([p[k] for p in parts], np.float32) for k in t.component_names}
    total = np.sum([comps[k] for k in t.component_names], axis=0).astype(np.float32) \
        if parts else np.zeros((0,), np.float32)
    return total, comps


def aggregate(task: str, scores: Sequence[dict]) -> dict[str, float]:
    """Benchmark numbers from `score` records: `accuracy` is the metric d1 reports (Sudoku:
    pooled cell accuracy; others: fraction correct); Sudoku adds `puzzle_accuracy` and
    `valid_accuracy` (grid is some solution of the puzzle)."""
    t = get_task(task)
    n = len(scores)
    out = {"n": float(n)}
    if t.name == "sudoku":
        empty = sum(s["cells_empty"] for s in scores)
        out["accuracy"] = sum(s["cells_correct"] for s in scores) / empty if empty else 0.0
        out["puzzle_accuracy"] = sum(bool(s["correct"]) for s in scores) / n if n else 0.0
        out["valid_accuracy"] = sum(bool(s["valid"]) for s in scores) / n if n else 0.0
    else:
        out["accuracy"] = sum(bool(s["correct"]) for s in scores) / n if n else 0.0
    return out

"""4x4 Sudoku: d1's reward (`sudoku_reward_func`) and evaluation (`parse_sudoku_answers`).

Item fields: `puzzle`, `solution` (16-character row-major strings, '0' = empty cell).

Training reward = fraction of the puzzle's empty cells whose digit in the answer equals the
listed solution. The answer is the ASCII digits of the last `<answer>...</answer>`, padded
with '0' / cut to 16; no answer -> 0.

Evaluation: d1 reports **cell accuracy**, pooled over items (sum of correct empty cells /
sum of empty cells: `aggregate`). `score` also gives `correct` = the whole grid equals the
listed solution (puzzle accuracy) and `valid` = the grid is *a* solution of the puzzle
(124 of the 500 shipped test puzzles have more than one; d1 scores against the listed one).
"""

from __future__ import annotations

import re

from diffpo_jax.tasks import generators
from diffpo_jax.tasks import text as T
from diffpo_jax.tasks.model_tokenizers import FAMILIES

# Every family's end-of-turn and EOS token (LLaDA: <|eot_id|>, <|endoftext|>; Dream: <|im_end|>).
END_TOKENS = tuple(dict.fromkeys(t for fam in FAMILIES.values() for t in (fam.end_of_turn, fam.eos)))

_WORD = re.compile(r"\w+")


def _digits(s: str) -> str:
    return "".join(ch for ch in s if "0" <= ch <= "9")


def _fit16(s: str) -> str:
    return (s + "0" * 16)[:16]


def _cells(grid: str, item: dict) -> tuple[int, int]:
    puzzle, solution = item["puzzle"], item["solution"]
    empty = [i for i in range(16) if puzzle[i] == "0"]
    if not grid:
        return 0, len(empty)
    grid = _fit16(grid)
    return sum(grid[i] == solution[i] for i in empty), len(empty)


def reward_components(completion: str, item: dict) -> dict[str, float]:
    answer = T.last_between(T.cap(completion), "<answer>", "</answer>")
    grid = _digits(answer.strip()) if answer is not None else ""
    correct, empty = _cells(grid, item)
    return {"correctness": correct / empty if empty else 0.0}


# -------------------------------------------------------------------------- evaluation
def _after_ticks(s: str) -> str:
    """`<answer>.*?```\\s*([\\d\\s]+)```` (DOTALL, first match): the first ``` after the first
    `<answer>` that is followed by digits/whitespace and another ```."""
    start = s.find("<answer>")
    if start < 0:
        return ""
    q = s.find("```", start + len("<answer>"))
    while q >= 0:
        j = q + 3
        while j < len(s) and (s[j].isspace() or "0" <= s[j] <= "9"):
            j += 1
        if j > q + 3 and s.startswith("```", j):
            return s[q + 3:j]
        q = s.find("```", q + 1)
    return ""


def _until(s: str, start: int, closers: tuple[str, ...], or_end: bool = False) -> str:
    """`s[start:]` up to the earliest closer; with no closer: the rest if `or_end`, else ''."""
    ends = [k for k in (s.find(c, start) for c in closers) if k >= 0]
    return s[start:min(ends)] if ends else (s[start:] if or_end else "")


def _sixteen_before_close(s: str) -> str:
    """`.*?(\\d{16})\\s*</answer>` (DOTALL): 16 digits right before (whitespace) a `</answer>`."""
    k = s.find("</answer>")
    while k >= 0:
        j = k
        while j > 0 and s[j - 1].isspace():
            j -= 1
        cand = s[j - 16:j] if j >= 16 else ""
        if len(cand) == 16 and cand.isascii() and cand.isdigit():
            return cand
        k = s.find("</answer>", k + 1)
    return ""


def extract_eval_grid(completion: str) -> str:
    """d1's regex cascade, first non-empty wins: digits between ``` after `<answer>`; the
    first `<answer>` up to `</answer>` / an end token; the text after the first `</answer>`
    up to an end token; 16 digits before a `</answer>`; a standalone 16-digit word.
    Whitespace is then removed. End tokens: d1's `<|eot_id|>` / `<|endoftext|>`, and Dream's
    end of turn `<|im_end|>` (END_TOKENS)."""
    s = T.cap(completion)
    ends = END_TOKENS
    candidates = [
        lambda: _after_ticks(s),
        lambda: _until(s, s.find("<answer>") + 8, ends + ("</answer>",)) if "<answer>" in s else "",
        lambda: _until(s, s.find("</answer>") + 9, ends, or_end=True) if "</answer>" in s else "",
        lambda: _sixteen_before_close(s),
        lambda: next((m.group() for m in _WORD.finditer(s)
                      if len(m.group()) == 16 and m.group().isascii() and m.group().isdigit()), ""),
    ]
    for candidate in candidates:
        found = candidate().strip()
        if found:
            return "".join(found.split())
    return ""


def score(completion: str, item: dict) -> dict:
    grid = extract_eval_grid(completion)
    correct, empty = _cells(grid, item)
    full = _fit16(grid) if grid else ""
    valid = (generators.is_valid_solution(full)
             and all(p == "0" or p == g for p, g in zip(item["puzzle"], full)))
    return {"correct": full == item["solution"], "valid": bool(valid), "cells_correct": correct,
            "cells_empty": empty, "cell_accuracy": correct / empty if empty else 0.0,
            "extracted": grid[:32]}

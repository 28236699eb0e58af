"""MATH / MATH500: d1's two training rewards (fixed) and d1's evaluation parsing.

Item fields: `problem`, `answer` (LaTeX, no `\\boxed`), optionally `solution`, `subject`,
`level`, `unique_id`. The gold answer is `item["answer"]`, else the last box of `solution`.

Training reward (max 3.0) = correctness 2.0 (the last `\\boxed{}` of the completion is
equivalent to the gold answer, `math_equiv.is_equiv`) + format
`0.5 * ([<answer> present] + (1.0 if "\\boxed" in the answer part else 0.5))`.
d1 tests for `"\\b" + "oxed"` (a backspace: Python escape bug), so its format reward is
0.75 / 0.25 for every completion; here the box test works, as intended.
"""

from __future__ import annotations

from typing import Optional

from diffpo_jax.tasks import math_equiv
from diffpo_jax.tasks import text as T


def gold_answer(item: dict) -> str:
    if item.get("answer") not in (None, ""):
        return str(item["answer"])
    if "solution" in item:
        boxed = T.last_boxed_only_string(str(item["solution"]))
        if boxed is not None and T.has_box(boxed):
            return T.remove_boxed(boxed)
    raise ValueError("MATH item has neither an 'answer' nor a boxed answer in 'solution' "
                     f"(keys: {sorted(item)})")


def extract_train_answer(completion: str) -> str:
    """d1's training extraction: the content of the last closed box, else the whole text."""
    s = T.cap(completion)
    boxed = T.last_boxed_only_string(s) if T.has_box(s) else None
    return s if boxed is None else T.remove_boxed(boxed)


def correctness(completion: str, item: dict, timeout: float = math_equiv.DEFAULT_TIMEOUT) -> float:
    ok = math_equiv.is_equiv(extract_train_answer(completion), gold_answer(item), timeout=timeout)
    return 2.0 if ok else 0.0


def format_reward(completion: str) -> float:
    """0.5 * (1 if `<answer>` present + (1 if `\\boxed` inside the answer part, else 0.5))."""
    s = T.cap(completion)
    tagged = "<answer>" in s
    part = s.split("<answer>", 1)[1].split("</answer>", 1)[0] if tagged else s
    return 0.5 * ((1.0 if tagged else 0.0) + (1.0 if "\\boxed" in part else 0.5))


def reward_components(completion: str, item: dict) -> dict[str, float]:
    return {"correctness": correctness(completion, item), "format": format_reward(completion)}


def extract_eval_answer(completion: str) -> Optional[str]:
    """d1's `parse_math_answers` extraction: the last box's content; the whole text when there
    is no box at all; for an unclosed box, the first `<answer>...</answer>` content."""
    s = T.cap(completion)
    boxed = T.last_boxed_only_string(s)
    parsed = None if boxed is None else T.remove_boxed(boxed)
    if not parsed:
        answer = T.first_between(s, "<answer>", "</answer>")
        parsed = answer.strip() if answer is not None else parsed
    return parsed


def score(completion: str, item: dict, timeout: float = math_equiv.DEFAULT_TIMEOUT,
          use_sympy: bool = True) -> dict:
    """Eval record. `use_sympy=False` gives d1's string-only `is_equiv` (for parity checks)."""
    pred = extract_eval_answer(completion)
    ok = pred is not None and math_equiv.is_equiv(pred, gold_answer(item), timeout=timeout, use_sympy=use_sympy)
    return {"correct": bool(ok), "extracted": pred}

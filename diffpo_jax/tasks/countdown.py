"""Countdown: d1's reward (`compute_score`) and evaluation (`parse_countdown_answers`), with a
safe parser (`arith.evaluate`) instead of `eval`.

Item fields: `numbers` (list of int), `target` (int).

Training reward: the content of the last `<answer>...</answer>` (DOTALL) is the equation;
none -> 0. It must use each given number exactly once and evaluate to within 1e-5 of the
target -> 1.0; otherwise (wrong numbers, not parseable, wrong value) -> 0.1, d1's "format
score". Components: `correctness` (1.0 or 0) and `format` (0.1 when an answer is present but
not correct); the reward is their sum.
"""

from __future__ import annotations

from typing import Optional

from diffpo_jax.tasks import arith
from diffpo_jax.tasks import text as T

FORMAT_SCORE = 0.1
TOLERANCE = 1e-5


def _value_hits(equation: str, item: dict) -> bool:
    """Uses the numbers exactly once and evaluates (exactly) to within 1e-5 of the target."""
    if not arith.uses_numbers_once(equation, item["numbers"]):
        return False
    try:
        value = arith.evaluate(equation)
    except arith.ArithError:
        return False
    return abs(value - int(item["target"])) < TOLERANCE


def reward_components(completion: str, item: dict) -> dict[str, float]:
    equation = T.last_between(T.cap(completion), "<answer>", "</answer>")
    if equation is None:
        return {"correctness": 0.0, "format": 0.0}
    if _value_hits(equation.strip(), item):
        return {"correctness": 1.0, "format": 0.0}
    return {"correctness": 0.0, "format": FORMAT_SCORE}


_EQ_RUN = frozenset("0123456789+-*/() ")
_EQ_VALUE = frozenset("0123456789. ")


def strip_equals(equation: str) -> str:
    """d1's `re.search(r"([0-9+\\-*/() ]+)=[0-9. ]+", eq)`: when present, keep only the
    expression before the first such `= n` (stripped), in linear time."""
    e = equation.find("=")
    while e >= 0:
        if e > 0 and equation[e - 1] in _EQ_RUN and e + 1 < len(equation) and equation[e + 1] in _EQ_VALUE:
            s = e - 1
            while s > 0 and equation[s - 1] in _EQ_RUN:
                s -= 1
            return equation[s:e].strip()
        e = equation.find("=", e + 1)
    return equation


def extract_eval_equation(completion: str) -> str:
    """d1's eval extraction: the last box's content (the whole text when there is no box; the
    first `<answer>` content or the whole text when the box is unclosed), then `\\div`->`/`,
    `\\times`/`\\cdot`->`*`, and a trailing `= n` removed."""
    s = T.cap(completion)
    boxed = T.last_boxed_only_string(s)
    if boxed is not None:
        equation = T.remove_boxed(boxed)
    else:
        answer = T.first_between(s, "<answer>", "</answer>")
        equation = answer.strip() if answer is not None else s
    equation = equation.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    return strip_equals(equation)


def score(completion: str, item: dict) -> dict:
    equation = extract_eval_equation(completion)
    return {"correct": bool(_value_hits(equation.strip(), item)), "extracted": equation[:200]}


def value_of(equation: str) -> Optional[float]:
    """The equation's value as a float, or None (for logging)."""
    try:
        return float(arith.evaluate(equation))
    except arith.ArithError:
        return None

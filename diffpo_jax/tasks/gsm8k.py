"""GSM8K: d1's five training rewards and d1's evaluation parsing (`parse_gsm_answers`).

Item fields: `question` (str), `answer` (the `#### n` number as a string, commas removed),
`solution` (the dataset's full answer text).

Training reward (max 4.0) = correctness 2.0 + int 0.5 + strict_format 0.5 + soft_format 0.5
+ xmlcount (<= 0.5), all on the completion text. Deviations from d1, on purpose:
- correctness compares numbers (commas removed: `1,000` == `1000` == `1000.0`), d1 compares
  the exact strings;
- digits are ASCII only (`str.isdigit` would accept `'٣'`).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Optional

from diffpo_jax.tasks import text as T


def gold_answer(solution: str) -> str:
    """The number after `####` in a GSM8K answer, stripped and with commas removed.

    Raises ValueError naming the text when there is no `####` (malformed dataset row).
    """
    if "####" not in solution:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {solution[-80:]!r}")
    return solution.split("####")[1].strip().replace(",", "")


def _gold(item: dict) -> Optional[Fraction]:
    return T.parse_number(str(item["answer"]).replace(",", "").lstrip("$"))


# ----------------------------------------------------------------------------- rewards
def correctness(completion: str, item: dict) -> float:
    """2.0 if the text after the last `<answer>` (before `</answer>`) is the gold number."""
    pred = T.parse_number(T.after_last_split(T.cap(completion)).replace(",", ""))
    gold = _gold(item)
    return 2.0 if pred is not None and gold is not None and pred == gold else 0.0


def int_reward(completion: str) -> float:
    """0.5 if the extracted answer is a non-empty string of ASCII digits."""
    a = T.after_last_split(T.cap(completion))
    return 0.5 if a.isascii() and a.isdigit() else 0.0


def strict_format(completion: str) -> float:
    """0.5 iff the text fully matches `^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$`
    (no DOTALL, so the reasoning and the answer are one line each; `$` also allows one more
    trailing newline)."""
    lines = T.cap(completion).split("\n")
    if lines and lines[-1] == "" and len(lines) == 8:
        lines = lines[:-1]  # `\n$` may match before a final newline
    ok = (len(lines) == 7 and lines[0] == "<reasoning>" and lines[2] == "</reasoning>"
          and lines[3] == "<answer>" and lines[5] == "</answer>" and lines[6] == "")
    return 0.5 if ok else 0.0


def soft_format(completion: str) -> float:
    """0.5 iff `re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>", text)` (no
    DOTALL: `.` stops at newlines, `\\s*` may cross them), decided in linear time."""
    s = T.cap(completion)
    if not s.startswith("<reasoning>"):
        return 0.0
    line_end = s.find("\n")
    line_end = len(s) if line_end < 0 else line_end
    close_at = -2  # cached next '</answer>' position
    i = s.find("</reasoning>", len("<reasoning>"))
    while 0 <= i and i + len("</reasoning>") <= line_end:
        j = i + len("</reasoning>")
        while j < len(s) and s[j].isspace():
            j += 1
        if s.startswith("<answer>", j):
            start = j + len("<answer>")
            if close_at != -1 and close_at < start:
                close_at = s.find("</answer>", start)
            if close_at < 0:
                return 0.0
            nl = s.find("\n", start)
            if nl < 0 or nl >= close_at:
                return 0.5
        i = s.find("</reasoning>", i + 1)
    return 0.0


def xmlcount(completion: str) -> float:
    """d1's `count_xml`: +0.125 per tag appearing exactly once with its newlines, minus
    0.001 per character of trailing text after the answer."""
    s = T.cap(completion)
    score = 0.0
    if s.count("<reasoning>\n") == 1:
        score += 0.125
    if s.count("\n</reasoning>\n") == 1:
        score += 0.125
    if s.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(s.split("\n</answer>\n")[-1]) * 0.001
    if s.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(s.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def reward_components(completion: str, item: dict) -> dict[str, float]:
    """d1's GSM8K rewards by name; the training reward is their sum (max 4.0)."""
    return {
        "correctness": correctness(completion, item),
        "int": int_reward(completion),
        "strict_format": strict_format(completion),
        "soft_format": soft_format(completion),
        "xmlcount": xmlcount(completion),
    }


# -------------------------------------------------------------------------- evaluation
def _to_float(s: str) -> Optional[float]:
    v = T.parse_number(s)
    return None if v is None else float(v)


def extract_eval_answer(completion: str) -> Optional[float]:
    """d1's `parse_gsm_answers` extraction: the first `\\boxed{...}` (content on one line, not
    empty or dots) read as a number, else its first number; otherwise the content of the first
    `<answer>...</answer>` read as a number, else its last number; else None. As in d1,
    `\\boxed{1,000}` reads as 1 (the gold answer has its commas removed)."""
    s = T.cap(completion)
    for content in T.findall_between(s, "\\boxed{", "}", dotall=False):
        content = content.strip()
        if not content or set(content) == {"."}:
            continue
        value = _to_float(content)
        if value is not None:
            return value
        nums = T.numbers_in(content)
        if nums:
            value = _to_float(nums[0])
            if value is not None:
                return value
    answer = T.first_between(s, "<answer>", "</answer>")
    if answer is not None and answer.strip():
        answer = answer.strip()
        value = _to_float(answer)
        if value is not None:
            return value
        nums = T.numbers_in(answer)
        if nums:
            return _to_float(nums[-1])
    return None


def score(completion: str, item: dict) -> dict:
    """Evaluation record: `correct` (bool, d1's accuracy) and the `extracted` number."""
    pred = extract_eval_answer(completion)
    gold = _gold(item)
    ok = pred is not None and gold is not None and pred == float(gold)
    return {"correct": bool(ok), "extracted": pred}

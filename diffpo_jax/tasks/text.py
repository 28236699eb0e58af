"""Bounded text helpers shared by the task parsers.

Model output is untrusted. Every helper here runs in time linear in the (capped) input
length: no regex with nested or lazy quantifiers is ever applied to a completion; the
d1 extraction regexes (`<answer>(.*?)</answer>`, `\\boxed{(.*?)}`, ...) are restated with
`str.find` loops that give the same matches.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

MAX_CHARS = 20_000
"""Completions longer than this are cut to their first MAX_CHARS characters before parsing
(LLaDA completions of 512 tokens are ~3k characters)."""

MAX_NUMBER_CHARS = 64
"""Number strings longer than this are not parsed (never equal to a benchmark answer)."""

_ASCII_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_ASCII_NUMBER_IN_TEXT = re.compile(r"-?[0-9]+\.?[0-9]*")  # d1's `-?\d+\.?\d*`, ASCII digits only


def cap(text) -> str:
    """`text` as a str cut to MAX_CHARS (non-strings become '')."""
    if not isinstance(text, str):
        return ""
    return text[:MAX_CHARS]


def findall_between(text: str, open_: str, close: str, dotall: bool = True) -> list[str]:
    """Same result as `re.findall(re.escape(open_) + '(.*?)' + re.escape(close), text, flags)`
    (flags = DOTALL if `dotall`), in O(len(text)).

    Without DOTALL a match may not contain a newline: an opening delimiter whose next closing
    delimiter lies beyond a newline starts no match, and the search resumes one character on.
    """
    out: list[str] = []
    pos, n_open = 0, len(open_)
    close_at = newline_at = -2  # cached next positions (monotone), -1 = none left
    while True:
        i = text.find(open_, pos)
        if i < 0:
            return out
        start = i + n_open
        if close_at != -1 and close_at < start:
            close_at = text.find(close, start)
        if close_at < 0:
            return out  # no closing delimiter after any later opening one either
        if not dotall:
            if newline_at != -1 and newline_at < start:
                newline_at = text.find("\n", start)
            if 0 <= newline_at < close_at:
                pos = i + 1
                continue
        out.append(text[start:close_at])
        pos = close_at + len(close)


def first_between(text: str, open_: str, close: str) -> Optional[str]:
    """First match of `open_(.*?)close` with DOTALL (d1's `re.search(..., re.DOTALL)`), or None."""
    i = text.find(open_)
    if i < 0:
        return None
    j = text.find(close, i + len(open_))
    return None if j < 0 else text[i + len(open_):j]


def last_between(text: str, open_: str, close: str) -> Optional[str]:
    """Last match of `open_(.*?)close` with DOTALL (d1's `extract_solution`), or None."""
    found = findall_between(text, open_, close, dotall=True)
    return found[-1] if found else None


def after_last_split(text: str, open_: str = "<answer>", close: str = "</answer>") -> str:
    """d1's `extract_xml_answer`: `text.split(open_)[-1].split(close)[0].strip()`."""
    i = text.rfind(open_)
    rest = text if i < 0 else text[i + len(open_):]
    j = rest.find(close)
    return (rest if j < 0 else rest[:j]).strip()


def parse_number(s: str) -> Optional[Fraction]:
    """An ASCII decimal number (`-12`, `3.50`, `.5`, `+7`) as an exact Fraction, else None.

    Unicode digits, exponents, `nan`/`inf` and strings over MAX_NUMBER_CHARS are rejected.
    """
    s = s.strip()
    if not s or len(s) > MAX_NUMBER_CHARS or not _ASCII_NUMBER.fullmatch(s):
        return None
    if s.endswith("."):
        s = s[:-1]
    return Fraction(s)


def numbers_in(text: str) -> list[str]:
    """All `-?[0-9]+\\.?[0-9]*` substrings (d1's number regex with ASCII digits)."""
    return _ASCII_NUMBER_IN_TEXT.findall(text)


def last_boxed_only_string(text: str) -> Optional[str]:
    """Hendrycks/d1 `last_boxed_only_string`: the last `\\boxed{...}` (balanced braces) or
    `\\fbox{...}` including the command; `\\boxed x` (space form) up to the next `$`.

    Returns the whole string when there is no box at all (d1's behaviour) and None when the
    last box is never closed.
    """
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return text
    depth = 0
    for k in range(idx, len(text)):
        ch = text[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[idx:k + 1]
    return None


def remove_boxed(s: str) -> str:
    """Inverse of the box: `\\boxed{x}` -> `x`, `\\boxed x` -> `x`, anything else unchanged."""
    if s.startswith("\\boxed "):
        return s[len("\\boxed "):]
    for left in ("\\boxed{", "\\fbox{"):
        if s.startswith(left) and s.endswith("}"):
            return s[len(left):-1]
    return s


def has_box(text: str) -> bool:
    return "\\boxed" in text or "\\fbox" in text

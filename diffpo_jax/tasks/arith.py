"""Safe exact arithmetic for Countdown answers (never `eval`).

    evaluate("(30 + 100) - 93") -> Fraction(37)

Grammar (recursive descent, exact `Fraction` values):
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := ('+' | '-') factor | number | '(' expr ')'
    number := [0-9]+ ('.' [0-9]*)? | '.' [0-9]+
An integer with a leading zero (`030`) is rejected, as Python 3 does (d1's `eval` raises
SyntaxError there); `0`, `00`, `030.5` are fine. Whitespace is ASCII only. `**` and `//` are
rejected (Python would read them as power and floor division; Countdown allows + - * / only).
Bounded: input length (MAX_EXPR_CHARS), nesting depth (MAX_DEPTH), literal length
(MAX_LITERAL_DIGITS) and every intermediate numerator/denominator (MAX_MAGNITUDE); anything
beyond raises `ArithError`.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_EXPR_CHARS = 256
MAX_DEPTH = 32
MAX_LITERAL_DIGITS = 18
MAX_MAGNITUDE = 10**18

_TOKEN = re.compile(r"[ \t\r\n\f\v]*(?:([0-9]+(?:\.[0-9]*)?|\.[0-9]+)|([-+*/()]))")
_INTEGER = re.compile(r"[0-9]+")


class ArithError(ValueError):
    """The text is not a bounded arithmetic expression over + - * / ( ) and numbers."""


def _tokens(text: str) -> list[str]:
    if len(text) > MAX_EXPR_CHARS:
        raise ArithError(f"expression longer than {MAX_EXPR_CHARS} characters")
    out, pos, end = [], 0, len(text.rstrip(" \t\r\n\f\v"))
    while pos < end:
        m = _TOKEN.match(text, pos)
        if not m:
            raise ArithError(f"unexpected character {text[pos]!r} at {pos}")
        num, op = m.groups()
        if num is not None and len(num) > MAX_LITERAL_DIGITS + 1:
            raise ArithError("number literal too long")
        if num is not None and num[0] == "0" and "." not in num and num.strip("0"):
            raise ArithError(f"leading zero in {num!r}")
        out.append(num if num is not None else op)
        pos = m.end()
    return out


def _bounded(v: Fraction) -> Fraction:
    if abs(v.numerator) > MAX_MAGNITUDE or v.denominator > MAX_MAGNITUDE:
        raise ArithError("intermediate value too large")
    return v


class _Parser:
    def __init__(self, tokens: list[str]):
        self.toks, self.i, self.depth = tokens, 0, 0

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self) -> str:
        tok = self.peek()
        if not tok:
            raise ArithError("unexpected end of expression")
        self.i += 1
        return tok

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = _bounded(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor()
            if op == "/" and rhs == 0:
                raise ArithError("division by zero")
            value = _bounded(value * rhs if op == "*" else value / rhs)
        return value

    def factor(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ArithError(f"nesting deeper than {MAX_DEPTH}")
        try:
            tok = self.take()
            if tok in ("+", "-"):
                v = self.factor()
                return v if tok == "+" else -v
            if tok == "(":
                v = self.expr()
                if self.take() != ")":
                    raise ArithError("expected ')'")
                return v
            if tok[0].isdigit() or tok[0] == ".":
                return Fraction(tok[:-1] if tok.endswith(".") else tok)
            raise ArithError(f"unexpected {tok!r}")
        finally:
            self.depth -= 1


def evaluate(text: str) -> Fraction:
    """Exact value of an arithmetic expression (ArithError when invalid or out of bounds)."""
    if not isinstance(text, str):
        raise ArithError("expression must be a string")
    p = _Parser(_tokens(text))
    value = p.expr()
    if p.i != len(p.toks):
        raise ArithError(f"unexpected {p.peek()!r} after a complete expression")
    return value


def integers_in(text: str) -> list[int]:
    """All maximal ASCII digit runs as ints (d1's `re.findall(r"\\d+")` for validation);
    runs longer than MAX_LITERAL_DIGITS give -1 (never a valid Countdown number)."""
    return [int(t) if len(t) <= MAX_LITERAL_DIGITS else -1 for t in _INTEGER.findall(text)]


def uses_numbers_once(text: str, numbers) -> bool:
    """d1's `validate_equation`: the numbers written in `text` are exactly the given multiset."""
    return sorted(integers_in(text)) == sorted(int(n) for n in numbers)

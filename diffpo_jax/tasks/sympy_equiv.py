"""Equivalence of parsed answers (`latex_sympy.parse`): exact where possible, numeric at
30 digits (relative 1e-9) otherwise, unordered for lists/sets/`\\pm`, ordered with matching
brackets for tuples/intervals, up to a constant factor for equations. Runs in the sympy
worker process (`math_equiv`)."""

from __future__ import annotations

import sympy as sp

from diffpo_jax.tasks.latex_sympy import TEXT_CMDS, Node, ParseError, parse

REL_TOL = 1e-9


def text_key(s: str) -> str | None:
    """The lower-case letters of an answer that is only words, else None: `\\text{}`-like
    wrappers, braces, parentheses, spaces and a final `.` are removed and what is left must be
    ASCII letters: `\\text{(C)}` -> `c`, `\\text{Evelyn}` -> `evelyn`, but `p - q`, `\\pi`,
    `a/b`, `x<y`, `5` -> None."""
    for cmd in TEXT_CMDS:
        s = s.replace(cmd + "{", "{")
    key = "".join(ch for ch in s.strip().rstrip(".") if ch not in "{}() \t").lower()
    return key if key.isascii() and key.isalpha() else None


_FRACTIONS = (sp.Rational(3, 7), sp.Rational(5, 11), sp.Rational(2, 13))


def _probe(j: int, k: int):
    """Value of the j-th free symbol at sample point k (0..2): non-integer, distinct for each
    symbol, of sign (-1)^(j+k), so every symbol is tried at both signs (`|x|` != `x`)."""
    return (-1) ** (j + k) * (j + 1 + _FRACTIONS[k])


def _close(x, y) -> bool:
    """Exact when the difference is rational, else |x - y| <= 1e-9 max(1, |x|, |y|) at 30 digits."""
    diff = x - y
    if isinstance(diff, sp.Rational):
        return diff == 0
    x, y = sp.N(x, 30), sp.N(y, 30)
    if not (x.is_number and y.is_number) or x.has(sp.nan, sp.zoo) or y.has(sp.nan, sp.zoo):
        return False
    return bool(abs(x - y) <= REL_TOL * max(1, abs(x), abs(y)))


def expr_equal(x, y) -> bool:
    """Exact structural match, else numeric equality (relative 1e-9, 30 digits); with free
    symbols, equality at the 3 points of `_probe` (falling back to `simplify` where a side is
    not finite there)."""
    if x == y:
        return True
    if x.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or y.has(sp.oo, -sp.oo, sp.zoo, sp.nan):
        return False
    symbols = sorted(x.free_symbols | y.free_symbols, key=lambda v: v.name)
    if not symbols:
        return _close(x, y)
    if len(symbols) > 8:
        return False
    results = []
    for k in range(3):
        point = {v: _probe(j, k) for j, v in enumerate(symbols)}
        a, b = x.subs(point), y.subs(point)
        if not (sp.N(a).is_finite and sp.N(b).is_finite):
            return sp.simplify(x - y) == 0
        results.append(_close(a, b))
    return all(results)


def _unordered_equal(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        for j, y in enumerate(left):
            if values_equal(x, y):
                del left[j]
                break
        else:
            return False
    return True


_UNORDERED = ("list", "set", "pm")


def values_equal(a, b) -> bool:
    """Equality of parsed answers (see `parse`)."""
    a_node, b_node = isinstance(a, Node), isinstance(b, Node)
    if not a_node and not b_node:
        return expr_equal(a, b)
    if not (a_node and b_node):
        return False
    if a.kind in _UNORDERED and b.kind in _UNORDERED:
        return _unordered_equal(a.items, b.items)
    if a.kind != b.kind:
        return False
    if a.kind == "union":
        return _unordered_equal(a.items, b.items)
    if a.kind == "eq":
        da, db = a.items[0] - a.items[1], b.items[0] - b.items[1]
        if expr_equal(da, db) or expr_equal(da, -db):
            return True
        ratio = sp.simplify(da / db) if db != 0 else None
        return ratio is not None and ratio.is_number and ratio != 0 and bool(ratio.is_finite)
    if a.kind == "tuple" and a.meta != b.meta:
        return False
    if a.kind == "matrix":
        return (len(a.items) == len(b.items)
                and all(len(r) == len(q) and all(map(expr_equal, r, q)) for r, q in zip(a.items, b.items)))
    return len(a.items) == len(b.items) and all(map(values_equal, a.items, b.items))


def _squash(s: str) -> str:
    return "".join(ch for ch in s if ch not in "{} \t$")


def equivalent(pred: str, gold: str) -> bool:
    """True when two LaTeX answers denote the same value (never raises)."""
    try:
        kp, kg = text_key(pred), text_key(gold)
        if kp and kg:  # both only words
            if kp == kg:
                return True
            if any(cmd in pred or cmd in gold for cmd in TEXT_CMDS):
                return False  # different words (`\\text{east}` vs `seat`), not a product of letters
        if "_" in pred and "_" in gold:  # numbers in a base, 4210_{5}
            return _squash(pred) == _squash(gold)
        return values_equal(parse(pred), parse(gold))
    except (ParseError, RecursionError, TypeError, ValueError, ZeroDivisionError, AttributeError,
            OverflowError, MemoryError):
        return False

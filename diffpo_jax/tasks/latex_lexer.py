"""Lexical layer of the LaTeX -> sympy answer converter (`latex_sympy.parse` builds on it).

Holds the size limits (MAX_*) and error types (`ParseError`, `TooBig`), the `Node` result
type for structured answers, `clean` (LaTeX answer -> canonical string: text/unit stripping,
spacing and symbol rewrites, short `x =` / `x \\in` prefixes, thousands separators) and
`tokenize` (canonical string -> [kind, text] tokens), plus the size-checked sympy arithmetic
(`_check_size`, `_expr`, `_safe_pow`) the parser builds every value through, which enforces
MAX_EXP and MAX_RESULT_BITS.
"""

from __future__ import annotations

import re

import sympy as sp

MAX_LEN = 400
MAX_DEPTH = 40
MAX_DIGITS = 60
MAX_EXP = 1000
MAX_RESULT_BITS = 8000
MAX_FACTORIAL = 200


class ParseError(ValueError):
    pass


class TooBig(ParseError):
    pass


class Node(tuple):
    """A structured answer: `Node((kind, meta, items))`; kinds: list, set, pm (unordered),
    tuple (ordered; meta = the two brackets), union, eq (lhs, rhs), matrix (rows)."""

    kind = property(lambda self: self[0])
    meta = property(lambda self: self[1])
    items = property(lambda self: self[2])


def node(kind, items, meta=""):
    return Node((kind, meta, tuple(items)))


# ------------------------------------------------------------------------------ cleaning
_REMOVE = ["\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\displaystyle",
           "\\limits", "^{\\circ}", "^\\circ", "\\circ", "\u00b0", "\\%", "%", "\\$", "$", "~"]
_REPLACE = [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cdot", "*"), ("\\times", "*"),
            ("\\div", "/"), ("\\le ", "<"), ("\\ge ", ">"), ("\\dots", ""), ("\\ldots", "")]
TEXT_CMDS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mbox", "\\mathrm", "\\mathbf",
              "\\operatorname", "\\boldsymbol", "\\mathit")
_UNIT_CMDS = ("\\text", "\\textrm", "\\mbox", "\\mathrm")  # may hold a unit; \mathbf{v} is a symbol
_UNIT = re.compile(r"[A-Za-z ]+")
_UNIT_END = re.compile(r"(?:\^\{?[23]\}?)?(?=\s*(?:\.?\s*\Z|[,)\]]))")  # [^2|^3] then end, `,` `)` `]`
_CONNECTIVE = re.compile(r"\b(?:or|and|nor|either|but|also|then|versus|vs)\b", re.IGNORECASE)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_IN_PREFIX = re.compile(r"[A-Za-z]\s*\\in\s*")


def _brace_end(s: str, open_at: int) -> int:
    """Index of the `}` closing the `{` at `open_at` (ParseError if unbalanced)."""
    depth = 0
    for k in range(open_at, len(s)):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    raise ParseError("unbalanced braces")


def _unwrap_text(s: str) -> str:
    """`\\text{x}` -> `x`. A purely alphabetic `\\text{ cm}` (`\\text`, `\\textrm`, `\\mbox`,
    `\\mathrm`; not `\\mathbf{v}`, a symbol) next to other content is a unit and
    is dropped (with a following `^2` / `^3`) when it ends the answer or a list item (`,`, `)`,
    `]` follows); one holding `or` / `and`-like words (`1 \\text{ or } 6`) is a ParseError."""
    for _ in range(20):
        hits = [(s.find(c + "{"), c) for c in TEXT_CMDS if s.find(c + "{") >= 0]
        if not hits:
            return s
        i, cmd = min(hits)
        j = _brace_end(s, i + len(cmd))
        content = s[i + len(cmd) + 1:j]
        rest = s[:i] + s[j + 1:]
        if cmd in _UNIT_CMDS and rest.strip() and _UNIT.fullmatch(content) and content.strip():
            if _CONNECTIVE.search(content):
                raise ParseError("several answers joined by words")
            unit = _UNIT_END.match(s, j + 1)
            if unit:
                s = s[:i] + s[unit.end():]
                continue
        s = s[:i] + content + s[j + 1:]
    raise ParseError("too many text commands")


def clean(s: str) -> str:
    """LaTeX answer -> the canonical string the tokenizer reads (see module doc)."""
    if len(s) > 4 * MAX_LEN:
        raise TooBig("answer too long")
    s = s.replace("\n", " ").replace("\\\\", " \\cr ").strip()  # matrix row breaks
    s = _unwrap_text(s)
    for a, b in _REPLACE:
        s = s.replace(a, b)
    for a in _REMOVE:
        s = s.replace(a, "")
    s = s.replace("\\ ", " ").strip()
    s = _IN_PREFIX.sub("", s, count=1) if _IN_PREFIX.match(s) else s
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if len(lhs.strip()) <= 2:
            s = rhs
    s = s.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(s.replace(" ", "")):
        s = s.replace(" ", "").replace(",", "")
    if not s:
        raise ParseError("empty answer")
    if len(s) > MAX_LEN:
        raise TooBig("answer too long")
    return s


# ----------------------------------------------------------------------------- tokenizer
_TOKEN = re.compile(r"[ \t]*(?:([0-9]+\.?[0-9]*|\.[0-9]+)|(\\[A-Za-z]+|\\.)|([A-Za-z])|([-+*/^_(){}\[\],=!|&<>']))")


def tokenize(s: str) -> list[list[str]]:
    """Tokens as mutable [kind, text] pairs: num, cmd, var or the character itself."""
    out, pos, s = [], 0, s.rstrip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise ParseError(f"unexpected character {s[pos]!r}")
        num, cmd, var, ch = m.groups()
        if num and len(num) > MAX_DIGITS:
            raise TooBig("number literal too long")
        out.append(["num", num] if num else ["cmd", cmd] if cmd else ["var", var] if var else [ch, ch])
        pos = m.end()
    return out


# -------------------------------------------------------------- size-checked arithmetic
def _check_size(v):
    if isinstance(v, sp.Rational) and max(v.p.bit_length(), v.q.bit_length()) > MAX_RESULT_BITS:
        raise TooBig("intermediate number too large")
    return v


def _expr(v):
    if isinstance(v, Node):
        raise ParseError(f"{v.kind} used in arithmetic")
    return v


def _safe_pow(base, exp):
    base, exp = _expr(base), _expr(exp)
    if exp.is_number and base.is_number and base not in (sp.Integer(0), sp.Integer(1), sp.Integer(-1)):
        if not exp.is_real or abs(sp.N(exp, 15)) > MAX_EXP:
            raise TooBig("exponent too large")
        if isinstance(base, sp.Rational) and isinstance(exp, sp.Integer):
            bits = max(base.p.bit_length(), base.q.bit_length()) * abs(int(exp))
            if bits > MAX_RESULT_BITS:
                raise TooBig("power too large")
    elif exp.is_number and (not exp.is_real or abs(sp.N(exp, 15)) > MAX_EXP):
        raise TooBig("exponent too large")
    return _check_size(sp.Pow(base, exp))

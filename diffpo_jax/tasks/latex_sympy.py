"""A small, bounded LaTeX -> sympy converter for final answers (`parse`).

Covers the forms MATH answers use: integers/decimals, `\\frac` (`\\frac12`, `\\frac{a}{b}`,
`\\dfrac`), `\\sqrt{x}`, `\\sqrt[n]{x}`, `\\pi`, `\\infty`, `i`, powers, implicit products,
mixed numbers (`1\\frac{4}{5}`), `\\pm`, `!`, `|x|`, trig/log functions, tuples and intervals
(`(a, b]`), `\\cup`, sets `\\{..\\}`, comma lists, equations, `pmatrix`, `\\text{}` / units,
degrees, percent, dollars, thousands separators, `x \\in`, short `x =` prefixes.

Everything is bounded: input length (MAX_LEN), nesting depth (MAX_DEPTH), literal size
(MAX_DIGITS), exponents (MAX_EXP) and exact-result size (MAX_RESULT_BITS); anything beyond
raises `TooBig`. Comparison lives in `sympy_equiv`; both import sympy and run inside the
worker process of `math_equiv` (which adds a hard wall-clock limit on top).
"""

from __future__ import annotations

import functools
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
_UNIT = re.compile(r"[A-Za-z ]+")
_UNIT_POWER = re.compile(r"\^\{?[23]\}?")
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
    """`\\text{x}` -> `x`; a purely alphabetic `\\text{ cm}` next to other content is a unit and
    is dropped (with a following `^2` / `^3`)."""
    for _ in range(20):
        hits = [(s.find(c + "{"), c) for c in TEXT_CMDS if s.find(c + "{") >= 0]
        if not hits:
            return s
        i, cmd = min(hits)
        j = _brace_end(s, i + len(cmd))
        content = s[i + len(cmd) + 1:j]
        rest = s[:i] + s[j + 1:]
        if rest.strip() and _UNIT.fullmatch(content) and content.strip():
            m = _UNIT_POWER.match(s, j + 1)
            s = s[:i] + s[m.end() if m else j + 1:]
        else:
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


# -------------------------------------------------------------------------------- parser
_FUNCS = {"\\sin": sp.sin, "\\cos": sp.cos, "\\tan": sp.tan, "\\cot": sp.cot, "\\sec": sp.sec,
          "\\csc": sp.csc, "\\ln": sp.log, "\\log": sp.log, "\\exp": sp.exp, "\\arcsin": sp.asin,
          "\\arccos": sp.acos, "\\arctan": sp.atan}
_CONSTS = {"\\pi": sp.pi, "\\infty": sp.oo, "\\inf": sp.oo}


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


class _Parser:
    def __init__(self, tokens):
        self.toks, self.i, self.depth = tokens, 0, 0

    # helpers
    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ["eof", ""]

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind):
        tok = self.next()
        if tok[0] != kind:
            raise ParseError(f"expected {kind!r}, got {tok[1]!r}")
        return tok

    def is_(self, kind, text=None):
        tok = self.peek()
        return tok[0] == kind and (text is None or tok[1] == text)

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooBig("nesting too deep")

    # grammar
    def top(self):
        items = self.comma_list(("eof",))
        self.expect("eof")
        return items[0] if len(items) == 1 else node("list", items)

    def comma_list(self, closers):
        items = [self.relation()]
        while self.is_(","):
            self.next()
            if self.peek()[0] in closers:
                break
            items.append(self.relation())
        flat = []
        for it in items:  # a \pm inside a list contributes both values
            flat.extend(it.items if isinstance(it, Node) and it.kind == "pm" else [it])
        return flat

    def relation(self):
        left = self.union()
        if self.is_("="):
            self.next()
            return node("eq", (_expr(left), _expr(self.union())))
        return left

    def union(self):
        first = self.expr()
        if not self.is_("cmd", "\\cup"):
            return first
        items = [first]
        while self.is_("cmd", "\\cup"):
            self.next()
            items.append(self.expr())
        return node("union", items)

    def expr(self):
        if self.is_("cmd", "\\pm"):
            self.next()
            first = self.term()
            alts = [first, -_expr(first)]
        else:
            alts = [self.term()]
        while True:
            tok = self.peek()
            if tok[0] in ("+", "-"):
                self.next()
                t = _expr(self.term())
                alts = [_check_size(_expr(a) + (t if tok[0] == "+" else -t)) for a in alts]
            elif tok[0] == "cmd" and tok[1] in ("\\pm", "\\mp"):
                self.next()
                t = _expr(self.term())
                alts = [_expr(a) + t for a in alts] + [_expr(a) - t for a in alts]
                if len(alts) > 4:
                    raise TooBig("too many \\pm")
            else:
                break
        return alts[0] if len(alts) == 1 else node("pm", alts)

    def term(self):
        value = self.unary()
        while True:
            tok = self.peek()
            if tok[0] == "*":
                self.next()
                value = _check_size(_expr(value) * _expr(self.unary()))
            elif tok[0] == "/":
                self.next()
                value = _check_size(_expr(value) / _expr(self.unary()))
            elif self.starts_primary():
                mixed = (isinstance(value, sp.Integer) and value >= 0 and tok == ["cmd", "\\frac"]
                         and self.toks[self.i - 1][0] == "num")
                rhs = _expr(self.power())
                if mixed and isinstance(rhs, sp.Rational) and 0 < rhs < 1:
                    value = value + rhs  # 1\frac{4}{5} is a mixed number
                else:
                    value = _check_size(_expr(value) * rhs)
            else:
                return value

    def starts_primary(self):
        kind, text = self.peek()
        if kind == "cmd":
            return text in _FUNCS or text in _CONSTS or text in ("\\frac", "\\sqrt", "\\begin")
        return kind in ("num", "var", "(", "{")

    def unary(self):
        if self.is_("-"):
            self.next()
            return _check_size(-_expr(self.unary()))
        if self.is_("+"):
            self.next()
            return self.unary()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.is_("^"):
            self.next()
            base = _safe_pow(base, self.exponent())
        return base

    def exponent(self):
        if self.is_("-"):
            self.next()
            return -_expr(self.exponent())
        value = self.argument()
        if self.is_("^"):
            self.next()
            value = _safe_pow(value, self.exponent())
        return value

    def postfix(self):
        value = self.primary()
        while self.is_("!"):
            self.next()
            if not (isinstance(value, sp.Integer) and 0 <= value <= MAX_FACTORIAL):
                raise TooBig("factorial argument")
            value = sp.factorial(value)
        return value

    def argument(self):
        """A `{group}` or a single atom; a multi-digit literal gives only its first digit
        (`\\frac12` = 1/2)."""
        tok = self.peek()
        if tok[0] == "{":
            return self.primary()
        if tok[0] == "num" and len(tok[1]) > 1 and "." not in tok[1]:
            first, tok[1] = tok[1][0], tok[1][1:]  # the rest stays the current token
            return sp.Integer(int(first))
        return self.primary()

    def primary(self):
        self.enter()
        try:
            return self._primary()
        finally:
            self.depth -= 1

    def _primary(self):
        kind, text = self.next()
        if kind == "num":
            return sp.Rational(text)
        if kind == "var":
            return sp.I if text == "i" else sp.Symbol(text)
        if kind in ("(", "["):
            items = self.comma_list((")", "]"))
            close = self.next()[0]
            if close not in (")", "]"):
                raise ParseError("unclosed bracket")
            if len(items) == 1 and kind + close in ("()", "[]") and not isinstance(items[0], Node):
                return items[0]
            return node("tuple", items, meta=kind + close)
        if kind == "{":
            items = self.comma_list(("}",))
            self.expect("}")
            return items[0] if len(items) == 1 else node("list", items)
        if kind == "|":
            inner = _expr(self.expr())
            self.expect("|")
            return sp.Abs(inner)
        if kind != "cmd":
            raise ParseError(f"unexpected {text!r}")
        if text in _CONSTS:
            return _CONSTS[text]
        if text == "\\frac":
            num = _expr(self.argument())
            return _check_size(num / _expr(self.argument()))
        if text == "\\sqrt":
            index = sp.Integer(2)
            if self.is_("["):
                self.next()
                index = _expr(self.expr())
                self.expect("]")
            return _safe_pow(_expr(self.argument()), 1 / index)
        if text in _FUNCS:
            power = None
            if self.is_("^"):
                self.next()
                power = self.exponent()
            arg = _expr(self.argument() if not self.is_("(") else self.primary())
            value = _FUNCS[text](arg)
            return value if power is None else _safe_pow(value, power)
        if text == "\\{":
            items = self.comma_list(("cmd",))
            if self.next() != ["cmd", "\\}"]:
                raise ParseError("unclosed \\{")
            return node("set", items)
        if text == "\\begin":
            return self.matrix()
        raise ParseError(f"unsupported command {text}")

    def env_name(self):
        self.expect("{")
        name = ""
        while self.is_("var"):
            name += self.next()[1]
        self.expect("}")
        return name

    def matrix(self):
        name = self.env_name()
        if name not in ("pmatrix", "bmatrix", "matrix", "vmatrix"):
            raise ParseError(f"unsupported environment {name}")
        rows, row = [], [self.expr()]
        while not self.is_("cmd", "\\end"):
            tok = self.next()
            if tok[0] == "&":
                row.append(self.expr())
            elif tok == ["cmd", "\\cr"]:
                rows.append(tuple(_expr(v) for v in row))
                row = [self.expr()]
            else:
                raise ParseError(f"unexpected {tok[1]!r} in matrix")
        self.next()
        self.env_name()
        rows.append(tuple(_expr(v) for v in row))
        if len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        return node("matrix", rows)


@functools.lru_cache(maxsize=4096)
def parse(s: str):
    """LaTeX answer -> sympy expression or `Node` (ParseError / TooBig when it cannot)."""
    return _Parser(tokenize(clean(s))).top()

"""A small, bounded LaTeX -> sympy converter for final answers (`parse`).

Covers the forms MATH answers use: integers/decimals, `\\frac` (`\\frac12`, `\\frac{a}{b}`,
`\\dfrac`), `\\sqrt{x}`, `\\sqrt[n]{x}`, `\\pi`, `\\infty`, `i`, powers, implicit products
(but two numbers side by side, `2 3` or `4{10}`, are a ParseError), mixed numbers
(`1\\frac{4}{5}`), `\\pm`, `!`, `|x|`, trig/log functions, tuples and intervals (`(a, b]`),
`\\cup`, sets `\\{..\\}`, comma lists, equations, `pmatrix`, `\\text{}` / trailing units,
degrees, percent, dollars, thousands separators, `x \\in`, short `x =` prefixes.

Everything is bounded: input length (MAX_LEN), nesting depth (MAX_DEPTH), literal size
(MAX_DIGITS), exponents (MAX_EXP) and exact-result size (MAX_RESULT_BITS); anything beyond
raises `TooBig`. Comparison lives in `sympy_equiv`; both import sympy and run inside the
worker process of `math_equiv` (which adds a hard wall-clock limit on top).

The limits, error types, `Node`, `clean` and `tokenize` live in `latex_lexer` and are
re-exported here; this module holds the grammar (`_Parser`) and `parse`.
"""

from __future__ import annotations

import functools

import sympy as sp

from diffpo_jax.tasks.latex_lexer import (MAX_DEPTH, MAX_DIGITS, MAX_EXP, MAX_FACTORIAL, MAX_LEN,
                                          MAX_RESULT_BITS, TEXT_CMDS, Node, ParseError, TooBig,
                                          _check_size, _expr, _safe_pow, clean, node, tokenize)

__all__ = ["MAX_LEN", "MAX_DEPTH", "MAX_DIGITS", "MAX_EXP", "MAX_RESULT_BITS", "MAX_FACTORIAL",
           "ParseError", "TooBig", "Node", "node", "TEXT_CMDS", "clean", "tokenize", "parse"]


# -------------------------------------------------------------------------------- parser
_FUNCS = {"\\sin": sp.sin, "\\cos": sp.cos, "\\tan": sp.tan, "\\cot": sp.cot, "\\sec": sp.sec,
          "\\csc": sp.csc, "\\ln": sp.log, "\\log": sp.log, "\\exp": sp.exp, "\\arcsin": sp.asin,
          "\\arccos": sp.acos, "\\arctan": sp.atan}
_CONSTS = {"\\pi": sp.pi, "\\infty": sp.oo, "\\inf": sp.oo}


class _Parser:
    def __init__(self, tokens):
        self.toks, self.i, self.depth = tokens, 0, 0
        self.last = ""  # kind of the token read last

    # helpers
    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ["eof", ""]

    def next(self):
        tok = self.peek()
        self.i += 1
        self.last = tok[0]
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
                if tok[0] in ("num", "{") and self.last in ("num", "}"):
                    raise ParseError("numbers side by side")  # `2 3`, `4{10}`: no product
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
            self.last = "num"
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

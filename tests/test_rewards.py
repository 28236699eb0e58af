"""Rewards and evaluation parsing on the real test sets, against regex re-statements of d1's
functions, and on adversarial strings (bounded time)."""
import json
import os
import random
import re
import time

import pytest

from conftest import SHARED_DATA
from diffpo_jax.tasks import TASKS, aggregate, arith, batch_rewards, countdown, generators, gsm8k, math500
from diffpo_jax.tasks import math_equiv, score, sudoku
from diffpo_jax.tasks import text as T
from diffpo_jax.tasks.data import load_items

FMT = "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>\n"


@pytest.fixture(scope="module")
def test_sets():
    return {t: load_items(t, "test", SHARED_DATA) for t in TASKS}


# ---------------------------------------------------------------- d1 regex re-statements
def ref_findall(text, open_, close, dotall):
    return re.findall(re.escape(open_) + "(.*?)" + re.escape(close), text, re.DOTALL if dotall else 0)


def ref_strict(text):
    return 0.5 if re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", text) else 0.0


def ref_soft(text):
    return 0.5 if re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text) else 0.0


def ref_strip_equals(eq):
    m = re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", eq)
    return m.group(1).strip() if m else eq


def ref_sudoku_grid(text):
    patterns = [r"<answer>.*?```\s*([\d\s]+)```", r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
                r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)", r".*?(\d{16})\s*</answer>", r"\b(\d{16})\b"]
    for p in patterns:
        m = re.search(p, text, re.DOTALL)
        if m and m.group(1).strip():
            return re.sub(r"\s", "", m.group(1).strip())
    return ""


FRAGMENTS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "x", "12", "=", "7", "+",
             "\\boxed{", "}", "```", "1234123412341234", "<|eot_id|>", "<|endoftext|>", "(", "3.5", "-"]


def random_texts(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def test_linear_helpers_match_d1_regexes():
    texts = random_texts(3000) + [FMT.format(r="a", a="5"), FMT.format(r="a", a="5") + "\n", "<reasoning>x</reasoning>\n\n<answer>5</answer>"]
    for s in texts:
        for open_, close in (("<answer>", "</answer>"), ("\\boxed{", "}")):
            for dotall in (True, False):
                assert T.findall_between(s, open_, close, dotall) == ref_findall(s, open_, close, dotall), s
        assert T.after_last_split(s) == s.split("<answer>")[-1].split("</answer>")[0].strip()
        assert gsm8k.strict_format(s) == ref_strict(s), s
        assert gsm8k.soft_format(s) == ref_soft(s), s
        assert countdown.strip_equals(s) == ref_strip_equals(s), s
        assert sudoku.extract_eval_grid(s) == ref_sudoku_grid(s), s


def ref_eval_fraction(node):
    """Reference arithmetic over Python's AST (parsed, never executed)."""
    import ast
    from fractions import Fraction
    if isinstance(node, ast.Expression):
        return ref_eval_fraction(node.body)
    if isinstance(node, ast.Constant):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp):
        v = ref_eval_fraction(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    a, b = ref_eval_fraction(node.left), ref_eval_fraction(node.right)
    return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(node.op, ast.Div) else a / b


def test_arith_matches_reference_and_rejects_non_arithmetic():
    import ast
    rng = random.Random(1)
    for _ in range(500):
        def gen(d):
            if d == 0 or rng.random() < 0.3:
                return str(rng.randint(1, 100))
            op = rng.choice("+-*/")
            return f"({gen(d - 1)}{op}{gen(d - 1)})" if rng.random() < 0.5 else f"{gen(d - 1)} {op} {gen(d - 1)}"
        expr = gen(3)
        try:
            want = ref_eval_fraction(ast.parse(expr, mode="eval"))
        except ZeroDivisionError:
            with pytest.raises(arith.ArithError):
                arith.evaluate(expr)
            continue
        assert arith.evaluate(expr) == want, expr
    assert arith.evaluate("-(3) + +4") == 1 and arith.evaluate("30. / .5") == 60
    for bad in ["2**3", "8//2", "__import__('os')", "1e3", "2^3", "(1+2", "1+2)", "3 4", "", "abc", "1/(2-2)",
                "٣+1", "(" * 10_000 + "1" + ")" * 10_000, "9" * 100, "1" + "*99999999" * 5]:
        with pytest.raises(arith.ArithError):
            arith.evaluate(bad)


# ------------------------------------------------------------------------------- GSM8K
def test_gsm8k_every_test_answer_scores(test_sets):
    for item in test_sets["gsm8k"]:
        raw = item["solution"].split("####")[1].strip()  # as written, commas included
        comps = TASKS["gsm8k"].reward_components(FMT.format(r="r", a=raw), item)
        assert comps["correctness"] == 2.0, item
        # d1's soft-format regex has no DOTALL, so a newline inside <reasoning> fails it
        assert comps["strict_format"] == 0.5 and comps["soft_format"] == 0.0 and comps["xmlcount"] == 0.5
        assert comps["int"] == (0.5 if raw.isdigit() else 0.0)
        wrong = str(int(item["answer"]) + 1)
        assert TASKS["gsm8k"].reward_components(FMT.format(r="r", a=wrong), item)["correctness"] == 0.0
        assert score("gsm8k", FMT.format(r="r", a="\\boxed{%s}" % item["answer"]), item)["correct"]
        assert not score("gsm8k", FMT.format(r="r", a="\\boxed{%s}" % wrong), item)["correct"]


def test_gsm8k_rewards_details():
    item = {"answer": "18"}
    assert TASKS["gsm8k"].reward(FMT.format(r="r", a="18"), item) == 3.5
    assert gsm8k.soft_format("<reasoning>r</reasoning>\n<answer>18</answer>") == 0.5
    assert gsm8k.correctness("<answer>18.0</answer>", item) == 2.0  # numeric compare
    assert gsm8k.int_reward("<answer>\u0663</answer>") == 0.0  # Arabic-Indic digit
    multi = "<reasoning>\nline1\nline2\n</reasoning>\n<answer>\n18\n</answer>\n"
    assert gsm8k.strict_format(multi) == 0.0 and gsm8k.soft_format(multi) == 0.0  # d1: no DOTALL
    assert abs(gsm8k.xmlcount(FMT.format(r="r", a="1") + "tail") - (0.5 - 0.004 - 0.004)) < 1e-9
    # eval: first usable box, else the last number of the first <answer>
    assert gsm8k.extract_eval_answer("\\boxed{...} \\boxed{x=18 then 3}") == 18.0
    assert gsm8k.extract_eval_answer("<answer>so 4 and then 18</answer><answer>7</answer>") == 18.0
    assert gsm8k.extract_eval_answer("no answer 18") is None
    assert gsm8k.extract_eval_answer("\\boxed{1,000}") == 1.0  # d1 reads the first number of a box


# ----------------------------------------------------------------------------- MATH500
EQUIVALENT = [("\\frac{1}{2}", "0.5"), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"), ("\\dfrac{14}{3}", "\\frac{14}{3}"),
              ("\\frac{14}{3}", "14/3"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
              ("\\frac{ 1 }{ 2 }", "1/2"), ("10,\\!080", "10080"), ("1\\frac{4}{5}", "\\frac{9}{5}"),
              ("90^\\circ", "90"), ("\\$18.90", "18.9"), ("\\text{(C)}", "C"), ("3 \\pm 2\\sqrt{2}", "3+2\\sqrt{2},3-2\\sqrt{2}"),
              ("(-\\infty, 0]", "(-\\infty,0]"), ("x \\in [-2,7]", "[-2,7]"), ("2k+2", "2(k+1)"), ("4210_{5}", "4210_5"),
              ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}"),
              ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"), ("-2 + 7i", "7i - 2"), ("864 \\mbox{ inches}^2", "864")]
DIFFERENT = [("\\frac{1}{2}", "0.51"), ("(3,4]", "(3,4)"), ("\\sqrt{2}", "2"), ("2k", "2k+1"), ("x^2", "x^3"),
             ("\\text{(B)}", "C"), ("(1,2)", "(2,1)"), ("\\frac{1}{3}", "0.333"),
             # sign flips and operators in letter-only answers (MATH500 golds `\\pi`, `p - q`)
             ("\\pi", "-\\pi"), ("p-q", "p+q"), ("-\\infty", "\\infty"), ("x<y", "x>y"), ("a/b", "ab")]


def test_math_equivalences():
    for a, b in EQUIVALENT:
        assert math_equiv.is_equiv(a, b, timeout=5.0), (a, b)
        assert math_equiv.is_equiv(b, a, timeout=5.0), (b, a)
    assert math500.score("\\boxed{0.5}", {"answer": "\\frac{1}{2}"}, use_sympy=False)["correct"]  # Hendrycks rule
    assert not math500.score("\\boxed{\\sqrt2/2}", {"answer": "\\frac{\\sqrt{2}}{2}"}, use_sympy=False)["correct"]
    for a, b in DIFFERENT:
        assert not math_equiv.is_equiv(a, b, timeout=5.0), (a, b)


# sympy-layer regressions: letter-only answers compared by their letters alone, hedged or
# juxtaposed answers read as products, free symbols sampled only at positive points
SYMPY_DIFFERENT = [("2\\mathbf{v}", "2"), ("\\cot x", "-\\cot x"), ("-(p - q)", "p - q"), ("\\text{east}", "\\text{seat}"),
                   ("-\\text{Evelyn}", "\\text{Evelyn}"), ("1 \\text{ or } 6", "6"), ("2 \\text{ and } 3", "6"),
                   ("5 \\text{ or } -5", "0"), ("x \\text{ or } y", "xy"), ("2 3", "6"), ("4{10}", "40"),
                   ("\\frac{1}{2}3", "\\frac{3}{2}"), ("|x|", "x"), ("\\sqrt{x^2}", "x"),
                   ("x + |y|", "x + y"), ("a + b + c + |d|", "a + b + c + d"), ("\\sqrt{z^2} + x + y", "x + y + z")]
SYMPY_EQUIVALENT = [("\\text{Evelyn}", "Evelyn"), ("\\textbf{(C)}", "C"), ("xy", "yx"), ("2(3)", "6"),
                    ("2\\sqrt{3}", "\\sqrt{12}"), ("2x", "x \\cdot 2"), ("1\\frac{4}{5}", "1.8"),
                    ("5.4 \\text{ cents}", "5.4"), ("(3 \\text{ cm}, 4 \\text{ cm})", "(3, 4)"),
                    ("\\sqrt{x^2}", "|x|"), ("|x|^2", "x^2"), ("(a+b)^2", "a^2 + 2ab + b^2")]


def test_math_sympy_sign_hedge_juxtaposition_and_sampling():
    for a, b in SYMPY_EQUIVALENT:
        assert math_equiv.is_equiv(a, b, timeout=5.0) and math_equiv.is_equiv(b, a, timeout=5.0), (a, b)
    for a, b in SYMPY_DIFFERENT:
        assert not math_equiv.is_equiv(a, b, timeout=5.0) and not math_equiv.is_equiv(b, a, timeout=5.0), (a, b)
    six = {"answer": "6"}
    assert not math500.score("\\boxed{1 \\text{ or } 6}", six)["correct"]
    assert math500.correctness("<answer>\\boxed{2 \\text{ and } 3}</answer>", six) == 0.0
    # d1's Hendrycks rule cuts at `\\text{ `, so `6 \\text{ or } 7` matches 6 there (kept for parity)
    assert math500.score("\\boxed{6 \\text{ or } 7}", six, use_sympy=False)["correct"]


def test_math500_answers_score_themselves(test_sets):
    items = test_sets["math500"]
    for item in items:
        assert math500.gold_answer(item) == item["answer"]
        done = FMT.format(r="r", a="\\boxed{%s}" % item["answer"])
        assert TASKS["math500"].reward_components(done, item) == {"correctness": 2.0, "format": 1.0}, item
        assert score("math500", done, item)["correct"] and math500.score(done, item, use_sympy=False)["correct"]
    for item in items[:40]:
        assert math500.correctness(FMT.format(r="r", a="\\boxed{%s+1}" % item["answer"]), item) == 0.0, item


def test_math_format_reward_fixes_d1_escape_bug():
    assert math500.format_reward("<answer>\\boxed{1}</answer>") == 1.0
    assert math500.format_reward("<answer>1</answer>") == 0.75
    assert math500.format_reward("\\boxed{1}") == 0.5
    assert math500.format_reward("1") == 0.25


def test_math_worker_time_limit_kills_and_recovers():
    w = math_equiv.SympyWorker()
    try:
        assert w.equivalent("\\frac12", "0.5", timeout=60.0)  # starts the worker
        t = time.monotonic()
        assert w.equivalent("(x+1)^{1000}", "(x+2)^{999}", timeout=1e-4) is False
        assert time.monotonic() - t < 2.0 and w.kills == 1
        assert w.equivalent("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", timeout=60.0)  # fresh worker
    finally:
        w.close()


# --------------------------------------------------------------- Countdown and Sudoku
def test_countdown_solver_outputs_score_one(test_sets):
    items = test_sets["countdown"]
    for item in items:
        expr = generators.solve_countdown(item["numbers"], item["target"])
        assert TASKS["countdown"].reward(FMT.format(r="r", a=expr), item) == 1.0, item
        assert score("countdown", FMT.format(r="r", a="\\boxed{%s}" % expr), item)["correct"]
        latex = expr.replace("*", "\\times ").replace("/", "\\div ") + " = %d" % item["target"]
        assert score("countdown", "<answer>\\boxed{%s}</answer>" % latex, item)["correct"], latex
    item = items[0]
    expr = generators.solve_countdown(item["numbers"], item["target"])
    n0 = str(item["numbers"][0])
    broken = [expr + "+0", expr.replace(n0, str(int(n0) + 1), 1), "(%s)*1" % expr, n0, "2**3", "__import__('os')"]
    for b in broken:
        assert TASKS["countdown"].reward_components(FMT.format(r="r", a=b), item) == {"correctness": 0.0, "format": 0.1}
        assert not score("countdown", "\\boxed{%s}" % b, item)["correct"]
    assert TASKS["countdown"].reward("no tags " + expr, item) == 0.0


def test_countdown_rejects_leading_zeros():
    item = {"numbers": [30, 100, 93], "target": 37}
    # Python 3 (d1's eval) raises SyntaxError on `030`: format score only
    assert TASKS["countdown"].reward_components("<answer>030+100-93</answer>", item) == {"correctness": 0.0, "format": 0.1}
    assert not score("countdown", "\\boxed{030+100-93}", item)["correct"]
    assert TASKS["countdown"].reward("<answer>30+100-93</answer>", item) == 1.0
    for bad in ["030", "100-093", "(07)*1"]:
        with pytest.raises(arith.ArithError):
            arith.evaluate(bad)
    assert arith.evaluate("00+0") == 0 and arith.evaluate("030.5*2") == 61  # valid Python 3 literals


def test_sudoku_solutions_score_one(test_sets):
    items = test_sets["sudoku"]
    scores = []
    for item in items:
        assert item["solution"] in generators.solve_sudoku(item["puzzle"], limit=10)
        assert TASKS["sudoku"].reward(FMT.format(r="r", a=item["solution"]), item) == 1.0
        scores.append(score("sudoku", FMT.format(r="r", a=item["solution"]), item))
        broken = item["solution"][:-1] + ("1" if item["solution"][-1] != "1" else "2")
        if item["puzzle"][-1] == "0":
            assert TASKS["sudoku"].reward(FMT.format(r="r", a=broken), item) < 1.0
            assert not score("sudoku", FMT.format(r="r", a=broken), item)["correct"]
    assert aggregate("sudoku", scores) == {"n": 500.0, "accuracy": 1.0, "puzzle_accuracy": 1.0, "valid_accuracy": 1.0}
    item = items[0]
    grid = item["solution"]
    spaced = " ".join(grid[i:i + 4] for i in range(0, 16, 4))
    assert TASKS["sudoku"].reward("<answer>\n%s\n</answer>" % spaced, item) == 1.0
    half = grid[:8]  # padded with zeros
    r = TASKS["sudoku"].reward("<answer>%s</answer>" % half, item)
    assert 0.0 < r < 1.0 or item["puzzle"][:8].count("0") == 0
    s = score("sudoku", "blah ```\n%s\n``` <answer>junk```%s```</answer>" % ("1" * 16, grid), item)
    assert s["correct"] and s["cells_correct"] == s["cells_empty"]


def test_batch_rewards_shapes():
    item = {"numbers": [1, 2, 3], "target": 6}
    total, comps = batch_rewards("countdown", ["<answer>1+2+3</answer>", "<answer>1*2</answer>", "x"], [item] * 3)
    assert total.tolist() == pytest.approx([1.0, 0.1, 0.0]) and set(comps) == {"correctness", "format"}
    assert total.dtype == comps["format"].dtype == "float32" and comps["correctness"].tolist() == [1, 0, 0]
    recs = [score("countdown", c, item) for c in ["\\boxed{1+2+3}", "\\boxed{1*2*3}", "\\boxed{3}"]]
    assert aggregate("countdown", recs) == {"n": 3.0, "accuracy": pytest.approx(2 / 3)}


# ------------------------------------------------------------------------- adversarial
ADVERSARIAL = [
    "<answer>__import__('os').system('echo hi')</answer>",
    "<answer>9**9**9**9</answer>", "<answer>\\boxed{9^{9^{9^{9}}}}</answer>", "<answer>2^999999</answer>",
    "<answer>\\boxed{2^{999999}}</answer>", "<answer>\\boxed{10^{10^{10}}!}</answer>",
    "<answer>" + "9" * 1_000_000 + "</answer>", "\\boxed{" + "1" * 1_000_000 + "}",
    "<answer>" + "(" * 10_000 + "1" + ")" * 10_000 + "</answer>",
    "<answer>\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}</answer>",
    "<answer>\u0663\u0663</answer>", "<answer>\\boxed{\u0663}</answer>", "<answer>" * 50_000,
    "<reasoning>" + "</reasoning>" * 20_000 + "<answer>" + "x" * 100_000,
    "\\boxed{" * 50_000, "=" * 100_000 + "5", "```" * 30_000, "<answer>" + "1234567890123456 " * 10_000,
    "<answer>\\boxed{\\frac{1}{0}}</answer>", "<answer>\\boxed{x^{x^{x^{x^{x^{x}}}}}}</answer>",
    "<answer>\\boxed{\\sqrt[999999]{2}}</answer>", "<answer>\\boxed{(1" + "+1" * 3000 + ")}</answer>",
    "\x00\udcff<answer>\U0001F600</answer>",
]


@pytest.mark.parametrize("k", range(len(ADVERSARIAL)))
def test_adversarial_inputs_are_bounded(k, test_sets):
    text = ADVERSARIAL[k]
    for name, task in TASKS.items():
        item = test_sets[name][0]
        t = time.monotonic()
        comps = task.reward_components(text, item)
        rec = task.score(text, item)
        assert time.monotonic() - t < 5.0, (name, k)
        # Sudoku gives partial credit to any digits; everything else must score 0 correctness
        assert comps["correctness"] < (1.0 if name == "sudoku" else 1e-12), (name, k, comps)
        assert not rec["correct"], (name, k, rec)
        assert sum(comps.values()) <= 1.0, (name, comps)

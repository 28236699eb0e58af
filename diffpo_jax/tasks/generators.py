"""Seeded, reproducible puzzle generators with solvers: Countdown and 4x4 Sudoku.

Item `index` of a generator with `seed` depends only on (seed, index, settings) - random
access, so a grain `MapDataset` can wrap it. Items whose key is in `exclude` (the shipped
test sets: `countdown_key`, `sudoku_key`) are never produced.

    generate_countdown(index, seed) -> {"numbers": [a, b, c], "target": t, "solution": "(a+b)-c"}
    generate_sudoku(index, seed)    -> {"puzzle": "3102...", "solution": "3142..."}
"""

from __future__ import annotations

import threading

import itertools
from fractions import Fraction
from typing import Iterable, Optional

import numpy as np

MAX_TRIES = 1000


# ------------------------------------------------------------------------------ Countdown
def _combine(a: Fraction, b: Fraction, ea: str, eb: str):
    yield a + b, f"({ea}+{eb})"
    yield a - b, f"({ea}-{eb})"
    yield b - a, f"({eb}-{ea})"
    yield a * b, f"({ea}*{eb})"
    if b != 0:
        yield a / b, f"({ea}/{eb})"
    if a != 0:
        yield b / a, f"({eb}/{ea})"


def _expressions(items: list[tuple[Fraction, str]]):
    """Every (value, expression) using each item exactly once (pairwise reduction)."""
    if len(items) == 1:
        yield items[0]
        return
    for i, j in itertools.combinations(range(len(items)), 2):
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for value, expr in _combine(items[i][0], items[j][0], items[i][1], items[j][1]):
            yield from _expressions(rest + [(value, expr)])


def _strip_outer(expr: str) -> str:
    return expr[1:-1] if expr.startswith("(") and expr.endswith(")") else expr


def solve_countdown(numbers: Iterable[int], target) -> Optional[str]:
    """An expression using each number once with + - * / whose exact value is `target`, or
    None. Exhaustive: practical for up to 5 numbers."""
    items = [(Fraction(int(n)), str(int(n))) for n in numbers]
    goal = Fraction(target)
    for value, expr in _expressions(items):
        if value == goal:
            return _strip_outer(expr)
    return None


def countdown_reachable(numbers: Iterable[int]) -> dict[Fraction, str]:
    """Every exact value reachable from `numbers` -> one expression for it."""
    out: dict[Fraction, str] = {}
    for value, expr in _expressions([(Fraction(int(n)), str(int(n))) for n in numbers]):
        out.setdefault(value, _strip_outer(expr))
    return out


def countdown_key(numbers: Iterable[int], target) -> tuple:
    """Identity of a Countdown puzzle: (sorted numbers, target)."""
    return tuple(sorted(int(n) for n in numbers)), int(target)


def generate_countdown(index: int, seed: int = 0, *, num_numbers: int = 3, max_number: int = 100,
                       min_target: int = 1, max_target: int = 100, exclude=frozenset()) -> dict:
    """Countdown item `index`: numbers uniform in [1, max_number], target uniform among the
    integers in [min_target, max_target] reachable from them, (numbers, target) not in
    `exclude` (keys from `countdown_key`)."""
    if num_numbers < 2 or num_numbers > 5:
        raise ValueError(f"num_numbers={num_numbers}: the exhaustive solver supports 2..5 numbers")
    rng = np.random.default_rng([seed, index, 0xC0DE])
    for _ in range(MAX_TRIES):
        numbers = [int(n) for n in rng.integers(1, max_number + 1, size=num_numbers)]
        reach = countdown_reachable(numbers)
        key_nums = tuple(sorted(numbers))
        targets = sorted(int(v) for v in reach if v.denominator == 1 and min_target <= v <= max_target
                         and (key_nums, int(v)) not in exclude)
        if targets:
            target = targets[int(rng.integers(len(targets)))]
            return {"numbers": numbers, "target": target, "solution": reach[Fraction(target)]}
    raise RuntimeError(f"no Countdown puzzle found in {MAX_TRIES} tries (index={index}, seed={seed}); "
                       "widen the number or target range")


# --------------------------------------------------------------------------------- Sudoku
_UNITS = ([[r * 4 + c for c in range(4)] for r in range(4)]
          + [[r * 4 + c for r in range(4)] for c in range(4)]
          + [[(br + r) * 4 + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)])
_PEERS = [sorted({p for u in _UNITS if i in u for p in u} - {i}) for i in range(16)]


def solve_sudoku(puzzle: str, limit: int = 2) -> list[str]:
    """Up to `limit` solutions of a 4x4 puzzle (16 chars row-major, '0' = empty) by
    backtracking; [] when it has none or the givens conflict."""
    if len(puzzle) != 16 or any(ch not in "01234" for ch in puzzle):
        raise ValueError(f"a 4x4 puzzle is 16 characters of 0-4, got {puzzle!r}")
    grid = [int(ch) for ch in puzzle]
    for i, v in enumerate(grid):
        if v and any(grid[p] == v for p in _PEERS[i]):
            return []
    out: list[str] = []

    def search() -> None:
        empties = [i for i in range(16) if grid[i] == 0]
        if not empties:
            out.append("".join(map(str, grid)))
            return
        # most constrained cell first
        best, options = None, None
        for i in empties:
            opts = [v for v in range(1, 5) if all(grid[p] != v for p in _PEERS[i])]
            if options is None or len(opts) < len(options):
                best, options = i, opts
                if len(opts) <= 1:
                    break
        for v in options:
            grid[best] = v
            search()
            grid[best] = 0
            if len(out) >= limit:
                return

    search()
    return out


def is_valid_solution(grid: str) -> bool:
    """Every row, column and 2x2 box of the 16-char grid holds 1-4 once."""
    return len(grid) == 16 and all(sorted(grid[i] for i in u) == list("1234") for u in _UNITS)


def _all_grids() -> list[str]:
    return solve_sudoku("0" * 16, limit=10_000)


_GRIDS: list[str] = []
_GRIDS_LOCK = threading.Lock()


def _valid_grids() -> list[str]:
    """The 288 valid 4x4 grids, computed once. Thread-safe: grain's prefetch threads call the
    generator concurrently, and an unguarded lazy fill let a thread draw from a half-built list
    (different puzzles on every run)."""
    with _GRIDS_LOCK:
        if not _GRIDS:
            _GRIDS.extend(_all_grids())
    return _GRIDS


def sudoku_key(puzzle: str) -> str:
    return puzzle


def generate_sudoku(index: int, seed: int = 0, *, min_empty: int = 8, max_empty: int = 8,
                    exclude=frozenset()) -> dict:
    """Sudoku item `index`: a uniformly drawn full 4x4 grid with cells removed in random order
    while the puzzle keeps a unique solution, until it has k empty cells, k uniform in
    [min_empty, max_empty] (d1's test set has 8). Puzzles in `exclude` are skipped."""
    if not 0 <= min_empty <= max_empty <= 12:
        raise ValueError(f"need 0 <= min_empty <= max_empty <= 12 (4 givens at least), "
                         f"got {min_empty}, {max_empty}")
    grids = _valid_grids()
    rng = np.random.default_rng([seed, index, 0x5D0C])
    for _ in range(MAX_TRIES):
        solution = grids[int(rng.integers(len(grids)))]
        k = int(rng.integers(min_empty, max_empty + 1))
        cells = list(solution)
        removed = 0
        for i in rng.permutation(16):
            if removed == k:
                break
            keep, cells[i] = cells[i], "0"
            if len(solve_sudoku("".join(cells))) == 1:
                removed += 1
            else:
                cells[i] = keep
        puzzle = "".join(cells)
        if removed == k and sudoku_key(puzzle) not in exclude:
            return {"puzzle": puzzle, "solution": solution}
    raise RuntimeError(f"no unique Sudoku with {min_empty}..{max_empty} empty cells in {MAX_TRIES} "
                       f"tries (index={index}, seed={seed})")

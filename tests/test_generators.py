"""Countdown and 4x4 Sudoku generators: solvable/unique, reproducible, disjoint from the test sets."""
import pytest

from conftest import SHARED_DATA
from diffpo_jax.tasks import TASKS, arith, generators
from diffpo_jax.tasks.data import heldout_keys, load_items, train_source


def test_countdown_generator_reproducible_and_solvable():
    items = [generators.generate_countdown(i, seed=3) for i in range(200)]
    assert items == [generators.generate_countdown(i, seed=3) for i in range(200)]
    assert items != [generators.generate_countdown(i, seed=4) for i in range(200)]
    for it in items:
        assert len(it["numbers"]) == 3 and all(1 <= n <= 100 for n in it["numbers"]) and 1 <= it["target"] <= 100
        assert arith.uses_numbers_once(it["solution"], it["numbers"])
        assert arith.evaluate(it["solution"]) == it["target"]
        assert TASKS["countdown"].reward("<answer>%s</answer>" % it["solution"], it) == 1.0
    four = generators.generate_countdown(0, seed=1, num_numbers=4, max_number=20, max_target=500)
    assert len(four["numbers"]) == 4 and arith.evaluate(four["solution"]) == four["target"]


def test_countdown_solver_and_unsolvable():
    assert arith.evaluate(generators.solve_countdown([2, 3, 4], 5)) == 5
    assert generators.solve_countdown([1, 1, 1], 100) is None
    assert arith.evaluate(generators.solve_countdown([3, 3, 8, 8], 24)) == 24  # needs fractions: 8/(3-8/3)


def test_countdown_exclusion():
    first = generators.generate_countdown(7, seed=0)
    key = generators.countdown_key(first["numbers"], first["target"])
    other = generators.generate_countdown(7, seed=0, exclude=frozenset({key}))
    assert generators.countdown_key(other["numbers"], other["target"]) != key


def test_sudoku_generator_unique_reproducible():
    items = [generators.generate_sudoku(i, seed=5) for i in range(100)]
    assert items == [generators.generate_sudoku(i, seed=5) for i in range(100)]
    for it in items:
        assert it["puzzle"].count("0") == 8
        assert generators.solve_sudoku(it["puzzle"]) == [it["solution"]]  # exactly one solution
        assert generators.is_valid_solution(it["solution"])
        assert all(p in ("0", s) for p, s in zip(it["puzzle"], it["solution"]))
    hard = [generators.generate_sudoku(i, seed=1, min_empty=10, max_empty=12) for i in range(20)]
    assert all(10 <= h["puzzle"].count("0") <= 12 and len(generators.solve_sudoku(h["puzzle"])) == 1 for h in hard)
    with pytest.raises(ValueError, match="max_empty"):
        generators.generate_sudoku(0, min_empty=5, max_empty=13)


def test_sudoku_solver():
    assert len(generators._all_grids()) == 288  # all 4x4 Sudoku grids
    assert generators.solve_sudoku("1100" + "0" * 12) == []  # conflicting givens
    with pytest.raises(ValueError, match="16 characters"):
        generators.solve_sudoku("123")
    first = generators.generate_sudoku(0, seed=0)
    other = generators.generate_sudoku(0, seed=0, exclude=frozenset({first["puzzle"]}))
    assert other["puzzle"] != first["puzzle"]


@pytest.mark.parametrize("task", ["countdown", "sudoku"])
def test_training_sources_disjoint_from_test_sets(task):
    held = heldout_keys(task, SHARED_DATA)
    assert len(held) == len(load_items(task, "test", SHARED_DATA))
    src = train_source(task, SHARED_DATA, size=3000, seed=0)
    keys = set()
    for i in range(len(src)):
        it = src[i]
        key = (generators.countdown_key(it["numbers"], it["target"]) if task == "countdown"
               else generators.sudoku_key(it["puzzle"]))
        assert key not in held
        keys.add(key)
    assert len(keys) > 2500  # mostly distinct puzzles
    assert src[17] == train_source(task, SHARED_DATA, size=3000, seed=0)[17]

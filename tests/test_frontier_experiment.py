"""The frontier / OOD study (diffpo_jax/frontier_experiment.py): its targets, its scoring and
tables on known points, and one tiny end-to-end run (1 RL step, 2 puzzles) that resumes from its cache."""
import json
import os

import pytest

from diffpo_jax import frontier_experiment as fx
from diffpo_jax.tasks import generators
from diffpo_jax.tasks.data import heldout_keys


def test_targets_are_deterministic_and_disjoint_from_the_test_set():
    a, b = fx.target_items("empty4", 5), fx.target_items("empty4", 5)
    assert a == b and all(it["puzzle"].count("0") == 4 for it in a)
    hard = fx.target_items("empty11", 3)
    assert all(it["puzzle"].count("0") == 11 for it in hard)
    assert not {it["puzzle"] for it in a + hard} & heldout_keys("sudoku")
    assert all(generators.solve_sudoku(it["puzzle"]) == [it["solution"]] for it in a + hard)
    assert fx.target_items("test", 4) == fx.target_items("len32", 4)  # same puzzles, longer completion


def _pt(model, target, rule, knob, nfe, acc, **kw):
    return {"model": model, "target": target, "rule": rule, "knob": knob, "nfe_mean": nfe, "accuracy": acc,
            "puzzle_accuracy": acc / 2, **kw}


def test_compare_scores_each_seed_against_the_targets_own_frontier():
    pts = [_pt("sft", "test", "eb", 0.3, 20.0, 0.75), _pt("sft", "test", "eb", 3.0, 4.0, 0.65),
           _pt("sft", "test", "threshold", 0.9, 10.0, 0.74), _pt("sft", "test", "threshold", 0.5, 2.0, 0.40),
           _pt("sft", "empty4", "eb", 0.3, 20.0, 0.90), _pt("sft", "empty4", "eb", 3.0, 4.0, 0.80)]
    pts += [_pt("prompt_seed0", "test", "prompt head", None, 5.0, 0.70, head="prompt", seed=0, gamma=1.0),
            _pt("prompt_seed1", "test", "prompt head", None, 8.0, 0.70, head="prompt", seed=1, gamma=0.8),
            _pt("prompt_seed0", "empty4", "prompt head", None, 3.0, 0.85, head="prompt", seed=0, gamma=1.0),
            _pt("prompt_seed0_llm", "test", "eb", 3.0, 4.0, 0.60, rl_head="prompt", seed=0),
            _pt("prompt_seed0_llm", "test", "eb", 1.0, 9.0, 0.72, rl_head="prompt", seed=0)]
    cmp = fx.compare(pts, ["prompt"], [0, 1], ["test", "empty4"])
    assert cmp["test"]["frontier"] == [(2.0, 0.40), (4.0, 0.65), (10.0, 0.74), (20.0, 0.75)]
    # frontier reaches 0.70 at 4 + 6 * (0.05 / 0.09) NFE; seed 0 needs 5, seed 1 needs 8
    ref = 4.0 + 6.0 * 0.05 / 0.09
    assert cmp["test"]["prompt"]["saved"] == pytest.approx([1 - 5.0 / ref, 1 - 8.0 / ref])
    assert cmp["test"]["prompt"]["gain"] == pytest.approx([0.70 - (0.65 + 0.09 / 6), 0.70 - (0.65 + 0.09 * 4 / 6)])
    # against its own LLM's fixed γ (seed 0 only: seed 1 has none): 0.70 at 4 + 5 * (0.10 / 0.12) NFE
    assert cmp["test"]["prompt"]["saved_own"] == pytest.approx([1 - 5.0 / (4.0 + 5.0 * 0.10 / 0.12), None])
    assert cmp["empty4"]["prompt"]["gain"] == [None]  # 3 NFE: fewer than any fixed setting measured there
    md = fx.tables(cmp, pts, ["prompt"], gammas=(0.3, 3.0), thresholds=(0.9, 0.5))
    assert "| test | prompt head (+ its LoRA) |" in md and "(1 outside)" in md
    assert "75.0 / 37.5 @ 20.00" in md


@pytest.mark.parametrize("bad", [["--heads", "both"], ["--targets", "empty4"], ["--seeds", "a"]])
def test_cli_refuses_bad_arguments(bad, capsys):
    with pytest.raises(SystemExit):
        fx.main(bad)
    assert "error" in capsys.readouterr().err


def test_tiny_run_end_to_end_and_resumes(tmp_path):
    kw = dict(heads=["step"], seeds=[0], out_dir=str(tmp_path), n_items=2, steps=1, gammas=[1.0], thresholds=[0.9],
              targets=["test"], rl_gammas=(), rl_thresholds=(), progress=False)
    res = fx.run(**kw)
    assert {p["target"] for p in res["points"]} == {"test"}
    step = [p for p in res["points"] if p.get("head") == "step"]
    assert len(step) == 1 and len(step[0]["gammas"]) == 2 and step[0]["nfe_mean"] > 0
    for name in ("results.json", "frontier.md", "frontier.png", "ood.png", "gammas.png"):
        assert os.path.getsize(tmp_path / name) > 0
    cached = sorted(os.listdir(tmp_path / "evals"))
    assert len(cached) == 2 + 1  # SFT: 2 rules; the step head (its LLM's fixed rules: the compare test)
    assert "| test | step head (+ its LoRA) |" in (tmp_path / "frontier.md").read_text()
    again = fx.run(**kw)  # everything from the cache and the finished run's checkpoint
    assert json.dumps(again["points"]) == json.dumps(res["points"])

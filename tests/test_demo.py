"""SFT script and the embedded demo, at smoke-test size: SFT writes an HF checkpoint that the
trainer's loader reads; the demo runs end to end on the shipped model (before/after, plot)."""

import json
import os

import pytest

from configs import demo_sudoku, sft_sudoku
from diffpo_jax.convert.hf_import import load_hf


def test_sft_writes_a_loadable_checkpoint(tmp_path):
    from diffpo_jax.sft import run_sft

    c = sft_sudoku.get_config()
    c.sft.steps = 3
    c.sft.batch_size = 8
    c.sft.eval_items = 8
    c.train.eval_batch = 8
    c.sft.out_dir = str(tmp_path / "sft")
    info = run_sft(c, progress=False)
    assert info["steps"] == 3 and info["final_loss"] == info["final_loss"] and info["eval"]["n"] == 8
    model = load_hf(str(tmp_path / "sft"), eot_token_id=4, param_dtype="float32")
    assert model.cfg.d_model == 128 and model.cfg.mask_token_id == 5
    assert os.path.isfile(tmp_path / "sft" / "tokenizer.json")
    assert json.load(open(tmp_path / "sft" / "sft_info.json"))["result"]["steps"] == 3


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_shipped_demo_model_is_small_and_documented(family):
    d = demo_sudoku.DEMO_MODELS[family]
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert size <= 10 * 2**20
    info = json.load(open(os.path.join(d, "sft_info.json")))
    assert info["seed"] == 0 and info["sft"]["steps"] == sft_sudoku.get_config(family).sft.steps
    assert load_hf(d, eot_token_id=4, param_dtype="float32").cfg.family == family


def test_demo_runs_end_to_end(tmp_path, capsys):
    from diffpo_jax.demo import NFE_TOL, run_demo
    from diffpo_jax.paper_table import make_table

    s = run_demo("joint", steps=1, out_dir=str(tmp_path / "demo"), eval_items=8, progress=True, sweep=False,
                 overrides={"train.prompts_per_step": 1, "train.eval_batch": 8})
    assert s["before"]["n"] == 8 and s["after"]["n"] == 8 and "adaptive" in s["after"]["label"]
    assert os.path.isfile(tmp_path / "demo" / "pareto.png")
    saved = json.load(open(tmp_path / "demo" / "summary.json"))
    assert saved["steps"] == 1
    # the SFT model at the trained model's NFE (sweep=False brackets it itself), and the verdict
    eq = saved["sft_equal_nfe"]
    assert eq["n"] == 8 and eq["target_nfe"] == s["after"]["nfe_mean"] and len(eq["tries"]) <= 3
    assert eq["matched"] == (abs(eq["nfe_mean"] - s["after"]["nfe_mean"]) <= NFE_TOL)
    assert eq["matched"] or "NOT equal" in saved["equal_nfe_verdict"]  # else reported as the search's edge
    assert set(saved["equal_nfe_gain"]) == {"cells", "puzzles"}
    assert saved["equal_nfe_gain"]["cells"] == pytest.approx(100 * (s["after"]["accuracy"] - eq["accuracy"]), abs=1e-3)
    assert eq in saved["points"] and eq["series"] == saved["before"]["series"]
    out = capsys.readouterr().out
    assert saved["equal_nfe_verdict"] in out and "(equal NFE)" in out
    assert saved["equal_nfe_verdict"].startswith("[demo] at ")
    table = make_table({"joint": [saved]})
    assert "Δ cells vs SFT @ equal NFE" in table.splitlines()[0] and "Δ puzzles vs SFT @ equal NFE" in table
    assert f"| {saved['equal_nfe_gain']['cells']:+.1f} |" in table.splitlines()[3]  # one seed: no interval
    # another method in the same directory is refused (the joint checkpoint holds the head), not resumed
    from diffpo_jax import experiment

    with pytest.raises(experiment.ConfigError, match="cannot restore into this config's parameters"):
        run_demo("d1", steps=1, out_dir=str(tmp_path / "demo"), eval_items=8, progress=False, sweep=False,
                 overrides={"train.prompts_per_step": 1, "train.eval_batch": 8})


def test_dream_demo_runs_end_to_end(tmp_path):
    """The same demo on the shipped Dream-architecture model (its ChatML tokenizer, the shift)."""
    from diffpo_jax.demo import run_demo

    s = run_demo("joint", steps=1, out_dir=str(tmp_path / "dream"), eval_items=8, progress=False, sweep=False,
                 overrides={"train.prompts_per_step": 1, "train.eval_batch": 8}, family="dream")
    assert s["family"] == "dream" and s["before"]["n"] == 8 and "adaptive" in s["after"]["label"]
    assert s["before"]["accuracy"] > 0.3  # the shipped SFT model has learnt the task


def test_demo_cli_gives_each_method_and_seed_its_own_dir_and_one_line_errors(monkeypatch):
    from diffpo_jax import demo, experiment

    dirs = {demo.default_out_dir(m, s) for m in demo_sudoku.METHODS for s in (0, 1)}
    assert len(dirs) == 2 * len(demo_sudoku.METHODS) and demo.default_out_dir("joint", 0) == os.path.join("runs", "demo_joint_seed0")
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: calls.append((a, k)))
    assert demo.main(["--method", "2mf_is", "--seed", "3"]) == 0
    assert calls == [(("2mf_is", 0, os.path.join("runs", "demo_2mf_is_seed3"), 3, 0), {"family": "llada"})]
    assert demo.main(["--family", "dream"]) == 0
    assert calls[-1] == (("joint", 0, os.path.join("runs", "demo_dream_joint_seed0"), 0, 0), {"family": "dream"})

    def refuse(*a, **k):
        raise experiment.ConfigError("cannot restore into this config's parameters")

    monkeypatch.setattr(demo, "run_demo", refuse)
    with pytest.raises(SystemExit, match="^config error: cannot restore"):
        demo.main(["--method", "d1", "--out_dir", "runs/x"])
    # multi-host start-up comes first (a no-op on one host)
    from diffpo_jax import distributed

    monkeypatch.setattr(distributed, "maybe_initialize", lambda: calls.append("init"))
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: calls.append("run"))
    demo.main([])
    assert calls[-2:] == ["init", "run"]


def test_gamma_for_nfe_interpolates_log_gamma_and_extrapolates_by_secant():
    from diffpo_jax.demo import gamma_for_nfe

    # bracketed: log γ linear in NFE between the closest points above and below
    g, bracketed = gamma_for_nfe([(0.1, 24.0), (1.0, 12.0), (3.0, 4.0)], 18.0)
    assert bracketed and g == pytest.approx(0.1 ** 0.5)
    g, bracketed = gamma_for_nfe([(3.0, 4.0), (0.1, 24.0), (1.0, 12.0)], 8.0)
    assert bracketed and g == pytest.approx(3 ** 0.5)
    assert gamma_for_nfe([(0.1, 24.0), (1.0, 12.0)], 12.0) == (pytest.approx(1.0), True)
    # beyond the points: the secant through the two nearest, the step capped at a factor 4
    g, bracketed = gamma_for_nfe([(0.3, 18.0), (1.0, 12.0)], 11.0)
    assert not bracketed and 1.0 < g < 4.0
    assert g == pytest.approx(1.0 * (1.0 / 0.3) ** (1 / 6))
    assert gamma_for_nfe([(0.3, 18.0), (1.0, 12.0)], 1.0)[0] == pytest.approx(4.0)
    assert gamma_for_nfe([(0.3, 18.0), (1.0, 12.0)], 30.0)[0] == pytest.approx(0.3 / 4)
    # one point, or NFE not falling with γ: ×/÷ 2 the right way
    assert gamma_for_nfe([(0.3, 18.0)], 10.0)[0] == pytest.approx(0.6)
    assert gamma_for_nfe([(0.3, 18.0), (1.0, 19.0)], 20.0)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        gamma_for_nfe([(0.0, 24.0)], 10.0)


def test_match_nfe_refines_to_the_target_or_reports_the_edge():
    from diffpo_jax.demo import match_nfe

    calls = []

    def eval_at(g):  # a smooth NFE(γ), falling from 24, that log-linear interpolation misses at first
        calls.append(g)
        return {"nfe_mean": 1 + 23 / (1 + 4 * g), "accuracy": 0.7}

    sweep = [{**eval_at(g), "gamma": g} for g in (0.1, 0.3, 1.0, 3.0)]
    calls.clear()
    best, tried = match_nfe(eval_at, sweep, 6.0, tol=0.05)
    assert best["matched"] and abs(best["nfe_mean"] - 6.0) <= 0.05 and best["nfe_gap"] == best["nfe_mean"] - 6.0
    assert 1 <= len(tried) <= 3 and calls == [t["gamma"] for t in tried] and best["target_nfe"] == 6.0
    # unreachable (the SFT model never takes more than 24 NFE): the closest try, not matched
    best, tried = match_nfe(eval_at, sweep, 30.0)
    assert not best["matched"] and len(tried) == 3 and best["gamma"] == min(t["gamma"] for t in tried)
    # a plateau stops the search instead of re-evaluating the same γ
    calls.clear()
    best, tried = match_nfe(lambda g: calls.append(g) or {"nfe_mean": 24.0}, [{"gamma": 0.1, "nfe_mean": 24.0}], 10.0)
    assert not best["matched"] and len(calls) == 1
    # a known point within tol is the answer: nothing is evaluated again
    calls.clear()
    known = [{"gamma": 0.3, "nfe_mean": 24.0, "accuracy": 0.4}, {"gamma": 1.0, "nfe_mean": 12.0, "accuracy": 0.3}]
    best, tried = match_nfe(eval_at, known, 24.1)
    assert best["matched"] and best["accuracy"] == 0.4 and best["gamma"] == 0.3 and tried == [] and calls == []


def test_equal_nfe_verdict_is_computed_from_the_numbers():
    from diffpo_jax.demo import equal_nfe_verdict

    after = {"accuracy": 0.708, "puzzle_accuracy": 0.195, "nfe_mean": 5.46}
    gain, text = equal_nfe_verdict(after, {"accuracy": 0.695, "puzzle_accuracy": 0.155, "nfe_mean": 5.40, "gamma": 1.6})
    assert gain == {"cells": pytest.approx(1.3), "puzzles": pytest.approx(4.0)}
    assert text == "[demo] at equal NFE (5.46 vs 5.40) RL is +1.3 cell points / +4.0 puzzle points over the SFT model"
    gain, text = equal_nfe_verdict(after, {"accuracy": 0.721, "puzzle_accuracy": 0.215, "nfe_mean": 5.5})
    assert gain == {"cells": pytest.approx(-1.3), "puzzles": pytest.approx(-2.0)}
    assert text == ("[demo] at equal NFE (5.46 vs 5.50) RL does NOT beat the SFT model "
                    "(−1.3 cell points / −2.0 puzzle points)")
    assert "does NOT beat" in equal_nfe_verdict(after, dict(after))[1]  # a tie does not beat
    assert "is mixed" in equal_nfe_verdict(after, {"accuracy": 0.7, "puzzle_accuracy": 0.2, "nfe_mean": 5.46})[1]
    text = equal_nfe_verdict(after, {"accuracy": 0.6, "puzzle_accuracy": 0.1, "nfe_mean": 4.0, "gamma": 8.0})[1]
    assert "NOT equal" in text and "γ=8" in text and "edge" in text


def test_paper_table_has_the_equal_nfe_columns():
    from diffpo_jax.paper_table import make_table

    before = {"gamma": 0.3, "accuracy": 0.745, "puzzle_accuracy": 0.371, "nfe_mean": 18.8}
    after = {"accuracy": 0.708, "puzzle_accuracy": 0.195, "nfe_mean": 5.5}
    def run(cells, puzzles, ok=True):
        return {"before": before, "after": after, "equal_nfe_gain": {"cells": cells, "puzzles": puzzles},
                "sft_equal_nfe": {"matched": ok}}

    lines = make_table({"joint": [run(1.0, 2.0), run(3.0, 4.0)], "d1": [{"before": before, "after": after}],
                        "2mf": [run(-1.0, 0.0, ok=False)]}).splitlines()
    assert lines[0].split(" | ")[4:6] == ["Δ cells vs SFT @ equal NFE", "Δ puzzles vs SFT @ equal NFE"]
    assert "| 74.5 ± 0.0 | 37.1 ± 0.0 | 18.80 ± 0.00 | — | — | 2 |" in lines[2]
    assert lines[3].endswith("| +2.0 ± 12.7 | +3.0 ± 12.7 | 2 |")  # 95% t-interval, 1 degree of freedom
    assert lines[4].endswith("| — | — | 1 |")  # a summary from before the equal-NFE point
    assert lines[5].endswith("| -1.0 † | +0.0 † | 1 |") and lines[-1].startswith("† ")  # one seed: no interval

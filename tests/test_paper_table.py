"""diffpo_jax.paper_table's entry point starts multi-host like the other CLIs."""
import pytest

from diffpo_jax import demo, distributed, paper_table


def test_main_calls_maybe_initialize_before_any_run(monkeypatch, tmp_path):
    """main() calls distributed.maybe_initialize() (a no-op on one host) before the first demo run."""
    calls = []

    class Stop(Exception):
        pass

    def run_demo(*a, **k):
        calls.append("run_demo")
        raise Stop

    monkeypatch.setattr(distributed, "maybe_initialize", lambda *a, **k: calls.append("maybe_initialize") or False)
    monkeypatch.setattr(demo, "run_demo", run_demo)
    with pytest.raises(Stop):
        paper_table.main(["--methods", "d1", "--seeds", "0", "--out_dir", str(tmp_path)])
    assert calls == ["maybe_initialize", "run_demo"]


def _summary(before_acc, after_acc, seed, nfe=10.0):
    pt = lambda a, n: {"accuracy": a, "puzzle_accuracy": a / 2, "nfe_mean": n, "gamma": 0.3}  # noqa: E731
    return {"seed": seed, "before": pt(before_acc, 12.0), "after": pt(after_acc, nfe)}


def test_paired_table_pairs_by_seed_and_says_within_noise():
    results = {"d1": [_summary(0.5, 0.52, 0), _summary(0.5, 0.60, 1), _summary(0.5, 0.55, 2)],
               "2mf": [_summary(0.5, 0.61, 1), _summary(0.5, 0.56, 2), _summary(0.5, 0.53, 0)],  # another order
               "2mf_is": [_summary(0.5, 0.70, 5)]}  # no seed in common with d1 / 2mf
    lines = paper_table.paired_table(results).splitlines()
    two_vs_d1 = next(line for line in lines if line.startswith("| 2-MF − d1"))
    assert "| 1.0 ± 0.0 |" in two_vs_d1 and "higher" in two_vs_d1  # +1 point in every seed: no noise
    d1_vs_sft = next(line for line in lines if line.startswith("| d1 (mean-field) − SFT"))
    assert "5.7 ±" in d1_vs_sft and "-2.00" in d1_vs_sft  # mean of +2, +10, +5 cell points; NFE 10 vs 12
    is_rows = [line.split(" | ")[0] for line in lines if line.startswith("| 2-MF + IS −")]
    assert is_rows == ["| 2-MF + IS − SFT model"]  # no seed in common with d1 / 2-MF: no paired row


def test_parse_set_and_settings_guard(tmp_path):
    assert paper_table.parse_set(["rl.lr=3e-4", "train.steps=60", "task.name=sudoku"]) == {
        "rl.lr": 3e-4, "train.steps": 60, "task.name": "sudoku"}
    with pytest.raises(SystemExit, match="section.field=value"):
        paper_table.parse_set(["lr=3e-4"])
    run = str(tmp_path / "d1_seed0")
    paper_table._settings_guard(run, {"steps": 0, "overrides": {"rl.lr": 1e-3}})
    paper_table._settings_guard(run, {"steps": 0, "overrides": {"rl.lr": 1e-3}})  # same: fine
    with pytest.raises(SystemExit, match="another --out_dir"):
        paper_table._settings_guard(run, {"steps": 0, "overrides": {"rl.lr": 5e-5}})


def test_curves_are_read_and_plotted(tmp_path):
    import json

    for seed in (0, 1):
        d = tmp_path / f"d1_seed{seed}"
        d.mkdir()
        with open(d / "metrics.jsonl", "w") as f:
            for step in (1, 2, 3):
                f.write(json.dumps({"step": step, "reward/mean": 0.1 * step + seed, "train/surrogate_kl": 5.0}) + "\n")
    curves = {"d1": [paper_table.read_curves(str(tmp_path / f"d1_seed{s}")) for s in (0, 1)]}
    assert curves["d1"][1]["reward/mean"].tolist() == pytest.approx([1.1, 1.2, 1.3])
    out = paper_table.plot_curves(curves, str(tmp_path / "curves.png"), "t")
    assert (tmp_path / "curves.png").stat().st_size > 1000 and out.endswith("curves.png")

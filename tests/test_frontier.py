"""The fixed-rule frontier and NFE saved at equal accuracy (diffpo_jax/frontier.py)."""
import json

import pytest

from diffpo_jax import frontier as fr


def test_frontier_drops_dominated_points_and_interpolates():
    front = fr.pareto_frontier([(24, 0.74), (18.8, 0.745), (8.7, 0.718), (4.0, 0.684), (10, 0.70)])
    assert front == [(4.0, 0.684), (8.7, 0.718), (18.8, 0.745)]  # (10, .70) and (24, .74) are dominated
    assert fr.frontier_nfe(front, 0.718) == pytest.approx(8.7)
    assert fr.frontier_nfe(front, 0.701) == pytest.approx(4.0 + 0.5 * 4.7)
    assert fr.frontier_nfe(front, 0.75) is None and fr.frontier_nfe(front, 0.60) is None
    assert fr.nfe_saved(front, 6.35 * 0.78, 0.701) == pytest.approx(0.22)  # the paper's figure, for scale
    assert fr.nfe_saved(front, 8.7, 0.718) == pytest.approx(0.0)
    assert fr.nfe_saved(front, 10.0, 0.718) < 0


def test_accuracy_at_equal_nfe():
    front = fr.pareto_frontier([(4.0, 0.684), (8.7, 0.718), (18.8, 0.745)])
    assert fr.frontier_accuracy(front, 4.0) == pytest.approx(0.684)
    assert fr.frontier_accuracy(front, 6.35) == pytest.approx(0.684 + 0.5 * 0.034)
    assert fr.frontier_accuracy(front, 30.0) == pytest.approx(0.745)  # beyond the last point: its accuracy
    assert fr.frontier_accuracy(front, 3.0) is None  # fewer NFE than any fixed setting: not measured
    assert fr.accuracy_gain(front, 8.7, 0.73) == pytest.approx(0.012)
    assert fr.accuracy_gain(front, 3.0, 0.9) is None


def test_cli_reads_demo_summaries(tmp_path, capsys):
    pts = [{"series": fr.SFT_SERIES, "nfe_mean": n, "accuracy": a} for n, a in [(4.0, 0.68), (8.0, 0.72)]]
    runs = []
    for i, (n, a) in enumerate([(5.0, 0.70), (5.5, 0.70), (2.0, 0.5)]):
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps({"points": pts, "after": {"nfe_mean": n, "accuracy": a}}))
        runs.append(str(path))
    assert fr.main(runs) == 0
    out = capsys.readouterr().out
    assert "+16.7% NFE saved" in out and "+8.3% NFE saved" in out and "not compared" in out
    assert "over 2 runs: +12.5" in out
    with pytest.raises(SystemExit, match="not a demo summary.json"):
        fr.main([str(tmp_path / "missing.json")])

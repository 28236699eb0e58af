"""gradient_noise: the noise-scale estimators recover a known signal and noise, and the command
runs end to end on the shipped demo model."""

import json
import os

import numpy as np
import pytest

from diffpo_jax import gradient_noise as gn


def test_noise_scale_recovers_a_known_signal_and_noise():
    rng = np.random.default_rng(0)
    d, k, b, unit_trace = 400, 200, 8, 50.0  # per-unit noise covariance (50 / d)·I, so tr Σ = 50
    signal = rng.normal(size=d)
    signal /= np.linalg.norm(signal)  # |G|² = 1
    g = signal + rng.normal(scale=np.sqrt(unit_trace / d / b), size=(k, d))  # a batch averages b units
    other = rng.normal(size=(k, d))
    r = gn.summarize({"exact": g, "same": g.copy(), "unrelated": other}, prompts_per_batch=b)
    assert r["exact"]["g2"] == pytest.approx(1.0, rel=0.1)
    assert r["exact"]["trace"] == pytest.approx(unit_trace, rel=0.05)
    assert r["exact"]["snr_per_step"] == pytest.approx(b / unit_trace, rel=0.15)
    assert r["exact"]["b_noise"] == pytest.approx(unit_trace, rel=0.15)
    lo, hi = r["exact"]["snr_per_step_ci"]
    assert lo < b / unit_trace < hi and hi - lo < b / unit_trace  # the jackknife interval covers, and is informative
    with pytest.raises(ValueError, match="at least 3"):
        gn.summarize({"exact": g[:2]}, prompts_per_batch=b)
    assert r["same"]["cos_to_exact"] == pytest.approx(1.0) and abs(r["unrelated"]["cos_to_exact"]) < 0.05
    assert r["unrelated"]["g2"] < 0.05 * r["unrelated"]["trace"] / b  # pure noise: no signal
    assert r["same"]["cos_expected_to_exact"] == pytest.approx(1.0)
    # the same signal under independent noise: per-batch cos is low, the expected gradients' cos is 1
    noisy = signal + rng.normal(scale=np.sqrt(unit_trace / d / b), size=(k, d))
    r = gn.summarize({"exact": g, "noisy": noisy}, prompts_per_batch=b)
    assert r["noisy"]["cos_to_exact"] < 0.3 and r["noisy"]["cos_expected_to_exact"] == pytest.approx(1.0, abs=0.1)
    assert gn.cross_batch_dot(g, g) == pytest.approx(r["exact"]["g2"])  # the same estimator as |G|²
    # the ladder's paired per-batch cosines: a gradient closer to exact reads 'higher'
    r = gn.summarize({"d1": other, "2mf": noisy, "exact": g}, prompts_per_batch=b)
    info = {"batches": k, "prompts_per_batch": b, "completions_per_prompt": 8, "model_dir": "m", "seed": 0,
            "reward_mean": 0.3, "dim": d}
    assert "| 2mf − d1 |" in gn.to_markdown(r, info) and "| higher |" in gn.to_markdown(r, info)


def test_pure_noise_reports_no_signal():
    # two batches of 8 units whose mean has less than half their squared norm: |G|² estimate < 0
    r = gn.noise_scale(np.array([1.0, 1.0]), 0.4, 8, 16)
    assert r["g2"] == pytest.approx(-0.2) and r["b_noise"] == float("inf") and r["snr_per_step"] < 0
    text = gn.to_markdown({"d1": {**r, "snr_per_step_ci": [-1.0, 0.01]}},
                          {"batches": 2, "prompts_per_batch": 8, "completions_per_prompt": 8, "model_dir": "m",
                           "seed": 0, "reward_mean": 0.3, "dim": 10})
    assert "∞ (no signal detected) [≥ 800]" in text  # b / the SNR's upper bound


def test_command_runs_on_the_demo_model(tmp_path, capsys):
    out = tmp_path / "gn"
    assert gn.main(["--batches", "3", "--methods", "d1,exact", "--set", "train.prompts_per_step=2",
                    "--out_dir", str(out)]) == 0
    saved = json.load(open(out / "gradient_noise.json"))
    assert saved["info"]["batches"] == 3 and saved["info"]["prompts_per_batch"] == 2 and saved["info"]["dim"] > 0
    assert saved["result"]["exact"]["cos_to_exact"] == pytest.approx(1.0)
    assert -1.0 <= saved["result"]["d1"]["cos_to_exact"] < 0.999  # a different likelihood, a different gradient
    assert "| d1 |" in open(out / "gradient_noise.md").read() and os.path.isfile(out / "grads.npz")
    # a rerun with the same settings reads the gradients instead of computing them
    capsys.readouterr()
    assert gn.main(["--batches", "3", "--methods", "d1,exact", "--set", "train.prompts_per_step=2",
                    "--out_dir", str(out)]) == 0
    assert "read the gradients" in capsys.readouterr().out
    assert json.load(open(out / "gradient_noise.json"))["result"]["d1"]["cos_to_exact"] == pytest.approx(
        saved["result"]["d1"]["cos_to_exact"], abs=1e-6)

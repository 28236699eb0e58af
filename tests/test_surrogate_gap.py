"""The Fig. 2c command (diffpo_jax/surrogate_gap.py) on the shipped demo model: 8 rollouts of the
RL sampler, KL of MF / 2-MF against the sampler's own conditionals, written as md / json / png."""
import json

import numpy as np
import pytest

from diffpo_jax import surrogate_gap


def test_tiny_run_writes_the_table_and_2mf_equals_mf_before_tau(tmp_path):
    res = surrogate_gap.run("", str(tmp_path), n=8, seed=0, tau_fracs=(0.5,), n_bins=4)
    a = res["arrays"]
    assert res["n"] == 8 and 1 <= res["nfe_mean"] <= 24 and sum(a["count"]) > 0
    # t / T ≤ 1/4 < τ / T: 2-MF's context is still MF's, so the first bin's KL is the same
    assert a["2mf@f0.5/rel_kl_true_sur"][0] == pytest.approx(a["mf/rel_kl_true_sur"][0], abs=1e-6)
    assert np.all(np.asarray(a["mf/kl_true_sur"]) >= -1e-6)
    # right after τ 2-MF's context is the true one: its last bin (t / T > 3/4) is closer than MF's there
    assert a["2mf@f0.5/rel_kl_true_sur"][3] <= a["mf/rel_kl_true_sur"][3] + 1e-6
    md = (tmp_path / "surrogate_gap.md").read_text()
    assert "| mean-field (d1) |" in md and "| 2-MF, τ = 0.5·T |" in md
    assert json.loads((tmp_path / "surrogate_gap.json").read_text())["tau_fracs"] == [0.5]
    assert (tmp_path / "surrogate_gap.png").stat().st_size > 0


@pytest.mark.parametrize("bad", [["--tau_fracs", "half"], ["--tau_fracs", "1.5"], ["--model_dir", "/nonexistent"]])
def test_cli_refuses_bad_arguments(bad, capsys):
    with pytest.raises(SystemExit):
        surrogate_gap.main(bad)
    assert "error" in capsys.readouterr().err

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


def test_shipped_demo_model_is_small_and_documented():
    d = demo_sudoku.DEMO_MODEL
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert size <= 10 * 2**20
    info = json.load(open(os.path.join(d, "sft_info.json")))
    assert info["seed"] == 0 and info["sft"]["steps"] == sft_sudoku.get_config().sft.steps


def test_demo_runs_end_to_end(tmp_path):
    from diffpo_jax.demo import run_demo

    s = run_demo("joint", steps=1, out_dir=str(tmp_path / "demo"), eval_items=8, progress=False, sweep=False,
                 overrides={"train.prompts_per_step": 1, "train.eval_batch": 8})
    assert s["before"]["n"] == 8 and s["after"]["n"] == 8 and "adaptive" in s["after"]["label"]
    assert os.path.isfile(tmp_path / "demo" / "pareto.png")
    assert json.load(open(tmp_path / "demo" / "summary.json"))["steps"] == 1
    # another method in the same directory is refused (the joint checkpoint holds the head), not resumed
    from diffpo_jax import experiment

    with pytest.raises(experiment.ConfigError, match="cannot restore into this config's parameters"):
        run_demo("d1", steps=1, out_dir=str(tmp_path / "demo"), eval_items=8, progress=False, sweep=False,
                 overrides={"train.prompts_per_step": 1, "train.eval_batch": 8})


def test_demo_cli_gives_each_method_and_seed_its_own_dir_and_one_line_errors(monkeypatch):
    from diffpo_jax import demo, experiment

    dirs = {demo.default_out_dir(m, s) for m in demo_sudoku.METHODS for s in (0, 1)}
    assert len(dirs) == 8 and demo.default_out_dir("joint", 0) == os.path.join("runs", "demo_joint_seed0")
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a: calls.append(a))
    assert demo.main(["--method", "2mf_is", "--seed", "3"]) == 0
    assert calls == [("2mf_is", 0, os.path.join("runs", "demo_2mf_is_seed3"), 3, 0)]

    def refuse(*a):
        raise experiment.ConfigError("cannot restore into this config's parameters")

    monkeypatch.setattr(demo, "run_demo", refuse)
    with pytest.raises(SystemExit, match="^config error: cannot restore"):
        demo.main(["--method", "d1", "--out_dir", "runs/x"])
    # multi-host start-up comes first (a no-op on one host)
    from diffpo_jax import distributed

    monkeypatch.setattr(distributed, "maybe_initialize", lambda: calls.append("init"))
    monkeypatch.setattr(demo, "run_demo", lambda *a: calls.append("run"))
    demo.main([])
    assert calls[-2:] == ["init", "run"]

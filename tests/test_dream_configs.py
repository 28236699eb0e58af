"""configs/dream7b.py: every TASK,METHOD builds into the typed configs the trainer uses."""
import pytest

from configs import dream7b
from diffpo_jax import experiment
from diffpo_jax.models import dream, llada


@pytest.mark.parametrize("task", dream7b.TASKS)
@pytest.mark.parametrize("method", dream7b.METHODS)
def test_every_dream_config_builds(task, method):
    c = dream7b.get_config(f"{task},{method}")
    cfg = llada.get_preset(c.model.preset, **experiment.model_overrides(c))
    assert cfg == dream.dream_7b_instruct(**experiment.model_overrides(c)) and c.model.hf_dir == ""
    rl = experiment.rl_config(c)
    s = experiment.sampler_config(c.sampler, cfg)
    e = experiment.sampler_config(c.eval, cfg, "eval")
    experiment.check_task(c)
    experiment.check_rollout_input(rl, s)
    assert rl.method == ("2mf_is" if method == "joint" else method) and rl.joint_sampler == (method == "joint")
    assert s.rule == ("eb" if method == "joint" else "dream") and e.rule == "eb" and e.temperature == 0.0
    # Dream's schedule: one block of the whole completion, one token per step, entropy order
    assert s.gen_length == s.block_length == e.block_length == 256 and s.max_steps == 256
    assert (s.dream_alg, s.alg_temp, s.eps, s.top_p, s.temperature) == ("entropy", 0.0, 1e-3, 1.0, 0.9)
    assert experiment.behaviour_logp_warnings(rl, s) == []  # no top-p: behaviour log-probs = the likelihoods'
    assert s.mask_token_id == 151666 and s.eos_token_id == 151643
    assert rl.num_inner == (12 if task in ("gsm8k", "math500") else 8)
    assert set(cfg.lora_targets) == set(llada.PROJECTIONS)  # d1's PEFT list hits all 7 on Qwen2 names
    assert c.task.name == task and c.name == f"dream7b_{task}_{method}"


def test_bad_argument_names_the_choices():
    with pytest.raises(ValueError, match="TASK,METHOD"):
        dream7b.get_config("gsm8k")
    with pytest.raises(ValueError, match=r"configs/dream7b.py: got task='gsm9k'"):
        dream7b.get_config("gsm9k,d1")


def test_dream_released_decoding_is_a_flag_set_away():
    # --config.eval.rule=dream --config.eval.temperature=0.2 --config.eval.top_p=0.95 (configs/dream7b.py)
    c = dream7b.get_config("gsm8k,2mf_is")
    c.eval.rule, c.eval.temperature, c.eval.top_p = "dream", 0.2, 0.95
    e = experiment.sampler_config(c.eval, dream.dream_7b_instruct(), "eval")
    released = {k: getattr(e, k) for k in dream7b.DREAM_RELEASED}
    assert released == dream7b.DREAM_RELEASED and e.rule == "dream" and e.steps == e.gen_length == 256


def test_tensor_parallel_must_split_whole_heads():
    """Dream-7B's 28 query / 4 kv heads: tp = 8 would cut heads across chips (a ConfigError
    naming the valid tp), tp = 4 and tp = 2 keep whole heads; LLaDA-8B's 32 / 32 takes tp = 8."""
    from diffpo_jax import experiment, sharding as shd
    from diffpo_jax.models import dream, llada

    with pytest.raises(experiment.ConfigError, match=r"config.mesh.tp=8 .* 28 query / 4 key-value heads.*\[1, 2, 4\]"):
        experiment.check_tensor_parallel(dream.dream_7b_instruct(), shd.make_mesh(1, 1, 8))
    experiment.check_tensor_parallel(dream.dream_7b_instruct(), shd.make_mesh(1, 2, 4))
    experiment.check_tensor_parallel(llada.llada_8b_instruct(), shd.make_mesh(1, 1, 8))
    experiment.check_tensor_parallel(dream.dream_7b_instruct(), None)

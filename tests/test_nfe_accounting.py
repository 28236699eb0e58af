"""Reported NFE equals the number of model forwards a row's completion depends on.

Every call of the model body (`LLaDA.hidden`, `hidden_and_kv`, `hidden_with_cache`) is counted
at run time by a `jax.debug.callback`, so forwards inside compiled while-loops count once per
iteration. One prompt per batch row, so per-row NFE and batched forwards coincide. The threshold
head reads the sampler's first forward ([p, M…M] is its input), so it adds none.
"""
import jax
import numpy as np
import pytest
from flax import nnx

from configs import demo_sudoku
from diffpo_jax import evaluate, tasks
from diffpo_jax.models import llada
from diffpo_jax.models.threshold_head import Policy, ThresholdHead
from diffpo_jax.rl import RLConfig
from diffpo_jax.rl.rollout import rollout
from diffpo_jax.sampling import SamplerConfig, make_sampler

BODIES = ("hidden", "hidden_and_kv", "hidden_with_cache")


@pytest.fixture
def forward_counter(monkeypatch):
    """A list whose length is the number of model-body executions since the fixture started."""
    calls = []
    for name in BODIES:
        orig = getattr(llada.LLaDA, name)

        def counted(self, *a, _orig=orig, **k):
            jax.debug.callback(lambda: calls.append(1))
            return _orig(self, *a, **k)

        monkeypatch.setattr(llada.LLaDA, name, counted)
    return calls


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("joint,kind", [(False, "prompt"), (True, "prompt"), (True, "step")])
def test_rollout_nfe_counts_every_forward(forward_counter, joint, kind):
    llm = llada.LLaDA(llada.tiny(lora_rank=2), rngs=nnx.Rngs(0))
    cfg = RLConfig(num_generations=1, joint_sampler=joint, gamma_max=8.0, gamma_init=1.0, sigma=0.5, head_hidden=8,
                   head=kind)
    head = ThresholdHead(64, gamma_max=8.0, gamma_init=1.0, hidden=8, rngs=nnx.Rngs(1),
                         n_step_features=6 if kind == "step" else 0) if joint else None
    policy = Policy(llm, head)
    sampler = make_sampler(nnx.split(llm)[0], SamplerConfig(rule="eb", gen_length=10, block_length=5,
                                                              temperature=1.0))
    prompt = np.full((1, 7 + (kind == "step")), 5 + int(joint), np.int32)  # shapes no other test compiles: fresh traces
    batch, info = rollout(policy, sampler, prompt, np.ones_like(prompt, bool), [{}], lambda t, i: {"r": 0.0},
                          jax.random.key(0), cfg, _Tok())
    jax.effects_barrier()
    assert int(info["nfe"][0]) == len(forward_counter)
    assert int(info["nfe"][0]) == int(batch["nfe"][0])


@pytest.mark.parametrize("kind", ["prompt", "step"])
def test_eval_nfe_with_the_head_counts_every_forward(forward_counter, kind):
    from transformers import AutoTokenizer

    from diffpo_jax.convert.hf_import import load_hf

    llm = load_hf(demo_sudoku.DEMO_MODEL, param_dtype="float32", compute_dtype="float32")
    tok = AutoTokenizer.from_pretrained(demo_sudoku.DEMO_MODEL, local_files_only=True, trust_remote_code=False)
    items = tasks.load_eval_items("sudoku", n=1)
    head = ThresholdHead(llm.cfg.d_model, gamma_max=4.0, gamma_init=0.3, hidden=8, rngs=nnx.Rngs(1),
                         n_step_features=6 if kind == "step" else 0)
    cfg = SamplerConfig(rule="eb", gen_length=24, block_length=12 if kind == "prompt" else 8)
    ids = evaluate.encode_prompts("sudoku", items, tok, 0,
                                  lambda it: tasks.format_prompt("sudoku", it, tok, "eval", False, "compact"))
    records, summary = evaluate.run_eval(llm, tok, "sudoku", items, cfg, batch_size=1, head=head,
                                         prompt_ids=ids, progress=False)
    jax.effects_barrier()
    assert records[0]["nfe"] == records[0]["decode_nfe"] == len(forward_counter)
    assert 0 < records[0]["gamma"] < 4.0
    assert summary["nfe_mean"] == records[0]["nfe"]

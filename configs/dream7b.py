"""The paper's experiments on the second family: Dream-v0-Instruct-7B x {gsm8k, math500,
countdown, sudoku} x {d1, 2mf, 2mf_is, joint}. Pick one with the config argument `TASK,METHOD`:

    python -m diffpo_jax.train --config configs/dream7b.py:gsm8k,2mf_is \
        --config.model.hf_dir=/path/to/Dream-v0-Instruct-7B

No RL run of DiFFPO or d1 on Dream is published, so every RL setting is configs/llada8b.py's
(d1's, research/algorithms.md §3.4): 256-token rollouts for every task, T 0.9, G = 6, 16 prompts
per step, mu = 12 (GSM8K, MATH) or 8 (Countdown, Sudoku), eps 0.5, beta 0.04, lr 3e-6, grad-norm
clip 0.2, C = 2, LoRA r 128 / alpha 64. Dream-specific, from Dream's release (DreamLM/Dream
README, "Usage" and "Parameters of diffusion_generate()"):
  - one block: diffusion_generate has no blocks; it decodes the whole completion at once;
  - steps = gen_length: the README's example sets steps == max_new_tokens (one token per
    step; d1's LLaDA rollouts take two per step);
  - decoding order alg='entropy', alg_temp 0 (deterministic order), eps 1e-3 (the timestep
    floor of generation_utils' linspace(1, eps, steps + 1));
  - Dream's own generation temperature 0.2 / top_p 0.95 (DREAM_RELEASED) is for evaluation
    (config.eval below shows the flags; by default evaluation is EB, as for LLaDA).
    Rollouts keep d1's T 0.9 without top-p: GRPO needs diverse groups (on a Dream-architecture
    7B, DiffuCoder, arXiv 2506.20639, finds that a higher temperature diversifies both the
    tokens and their generation order, "a rich search space for RL rollouts"), and the RL
    likelihoods score softmax(f / T) over the whole vocabulary, so a top-p-filtered behaviour
    policy would make the IS weights != 1 at theta = theta_old
    (experiment.behaviour_logp_warnings says so for any top_p < 1);
  - LoRA on all seven projections: d1's PEFT list (q, k, v, o, up, down, gate_proj) names
    Qwen2's modules, so on Dream it hits every one of them (on LLaDA it hits q, k, v, up).
"""

from configs import base
from configs.llada8b import METHODS, TASKS, apply_method, parse_task_method  # noqa: F401

# Dream's released decoding (README example: steps = max_new_tokens = 512, temperature 0.2,
# top_p 0.95, alg 'entropy', alg_temp 0; eps 1e-3 is generation_utils' default), as fields of the
# sampler rule 'dream'. Rollouts take its decoding order (alg, alg_temp, eps); config.eval holds
# them too, so that evaluating as Dream does is a flag set away (see get_config).
DREAM_RELEASED = dict(dream_alg="entropy", alg_temp=0.0, eps=1e-3, temperature=0.2, top_p=0.95)
GEN_LENGTH = 256  # d1's max_completion_length, every task


def get_config(arg: str = "gsm8k,2mf_is"):
    task, method = parse_task_method(arg, "configs/dream7b.py")
    c = base.get_config()
    c.name = f"dream7b_{task}_{method}"
    c.model.preset = "dream_7b_instruct"
    c.model.family = "dream"  # hf_dir must hold a Dream checkpoint (experiment.build_llm checks config.json)
    c.model.lora_targets = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
    c.model.remat = "dots_no_batch"  # with the 4 micro-batches: see docs/benchmarks.md (bench/tpu_compile.py)
    c.mesh.fsdp = -1
    c.task.name = task

    # Rollouts: Dream's decoding (rule 'dream': entropy order, alg_temp 0, eps 1e-3, one block,
    # one token per step) at d1's T 0.9 and without top-p (module docstring).
    c.sampler.rule = "dream"
    c.sampler.dream_alg = DREAM_RELEASED["dream_alg"]
    c.sampler.alg_temp = DREAM_RELEASED["alg_temp"]
    c.sampler.eps = DREAM_RELEASED["eps"]
    c.sampler.gen_length = GEN_LENGTH
    c.sampler.block_length = GEN_LENGTH
    c.sampler.steps = GEN_LENGTH
    c.sampler.temperature = 0.9

    # Evaluation: EB at T 0 as configs/llada8b.py (the paper's Pareto axis), over Dream's one block.
    # The other fields hold Dream's decoding so that Dream's released sampler is one flag set away
    # (EB ignores dream_alg / alg_temp / eps; T 0 and top_p 1 are the SamplerConfig defaults):
    #   --config.eval.rule=dream --config.eval.temperature=0.2 --config.eval.top_p=0.95
    c.eval.gen_length = GEN_LENGTH
    c.eval.block_length = GEN_LENGTH
    c.eval.steps = GEN_LENGTH
    c.eval.dream_alg = DREAM_RELEASED["dream_alg"]
    c.eval.alg_temp = DREAM_RELEASED["alg_temp"]
    c.eval.eps = DREAM_RELEASED["eps"]
    c.eval.temperature = 0.0
    c.eval.top_p = 1.0

    apply_method(c, task, method)  # as configs/llada8b.py (joint: EB rollouts, head at 100 x lr)
    c.train.out_dir = f"runs/{c.name}"
    c.train.export_hf = True
    return c

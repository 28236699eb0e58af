"""The embedded demo: DiFFPO on 4x4 Sudoku with the shipped tiny SFT model, a few minutes on a CPU.

    python -m diffpo_jax.train --config configs/demo_sudoku.py:joint
    python -m diffpo_jax.demo            # before/after accuracy + NFE and the Pareto plot
    python -m diffpo_jax.train --config configs/demo_sudoku.py:joint,dream   # the Dream-architecture model
    python -m diffpo_jax.demo --family dream

Config argument `METHOD[,FAMILY]`: FAMILY llada (default: assets/demo_sudoku) | dream
(assets/demo_sudoku_dream, the same recipe on the Dream architecture and ChatML tokenizer).
METHOD in d1 | 2mf | 2mf_is | exact (the exact trajectory likelihood, the
surrogates' oracle) | joint (2-MF + IS + the adaptive EB threshold head, one gamma per prompt) |
joint_step (the same with the step-level head, rl.head='step': a gamma per decoding step); the
toy-scale paper table runs them with the same budget and seeds. Rollouts use
the EB sampler (gamma = the head's mu + noise when joint, a fixed gamma otherwise).
"""

import os

import ml_collections

from configs import base, tiny_model

METHODS = ("d1", "2mf", "2mf_is", "exact", "joint", "joint_step")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "diffpo_jax", "assets")
DEMO_MODELS = {"llada": os.path.join(ASSETS, "demo_sudoku"), "dream": os.path.join(ASSETS, "demo_sudoku_dream")}
DEMO_MODEL = DEMO_MODELS["llada"]


def get_config(arg: str = "joint"):
    method, _, family = arg.partition(",")
    family = family or "llada"
    if method not in METHODS or family not in DEMO_MODELS:
        raise ValueError(f"configs/demo_sudoku.py: argument {arg!r} must be METHOD[,FAMILY] with METHOD in "
                         f"{METHODS} and FAMILY in {tuple(DEMO_MODELS)}")
    c = base.get_config()
    c.name = f"demo_sudoku_{method}" + ("" if family == "llada" else f"_{family}")
    c.seed = 0
    tiny_model.apply(c, from_preset=False, family=family)
    c.model.hf_dir = DEMO_MODELS[family]
    c.model.lora_rank = 16
    c.model.lora_alpha = 32.0
    c.model.lora_targets = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tp=1))

    c.task.name = "sudoku"
    c.task.prompt_style = "compact"
    c.task.add_reasoning = False
    c.task.max_prompt_length = 48
    c.task.generator = ml_collections.ConfigDict(dict(min_empty=8, max_empty=8))

    c.sampler.rule = "eb"
    c.sampler.gen_length = 24
    c.sampler.block_length = 24
    c.sampler.gamma = 0.3
    c.sampler.temperature = 0.7

    joint = method.startswith("joint")
    c.rl.method = "2mf_is" if joint else method
    c.rl.joint_sampler = joint
    c.rl.head = "step" if method == "joint_step" else "prompt"
    c.rl.num_generations = 8
    c.rl.num_inner = 2
    c.rl.beta = 0.0
    c.rl.epsilon = 0.2
    c.rl.lr = 5e-5                 # small: at this scale LoRA steps are mostly noise (see README)
    c.rl.head_lr_scale = 100.0     # the head learns at 5e-3
    c.rl.grad_clip = 1.0
    c.rl.weight_decay = 0.0
    c.rl.head_hidden = 64
    c.rl.gamma_max = 4.0
    c.rl.gamma_init = 0.3
    c.rl.sigma = 0.3
    c.rl.nfe_lambda = 0.3
    c.rl.nfe_ref = 24.0
    c.rl.logprob_chunk = 24

    c.train.prompts_per_step = 8
    c.train.steps = 40
    c.train.out_dir = f"runs/{c.name}"
    c.train.save_every = 10
    c.train.eval_every = 0
    c.train.eval_items = 256
    c.train.eval_batch = 128

    c.eval.rule = "eb"
    c.eval.gen_length = 24
    c.eval.block_length = 24
    c.eval.gamma = 0.3            # = gamma_init: the 'before' point is the untrained head's mu
    c.eval.gammas = (0.1, 0.3, 1.0, 3.0)
    return c

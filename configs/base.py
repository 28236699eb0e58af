"""Base experiment config: every field the trainer reads, with d1's defaults (SPEC §4).

Use: `python -m diffpo_jax.train --config configs/base.py --config.rl.method=2mf_is`.
Sections map one-to-one onto the code: `sampler` -> `sampling.SamplerConfig`, `rl` ->
`rl.RLConfig`, `model` -> `models.llada.LLaDAConfig` (preset + overrides).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 42

    c.model = ml_collections.ConfigDict()
    c.model.hf_dir = ""           # HF-format LLaDA dir (convert/hf_import); "" = random init of `preset`
    c.model.preset = "tiny"       # models.llada.get_preset names, any family (used when hf_dir is empty)
    c.model.family = ""           # "" = read from hf_dir's config.json; 'llada' | 'dream' = also check it
    c.model.param_dtype = "bfloat16"
    c.model.compute_dtype = "bfloat16"
    c.model.lora_dtype = "float32"  # adapters are the master weights (PEFT upcasts them too)
    c.model.remat = "none"
    c.model.attention_impl = "auto"  # auto (TPU splash, GPU cuDNN where they apply; else xla) | xla | cudnn | splash
    c.model.lora_rank = 128       # d1: r 128, alpha 64
    c.model.lora_alpha = 64.0
    c.model.lora_targets = ("q_proj", "k_proj", "v_proj", "up_proj")  # what d1's PEFT config effectively hits
    c.model.tokenizer_dir = ""    # "" = hf_dir (and the tiny char tokenizer when both are empty)
    c.model.overrides = ml_collections.ConfigDict()  # any other LLaDAConfig field (tiny models)

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tp=1))

    c.task = ml_collections.ConfigDict()
    c.task.name = "gsm8k"         # gsm8k | math500 | countdown | sudoku
    c.task.data_dir = ""          # "" = $DIFFPO_DATA_DIR or ../shared/data
    c.task.train_path = ""        # MATH train split (not shipped): a user-supplied jsonl
    c.task.prompt_style = "d1"    # d1 (system prompt + chat template) | compact (tiny demo models)
    c.task.max_prompt_length = 200
    c.task.add_reasoning = ml_collections.FieldReference(None, field_type=bool)  # None: d1 (eval yes, train no)
    c.task.generator = ml_collections.ConfigDict()  # Countdown/Sudoku generator kwargs (e.g. min_empty)

    c.sampler = ml_collections.ConfigDict()
    c.sampler.rule = "fixed"      # d1 rollouts: low-confidence, 256 tokens, block 32, 128 steps
    c.sampler.gen_length = 256
    c.sampler.block_length = 32
    c.sampler.steps = 128
    c.sampler.k = 2
    c.sampler.gamma = 0.1
    c.sampler.threshold = 0.9
    c.sampler.temperature = 0.9
    c.sampler.remasking = "low_confidence"
    c.sampler.kv_cache = "none"    # none (exact) | prefix | dual: Fast-dLLM's approximate caches (rollouts)

    c.rl = ml_collections.ConfigDict()
    c.rl.method = "d1"            # d1 | mf_is | 2mf | 2mf_is
    c.rl.joint_sampler = False
    c.rl.head = "prompt"          # threshold head: prompt (one γ per completion, SPEC §5) | step (γ_t per step)
    c.rl.num_generations = 6
    c.rl.p_mask = 0.15
    c.rl.prompt_mask_stages = "stage1"
    c.rl.epsilon = 0.5
    c.rl.beta = 0.04
    c.rl.clamp_c = 2.0
    c.rl.std_normalize = False
    c.rl.loss_agg = "token"
    c.rl.ratio_unit = "token"
    c.rl.num_inner = 12
    c.rl.micro_batches = 1
    c.rl.lr = 3e-6
    c.rl.grad_clip = 0.2
    c.rl.weight_decay = 0.1
    c.rl.warmup_steps = 0
    c.rl.logprob_chunk = 64
    c.rl.gamma_max = 1.0
    c.rl.gamma_init = 0.1
    c.rl.sigma = 0.1
    c.rl.nfe_lambda = 0.1
    c.rl.nfe_ref = 256.0
    c.rl.model_reward = "task"

    c.train = ml_collections.ConfigDict()
    c.train.prompts_per_step = 16  # x num_generations completions per rollout
    c.train.steps = 1000           # rollouts (each followed by num_inner optimizer updates)
    c.train.out_dir = "runs/base"
    c.train.log_every = 1
    c.train.save_every = 25
    c.train.keep = 3
    c.train.eval_every = 100
    c.train.eval_items = 64        # held-out items per periodic eval (0 = off)
    c.train.eval_batch = 32
    c.train.export_hf = False      # at the end: LoRA-merged HF export + PEFT adapter
    c.train.tensorboard = True     # <out_dir>/tb
    c.train.data_shards = 0        # data shards the global batch is drawn from (0 = one per process)

    c.eval = ml_collections.ConfigDict()
    c.eval.rule = "eb"             # rule for evaluation; the paper's Pareto axis is EB gamma
    c.eval.gen_length = 256
    c.eval.block_length = 32
    c.eval.steps = 128
    c.eval.gamma = 0.1
    c.eval.gammas = (0.1,)         # fixed-gamma sweep of the demo's before/after Pareto plot (demo.py; train ignores it)
    c.eval.kv_cache = "none"       # none | prefix | dual (bench/kv_cache_demo.py: its accuracy cost)
    c.eval.pad_multiple = 0        # 0: one prompt width for all (one compile); m: per batch, rounded up to m (1 = d1)
    return c

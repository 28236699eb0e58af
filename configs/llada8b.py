"""The paper's experiments: LLaDA-8B-Instruct x {gsm8k, math500, countdown, sudoku} x
{d1, 2mf, 2mf_is, joint}.  Pick one with the config argument `TASK,METHOD`:

    python -m diffpo_jax.train --config configs/llada8b.py:gsm8k,2mf_is \
        --config.model.hf_dir=/path/to/LLaDA-8B-Instruct

Settings are d1's (research/algorithms.md §3.4) where the DiFFPO paper's are unknown:
LoRA r 128 / alpha 64, rollouts 256 tokens / block 32 / 128 steps / T 0.9, G = 6,
16 prompts per step, mu = 12 (GSM8K, MATH) or 8 (Countdown, Sudoku), eps 0.5, beta 0.04,
lr 3e-6, grad-norm clip 0.2, C = 2. `joint` = 2-MF + IS + the adaptive EB threshold head,
with EB rollouts (gamma drawn around the head's mu).
"""

from configs import base

TASKS = ("gsm8k", "math500", "countdown", "sudoku")
METHODS = ("d1", "2mf", "2mf_is", "joint")
INNER = {"gsm8k": 12, "math500": 12, "countdown": 8, "sudoku": 8}


def parse_task_method(arg: str, source: str = "configs/llada8b.py") -> tuple[str, str]:
    """'TASK,METHOD' -> (task, method), with an error naming `source` and the valid values."""
    try:
        task, method = (s.strip() for s in arg.split(","))
    except ValueError:
        raise ValueError(f"{source}: argument {arg!r} must be 'TASK,METHOD', "
                         f"TASK in {TASKS}, METHOD in {METHODS}") from None
    if task not in TASKS or method not in METHODS:
        raise ValueError(f"{source}: got task={task!r} method={method!r}; "
                         f"TASK in {TASKS}, METHOD in {METHODS}")
    return task, method


def apply_method(c, task: str, method: str) -> None:
    """The RL method's settings shared by every 8B-scale config (llada8b, dream7b): μ per task,
    4 micro-batches, and for joint 2-MF + IS with EB rollouts and the head at 100 x lr."""
    c.rl.num_inner = INNER[task]
    c.rl.micro_batches = 4
    c.rl.method = "2mf_is" if method == "joint" else method
    if method == "joint":
        c.rl.joint_sampler = True
        c.sampler.rule = "eb"
        c.rl.nfe_ref = float(c.sampler.gen_length)
        # the head is a fresh MLP: at the LoRA's 3e-6 AdamW moves it ~1e-6 per step and μ(p) never
        # leaves γ_init (the demo needed the same factor, configs/demo_sudoku.py); it learns at 3e-4
        c.rl.head_lr_scale = 100.0


def get_config(arg: str = "gsm8k,2mf_is"):
    task, method = parse_task_method(arg)
    c = base.get_config()
    c.name = f"llada8b_{task}_{method}"
    c.model.preset = "llada_8b_instruct"
    c.model.remat = "dots_no_batch"  # with the 4 micro-batches: 11.7 GiB per v5e chip at 6 rows (bench/tpu_compile.py)
    c.mesh.fsdp = -1
    c.task.name = task
    apply_method(c, task, method)
    c.train.out_dir = f"runs/{c.name}"
    c.train.export_hf = True
    return c

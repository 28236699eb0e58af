"""SFT recipe of the shipped demo model (diffpo_jax/assets/demo_sudoku):

    python -m diffpo_jax.sft --config configs/sft_sudoku.py     # -> runs/sft_sudoku
    python -m diffpo_jax.sft --config configs/sft_sudoku.py --config.sft.out_dir=diffpo_jax/assets/demo_sudoku
                                                                 # regenerates the shipped model
    python -m diffpo_jax.sft --config configs/sft_sudoku.py:dream \
        --config.sft.out_dir=diffpo_jax/assets/demo_sudoku_dream  # the Dream-architecture demo model

LLaDA's masked-diffusion objective on generated 4x4 Sudoku puzzles (6-10 empty cells, disjoint
from the shipped test set) with the compact prompt; completion = `<answer>\\n<16 digits>\\n</answer>
<|eot_id|>` + EOS padding to 24 tokens. Deliberately stopped early (an imperfect model leaves
RL something to do).
"""

import ml_collections

from configs import base, tiny_model


def get_config(family: str = "llada"):
    c = base.get_config()
    c.name = "sft_sudoku" if family == "llada" else f"sft_sudoku_{family}"
    c.seed = 0
    tiny_model.apply(c, from_preset=True, family=family)
    c.model.lora_rank = 0
    c.model.tokenizer_dir = ""          # the tiny char tokenizer of the family
    c.task.name = "sudoku"
    c.task.prompt_style = "compact"
    c.task.add_reasoning = False
    c.task.generator = ml_collections.ConfigDict(dict(min_empty=6, max_empty=10))
    c.sft = ml_collections.ConfigDict(dict(
        steps=200, batch_size=64, lr=1e-3, warmup=50, weight_decay=0.01, grad_clip=1.0,
        completion_length=24, out_dir=f"runs/{c.name}", save_dtype="float32", eval_items=256))
    if family == "dream":  # the Dream architecture (logit shift, GQA 4/2) learns the task more slowly:
        c.sft.steps = 400  # at 200 steps 50.4% cells / 0.8% puzzles (vs LLaDA's 76.6 / 37.5)
    c.eval.rule = "fixed"
    c.eval.gen_length = 24
    c.eval.block_length = 24
    c.eval.steps = 24
    c.train.eval_batch = 128
    return c

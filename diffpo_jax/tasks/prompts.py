"""d1's prompt texts (verbatim: `diffu-grpo/data_utils.py` for training, `eval/*.py` for
evaluation) and chat-template rendering.

    format_prompt("gsm8k", item, tokenizer)            # eval prompt + "<reasoning>" prefill
    format_prompt("gsm8k", item, tokenizer, "train")   # training prompt, no prefill

Training and evaluation prompts differ (evaluation asks for `\\boxed{}` inside `<answer>`);
d1's evaluation appends `<reasoning>` after the chat template (`add_reasoning=True`).
The template is the tokenizer's own: LLaDA's Llama-3 one (BOS, trimmed content, `<|eot_id|>`)
or Dream's ChatML (a default system turn, untrimmed content, `<|im_end|>`), the prefill
following the assistant header either way (tasks/model_tokenizers.py lists the families).
"""

from __future__ import annotations

SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""

SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""

GSM_EVAL_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. 
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""

MATH500_EVAL_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}.
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>" 
"""

COUNTDOWN_EVAL_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
    "provided target number. You may use the operations +, -, *, and / as needed, but each number must "
    "be used exactly once. Think step-by-step. After reasoning, provide only your final expression "
    "inside \\boxed{} tags without including an equals sign or the target number. For example: "
    "\\boxed{a + b * c}Respond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>"
)

REASONING_PREFILL = "<reasoning>"


def _numbers(item: dict) -> str:
    return str([int(n) for n in item["numbers"]])  # "[30, 100, 93]", as d1 prints a list


def train_user_message(task: str, item: dict) -> str:
    """The user turn d1 trains with (`data_utils.py`)."""
    if task == "gsm8k":
        return SYSTEM_PROMPT + "\n\n" + item["question"]
    if task == "math500":
        return (f"{SYSTEM_PROMPT}\n\nYou are a math expert. You will be given a question to solve. Solve it "
                f"step by step. Wrap the final answer in a \\boxed{{}}. \n\n{item['problem']}")
    if task == "countdown":
        return (f"{SYSTEM_PROMPT}\nUsing only the numbers {_numbers(item)}, create an arithmetic expression "
                f"that evaluates to exactly {int(item['target'])}. You must use all numbers from the list, and "
                "each number must be used exactly once. You may use the operations +, -, *, and / as needed. "
                "After reasoning, provide only your final expression inside <answer></answer> tags without "
                "including an equals sign or the target number. For example, if the numbers are [2, 3, 4] and "
                "the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>")
    if task == "sudoku":
        return f"{SUDOKU_SYSTEM_PROMPT}\n\nSolve the following Sudoku puzzle: {item['puzzle']}\n"
    raise KeyError(f"unknown task {task!r}; expected one of gsm8k, math500, countdown, sudoku")


def eval_user_message(task: str, item: dict) -> str:
    """The user turn of d1's evaluation (`eval/{gsm8k,math500,countdown,sudoku}.py`, zero-shot)."""
    if task == "gsm8k":
        return GSM_EVAL_PROMPT + "\n\n" + item["question"]
    if task == "math500":
        return MATH500_EVAL_PROMPT + "\n\n" + item["problem"]
    if task == "countdown":
        return COUNTDOWN_EVAL_PROMPT + "\n\n" + f"Numbers: {_numbers(item)}\nTarget: {int(item['target'])}"
    if task == "sudoku":
        return SUDOKU_SYSTEM_PROMPT + "\n\n" + f"Solve the following Sudoku puzzle: {item['puzzle']}\n"
    raise KeyError(f"unknown task {task!r}; expected one of gsm8k, math500, countdown, sudoku")


def compact_user_message(task: str, item: dict) -> str:
    """A short prompt for tiny demo models (not d1's): just the problem data."""
    if task == "gsm8k":
        return item["question"]
    if task == "math500":
        return item["problem"]
    if task == "countdown":
        return f"Numbers: {_numbers(item)}\nTarget: {int(item['target'])}"
    if task == "sudoku":
        return f"Sudoku: {item['puzzle']}"
    raise KeyError(f"unknown task {task!r}; expected one of gsm8k, math500, countdown, sudoku")


def messages(task: str, item: dict, split: str = "eval", style: str = "d1") -> list[dict]:
    """The chat messages: d1's train or eval prompt (`style="d1"`), or `style="compact"`."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if style == "compact":
        content = compact_user_message(task, item)
    elif style == "d1":
        content = train_user_message(task, item) if split == "train" else eval_user_message(task, item)
    else:
        raise ValueError(f"prompt style must be 'd1' or 'compact', got {style!r}")
    return [{"role": "user", "content": content}]


def format_prompt(task: str, item: dict, tokenizer, split: str = "eval", add_reasoning=None,
                  style: str = "d1") -> str:
    """The prompt string: chat template (with the assistant header) applied to the task's user
    message, plus the `<reasoning>` prefill when `add_reasoning` (default: eval yes, train no,
    as d1)."""
    if add_reasoning is None:
        add_reasoning = split == "eval"
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat_template: load the model's tokenizer directory "
                         "(tokenizer_config.json with 'chat_template'), e.g. diffpo_jax/assets/tiny_tokenizer "
                         "(LLaDA) or diffpo_jax/assets/tiny_tokenizer_dream (Dream)")
    text = tokenizer.apply_chat_template(messages(task, item, split, style), add_generation_prompt=True,
                                         tokenize=False)
    return text + REASONING_PREFILL if add_reasoning else text

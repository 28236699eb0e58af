"""Benchmark items, generator-backed training sources and grain pipelines for GRPO.

    items = load_eval_items("countdown")                  # d1's eval subset, in d1's order
    ds = grpo_dataset("countdown", tokenizer, n_prompts=16, group_size=6, max_prompt_length=200)
    it = iter(ds); batch = next(it); state = it.get_state()   # checkpointable
    batch["prompt_ids"]   int32 [n_prompts*G, P], left-padded with the pad/eos id
    batch["prompt_mask"]  bool  [n_prompts*G, P], True = real token
    batch["group"]        int32 [n_prompts*G], prompt index in the batch (rows r*G..r*G+G-1)
    batch["items"], batch["prompts"]   python lists [n_prompts*G] (reward metadata, prompt text)

Data dir: the `data_dir` argument, else $DIFFPO_DATA_DIR, else `../shared/data` relative to
the repository root (see shared/data/README.md). Items are dicts: gsm8k {question, answer,
solution}; math500 {problem, answer, solution, subject, level, unique_id}; countdown
{numbers, target}; sudoku {puzzle, solution}; all with an `id`.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Optional, Sequence

import grain
import numpy as np

from diffpo_jax.tasks import generators, gsm8k
from diffpo_jax.tasks.prompts import format_prompt
from diffpo_jax.tasks.registry import get_task

DATA_ENV = "DIFFPO_DATA_DIR"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = {
    ("gsm8k", "train"): "gsm8k_train.jsonl", ("gsm8k", "test"): "gsm8k_test.jsonl",
    ("math500", "test"): "math500_test.jsonl", ("math500", "train"): "math_train.jsonl",
    ("countdown", "test"): "countdown_cd3_test.jsonl", ("sudoku", "test"): "sudoku_4x4_test.csv",
}
EVAL_SUBSET = {"gsm8k": None, "math500": None, "countdown": 256, "sudoku": 256}  # d1's num_evals


def resolve_data_dir(path: Optional[str] = None) -> str:
    """The benchmark data directory (argument > $DIFFPO_DATA_DIR > <repo>/../shared/data)."""
    return path or os.environ.get(DATA_ENV) or os.path.join(os.path.dirname(_REPO_ROOT), "shared", "data")


def data_file(task: str, split: str, path: Optional[str] = None) -> str:
    name = get_task(task).name
    if (name, split) not in FILES:
        raise ValueError(f"no {split!r} file for {name}: Countdown and Sudoku train on generated "
                         "puzzles (train_source), test sets exist for all four tasks")
    full = os.path.join(resolve_data_dir(path), FILES[(name, split)])
    if not os.path.isfile(full):
        hint = (" The MATH training set is not shipped: put prm800k math_splits/train.jsonl there "
                "or point --config.task.train_path (Python: math_train_path=) at it."
                if (name, split) == ("math500", "train") else "")
        raise FileNotFoundError(f"{full} not found. Benchmark data is read from {resolve_data_dir(path)!r} "
                                f"(set --config.task.data_dir, evaluate's --data_dir, data_dir= in Python, or "
                                f"${DATA_ENV}); see shared/data/README.md for the files and their sources.{hint}")
    return full


def _read_jsonl(path: str, fields: Sequence[str]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            missing = [k for k in fields if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {missing}; expected {list(fields)}")
            rows.append(row)
    return rows


def load_items(task: str, split: str = "test", data_dir: Optional[str] = None,
               path: Optional[str] = None) -> list[dict]:
    """All items of a benchmark file, in file order (`path` overrides the file location)."""
    name = get_task(task).name
    path = path or data_file(name, split, data_dir)
    if name == "gsm8k":
        return [{"id": f"gsm8k/{split}/{i}", "question": r["question"], "solution": r["answer"],
                 "answer": gsm8k.gold_answer(r["answer"])}
                for i, r in enumerate(_read_jsonl(path, ("question", "answer")))]
    if name == "math500":
        rows = _read_jsonl(path, ("problem", "answer"))
        return [{**r, "id": r.get("unique_id", f"math/{split}/{i}")} for i, r in enumerate(rows)]
    if name == "countdown":
        out = []
        for i, r in enumerate(_read_jsonl(path, ("input", "output"))):
            try:
                out.append({"id": f"countdown/{split}/{i}", "numbers": [int(x) for x in r["input"].split(",")],
                            "target": int(r["output"])})
            except ValueError:
                raise ValueError(f"{path}: row {i}: 'input' must be comma-separated integers and "
                                 f"'output' an integer, got {r}") from None
        return out
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, r in enumerate(rows):
        puzzle, solution = (r.get("Puzzle") or "").strip(), (r.get("Solution") or "").strip()
        if len(puzzle) != 16 or len(solution) != 16 or not (puzzle + solution).isdigit():
            raise ValueError(f"{path}: row {i + 2}: 'Puzzle' and 'Solution' must be 16-digit strings, got {r}")
        out.append({"id": f"sudoku/{split}/{i}", "puzzle": puzzle, "solution": solution})
    return out


def load_eval_items(task: str, data_dir: Optional[str] = None, n: Optional[int] = None,
                    seed: int = 42) -> list[dict]:
    """d1's evaluation set: GSM8K (1319) and MATH500 (500) in file order; Countdown all 256 and
    Sudoku 256 of 500, chosen as d1 does (`np.random.seed(seed); np.random.choice(N, k,
    replace=False)`). `n` keeps the first n."""
    name = get_task(task).name
    items = load_items(name, "test", data_dir)
    k = EVAL_SUBSET[name]
    if k is not None:
        order = np.random.RandomState(seed).choice(len(items), k, replace=False)
        items = [items[int(i)] for i in order]
    return items if n is None else items[:n]


def heldout_keys(task: str, data_dir: Optional[str] = None) -> frozenset:
    """Keys of the shipped test items (generators never produce them)."""
    name = get_task(task).name
    if name == "countdown":
        return frozenset(generators.countdown_key(it["numbers"], it["target"])
                         for it in load_items(name, "test", data_dir))
    if name == "sudoku":
        return frozenset(generators.sudoku_key(it["puzzle"]) for it in load_items(name, "test", data_dir))
    raise ValueError(f"{name} has no generator")


class _Generated:
    """Picklable index -> generated item map (random access, deterministic)."""

    def __init__(self, task: str, seed: int, exclude: frozenset, kwargs: dict):
        self.task, self.seed, self.exclude, self.kwargs = task, seed, exclude, kwargs

    def __call__(self, index: int) -> dict:
        make = generators.generate_countdown if self.task == "countdown" else generators.generate_sudoku
        item = make(int(index), self.seed, exclude=self.exclude, **self.kwargs)
        return {"id": f"{self.task}/gen{self.seed}/{int(index)}", **item}


def train_source(task: str, data_dir: Optional[str] = None, *, size: int = 200_000, seed: int = 0,
                 math_train_path: Optional[str] = None, **generator_kwargs) -> grain.MapDataset:
    """Training items as a grain MapDataset: GSM8K train file; MATH train file (not shipped:
    `math_train_path` or <data_dir>/math_train.jsonl); Countdown / Sudoku: `size` generated
    puzzles (`generators.generate_*`, kwargs passed on), disjoint from the shipped test sets."""
    name = get_task(task).name
    if name in ("countdown", "sudoku"):
        exclude = heldout_keys(name, data_dir)
        return grain.MapDataset.range(size).map(_Generated(name, seed, exclude, generator_kwargs))
    return grain.MapDataset.source(load_items(name, "train", data_dir, path=math_train_path))


def shard(ds: grain.MapDataset, options: Optional[grain.sharding.ShardOptions] = None) -> grain.MapDataset:
    """This host's part: rows `shard_index::shard_count` of the first `count * (len // count)`
    (every host gets the same number of items). Default: `grain.sharding.ShardByJaxProcess()`."""
    options = options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_shard = len(ds) // options.shard_count
    if per_shard == 0:
        raise ValueError(f"{len(ds)} items cannot be split over {options.shard_count} hosts")
    return ds.slice(slice(options.shard_index, per_shard * options.shard_count, options.shard_count))


class _Tokenize:
    def __init__(self, task: str, tokenizer, split: str, max_prompt_length: int, add_reasoning, style="d1"):
        self.task, self.tok, self.split, self.style = task, tokenizer, split, style
        self.max_len, self.add_reasoning = max_prompt_length, add_reasoning

    def __call__(self, item: dict) -> dict:
        prompt = format_prompt(self.task, item, self.tok, self.split, self.add_reasoning, self.style)
        ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        return {"item": item, "prompt": prompt, "ids": np.asarray(ids[-self.max_len:], np.int32)}


def collate(examples: Sequence[dict], group_size: int, pad_id: int, length: Optional[int] = None) -> dict:
    """Left-pad `n` examples to `[n*G, P]` (each prompt repeated G times in consecutive rows);
    P = `length`, else the longest prompt."""
    n = len(examples)
    width = length or max(len(e["ids"]) for e in examples)
    ids = np.full((n * group_size, width), pad_id, np.int32)
    mask = np.zeros((n * group_size, width), bool)
    for r, e in enumerate(examples):
        seq = e["ids"][-width:]
        rows = slice(r * group_size, (r + 1) * group_size)
        ids[rows, width - len(seq):] = seq
        mask[rows, width - len(seq):] = True
    rep = lambda xs: [x for x in xs for _ in range(group_size)]  # noqa: E731
    return {"prompt_ids": ids, "prompt_mask": mask,
            "group": np.repeat(np.arange(n, dtype=np.int32), group_size),
            "items": rep([e["item"] for e in examples]), "prompts": rep([e["prompt"] for e in examples])}


class _Collate:
    def __init__(self, group_size, pad_id, length):
        self.group_size, self.pad_id, self.length = group_size, pad_id, length

    def __call__(self, examples):
        return collate(examples, self.group_size, self.pad_id, self.length)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token id")
    return int(pad)


def grpo_dataset(task: str, tokenizer, *, n_prompts: int, group_size: int, max_prompt_length: int = 200,
                 source: Optional[grain.MapDataset] = None, data_dir: Optional[str] = None, seed: int = 42,
                 num_epochs: Optional[int] = None, shard_options=None, split: str = "train",
                 add_reasoning=None, pad_to_max: bool = True, prompt_style: str = "d1",
                 source_seed: int = 0, **source_kwargs) -> grain.MapDataset:
    """GRPO prompt batches: source -> per-host shard -> shuffle(seed, reshuffled each epoch)
    -> repeat(num_epochs; None = forever) -> chat-format + tokenize (left-truncated to
    `max_prompt_length`) -> batches of `n_prompts` prompts x `group_size` copies. With
    `pad_to_max` P = max_prompt_length (one compiled shape), else the batch's longest prompt.
    `prompt_style="compact"` uses short prompts (tiny demo models). Without `source`, the items
    come from `train_source(task, data_dir, seed=source_seed, **source_kwargs)` (e.g. `size=`)."""
    name = get_task(task).name
    src = source if source is not None else train_source(name, data_dir, seed=source_seed, **source_kwargs)
    ds = shard(src, shard_options).shuffle(seed=seed).repeat(num_epochs)
    ds = ds.map(_Tokenize(name, tokenizer, split, max_prompt_length, add_reasoning, prompt_style))
    collate_fn = _Collate(group_size, _pad_id(tokenizer), max_prompt_length if pad_to_max else None)
    return ds.batch(n_prompts, drop_remainder=True, batch_fn=collate_fn)


def eval_batches(task: str, items: Sequence[dict], tokenizer, batch_size: int, *,
                 max_prompt_length: Optional[int] = None, add_reasoning=True, prompt_style: str = "d1"):
    """Evaluation batches in item order (d1 prompts with the `<reasoning>` prefill). The last
    batch is filled up with copies of its last item; `batch["valid"]` (bool [B]) marks real
    rows. P = the longest prompt of the batch (or `max_prompt_length`, left-truncating)."""
    name = get_task(task).name
    tok = _Tokenize(name, tokenizer, "eval", max_prompt_length or 1 << 30, add_reasoning, prompt_style)
    for start in range(0, len(items), batch_size):
        chunk = [tok(it) for it in items[start:start + batch_size]]
        valid = np.arange(batch_size) < len(chunk)
        chunk += [chunk[-1]] * (batch_size - len(chunk))
        batch = collate(chunk, 1, _pad_id(tokenizer), max_prompt_length)
        batch["valid"] = valid
        yield batch

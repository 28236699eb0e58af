"""Data loading, d1's eval subsets, prompts, the tiny tokenizer asset and the grain GRPO pipeline."""
import json
import os

import grain
import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import SHARED_DATA
from diffpo_jax.tasks import TASKS, format_prompt, load_eval_items, tiny_tokenizer
from diffpo_jax.tasks import data as D

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tok():
    os.environ["HF_HUB_OFFLINE"] = "1"
    return AutoTokenizer.from_pretrained(tiny_tokenizer.ASSET_DIR)


# -------------------------------------------------------------------------------- loading
def test_eval_subsets_follow_d1():
    sizes = {"gsm8k": 1319, "math500": 500, "countdown": 256, "sudoku": 256}
    for task, n in sizes.items():
        items = load_eval_items(task, SHARED_DATA)
        assert len(items) == n and len({it["id"] for it in items}) == n
    # d1: np.random.seed(42); np.random.choice(N, k, replace=False) picks the order
    cd = load_eval_items("countdown", SHARED_DATA)
    order = np.random.RandomState(42).choice(256, 256, replace=False)
    assert [it["id"] for it in cd] == [f"countdown/test/{i}" for i in order]
    assert sorted(order.tolist()) == list(range(256))
    sd = load_eval_items("sudoku", SHARED_DATA, n=5)
    assert [it["id"] for it in sd] == [f"sudoku/test/{i}" for i in np.random.RandomState(42).choice(500, 256, replace=False)[:5]]
    gsm = load_eval_items("gsm8k", SHARED_DATA, n=3)
    assert gsm[0]["answer"] == "18" and gsm[0]["question"].startswith("Janet")
    assert load_eval_items("math500", SHARED_DATA)[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert load_eval_items("countdown", SHARED_DATA, seed=0)[0] != cd[0]


def test_data_dir_resolution_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"gsm8k_test\.jsonl.*shared/data/README\.md"):
        load_eval_items("gsm8k")
    with pytest.raises(FileNotFoundError, match="math_train_path"):
        D.train_source("math500")
    (tmp_path / "countdown_cd3_test.jsonl").write_text('{"input": "1,2", "output": "x"}\n')
    with pytest.raises(ValueError, match="countdown_cd3_test.jsonl: row 0"):
        D.load_items("countdown")
    (tmp_path / "sudoku_4x4_test.csv").write_text("Puzzle,Solution\n123,456\n")
    with pytest.raises(ValueError, match="row 2"):
        D.load_items("sudoku")
    with pytest.raises(KeyError, match="unknown task"):
        load_eval_items("chess")
    monkeypatch.delenv(D.DATA_ENV)
    assert os.path.samefile(D.resolve_data_dir(), SHARED_DATA)


# ------------------------------------------------------------------------------ tokenizer
def test_shipped_tokenizer_equals_build(tmp_path):
    tiny_tokenizer.write(str(tmp_path))
    for name in TOKENIZER_FILES:
        with open(os.path.join(tiny_tokenizer.ASSET_DIR, name)) as f, open(tmp_path / name) as g:
            assert json.load(f) == json.load(g), name
    assert tiny_tokenizer.VOCAB_SIZE <= 256


def test_tokenizer_ids_and_round_trip(tok):
    assert len(tok) == tiny_tokenizer.VOCAB_SIZE
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, tok.mask_token_id) == (0, 0, 1, 5)
    assert tok.convert_tokens_to_ids(["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]) == [4, 2, 3]
    assert tok.convert_tokens_to_ids(["<reasoning>", "</reasoning>", "<answer>", "</answer>"]) == [7, 8, 9, 10]
    ids = tok("<reasoning>\n1+2\n</reasoning>\n<answer>\n3\n</answer>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 7 and ids[-1] == 10 and len(ids) == 4 + len("\n1+2\n\n\n3\n")  # tags: one token each
    texts = []
    for task in TASKS:
        for item in D.load_items(task, "test", SHARED_DATA)[:300]:
            texts.append(TASKS[task].messages(item, "eval")[0]["content"])
            texts.append(TASKS[task].messages(item, "train")[0]["content"])
    texts += [r["solution"] for r in D.load_items("gsm8k", "test", SHARED_DATA)]
    for s in texts:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == s
    assert tok("\u4e2d", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_prompts_through_chat_template(tok):
    item = load_eval_items("countdown", SHARED_DATA)[0]
    ev = format_prompt("countdown", item, tok)
    assert ev.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nUsing only the provided numbers")
    assert ev.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>")
    assert "Numbers: %s\nTarget: %d" % (item["numbers"], item["target"]) in ev
    tr = format_prompt("countdown", item, tok, split="train")
    assert tr.endswith("<|end_header_id|>\n\n") and "<answer>\n2*4-3\n</answer>" in tr
    assert format_prompt("sudoku", load_eval_items("sudoku", SHARED_DATA)[0], tok, add_reasoning=False).endswith("\n\n")
    compact = format_prompt("countdown", item, tok, style="compact")
    assert "Numbers: %s\nTarget: %d<|eot_id|>" % (item["numbers"], item["target"]) in compact
    assert len(tok(compact, add_special_tokens=False)["input_ids"]) < 64
    with pytest.raises(ValueError, match="style"):
        format_prompt("countdown", item, tok, style="long")


# ----------------------------------------------------------------------------- pipelines
def _pipeline(tok, **kw):
    src = grain.MapDataset.source(load_eval_items("countdown", SHARED_DATA))
    args = dict(n_prompts=4, group_size=3, max_prompt_length=96, source=src, seed=7)
    args.update(kw)
    return D.grpo_dataset("countdown", tok, **args)


def test_grpo_batches_layout(tok):
    batch = next(iter(_pipeline(tok)))
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    assert ids.shape == (12, 96) and ids.dtype == np.int32 and mask.dtype == bool
    assert batch["group"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(batch["items"]) == len(batch["prompts"]) == 12
    for r in range(12):
        g = r // 3
        assert batch["items"][r] is batch["items"][g * 3] and (ids[r] == ids[g * 3]).all()
        want = tok(batch["prompts"][r], add_special_tokens=False)["input_ids"][-96:]  # left-truncated
        assert ids[r][mask[r]].tolist() == want
    short = next(iter(_pipeline(tok, max_prompt_length=4000, pad_to_max=False)))
    m = short["prompt_mask"]
    assert (m[:, -1]).all() and (~m[:, 0]).any()  # left padding with the pad id
    assert (short["prompt_ids"][~m] == tok.pad_token_id).all()


def test_pipeline_deterministic_and_resumes_mid_epoch(tok):
    ds = _pipeline(tok)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    again = iter(_pipeline(tok))
    again.set_state(json.loads(json.dumps(state)))  # the state survives serialisation
    got = [next(again) for _ in range(2)]
    for w, g in zip(want, got):
        assert (w["prompt_ids"] == g["prompt_ids"]).all() and w["items"] == g["items"]
    other = next(iter(_pipeline(tok, seed=8)))
    assert other["items"] != next(iter(_pipeline(tok)))["items"]
    # epochs are reshuffled: epoch 2 is a different order of the same 256 items
    epoch = lambda k: [b["items"][r]["id"] for b in [ds[i] for i in range(64 * k, 64 * (k + 1))] for r in range(0, 12, 3)]  # noqa: E731
    e0, e1 = epoch(0), epoch(1)
    assert sorted(e0) == sorted(e1) and e0 != e1 and len(set(e0)) == 256


def test_per_host_sharding_partitions(tok):
    src = grain.MapDataset.source(load_eval_items("countdown", SHARED_DATA)[:255])
    parts = [D.shard(src, grain.sharding.ShardOptions(i, 2, drop_remainder=True)) for i in range(2)]
    ids = [[p[k]["id"] for k in range(len(p))] for p in parts]
    assert len(ids[0]) == len(ids[1]) == 127 and not set(ids[0]) & set(ids[1])
    seen = []
    for i in range(2):
        ds = D.grpo_dataset("countdown", tok, n_prompts=4, group_size=2, max_prompt_length=64, source=src,
                            seed=1, num_epochs=1, shard_options=grain.sharding.ShardOptions(i, 2, True))
        seen.append({b["items"][r]["id"] for b in ds for r in range(0, 8, 2)})
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 124  # 31 full batches each


def test_generated_training_pipeline(tok):
    ds = D.grpo_dataset("sudoku", tok, n_prompts=2, group_size=2, max_prompt_length=128, data_dir=SHARED_DATA,
                        size=50, seed=3)
    batch = next(iter(ds))
    assert batch["prompt_ids"].shape == (4, 128)
    assert all(it["puzzle"] in batch["prompts"][i] for i, it in enumerate(batch["items"]))


def test_eval_batches_pad_last_batch(tok):
    items = load_eval_items("gsm8k", SHARED_DATA, n=5)
    batches = list(D.eval_batches("gsm8k", items, tok, 2))
    assert [b["valid"].tolist() for b in batches] == [[True, True], [True, True], [True, False]]
    assert [b["items"][0]["id"] for b in batches] == [items[0]["id"], items[2]["id"], items[4]["id"]]
    assert all(b["prompts"][0].endswith("<reasoning>") for b in batches)


def test_generated_items_are_reproducible_under_threaded_prefetch(tok):
    """Regression: grain's prefetch threads hit the Sudoku generator's lazily built grid list
    at once, and a thread could draw from a half-built list (other puzzles on every run).
    Starting from an empty cache, every item must equal its serially generated twin and every
    row's ids must be its own item's prompt."""
    from diffpo_jax.tasks import generators
    generators._GRIDS.clear()
    ds = D.grpo_dataset("sudoku", tok, n_prompts=4, group_size=2, max_prompt_length=48, seed=0,
                        prompt_style="compact", add_reasoning=False, size=1000)
    it = iter(ds)
    batches = [next(it) for _ in range(4)]
    assert len(generators._GRIDS) == 288  # built exactly once
    for b in batches:
        for row in range(0, len(b["items"]), 2):
            item = b["items"][row]
            index = int(item["id"].rsplit("/", 1)[1])
            assert item["puzzle"] == generators.generate_sudoku(index, 0, exclude=D.heldout_keys("sudoku"))["puzzle"]
            want = tok(format_prompt("sudoku", item, tok, "train", False, "compact"),
                       add_special_tokens=False)["input_ids"]
            assert list(b["prompt_ids"][row][b["prompt_mask"][row]]) == list(want)

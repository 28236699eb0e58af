"""Dream's tokenizer beside LLaDA's: loading without remote code, special ids read from the
files and cross-checked against the model, the shipped tiny Dream tokenizer, and d1's
prompts rendered with either family's chat template (exact strings)."""
import json
import os

import ml_collections
import pytest

from diffpo_jax import experiment
from diffpo_jax.models import dream, llada
from diffpo_jax.tasks import format_prompt, prompts, sudoku, tiny_tokenizer
from diffpo_jax.tasks import model_tokenizers as mt
from configs import tiny_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GSM_ITEM = {"question": "Janet has 3 apples and buys 2 more. How many apples does she have?", "answer": "5"}
SUDOKU_ITEM = {"puzzle": "1030000420010300", "solution": "1432321423414123"}
# Dream-v0-Instruct-7B's special tokens, at small ids in the fake checkpoint below.
DREAM_ADDED = {"<|endoftext|>": 258, "<|im_start|>": 259, "<|im_end|>": 260, "<|beginoftext|>": 261,
               "<|mask|>": 262}
REMOTE_CODE_MARKER = "remote_code_ran"
AUTO_MAP = {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}  # Dream's: remote code


@pytest.fixture(scope="module")
def dream_tok():
    return mt.load(tiny_tokenizer.DREAM_ASSET_DIR)


@pytest.fixture(scope="module")
def llada_tok():
    return mt.load(tiny_tokenizer.ASSET_DIR)


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def write_dream_like(out, mask_token: bool = True, config: dict = None) -> str:
    """A Dream-checkpoint-shaped tokenizer dir: vocab.json + merges.txt (byte-level BPE),
    tokenizer_config.json naming the remote `DreamTokenizer` (auto_map), a
    tokenization_dream.py that records being run, and optionally a config.json."""
    os.makedirs(out, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_byte_alphabet())}  # 0..255: the byte-level symbols
    merges = ["\u0120 t", "h e"]  # "Ġt" 256, "he" 257; the added tokens follow (as in Qwen2's files)
    for pair in merges:
        vocab["".join(pair.split())] = len(vocab)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    cfg = {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for t, i in DREAM_ADDED.items()},
        "auto_map": AUTO_MAP,
        "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "chat_template": tiny_tokenizer.DREAM_CHAT_TEMPLATE, "tokenizer_class": "DreamTokenizer",
        "errors": "replace", "model_max_length": 131072, "split_special_tokens": False, "unk_token": None,
    }
    if mask_token:
        cfg["mask_token"] = "<|mask|>"
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out, "tokenization_dream.py"), "w") as f:
        f.write(f"open({os.path.join(out, REMOTE_CODE_MARKER)!r}, 'w').close()\n")
    if config is not None:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f)
    return str(out)


DREAM_CONFIG = {"model_type": "Dream", "architectures": ["DreamModel"], "vocab_size": 300, "mask_token_id": 262,
                "eos_token_id": 258, "pad_token_id": 258, "bos_token_id": 258}


# ------------------------------------------------------------------------------------ loading
def test_shipped_dream_tokenizer_equals_build(tmp_path):
    tiny_tokenizer.write(str(tmp_path), family="dream")
    for name in TOKENIZER_FILES:
        with open(os.path.join(tiny_tokenizer.DREAM_ASSET_DIR, name)) as f, open(tmp_path / name) as g:
            assert json.load(f) == json.load(g), name
    assert tiny_tokenizer.DREAM_VOCAB_SIZE <= 256
    with pytest.raises(ValueError, match="choose one of"):
        tiny_tokenizer.write(str(tmp_path), family="gpt2")


def test_tiny_tokenizers_ids_and_families(dream_tok, llada_tok):
    assert len(dream_tok) == tiny_tokenizer.DREAM_VOCAB_SIZE
    ids = tiny_tokenizer.DREAM_SPECIAL_IDS
    assert (dream_tok.eos_token_id, dream_tok.pad_token_id, dream_tok.bos_token_id, dream_tok.mask_token_id) == (
        ids["eos_token_id"], ids["pad_token_id"], ids["bos_token_id"], ids["mask_token_id"])
    assert dream_tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [ids["im_start_id"], ids["eot_token_id"]]
    assert mt.detect_family(dream_tok) == "dream" and mt.detect_family(llada_tok) == "llada"
    want = {"mask_token_id": 5, "eos_token_id": 0, "pad_token_id": 0, "eot_token_id": 4}
    assert mt.special_ids(dream_tok) == want == mt.special_ids(llada_tok)  # same model ids on purpose
    cfg = dream.tiny(**tiny_model.TINY_LLADA)  # the demo model's ids fit the Dream tokenizer too
    mt.check_model(dream_tok, cfg)
    mt.check_model(llada_tok, llada.tiny(**tiny_model.TINY_LLADA))


def test_dream_checkpoint_tokenizer_loads_without_remote_code(tmp_path):
    path = write_dream_like(tmp_path / "dream", config=DREAM_CONFIG)
    tok = mt.load(path)
    assert not os.path.exists(os.path.join(path, REMOTE_CODE_MARKER))  # tokenization_dream.py never ran
    assert "Qwen2" in type(tok).__name__
    assert mt.detect_family(tok) == "dream"
    assert mt.special_ids(tok) == {"mask_token_id": 262, "eos_token_id": 258, "pad_token_id": 258,
                                   "eot_token_id": 260}
    assert tok("the <|im_end|> t", add_special_tokens=True)["input_ids"] == [
        tok.convert_tokens_to_ids("t"), 257, tok.convert_tokens_to_ids("\u0120"), 260, 256]  # no BOS added
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    mt.check_checkpoint(tok, path, tokenizer_source=path)
    # without a declared mask_token the family's <|mask|> is found by name
    bare = mt.load(write_dream_like(tmp_path / "no_mask", mask_token=False))
    assert bare.mask_token_id is None and mt.special_ids(bare, "dream")["mask_token_id"] == 262


def test_tokenizer_json_with_remote_class_falls_back_to_fast(tmp_path):
    out = tmp_path / "dream_fast"
    tiny_tokenizer.write(str(out), family="dream")
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="DreamTokenizer", auto_map=AUTO_MAP)
    cfg_path.write_text(json.dumps(cfg))
    (out / "tokenization_dream.py").write_text("raise RuntimeError('remote code ran')\n")
    tok = mt.load(str(out))
    assert len(tok) == tiny_tokenizer.DREAM_VOCAB_SIZE and mt.special_ids(tok)["mask_token_id"] == 5
    assert tok.chat_template == tiny_tokenizer.DREAM_CHAT_TEMPLATE


def test_unloadable_tokenizer_dirs_name_the_file(tmp_path):
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DreamTokenizer", "auto_map": AUTO_MAP}))
    with pytest.raises(mt.TokenizerError, match=r"only_config/tokenizer_config\.json: tokenizer_class='DreamTokenizer'"
                                                r".*vocab\.json \+ merges\.txt"):
        mt.load(str(only_config))
    with pytest.raises(mt.TokenizerError, match="not a directory"):
        mt.load(str(tmp_path / "missing"))
    gap = write_dream_like(tmp_path / "gap")  # one vocab.json entry more: the appended added tokens would shift
    vocab = json.loads((tmp_path / "gap" / "vocab.json").read_text(encoding="utf-8"))
    vocab["xx"] = 299
    (tmp_path / "gap" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(mt.TokenizerError, match=r"gap/tokenizer_config\.json: added token '<\|endoftext\|>' has id 258 "
                                                r"there but 259"):
        mt.load(gap)
    with pytest.raises(mt.TokenizerError, match="M: unknown model family 'gpt2'"):
        mt.check_ids(mt.load(tiny_tokenizer.ASSET_DIR), {}, "gpt2", None, tokenizer_source="T", model_source="M")


# ------------------------------------------------------------------------------ mismatches
def test_mismatched_tokenizer_and_model_errors(tmp_path, dream_tok, llada_tok):
    with pytest.raises(mt.TokenizerError, match=r"is a llada tokenizer .* is a dream model.*tiny_tokenizer_dream"):
        mt.check_model(llada_tok, dream.tiny(**tiny_model.TINY_LLADA), tokenizer_source="T", model_source="M")
    with pytest.raises(mt.TokenizerError, match=r"is a dream tokenizer .* is a llada model"):
        mt.check_model(dream_tok, llada.tiny(**tiny_model.TINY_LLADA))
    with pytest.raises(mt.TokenizerError, match=r"mask_token_id: tokenizer 5 \('<\|mask\|>'\), model 300; "
                                                r"eos_token_id: tokenizer 0 .*, model 301"):
        mt.check_model(dream_tok, dream.tiny())
    with pytest.raises(mt.TokenizerError, match=r"141 tokens but the model only 100 embedding rows"):
        mt.check_model(dream_tok, dream.tiny(**{**tiny_model.TINY_LLADA, "vocab_size": 100}))
    path = write_dream_like(tmp_path / "bad", config={**DREAM_CONFIG, "mask_token_id": 299})
    with pytest.raises(mt.TokenizerError, match=r"bad/config\.json: mask_token_id: tokenizer 262 \('<\|mask\|>'\), "
                                                r"model 299"):
        mt.check_checkpoint(mt.load(path), path, tokenizer_source=path)
    with pytest.raises(mt.TokenizerError, match=r"a llada tokenizer .*/config\.json is a dream model"):
        mt.check_checkpoint(llada_tok, path)


def _config(**model) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"hf_dir": "", "tokenizer_dir": "", "preset": "tiny", **model})
    return c


def test_load_tokenizer_picks_and_checks_the_family(tmp_path):
    assert mt.detect_family(experiment.load_tokenizer(_config())) == "llada"
    assert mt.detect_family(experiment.load_tokenizer(_config(preset="dream_tiny"))) == "dream"
    with pytest.raises(experiment.ConfigError, match=r"config\.model\.tokenizer_dir: .* is a llada tokenizer .*"
                                                     r"config\.model\.preset='dream_tiny' is a dream model"):
        experiment.load_tokenizer(_config(preset="dream_tiny", tokenizer_dir=tiny_tokenizer.ASSET_DIR))
    path = write_dream_like(tmp_path / "ckpt", config=DREAM_CONFIG)
    assert mt.special_ids(experiment.load_tokenizer(_config(hf_dir=path)))["eot_token_id"] == 260
    with pytest.raises(experiment.ConfigError, match=r"config\.model\.tokenizer_dir: .* is a llada tokenizer"):
        experiment.load_tokenizer(_config(hf_dir=path, tokenizer_dir=tiny_tokenizer.ASSET_DIR))


# ---------------------------------------------------------------------------------- prompts
def test_gsm8k_prompts_for_both_families(dream_tok, llada_tok):
    q = GSM_ITEM["question"]
    assert format_prompt("gsm8k", GSM_ITEM, dream_tok) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nYou are a math expert. You will be given a question to solve. Solve it step by step. "
        "Wrap the final answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning "
        "here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>\n\n" + q + "<|im_end|>\n"
        "<|im_start|>assistant\n<reasoning>")
    assert format_prompt("gsm8k", GSM_ITEM, llada_tok) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nYou are a math expert. You will be given a "
        "question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. \nRespond in the following "
        "format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>\n\n" + q +
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>")
    # training prompt: d1's SYSTEM_PROMPT starts with a newline; ChatML keeps it, Llama-3 trims it
    assert format_prompt("gsm8k", GSM_ITEM, dream_tok, "train") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + prompts.SYSTEM_PROMPT + "\n\n" + q + "<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompt("gsm8k", GSM_ITEM, llada_tok, "train") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + prompts.SYSTEM_PROMPT.lstrip() + "\n\n" + q
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_sudoku_prompts_for_both_families(dream_tok, llada_tok):
    body = prompts.SUDOKU_SYSTEM_PROMPT + "\n\nSolve the following Sudoku puzzle: 1030000420010300\n"
    assert body.startswith("\nPlease solve the following 4x4 Sudoku puzzle.")
    assert format_prompt("sudoku", SUDOKU_ITEM, dream_tok) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + body +
        "<|im_end|>\n<|im_start|>assistant\n<reasoning>")
    assert format_prompt("sudoku", SUDOKU_ITEM, llada_tok) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + body.strip() +
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>")
    assert format_prompt("sudoku", SUDOKU_ITEM, dream_tok, style="compact") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSudoku: 1030000420010300"
        "<|im_end|>\n<|im_start|>assistant\n<reasoning>")
    # a system message replaces the default one
    assert dream_tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                         add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")


def test_dream_prompt_tokens_and_completion_end_tokens(dream_tok):
    text = format_prompt("sudoku", SUDOKU_ITEM, dream_tok)
    ids = dream_tok(text, add_special_tokens=True)["input_ids"]
    assert ids[0] == 2 and dream_tok.unk_token_id not in ids  # <|im_start|> first, no BOS added, no unknown chars
    assert ids[-1] == dream_tok.convert_tokens_to_ids("<reasoning>") and ids.count(4) == 2  # two <|im_end|>
    answer = "\n1432\n</reasoning>\n<answer>\n1432321423414123\n</answer>\n"
    completion = dream_tok(answer, add_special_tokens=False)["input_ids"] + [4, 0]  # <|im_end|> then EOS
    assert dream_tok.decode(completion, skip_special_tokens=True) == answer  # RL rewards: end tokens dropped
    kept = dream_tok.decode(completion, skip_special_tokens=False)  # eval parsers see them
    assert kept.endswith("</answer>\n<|im_end|><|endoftext|>")
    assert sudoku.extract_eval_grid("<answer>1432321423414123<|im_end|><|endoftext|>") == "1432321423414123"
    assert set(sudoku.END_TOKENS) == {"<|eot_id|>", "<|im_end|>", "<|endoftext|>"}

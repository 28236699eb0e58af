"""Build the tiny character-level HF tokenizers shipped in `diffpo_jax/assets/tiny_tokenizer/`
(LLaDA-style) and `diffpo_jax/assets/tiny_tokenizer_dream/` (Dream-style).

    python -m diffpo_jax.tasks.tiny_tokenizer [OUT_DIR]                  # LLaDA's; default: its asset dir
    python -m diffpo_jax.tasks.tiny_tokenizer --family dream [OUT_DIR]   # Dream's

A real `tokenizers` WordLevel model over single characters (every printable ASCII character,
newline, tab, and the non-ASCII characters that occur in the GSM8K/MATH500 files), with
`<reasoning>`, `</reasoning>`, `<answer>`, `</answer>` as single tokens and LLaDA-style
special tokens. Deterministic: the same files on every run. Ids (see SPECIAL_IDS):

    0 <|endoftext|> (eos = pad)   1 <|begin_of_text|> (bos)   2 <|start_header_id|>
    3 <|end_header_id|>   4 <|eot_id|>   5 <|mdm_mask|> (mask)   6 <|unk|>
    7 <reasoning>  8 </reasoning>  9 <answer>  10 </answer>   11.. characters

`VOCAB_SIZE` (= len(tokenizer)) is < 256; a tiny LLaDA for it can use
`llada.tiny(vocab_size=256, mask_token_id=5, eos_token_id=0, pad_token_id=0, eot_token_id=4)`.
The chat template is LLaDA-8B-Instruct's Llama-3 template (bos, then
`<|start_header_id|>role<|end_header_id|>\\n\\n content|trim <|eot_id|>` per message).

The Dream-style one (`family="dream"`) has the same characters and tags after Qwen2/Dream
special tokens, placed so that the model ids are the same as above (DREAM_SPECIAL_IDS):

    0 <|endoftext|> (eos = pad)   1 <|beginoftext|> (bos)   2 <|im_start|>   3 <|unk|>
    4 <|im_end|> (end of turn)    5 <|mask|> (mask)
    6 <reasoning>  7 </reasoning>  8 <answer>  9 </answer>   10.. characters

so a tiny Dream for it is `dream.tiny(vocab_size=256, mask_token_id=5, eos_token_id=0,
pad_token_id=0, eot_token_id=4)`. Its chat template renders Dream's ChatML (our own Jinja,
the output of Dream-v0-Instruct-7B's): `<|im_start|>system\\nYou are a helpful
assistant.<|im_end|>\\n` when the first message is not a system one, then
`<|im_start|>role\\n content <|im_end|>\\n` per message (content not trimmed), and
`<|im_start|>assistant\\n` as the generation prompt; no BOS.
"""

from __future__ import annotations

import json
import os
import sys

from diffpo_jax.tasks.model_tokenizers import FAMILIES

SPECIAL_TOKENS = ["<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|mdm_mask|>", "<|unk|>"]
TAG_TOKENS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>"]
# Non-ASCII characters found in gsm8k_{train,test}.jsonl and math500_test.jsonl, plus a few
# common math symbols; fixed here so the build never depends on the data files.
EXTRA_CHARS = ("\u2019\u2013\u00d7\u20ac\u00f7\u2212\u00a0\u00e9\u00a3\u00b3\u00a2\u201d\u201c\u00be\u00bc"
               "\u00bd\u00f1\u00e8\u221a\u2028\u00e7\u200b\u2018\u0410\u2014"
               "\u00b2\u00b0\u03c0\u2264\u2265\u2260\u00b7\u2026\u221e")
CHARS = ["\n", "\t"] + [chr(c) for c in range(32, 127)] + list(EXTRA_CHARS)
TOKENS = SPECIAL_TOKENS + TAG_TOKENS + CHARS
VOCAB_SIZE = len(TOKENS)
SPECIAL_IDS = {
    "eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 1, "start_header_id": 2,
    "end_header_id": 3, "eot_token_id": 4, "mask_token_id": 5, "unk_token_id": 6,
}
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
ASSET_DIR = os.path.join(_ASSETS, "tiny_tokenizer")

DREAM_SPECIAL_TOKENS = ["<|endoftext|>", "<|beginoftext|>", "<|im_start|>", "<|unk|>", "<|im_end|>", "<|mask|>"]
DREAM_TOKENS = DREAM_SPECIAL_TOKENS + TAG_TOKENS + CHARS
DREAM_VOCAB_SIZE = len(DREAM_TOKENS)
DREAM_SPECIAL_IDS = {
    "eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 1, "im_start_id": 2, "unk_token_id": 3,
    "eot_token_id": 4, "mask_token_id": 5,
}
DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + FAMILIES["dream"].default_system_prompt + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DREAM_ASSET_DIR = os.path.join(_ASSETS, "tiny_tokenizer_dream")
TINY_FAMILIES = ("llada", "dream")


def _check_family(family: str) -> None:
    if family not in TINY_FAMILIES:
        raise ValueError(f"tiny tokenizer family {family!r}: choose one of {TINY_FAMILIES}")


def asset_dir(family: str = "llada") -> str:
    """The shipped tiny tokenizer directory of `family`."""
    _check_family(family)
    return DREAM_ASSET_DIR if family == "dream" else ASSET_DIR


def _special_tokens(family: str) -> list[str]:
    _check_family(family)
    return DREAM_SPECIAL_TOKENS if family == "dream" else SPECIAL_TOKENS


def special_tokens_map(family: str = "llada") -> dict:
    if _special_tokens(family) is DREAM_SPECIAL_TOKENS:
        return {
            "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "unk_token": "<|unk|>", "mask_token": "<|mask|>",
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        }
    return {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|unk|>", "mask_token": "<|mdm_mask|>",
        "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    }


def tokenizer_config(family: str = "llada") -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map(family),
        "chat_template": DREAM_CHAT_TEMPLATE if family == "dream" else CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "padding_side": "left",
        "model_input_names": ["input_ids", "attention_mask"],
    }


def build_tokenizer(family: str = "llada"):
    """The `tokenizers.Tokenizer` (WordLevel over characters + added tokens) of `family`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = _special_tokens(family)
    tokens = specials + TAG_TOKENS + CHARS
    if len(set(tokens)) != len(tokens) or len(tokens) > 256:
        raise AssertionError("tiny tokenizer vocabulary must be unique and at most 256 tokens")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return tok


def _dump(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=True, sort_keys=True) + "\n"


def write(out_dir: str = None, family: str = "llada") -> dict[str, str]:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json of `family`
    (default dir: its shipped asset dir); returns paths."""
    out_dir = out_dir or asset_dir(family)
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "tokenizer.json": _dump(json.loads(build_tokenizer(family).to_str())),
        "tokenizer_config.json": _dump(tokenizer_config(family)),
        "special_tokens_map.json": _dump(special_tokens_map(family)),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = os.path.join(out_dir, name)
        with open(paths[name], "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return paths


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    family = "llada"
    if argv[:1] == ["--family"]:
        if len(argv) < 2 or argv[1] not in TINY_FAMILIES:
            raise SystemExit(f"--family: choose one of {TINY_FAMILIES}")
        family, argv = argv[1], argv[2:]
    out = argv[0] if argv else asset_dir(family)
    write(out, family)
    size, ids = (DREAM_VOCAB_SIZE, DREAM_SPECIAL_IDS) if family == "dream" else (VOCAB_SIZE, SPECIAL_IDS)
    print(f"wrote the {family} tiny tokenizer to {out}: vocab {size} tokens; ids {json.dumps(ids)}")


if __name__ == "__main__":
    main()

"""Build the tiny character-level HF tokenizer shipped in `diffpo_jax/assets/tiny_tokenizer/`.

    python -m diffpo_jax.tasks.tiny_tokenizer [OUT_DIR]   # default: the shipped asset dir

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
"""

from __future__ import annotations

import json
import os
import sys

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
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny_tokenizer")


def special_tokens_map() -> dict:
    return {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|unk|>", "mask_token": "<|mdm_mask|>",
        "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    }


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map(),
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "padding_side": "left",
        "model_input_names": ["input_ids", "attention_mask"],
    }


def build_tokenizer():
    """The `tokenizers.Tokenizer` (WordLevel over characters + added tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if len(set(TOKENS)) != len(TOKENS) or VOCAB_SIZE > 256:
        raise AssertionError("tiny tokenizer vocabulary must be unique and at most 256 tokens")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return tok


def _dump(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=True, sort_keys=True) + "\n"


def write(out_dir: str = ASSET_DIR) -> dict[str, str]:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "tokenizer.json": _dump(json.loads(build_tokenizer().to_str())),
        "tokenizer_config.json": _dump(tokenizer_config()),
        "special_tokens_map.json": _dump(special_tokens_map()),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = os.path.join(out_dir, name)
        with open(paths[name], "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return paths


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else ASSET_DIR
    write(out)
    print(f"wrote tiny tokenizer to {out}: vocab {VOCAB_SIZE} tokens; ids {json.dumps(SPECIAL_IDS)}")


if __name__ == "__main__":
    main()

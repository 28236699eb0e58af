"""The model families' tokenizers: their special tokens and chat conventions (FAMILIES, the
one place these facts live), loading a tokenizer directory without remote code, and the
cross-check of its special ids against the model's.

    tok = load("/ckpt/Dream-v0-Instruct-7B")   # no trust_remote_code, no network
    special_ids(tok, "dream")                  # {'mask_token_id': 151666, 'eos_token_id': 151643, ...}
    check_checkpoint(tok, "/ckpt/Dream-v0-Instruct-7B")   # TokenizerError on a mismatch with config.json
    check_model(tok, cfg)                      # ... with a TransformerConfig

The families (ids of the released checkpoints):
  llada  GSAI-ML/LLaDA-8B-Instruct. Llama-3 chat template: BOS, then per message
         `<|start_header_id|>role<|end_header_id|>\\n\\n` + content (trimmed) + `<|eot_id|>`;
         no default system message. mask `<|mdm_mask|>` 126336, eos = pad `<|endoftext|>`
         126081, end of turn `<|eot_id|>` 126348.
  dream  Dream-org/Dream-v0-Instruct-7B (Qwen2.5 vocabulary). Qwen2 ChatML template:
         `<|im_start|>role\\n` + content (not trimmed) + `<|im_end|>\\n` per message, a
         `system` turn "You are a helpful assistant." first when the conversation has none,
         no BOS in the prompt. mask `<|mask|>` 151666, eos = pad `<|endoftext|>` 151643, end
         of turn `<|im_end|>` 151645 (`<|beginoftext|>` 151665 is the tokenizer's bos, unused
         by the chat template).
Both families end an answer with the end-of-turn token followed by EOS padding, and the
samplers cut a completion at the model's `eos_token_id` (`<|endoftext|>` in both).

Dream ships its tokenizer as remote code (`tokenizer_class: DreamTokenizer`, auto_map to
`tokenization_dream.py`, files vocab.json + merges.txt). It is Qwen2's byte-level BPE (the
same pre-tokenizer regex, NFC normalisation and byte-level decoding), so `load` reads those
files with transformers' own Qwen2 tokenizer class instead of running the shipped code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be loaded, or whose ids do not fit the model."""


@dataclasses.dataclass(frozen=True)
class FamilyTokens:
    """One family's special-token names and chat conventions.

    mask: the diffusion mask token; eos: end of sequence (= pad, the samplers' EOS);
    end_of_turn: closes a chat turn (the model config's eot_token_id); turn_start: the
    template's turn marker (tells the families' tokenizers apart); default_system_prompt:
    the system turn the chat template adds when the conversation has none (None: never)."""

    mask: str
    eos: str
    end_of_turn: str
    turn_start: str
    default_system_prompt: Optional[str]

    @property
    def markers(self) -> tuple[str, ...]:
        """Tokens a tokenizer of this family has (all of them)."""
        return (self.turn_start, self.end_of_turn, self.mask)


FAMILIES = {
    "llada": FamilyTokens(mask="<|mdm_mask|>", eos="<|endoftext|>", end_of_turn="<|eot_id|>",
                          turn_start="<|start_header_id|>", default_system_prompt=None),
    "dream": FamilyTokens(mask="<|mask|>", eos="<|endoftext|>", end_of_turn="<|im_end|>",
                          turn_start="<|im_start|>", default_system_prompt="You are a helpful assistant."),
}
ID_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "eot_token_id")
# tokenizer_config.json classes that are Qwen2's byte-level BPE over vocab.json + merges.txt.
QWEN2_STYLE_CLASSES = ("DreamTokenizer", "DreamTokenizerFast", "Qwen2Tokenizer", "Qwen2TokenizerFast")
# config.json `model_type` (lower-cased) / `architectures` entry -> family.
MODEL_TYPES = {"llada": "llada", "dream": "dream"}
ARCHITECTURES = {"LLaDAModelLM": "llada", "DreamModel": "dream"}


# ----------------------------------------------------------------------------------- loading
def _tokenizer_config(path: str) -> dict:
    config = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(config):
        return {}
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{config}: not valid JSON ({e})") from None


def _check_added_ids(tokenizer, path: str, added: dict) -> None:
    """TokenizerError unless every `added_tokens_decoder` entry (id -> {content}) of
    tokenizer_config.json got its id: a fallback class appends added tokens after vocab.json."""
    for key, entry in added.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        got = tokenizer.convert_tokens_to_ids(content) if content else None
        if content and got != int(key):
            raise TokenizerError(f"{os.path.join(path, 'tokenizer_config.json')}: added token {content!r} has id "
                                 f"{key} there but {got} as read from vocab.json + merges.txt "
                                 f"({type(tokenizer).__name__}); "
                                 "the added tokens are appended after vocab.json's N entries, so their ids must "
                                 "start at N, in order")


def load(path: str):
    """The tokenizer in directory `path`, local files only and never running code shipped
    with it. `AutoTokenizer` (trust_remote_code=False) first; when that refuses (a remote
    class such as Dream's `DreamTokenizer`, or a class transformers does not know), the same
    files through a built-in class: tokenizer.json -> `PreTrainedTokenizerFast`; vocab.json +
    merges.txt of a Qwen2-style class (QWEN2_STYLE_CLASSES) -> transformers' Qwen2 tokenizer.
    The special tokens and `chat_template` come from tokenizer_config.json either way."""
    import transformers

    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: not a directory; point it at a local tokenizer directory "
                             "(tokenizer_config.json + tokenizer.json, or vocab.json + merges.txt)")
    try:
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
        auto_error = " ".join(str(e).split())[:300]
    config = _tokenizer_config(path)
    cls_name = config.get("tokenizer_class")
    has = lambda name: os.path.isfile(os.path.join(path, name))  # noqa: E731
    if has("tokenizer.json"):
        fallback, source = transformers.PreTrainedTokenizerFast, "tokenizer.json"
    elif has("vocab.json") and has("merges.txt") and cls_name in QWEN2_STYLE_CLASSES:
        fallback = getattr(transformers, "Qwen2TokenizerFast", None) or transformers.Qwen2Tokenizer
        source = "vocab.json + merges.txt"
    else:
        raise TokenizerError(
            f"{os.path.join(path, 'tokenizer_config.json')}: tokenizer_class={cls_name!r} cannot be loaded without "
            f"trust_remote_code ({auto_error}), and the directory has no tokenizer.json, nor vocab.json + "
            f"merges.txt of a Qwen2-style tokenizer ({', '.join(QWEN2_STYLE_CLASSES)}); copy the checkpoint's "
            "tokenizer files into it")
    try:
        tokenizer = fallback.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
        raise TokenizerError(f"{path}: AutoTokenizer failed ({auto_error}) and reading {source} with "
                             f"{fallback.__name__} failed too ({' '.join(str(e).split())[:300]})") from None
    if source != "tokenizer.json":  # tokenizer.json holds the added tokens' ids itself
        _check_added_ids(tokenizer, path, config.get("added_tokens_decoder") or {})
    return tokenizer


# ----------------------------------------------------------------------------- special ids
def detect_family(tokenizer) -> Optional[str]:
    """The family whose marker tokens (turn start, end of turn, mask) are all in the
    tokenizer's vocabulary; None when no family's (or more than one's) are."""
    vocab = tokenizer.get_vocab()
    found = [name for name, fam in FAMILIES.items() if all(t in vocab for t in fam.markers)]
    return found[0] if len(found) == 1 else None


def special_ids(tokenizer, family: Optional[str] = None) -> dict:
    """The ids a model config must share with `tokenizer`, read from its files:
    mask_token_id (the declared mask_token, else the family's mask token by name),
    eos_token_id (the declared eos_token, else the family's), pad_token_id (the declared
    pad_token, else eos: what tasks/data.py pads prompts with), eot_token_id (the family's
    end-of-turn token by name). `family` None = detect_family; a token it lacks is None."""
    fam = FAMILIES.get(family or detect_family(tokenizer) or "")
    vocab = tokenizer.get_vocab()

    def declared_or_named(declared, name_attr):
        if declared is not None:
            return declared
        return vocab.get(getattr(fam, name_attr)) if fam else None

    eos = declared_or_named(tokenizer.eos_token_id, "eos")
    return {"mask_token_id": declared_or_named(tokenizer.mask_token_id, "mask"), "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            "eot_token_id": declared_or_named(None, "end_of_turn")}


def check_ids(tokenizer, model_ids: dict, family: Optional[str], vocab_size: Optional[int], *,
              tokenizer_source: str, model_source: str) -> None:
    """TokenizerError when `tokenizer` does not fit a model with `model_ids` (ID_FIELDS ->
    id; None = not checked) of `family` (None = unknown) and `vocab_size` embedding rows:
    a tokenizer of another family, a special id that differs, or ids beyond the embedding."""
    if family is not None and family not in FAMILIES:
        raise TokenizerError(f"{model_source}: unknown model family {family!r}; tokenizer conventions are "
                             f"known for {sorted(FAMILIES)} (diffpo_jax/tasks/model_tokenizers.py FAMILIES)")
    found = detect_family(tokenizer)
    if family is not None and found is not None and found != family:
        fix = f"use the {family} checkpoint's own tokenizer"
        if family == "dream":
            fix += " (tiny models: diffpo_jax/assets/tiny_tokenizer_dream)"
        raise TokenizerError(f"{tokenizer_source} is a {found} tokenizer ({', '.join(FAMILIES[found].markers)}) but "
                             f"{model_source} is a {family} model, whose chat template and special tokens are "
                             f"{', '.join(FAMILIES[family].markers)}; {fix}")
    ids = special_ids(tokenizer, family or found)
    errors = []
    for field in ID_FIELDS:
        want = model_ids.get(field)
        if want is None:
            continue
        got = ids[field]
        if got is None:
            errors.append(f"{field}: the tokenizer has no such token, the model uses {want}")
        elif got != want:
            errors.append(f"{field}: tokenizer {got} ({tokenizer.convert_ids_to_tokens(got)!r}), model {want}")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        errors.append(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embedding rows")
    if errors:
        raise TokenizerError(f"{tokenizer_source} does not fit {model_source}: " + "; ".join(errors) +
                             ". Use the checkpoint's own tokenizer, or fix the ids (the model config, or "
                             "mask_token / eos_token / pad_token in tokenizer_config.json)")


def check_model(tokenizer, cfg, tokenizer_source: str = "the tokenizer",
                model_source: str = "the model config") -> None:
    """`check_ids` against a `TransformerConfig` (its family, four ids and vocab_size). For a
    config read from a checkpoint use `check_checkpoint`: config.json has no end-of-turn id, so
    such a config's eot_token_id is a default, not the checkpoint's."""
    check_ids(tokenizer, {f: getattr(cfg, f) for f in ID_FIELDS}, cfg.family, cfg.vocab_size,
              tokenizer_source=tokenizer_source, model_source=model_source)


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_checkpoint(tokenizer, model_dir: str, tokenizer_source: str = "the tokenizer") -> None:
    """`check_ids` against `model_dir/config.json` (LLaDA's or Dream's keys: the family from
    model_type, else architectures; mask_token_id; eos_token_id and pad_token_id, a null one
    taking the other's value; embedding_size | vocab_size). Absent keys are not checked, and
    nothing is without a config.json (the model loader reports that)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    ids = {f: _int_or_none(hf.get(f)) for f in ("mask_token_id", "eos_token_id", "pad_token_id")}
    ids["pad_token_id"] = ids["pad_token_id"] if ids["pad_token_id"] is not None else ids["eos_token_id"]
    ids["eos_token_id"] = ids["eos_token_id"] if ids["eos_token_id"] is not None else ids["pad_token_id"]
    archs = hf.get("architectures") if isinstance(hf.get("architectures"), list) else []
    family = MODEL_TYPES.get(str(hf.get("model_type", "")).lower()) or next(
        (ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    vocab = _int_or_none(hf.get("embedding_size")) or _int_or_none(hf.get("vocab_size"))
    check_ids(tokenizer, ids, family, vocab, tokenizer_source=tokenizer_source, model_source=path)

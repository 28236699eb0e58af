"""`python -m diffpo_jax.sample` on a tiny HF-format checkpoint + a tiny word-level tokenizer."""
import re

import numpy as np
import pytest

from diffpo_jax import sample
from diffpo_jax.convert.hf_import import load_hf
from diffpo_jax.sampling import SamplerConfig, generate, left_pad
from torch_llada import TorchLLaDA, TorchLLaDAConfig, write_hf_checkpoint

SPECIAL = {"<|mdm_mask|>": 300, "<|endoftext|>": 301, "<|eot_id|>": 302, "<|start_header_id|>": 303,
           "<|end_header_id|>": 304, "<|startoftext|>": 305, "<unk>": 306, "user": 307, "assistant": 308}
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> "
            "{{ m['content'] }} <|eot_id|> {% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|> assistant <|end_header_id|>{% endif %}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out = str(tmp_path_factory.mktemp("tiny_llada"))
    write_hf_checkpoint(TorchLLaDA(TorchLLaDAConfig(), seed=0, std=0.2), out)
    vocab = {**{f"w{i}": i for i in range(300)}, **SPECIAL}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>",
                                   additional_special_tokens=["<|mdm_mask|>", "<|eot_id|>", "<|start_header_id|>",
                                                              "<|end_header_id|>"])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(out)
    return out


def test_help_explains_rules(capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--gamma", "--show_steps", "entropy-bounded", "Fast-dLLM", "NFE"):
        assert word in text


def test_cli_decodes_and_shows_steps(model_dir, capsys):
    argv = ["--model_dir", model_dir, "--prompt", "w1 w2 w3", "--prompt", "w4", "--rule", "eb", "--gamma", "0.5",
            "--gen_length", "16", "--block_length", "8", "--show_steps", "--compute_dtype", "float32",
            "--param_dtype", "float32"]
    assert sample.main(argv) == 0
    text = capsys.readouterr().out
    nfes = [int(n) for n in re.findall(r"--- NFE (\d+)", text)]
    assert len(nfes) == 2 and all(2 <= n <= 16 for n in nfes)
    assert len(re.findall(r"^  step +\d+ \(block [01], \+\d+\)", text, re.M)) == sum(nfes)
    assert text.count("=== prompt") == 2
    # the CLI's NFE equals a direct generate() on the same checkpoint and chat-templated ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    ids = [sample.encode_prompt(tok, p, True) for p in ("w1 w2 w3", "w4")]
    assert ids[1][:3] == [305, 303, 307] and ids[1][-3:] == [303, 308, 304]  # one BOS, template applied
    model = load_hf(model_dir, compute_dtype="float32", param_dtype="float32")
    tokens, mask = left_pad(ids, model.cfg.pad_token_id)
    out = generate(model, tokens, SamplerConfig(rule="eb", gamma=0.5, gen_length=16, block_length=8),
                   prompt_mask=mask)
    assert np.asarray(out.nfe).tolist() == nfes


def test_cli_bad_config_names_the_field(model_dir):
    with pytest.raises(SystemExit, match="block_length"):
        sample.main(["--model_dir", model_dir, "--prompt", "w1", "--gen_length", "30", "--block_length", "8"])


def test_cli_choice_lists_match_the_library():
    """sample.py spells some choice lists out (so --help needs no jax import): keep them in step."""
    from diffpo_jax.models.attention import ATTENTION_IMPLS
    from diffpo_jax.sampling.config import KV_CACHES

    actions = {a.dest: a for a in sample.build_parser()._actions}
    assert tuple(actions["attention_impl"].choices) == ATTENTION_IMPLS
    assert tuple(actions["kv_cache"].choices) == tuple(KV_CACHES)


def test_cli_refuses_a_hub_id_without_network(capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--model_dir", "GSAI-ML/LLaDA-8B-Instruct", "--prompt", "hi"])
    assert e.value.code == 2
    assert ("--model_dir: GSAI-ML/LLaDA-8B-Instruct: not a local directory; download the checkpoint first "
            "(no hub downloads at run time)") in capsys.readouterr().err


def test_cli_mesh_mistakes_are_one_line_errors(model_dir, capsys):
    """8 fake devices (conftest): a bad spec is a usage error; a mesh that does not fit the devices
    or the prompts is `error: ...`, said before the model is loaded."""
    def never(*a, **k):
        raise AssertionError("the model must not be loaded")

    base = ["--model_dir", model_dir, "--prompt", "w1"]
    with pytest.raises(SystemExit) as e:
        sample.main(base + ["--mesh", "1,8"])
    assert e.value.code == 2 and "expected 'none' or 'DATA,FSDP,TP'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^error: --mesh 1,8,1: 1 prompt\(s\) are not divisible by DATA\*FSDP=8"):
        sample.main(base + ["--mesh", "1,8,1"], loader=never)
    with pytest.raises(SystemExit, match=r"^error: mesh shape data=1 fsdp=3 tp=1 needs 3 devices, but 8"):
        sample.main(base + ["--mesh", "1,3,1"], loader=never)


def test_cli_reads_the_tokenizer_locally_and_reports_bad_checkpoints(model_dir, monkeypatch):
    from transformers import AutoTokenizer

    from diffpo_jax.convert.errors import ConversionError

    calls, original = [], AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda path, **kw: calls.append(kw) or original(path, **kw))

    def broken(model_dir, **kw):
        raise ConversionError(f"{model_dir}: tensor 'x' is missing\n(second line)")

    with pytest.raises(SystemExit, match=r"^error: .*tensor 'x' is missing \(second line\)$"):
        sample.main(["--model_dir", model_dir, "--prompt", "w1"], loader=broken)
    assert calls == [{"local_files_only": True, "trust_remote_code": False}]


def test_cli_starts_multi_host_first(model_dir, monkeypatch):
    """main() calls distributed.maybe_initialize() (a no-op on one host) before touching a device."""
    from diffpo_jax import distributed

    def init():
        raise RuntimeError("maybe_initialize called")

    monkeypatch.setattr(distributed, "maybe_initialize", init)
    with pytest.raises(RuntimeError, match="maybe_initialize called"):
        sample.main(["--model_dir", model_dir, "--prompt", "w1", "--mesh", "1,1,8"])

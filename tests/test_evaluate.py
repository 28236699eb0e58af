"""evaluate.padded_batches: one shared prompt width, or d1's per-batch width; the CLI: local
directories only, one-line errors, and the shipped demo model with compact prompts."""
import json

import jax
import numpy as np
import pytest

from configs import demo_sudoku
from diffpo_jax import evaluate
from diffpo_jax.evaluate import padded_batches
from diffpo_jax.sampling import RULES

PROMPTS = [[1] * 3, [2] * 9, [3] * 4, [4] * 2, [5] * 5]  # lengths 3, 9, 4, 2, 5


def _widths(**kw):
    return [(s, p.shape, n) for s, p, _, n in padded_batches(PROMPTS, 2, pad_id=0, **kw)]


def test_one_shared_width_by_default():
    assert _widths() == [(0, (2, 9), 2), (2, (2, 9), 2), (4, (2, 9), 1)]


def test_per_batch_width_like_d1_and_rounded_up():
    assert [shape for _, shape, _ in _widths(pad_multiple=1)] == [(2, 9), (2, 4), (2, 5)]
    assert [shape for _, shape, _ in _widths(pad_multiple=4)] == [(2, 12), (2, 4), (2, 8)]
    s, prompt, mask, n_real = list(padded_batches(PROMPTS, 2, pad_id=0, pad_multiple=1))[1]
    np.testing.assert_array_equal(prompt, [[3, 3, 3, 3], [0, 0, 4, 4]])  # left-padded
    np.testing.assert_array_equal(mask.sum(1), [4, 2])
    last = list(padded_batches(PROMPTS, 2, pad_id=0, pad_multiple=1))[-1]
    assert last[3] == 1 and last[1].tolist() == [[5] * 5, [5] * 5]  # filled by repeating the last prompt


def test_negative_pad_multiple_is_refused():
    with pytest.raises(ValueError, match="pad_multiple=-1"):
        list(padded_batches(PROMPTS, 2, pad_id=0, pad_multiple=-1))


DEMO = ["--model_dir", demo_sudoku.DEMO_MODEL, "--task", "sudoku", "--gen_length", "24", "--block_length", "24"]


def _usage_error(capsys, argv) -> str:
    """argparse's exit 2 and its message for `argv`."""
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_refuses_hub_ids_and_bad_flags_before_loading(capsys):
    assert "GSAI-ML/LLaDA-8B-Instruct: not a local directory; download the checkpoint first (no hub downloads" \
        in _usage_error(capsys, ["--model_dir", "GSAI-ML/LLaDA-8B-Instruct", "--task", "sudoku"])
    assert "--tokenizer_dir: GSAI-ML/LLaDA-8B-Instruct: not a local directory" in _usage_error(
        capsys, DEMO + ["--tokenizer_dir", "GSAI-ML/LLaDA-8B-Instruct"])
    assert "/nonexistent: not a local directory" in _usage_error(capsys, ["--model_dir", "/nonexistent", "--task",
                                                                          "sudoku"])
    assert "invalid choice: 'EB'" in _usage_error(capsys, DEMO + ["--rule", "EB"])
    assert "'0.1,x': expected comma-separated numbers" in _usage_error(capsys, DEMO + ["--gammas", "0.1,x"])
    assert "--n: 0 must be >= 1" in _usage_error(capsys, DEMO + ["--n", "0"])
    actions = {a.dest: a for a in evaluate.build_parser()._actions}
    assert tuple(actions["rule"].choices) == RULES


def test_cli_bad_checkpoint_and_settings_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*config\.json is missing"):  # ConversionError
        evaluate.main(["--model_dir", str(tmp_path), "--task", "sudoku"])  # an empty directory
    with pytest.raises(SystemExit, match=r"^error: SamplerConfig: .*block_length") as e:
        evaluate.main(["--model_dir", str(tmp_path), "--task", "sudoku", "--gen_length", "30"])  # before loading
    assert "\n" not in str(e.value)
    # d1's long prompts do not fit the demo model: said before decoding, with the fix
    with pytest.raises(SystemExit, match=r"^error: prompt length \d+ \+ gen_length 24 exceeds the model's "
                                         r"max_sequence_length=128; try --prompt_style compact"):
        evaluate.main(DEMO + ["--n", "2", "--out_dir", str(tmp_path / "out")])


def test_cli_evaluates_the_shipped_demo_model(tmp_path, monkeypatch):
    """README's command for the demo model (compact prompts, no <reasoning> prefill) on 2 puzzles,
    equal to run_eval with the demo's own prompts; the tokenizer is read with local_files_only."""
    from transformers import AutoTokenizer

    from diffpo_jax import tasks
    from diffpo_jax.convert.hf_import import load_hf
    from diffpo_jax.sampling import SamplerConfig

    calls, original = [], AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda path, **kw: calls.append(kw) or original(path, **kw))
    out = tmp_path / "eval"
    argv = DEMO + ["--prompt_style", "compact", "--no-add_reasoning", "--n", "2", "--batch_size", "2", "--gammas",
                   "0.3", "--param_dtype", "float32", "--compute_dtype", "float32", "--out_dir", str(out)]
    assert evaluate.main(argv) == 0
    assert calls and all(kw.get("local_files_only") is True for kw in calls)
    (point,) = json.load(open(out / "summary.json"))
    assert point["label"] == "eb_g0.3" and point["n"] == 2 and 1 <= point["nfe_mean"] <= 24
    records = [json.loads(line) for line in open(out / "sudoku_eb_g0.3.jsonl")]
    # the same evaluation through the library, with the prompts demo.run_demo builds
    llm = load_hf(demo_sudoku.DEMO_MODEL, param_dtype="float32", compute_dtype="float32")
    tok = original(demo_sudoku.DEMO_MODEL)
    items = tasks.load_eval_items("sudoku", n=2)
    ids = evaluate.encode_prompts("sudoku", items, tok, 0,
                                  lambda it: tasks.format_prompt("sudoku", it, tok, "eval", False, "compact"))
    assert max(map(len, ids)) <= demo_sudoku.get_config().task.max_prompt_length
    direct, summary = evaluate.run_eval(llm, tok, "sudoku", items, SamplerConfig(
        rule="eb", gamma=0.3, gen_length=24, block_length=24), batch_size=2, prompt_ids=ids, progress=False)
    assert [(r["completion"], r["nfe"]) for r in records] == [(r["completion"], r["nfe"]) for r in direct]
    assert point["accuracy"] == summary["accuracy"]


def test_cli_starts_multi_host_first(monkeypatch):
    """main() calls distributed.maybe_initialize() (a no-op on one host) before loading anything."""
    from diffpo_jax import distributed

    def init():
        raise RuntimeError("maybe_initialize called")

    monkeypatch.setattr(distributed, "maybe_initialize", init)
    with pytest.raises(RuntimeError, match="maybe_initialize called"):
        evaluate.main(DEMO)


@pytest.fixture(scope="module")
def demo_eval():
    """The demo model, its tokenizer, 7 puzzles and their compact prompts (4 batches of 2)."""
    from transformers import AutoTokenizer

    from diffpo_jax import tasks
    from diffpo_jax.convert.hf_import import load_hf
    from diffpo_jax.sampling import SamplerConfig

    llm = load_hf(demo_sudoku.DEMO_MODEL, param_dtype="float32", compute_dtype="float32")
    tok = AutoTokenizer.from_pretrained(demo_sudoku.DEMO_MODEL, local_files_only=True, trust_remote_code=False)
    items = tasks.load_eval_items("sudoku", n=7)
    ids = evaluate.encode_prompts("sudoku", items, tok, 0,
                                  lambda it: tasks.format_prompt("sudoku", it, tok, "eval", False, "compact"))
    cfg = SamplerConfig(rule="eb", gen_length=24, block_length=24)
    return llm, tok, items, ids, cfg


def _gamma_fn(prompt, pmask):  # a per-row γ in [0.05, 1.25] that differs between rows and batches
    return (0.05 + 0.2 * (np.asarray(prompt).astype(np.int64).sum(1) % 7)).astype(np.float32)


def test_run_eval_on_one_process_is_the_plain_batch_loop(demo_eval):
    """One process: run_eval's records are those of decoding every padded batch in order with key
    fold_in(key, batch) (today's loop, restated here); a γ function's own forwards are counted by
    gamma_fn_nfe (default 0)."""
    from flax import nnx

    from diffpo_jax import tasks
    from diffpo_jax.sampling import make_sampler

    llm, tok, items, ids, cfg = demo_eval
    key = jax.random.key(5)
    records, summary = evaluate.run_eval(llm, tok, "sudoku", items, cfg, batch_size=2, gamma_fn=_gamma_fn, key=key,
                                         prompt_ids=ids, progress=False)
    assert evaluate.eval_processes(nnx.state(llm), None) == (0, 1)
    graphdef, state = nnx.split(llm)
    sampler, want = make_sampler(graphdef, cfg), []
    for bi, (s, prompt, pmask, n_real) in enumerate(padded_batches(ids, 2, llm.cfg.pad_token_id)):
        gamma = _gamma_fn(prompt, pmask)
        out = sampler(state, prompt, pmask, jax.random.fold_in(key, bi), gamma=gamma)
        comp, cmask, nfe = (np.asarray(x) for x in (out.tokens, out.completion_mask, out.nfe))
        for j in range(n_real):
            text = tok.decode([int(t) for t in comp[j, prompt.shape[1]:][cmask[j]]], skip_special_tokens=False)
            want.append({"index": s + j, "completion": text, "nfe": int(nfe[j]), "decode_nfe": int(nfe[j]),
                         "score": tasks.score("sudoku", text, items[s + j]), "gamma": float(gamma[j])})
    assert json.dumps(records) == json.dumps(want)
    assert summary["n"] == 7 and summary["nfe_mean"] == np.mean([r["nfe"] for r in want])


def test_run_eval_splits_batches_over_processes(demo_eval, monkeypatch):
    """Three fake processes without a mesh: process p decodes batches p, p+3, ... only (disjoint,
    together all 4), and after the gather every process returns the one-process records."""
    from flax import nnx

    from diffpo_jax import distributed

    llm, tok, items, ids, cfg = demo_eval
    kw = dict(batch_size=2, gamma_fn=_gamma_fn, key=jax.random.key(5), prompt_ids=ids, progress=False)
    want = evaluate.run_eval(llm, tok, "sudoku", items, cfg, **kw)

    class Sent(Exception):
        pass

    sent = {}
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    for p in range(3):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        assert evaluate.eval_processes(nnx.state(llm), None) == (p, 3)

        def stack(tree, p=p):
            sent[p] = tree
            raise Sent

        monkeypatch.setattr(distributed, "process_stack", stack)
        with pytest.raises(Sent):
            evaluate.run_eval(llm, tok, "sudoku", items, cfg, **kw)
    batches = {p: [int(b) for b in sent[p]["batch"] if b >= 0] for p in range(3)}
    assert batches == {0: [0, 3], 1: [1], 2: [2]}  # disjoint, and their union is every batch
    assert all(sent[p]["comp"].shape == (2, 2, 24) for p in range(3))  # ceil(4 / 3) slots each
    every = {k: np.stack([sent[p][k] for p in range(3)]) for k in sent[0]}
    for p in range(3):  # what every process returns once the others' batches arrive
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        monkeypatch.setattr(distributed, "process_stack", lambda tree: every)
        records, summary = evaluate.run_eval(llm, tok, "sudoku", items, cfg, **kw)
        assert json.dumps(records) == json.dumps(want[0]) and summary == want[1]
    # a mesh (its devices split every batch's rows over the hosts) or a model on other processes'
    # devices: no split, every process runs every batch
    assert evaluate.eval_processes(nnx.state(llm), object()) == (0, 1)

    class Global:
        is_fully_addressable = False

    assert evaluate.eval_processes([Global()], None) == (0, 1)


def test_process_stack_on_one_process():
    from diffpo_jax import distributed

    tree = {"a": np.arange(6).reshape(2, 3), "b": np.array([True, False])}
    out = distributed.process_stack(tree)
    np.testing.assert_array_equal(out["a"], tree["a"][None])
    assert out["b"].shape == (1, 2) and out["b"].dtype == bool

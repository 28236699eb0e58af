"""Evaluation: accuracy **and** NFE of a sampler on a benchmark, γ sweeps, Pareto plot.

    python -m diffpo_jax.evaluate --model_dir DIR --task countdown --rule eb --gammas 0.05,0.1,0.3 \\
        --n 256 --out_dir runs/eval

Writes one JSONL of generations per sampler setting (`<task>_<label>.jsonl`: prompt index,
completion, NFE, score record), prints accuracy and mean NFE per setting, writes
`summary.json` and an accuracy-vs-NFE Pareto plot (`pareto.png`). Accuracy is the metric d1
reports (`tasks.aggregate`: Sudoku = pooled cell accuracy, with puzzle accuracy beside it).

The shipped demo model (trained on short prompts without the `<reasoning>` prefill, fp32):

    python -m diffpo_jax.evaluate --model_dir diffpo_jax/assets/demo_sudoku --task sudoku \\
        --prompt_style compact --no-add_reasoning --gen_length 24 --block_length 24 \\
        --gammas 0.1,0.3,1,3 --param_dtype float32 --compute_dtype float32 --out_dir runs/eval_demo

No network is used: the model, tokenizer and benchmark data are read from local paths.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from diffpo_jax import distributed, tasks
from diffpo_jax.cli_types import floats, local_dir, positive_int
from diffpo_jax.convert.errors import ConversionError
from diffpo_jax.distributed import from_host, host_value
from diffpo_jax.models.attention import ATTENTION_IMPLS
from diffpo_jax.models.threshold_head import HeadGamma
from diffpo_jax.sampling import DREAM_ALGS, RULES, SamplerConfig, left_pad, make_sampler
from diffpo_jax.sampling.config import KV_CACHES


def encode_prompts(task: str, items: Sequence[dict], tokenizer, max_prompt_length: int = 0,
                   prompt_fn=None) -> list[list[int]]:
    """Token ids of each item's prompt (chat template; left-truncated to max_prompt_length > 0)."""
    fmt = prompt_fn or (lambda it: tasks.format_prompt(task, it, tokenizer))
    ids = [tokenizer(fmt(it), add_special_tokens=False)["input_ids"] for it in items]
    return [x[-max_prompt_length:] if max_prompt_length else x for x in ids]


def padded_batches(prompt_ids: Sequence[list[int]], batch_size: int, pad_id: int, pad_multiple: int = 0):
    """Yield (start, prompt `[batch_size, P]` int32, prompt_mask `[batch_size, P]` bool, n_real):
    consecutive left-padded batches; the last batch is filled up by repeating its last prompt
    (n_real rows are real).

    pad_multiple = 0: one shared width P = the longest prompt of all (one compile serves all).
    pad_multiple = m > 0: each batch is as wide as its own longest prompt rounded up to a
    multiple of m; m = 1 is d1's evaluation (every batch padded to its longest prompt), which
    matters in parity mode, where the model attends to the pads; one compile per width."""
    if pad_multiple < 0:
        raise ValueError(f"pad_multiple={pad_multiple}: use 0 (one width for all) or m >= 1")
    longest = max(len(p) for p in prompt_ids)
    for s in range(0, len(prompt_ids), batch_size):
        chunk = list(prompt_ids[s:s + batch_size])
        n_real = len(chunk)
        width = longest
        if pad_multiple:
            width = -(-max(len(p) for p in chunk) // pad_multiple) * pad_multiple
        prompt, pmask = left_pad(chunk + [chunk[-1]] * (batch_size - n_real), pad_id, width)
        yield s, prompt, pmask, n_real


def eval_processes(state, mesh) -> tuple[int, int]:
    """(this process's index, number of processes) that `run_eval` splits its batches over:
    every process when several run without a mesh and the model `state` (an nnx.State or any
    pytree of arrays) is on this process's devices alone; otherwise (0, 1): one process, a mesh
    (whose devices already split each batch's rows over the hosts), or a model sharded over
    other processes' devices (every process must then run every batch)."""
    n = jax.process_count()
    if n == 1 or mesh is not None:
        return 0, 1
    if not all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(state)):
        return 0, 1
    return jax.process_index(), n


def _gather_batches(decoded: list, n_proc: int, n_batches: int, batch_size: int, n_items: int,
                    gen_length: int, has_gamma: bool) -> list:
    """Every process's decoded batches (`run_eval`'s tuples; process p holds batches p, p + n, ...)
    -> all of them in batch order, on every process. Each process sends a fixed-shape stack of
    `ceil(n_batches / n)` batches (unused slots zero, batch index −1; γ as f32, the sampler's
    dtype)."""
    slots = -(-n_batches // n_proc)
    local = {"batch": np.full((slots,), -1, np.int32),
             "comp": np.zeros((slots, batch_size, gen_length), np.int32),
             "cmask": np.zeros((slots, batch_size, gen_length), bool),
             "nfe": np.zeros((slots, batch_size), np.int32),
             "gamma": np.zeros((slots, batch_size), np.float32)}
    for k, (bi, _, _, comp, cmask, nfe, gamma) in enumerate(decoded):
        local["batch"][k], local["comp"][k], local["cmask"][k], local["nfe"][k] = bi, comp, cmask, nfe
        if gamma is not None:
            local["gamma"][k] = gamma
    every = distributed.process_stack(local)  # leaves [n_proc, slots, ...]
    out = []
    for bi in range(n_batches):
        p, k = bi % n_proc, bi // n_proc
        if int(every["batch"][p, k]) != bi:
            raise RuntimeError(f"evaluation batch {bi} missing from process {p} (got {int(every['batch'][p, k])})")
        s = bi * batch_size
        out.append((bi, s, min(batch_size, n_items - s), every["comp"][p, k], every["cmask"][p, k],
                    every["nfe"][p, k], every["gamma"][p, k] if has_gamma else None))
    return out


def run_eval(llm: nnx.Module, tokenizer, task: str, items: Sequence[dict], sampler_cfg: SamplerConfig, *,
             batch_size: int = 32, gamma_fn=None, key: Optional[jax.Array] = None, mesh=None,
             prompt_ids: Optional[list[list[int]]] = None, progress: bool = True,
             pad_multiple: int = 0, gamma_fn_nfe: int = 0, head=None) -> tuple[list[dict], dict]:
    """Decode every item with `sampler_cfg` and score it.

    head: a `ThresholdHead` (prompt or step head) that sets EB's γ inside the sampler, at σ = 0
    (γ = μ; it reads the first decoding forward, so it adds no NFE); records get the γ used
    (`gamma`: the step head's mean over the row's steps).
    gamma_fn(prompt [b, P], prompt_mask [b, P]) -> γ `[b]`: any other per-row γ; None (and no
    head) = the config's fixed γ / threshold. A gamma_fn's own model forwards are part of the
    cost: each row's reported `nfe` is its decoding steps + `gamma_fn_nfe` (`decode_nfe` in the
    records is the decoding steps alone). Returns (records, summary) where summary has
    `accuracy`, `nfe_mean` and the task's extra numbers. Batches are padded to `batch_size`
    rows; prompts share one padded length P (one compile), or with pad_multiple = m > 0 each
    batch takes its own longest prompt rounded up to a multiple of m (`padded_batches`).

    Several processes (multi-host; `eval_processes`): with a mesh, every process holds every
    batch and the mesh's devices on all hosts split its rows, so no decoding is repeated.
    Without a mesh (each process decodes on its own devices), process i decodes only batches
    i, i + n, i + 2n, ... (n processes; the same batches, widths and keys as on one process,
    so the results do not depend on n), then the completions are gathered
    (`distributed.process_stack`). Either way every process returns all records and the same
    summary (the host-side detokenising and scoring run on every process); gamma_fn is then
    called on this process's batches only, so it must not run multi-process collectives.
    """
    key = jax.random.key(0) if key is None else key
    if head is not None and gamma_fn is not None:
        raise ValueError("run_eval: pass a threshold head or a gamma_fn, not both")
    head_gamma = None if head is None else HeadGamma.of(head, 0.0)
    prompt_ids = prompt_ids if prompt_ids is not None else encode_prompts(task, items, tokenizer)
    graphdef, state = nnx.split(llm)
    sampler = make_sampler(graphdef, sampler_cfg, mesh)
    pid, n_proc = eval_processes(state, mesh)
    n_batches = -(-len(prompt_ids) // batch_size)
    decoded = []  # (batch index, start, n_real, comp, cmask, decode_nfe, gamma) of the batches decoded here
    batches = padded_batches(prompt_ids, batch_size, llm.cfg.pad_token_id, pad_multiple)
    for bi, (s, prompt, pmask, n_real) in enumerate(tqdm(batches, total=n_batches,
                                                         desc=f"eval {task} {sampler_cfg.rule}",
                                                         disable=not progress, leave=False)):
        if bi % n_proc != pid:  # another process's batch
            continue
        gamma = None if gamma_fn is None else host_value(gamma_fn(prompt, pmask))
        out = sampler(state, from_host(prompt, mesh), from_host(pmask, mesh), jax.random.fold_in(key, bi),
                      gamma=None if gamma is None else from_host(gamma, mesh), head=head_gamma)
        if head_gamma is not None:
            gamma = host_value(out.head.gamma)
        decoded.append((bi, s, n_real, host_value(out.tokens)[:, prompt.shape[1]:],
                        host_value(out.completion_mask), host_value(out.nfe), gamma))
    if n_proc > 1 and n_batches:
        decoded = _gather_batches(decoded, n_proc, n_batches, batch_size, len(prompt_ids),
                                  sampler_cfg.gen_length, gamma_fn is not None or head is not None)
    records = []
    for _, s, n_real, comp, cmask, decode_nfe, gamma in decoded:
        nfe = decode_nfe + (0 if gamma_fn is None else int(gamma_fn_nfe))
        for j in range(n_real):
            text = tokenizer.decode([int(t) for t in comp[j][cmask[j]]], skip_special_tokens=False)
            rec = {"index": s + j, "completion": text, "nfe": int(nfe[j]), "decode_nfe": int(decode_nfe[j]),
                   "score": tasks.score(task, text, items[s + j])}
            if gamma is not None:
                rec["gamma"] = float(gamma[j])
            records.append(rec)
    summary = dict(tasks.aggregate(task, [r["score"] for r in records]))
    summary["nfe_mean"] = float(np.mean([r["nfe"] for r in records])) if records else 0.0
    return records, summary


def write_jsonl(path: str, records: Sequence[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")


def plot_pareto(points: Sequence[dict], path: str, title: str = "accuracy vs NFE") -> str:
    """Scatter `points` ({label, accuracy, nfe_mean, series?}) as accuracy (y) vs mean NFE (x),
    one line per `series`, and mark the Pareto frontier (higher accuracy at lower NFE). PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    series: dict[str, list[dict]] = {}
    for p in points:
        series.setdefault(p.get("series", "samplers"), []).append(p)
    for name, pts in series.items():
        pts = sorted(pts, key=lambda p: p["nfe_mean"])
        ax.plot([p["nfe_mean"] for p in pts], [100 * p["accuracy"] for p in pts], "o-", label=name)
        for p in pts:
            ax.annotate(p["label"], (p["nfe_mean"], 100 * p["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    frontier, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["nfe_mean"], -p["accuracy"])):
        if p["accuracy"] > best:
            frontier.append(p)
            best = p["accuracy"]
    ax.step([p["nfe_mean"] for p in frontier], [100 * p["accuracy"] for p in frontier], "k--", where="post",
            alpha=0.4, label="Pareto frontier")
    ax.set_xlabel("mean NFE (forward passes per completion)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, type=local_dir,
                   help="local HF-format LLaDA directory (config.json, safetensors, tokenizer); never downloaded")
    p.add_argument("--tokenizer_dir", type=local_dir, default=None,
                   help="local tokenizer directory (default: --model_dir)")
    p.add_argument("--task", required=True, choices=sorted(tasks.TASKS))
    p.add_argument("--data_dir", default=None, help="benchmark data dir (default: $DIFFPO_DATA_DIR or ../shared/data)")
    p.add_argument("--n", type=positive_int, default=None, help="number of items (default: d1's evaluation subset)")
    p.add_argument("--prompt_style", default="d1", choices=["d1", "compact"],
                   help="d1's prompts (default) or the short 'compact' ones the tiny demo model was trained on")
    p.add_argument("--add_reasoning", action=argparse.BooleanOptionalAction, default=True,
                   help="append the '<reasoning>' prefill after the chat template (default on, as d1's "
                        "evaluation; the demo model wants --no-add_reasoning)")
    p.add_argument("--rule", default="eb", choices=RULES, help="sampler rule (default eb)")
    p.add_argument("--gammas", type=floats, default=[0.1], help="comma-separated EB gammas to sweep (rule eb)")
    p.add_argument("--thresholds", type=floats, default=[0.9],
                   help="comma-separated thresholds to sweep (rule threshold)")
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="total steps for rule=fixed (default gen_length/2)")
    p.add_argument("--k", type=int, default=2, help="tokens per step for rule=topk")
    p.add_argument("--dream_alg", default="entropy", choices=DREAM_ALGS,
                   help="rule dream (Dream's diffusion_generate): position score (default entropy)")
    p.add_argument("--eps", type=float, default=1e-3, help="rule dream: the last timestep (default 1e-3)")
    p.add_argument("--kv_cache", default="none", choices=list(KV_CACHES),
                   help="approximate KV cache (Fast-dLLM): faster, not exact (default none)")
    p.add_argument("--attention_impl", default="auto", choices=list(ATTENTION_IMPLS),
                   help="attention kernel: auto = splash on TPU / cuDNN on GPU where they apply, else xla")
    p.add_argument("--param_dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="parameter dtype (default bfloat16; the demo model is float32)")
    p.add_argument("--compute_dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="activation dtype (default bfloat16)")
    p.add_argument("--batch_size", type=positive_int, default=16)
    p.add_argument("--pad_multiple", type=int, default=0,
                   help="0: pad every prompt to the longest of the benchmark (one compile); m >= 1: pad each "
                        "batch to its longest prompt rounded up to a multiple of m (1 = d1's eval, with "
                        "--batch_size 8: the model attends to the pads, so this moves accuracy)")
    p.add_argument("--max_prompt_length", type=int, default=0, help="keep each prompt's last N tokens (0: all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out_dir", default="runs/eval")
    return p


def main(argv=None) -> int:
    """Run the CLI. Bad input (a missing directory, a bad checkpoint, a sampler setting the
    model cannot run) ends with a one-line `error: ...` instead of a traceback."""
    args = build_parser().parse_args(argv)
    distributed.maybe_initialize()  # multi-host from the environment; a no-op on one host
    try:
        return _run(args)
    except (ConversionError, ValueError, OSError) as e:  # OSError: unreadable data / tokenizer files
        raise SystemExit("error: " + " ".join(str(e).split())) from None


def _run(args) -> int:
    import transformers

    from diffpo_jax.convert.hf_import import load_hf
    from diffpo_jax.tasks import model_tokenizers

    base = SamplerConfig(rule=args.rule, gen_length=args.gen_length, block_length=args.block_length,
                         steps=args.steps, k=args.k, temperature=0.0, kv_cache=args.kv_cache,
                         dream_alg=args.dream_alg, eps=args.eps)
    if args.rule == "eb":
        settings = [(f"eb_g{g:g}", base.replace(gamma=g)) for g in args.gammas]
    elif args.rule == "threshold":
        settings = [(f"thr{t:g}", base.replace(threshold=t)) for t in args.thresholds]
    else:
        settings = [(args.rule, base)]
    llm = load_hf(args.model_dir, attention_impl=args.attention_impl, param_dtype=args.param_dtype,
                  compute_dtype=args.compute_dtype)
    transformers.logging.set_verbosity_error()  # model-type notices about LLaDA's config.json
    tokenizer_dir = args.tokenizer_dir or args.model_dir
    tokenizer = model_tokenizers.load(tokenizer_dir)  # never downloads or runs repo code (Dream's included)
    model_tokenizers.check_checkpoint(tokenizer, args.model_dir, tokenizer_source=tokenizer_dir)
    items = tasks.load_eval_items(args.task, args.data_dir, n=args.n, seed=args.seed)
    fmt = lambda it: tasks.format_prompt(args.task, it, tokenizer, "eval", args.add_reasoning,  # noqa: E731
                                         args.prompt_style)
    ids = encode_prompts(args.task, items, tokenizer, args.max_prompt_length, fmt)
    longest, limit = max(len(x) for x in ids), llm.cfg.max_sequence_length
    if longest + args.gen_length > limit:
        raise ValueError(f"prompt length {longest} + gen_length {args.gen_length} exceeds the model's "
                         f"max_sequence_length={limit}; try --prompt_style compact or --max_prompt_length")
    points = []
    for label, cfg in settings:
        records, summary = run_eval(llm, tokenizer, args.task, items, cfg, batch_size=args.batch_size,
                                    prompt_ids=ids, key=jax.random.key(args.seed), pad_multiple=args.pad_multiple)
        write_jsonl(os.path.join(args.out_dir, f"{args.task}_{label}.jsonl"), records)
        points.append({"label": label, "series": args.rule, **summary})
        print(f"{args.task} {label:>12}: accuracy {100 * summary['accuracy']:.2f}%  mean NFE {summary['nfe_mean']:.2f}"
              f"  (n={int(summary['n'])})")
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(points, f, indent=1)
    print("Pareto plot:", plot_pareto(points, os.path.join(args.out_dir, "pareto.png"), f"{args.task}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CLI: decode with a local HF-format LLaDA checkpoint and print the completion and its NFE.

  python -m diffpo_jax.sample --model_dir /ckpt/LLaDA-8B-Instruct --prompt "What is 7*8?" \
      --rule eb --gamma 0.1 --gen_length 64 --block_length 32 --show_steps
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import numpy as np

from diffpo_jax.cli_types import local_dir

EPILOG = """\
rules (all decode --gen_length tokens in --block_length blocks, left to right):
  fixed      LLaDA generate(): --steps in total (default gen_length // 2, d1's setting),
             the k most confident per step with k from an even split; NFE = steps
  topk       the --k most confident tokens per step (d1 baseline: k = 2)
  threshold  Fast-dLLM: the most confident token + every token with confidence >= --threshold
  eb         entropy-bounded: the largest set of low-entropy tokens whose entropy sum minus
             its largest entropy is <= --gamma (bigger gamma: fewer NFE)
  dream      Dream's diffusion_generate (--dream_alg): --steps in total over the blocks; at
             each step reveal int(n * (1 - s/t)) of the n masks left in the block (timesteps
             t = linspace(1, --eps, steps per block + 1)), the highest-scoring by
             maskgit_plus (probability), topk_margin (top1 - top2) or entropy (negative
             entropy), or (origin) each mask with probability 1 - s/t; --alg_temp > 0 samples
             the positions instead. NFE = steps. --block_length = --gen_length is Dream's own
             single-block loop.
  Confidence / entropy are those of the untempered softmax (rule dream: of the tempered,
  --top_p / --top_k filtered one, as Dream); --temperature 0 is greedy.

examples:
  python -m diffpo_jax.sample --model_dir /ckpt/LLaDA-8B-Instruct --prompt "What is 7*8?"
  python -m diffpo_jax.sample --model_dir DIR --prompt "Solve 2x+3=9." --rule eb --gamma 0.3 \\
      --gen_length 128 --block_length 32 --show_steps
  python -m diffpo_jax.sample --model_dir DIR --prompt "a" --prompt "b" --rule threshold --mesh 1,1,8
  python -m diffpo_jax.sample --model_dir DIR --prompt "Hi" --rule dream --dream_alg entropy \\
      --gen_length 256 --block_length 256 --steps 256 --temperature 0.2 --top_p 0.95

Memory: LLaDA-8B in bf16 needs about 16 GB of accelerator memory (spread over --mesh).
No network is used: the model and tokenizer are read from --model_dir.
"""


def build_parser() -> argparse.ArgumentParser:
    from diffpo_jax.sampling import DREAM_ALGS, REMASKING, RULES

    p = argparse.ArgumentParser(prog="python -m diffpo_jax.sample", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, type=local_dir,
                   help="local HF LLaDA directory: config.json, *.safetensors (+ index) and tokenizer files")
    p.add_argument("--prompt", action="append", required=True,
                   help="user message; repeat for a batch (prompts are left-padded with EOS)")
    p.add_argument("--no_chat_template", action="store_true",
                   help="feed the prompt text as is instead of wrapping it in the tokenizer's chat template")
    g = p.add_argument_group("sampler")
    g.add_argument("--rule", default="fixed", choices=RULES, help="unmasking rule (default fixed; see below)")
    g.add_argument("--gen_length", type=int, default=128, help="completion length L (default 128)")
    g.add_argument("--block_length", type=int, default=32, help="semi-AR block length; divides L (default 32)")
    g.add_argument("--steps", type=int, default=None,
                   help="rules fixed / dream only: total steps, a multiple of L/block_length (default L // 2)")
    g.add_argument("--k", type=int, default=2, help="rule topk: tokens per step (default 2)")
    g.add_argument("--threshold", type=float, default=0.9, help="rule threshold: confidence tau (default 0.9)")
    g.add_argument("--gamma", type=float, default=0.1, help="rule eb: entropy budget gamma (default 0.1)")
    g.add_argument("--dream_alg", default="entropy", choices=DREAM_ALGS,
                   help="rule dream: which positions to reveal (default entropy, as Dream's README; see below)")
    g.add_argument("--eps", type=float, default=1e-3, help="rule dream: the last timestep, in (0, 1) (default 1e-3)")
    g.add_argument("--alg_temp", type=float, default=0.0,
                   help="rule dream: 0 = reveal the best-scoring positions (default); > 0 = sample them "
                        "from softmax(score / alg_temp)")
    g.add_argument("--temperature", type=float, default=0.0, help="Gumbel-max temperature; 0 = greedy (default)")
    g.add_argument("--top_p", type=float, default=1.0,
                   help="nucleus filter of the sampled distribution, in (0, 1]; 1 = off (default); any rule")
    g.add_argument("--top_k", type=int, default=0,
                   help="sample among the top_k tokens only; 0 = off (default); any rule")
    g.add_argument("--cfg_scale", type=float, default=0.0,
                   help="classifier-free guidance w (0 = off); a CFG step still counts as 1 NFE")
    g.add_argument("--remasking", default="low_confidence", choices=REMASKING,
                   help="rank by confidence or at random (rules fixed / topk)")
    g.add_argument("--use_padding_mask", action="store_true",
                   help="mask left padding in attention (default off = LLaDA's released behaviour)")
    g.add_argument("--logits_eos_inf", action="store_true", help="never propose EOS (LLaDA option)")
    g.add_argument("--kv_cache", default="none", choices=["none", "prefix", "dual"],
                   help="Fast-dLLM-style approximate KV cache, refreshed per block (README: Sampling)")
    g.add_argument("--seed", type=int, default=0, help="PRNG seed for temperature > 0 / random remasking")
    m = p.add_argument_group("model")
    m.add_argument("--compute_dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="activation dtype (default bfloat16)")
    m.add_argument("--param_dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="parameter dtype (default bfloat16, as released)")
    m.add_argument("--attention_impl", default="auto", choices=["auto", "xla", "cudnn", "splash"],
                   help="attention kernel: auto = splash on TPU / cuDNN on GPU where they apply, else xla")
    m.add_argument("--mesh", default=None, type=_mesh_spec,
                   help="'none' (one device, default) or 'DATA,FSDP,TP', e.g. 1,1,8; "
                        "the number of prompts must be divisible by DATA*FSDP")
    o = p.add_argument_group("output")
    o.add_argument("--show_steps", action="store_true", help="print which tokens each step revealed")
    return p


def _mesh_spec(spec: str):
    """argparse type for --mesh: 'none' -> None, 'DATA,FSDP,TP' -> (data, fsdp, tp) ints."""
    if spec == "none":
        return None
    try:
        data, fsdp, tp = (int(s) for s in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected 'none' or 'DATA,FSDP,TP' (e.g. 1,1,8)") from None
    return data, fsdp, tp


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of one prompt, wrapped in the chat template (user turn + generation prompt)."""
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))  # the template may already hold BOS
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def format_steps(tokenizer, completion: np.ndarray, unmask_step: np.ndarray, nfe: int, block_length: int) -> str:
    """One line per step: `step t (block b, +n): [pos]'text' ...` for the tokens it revealed."""
    lines = []
    for t in range(1, nfe + 1):
        pos = np.nonzero(unmask_step == t)[0]
        shown = " ".join(f"[{i}]{tokenizer.decode([int(completion[i])])!r}" for i in pos)
        blocks = sorted({int(i) // block_length for i in pos})
        where = f"block {blocks[0]}" if blocks else "no reveal"
        lines.append(f"  step {t:3d} ({where}, +{len(pos)}): {shown}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, loader=None) -> int:
    """Run the CLI; `loader(model_dir, mesh=..., **overrides)` defaults to convert.hf_import.load_hf.
    Bad input (sampler settings, mesh, checkpoint) ends with a one-line `error: ...`."""
    args = build_parser().parse_args(argv)
    from diffpo_jax import distributed
    from diffpo_jax.convert.errors import ConversionError

    distributed.maybe_initialize()  # multi-host from the environment; a no-op on one host
    try:
        return _run(args, loader)
    except (ConversionError, ValueError, OSError) as e:  # OSError: unreadable tokenizer files
        raise SystemExit("error: " + " ".join(str(e).split())) from None


def sampler_config(args: argparse.Namespace):
    """The SamplerConfig of parsed CLI flags (ValueError naming the field if a value is bad)."""
    from diffpo_jax.sampling import SamplerConfig

    return SamplerConfig(rule=args.rule, gen_length=args.gen_length, block_length=args.block_length,
                         steps=args.steps, k=args.k, threshold=args.threshold, gamma=args.gamma,
                         temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                         use_padding_mask=args.use_padding_mask, logits_eos_inf=args.logits_eos_inf,
                         kv_cache=args.kv_cache, dream_alg=args.dream_alg, eps=args.eps, alg_temp=args.alg_temp,
                         top_p=args.top_p, top_k=args.top_k)


def _run(args, loader) -> int:
    import jax
    import transformers

    from diffpo_jax import sharding as shd
    from diffpo_jax.tasks import model_tokenizers
    from diffpo_jax.sampling import generate, left_pad

    cfg = sampler_config(args)
    if args.steps is not None and args.rule not in ("fixed", "dream"):
        print(f"note: --steps is ignored by --rule {args.rule} (it stops when each block is full)", file=sys.stderr)
    mesh = None
    if args.mesh is not None:
        data, fsdp, tp = args.mesh
        mesh = shd.make_mesh(data=data, fsdp=fsdp, tp=tp)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if len(args.prompt) % shards:
            raise ValueError(f"--mesh {','.join(map(str, args.mesh))}: {len(args.prompt)} prompt(s) are not "
                             f"divisible by DATA*FSDP={shards}; pass a multiple of {shards} --prompt or use "
                             "--mesh 1,1,N (tensor parallel only)")
    if loader is None:
        from diffpo_jax.convert.hf_import import load_hf as loader
    transformers.logging.set_verbosity_error()  # model-type notices about LLaDA's config.json
    tokenizer = model_tokenizers.load(args.model_dir)  # never downloads or runs repo code (Dream's included)
    model_tokenizers.check_checkpoint(tokenizer, args.model_dir)
    model = loader(args.model_dir, mesh=mesh, compute_dtype=args.compute_dtype, param_dtype=args.param_dtype,
                   attention_impl=args.attention_impl)
    ids = [encode_prompt(tokenizer, p, not args.no_chat_template) for p in args.prompt]
    tokens, mask = left_pad(ids, model.cfg.pad_token_id)
    start = time.perf_counter()
    out = generate(model, tokens, cfg, prompt_mask=mask, key=jax.random.key(args.seed), mesh=mesh)
    out = jax.device_get(out)
    seconds = time.perf_counter() - start
    p_len = tokens.shape[1]
    for i, text in enumerate(args.prompt):
        comp = np.asarray(out.tokens[i, p_len:])
        n = int(out.completion_length[i])
        print(f"=== prompt {i}: {text!r}")
        print(tokenizer.decode([int(t) for t in comp[:n]], skip_special_tokens=True))
        print(f"--- NFE {int(out.nfe[i])}, {n} completion tokens (of {cfg.gen_length}), rule {cfg.rule}"
              + (f", CFG w={cfg.cfg_scale} (2 sequences per forward)" if out.cfg_guided else ""))
        if args.show_steps:
            print(format_steps(tokenizer, comp, np.asarray(out.unmask_step[i]), int(out.nfe[i]), cfg.block_length))
    print(f"--- {int(out.forwards)} batched forwards in {seconds:.2f}s (first call includes compilation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

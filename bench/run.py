"""The benchmark suite: JAX vs the PyTorch references, one entry point.

    python -m bench.run                                   # all four on the tiny config (CPU ok)
    python -m bench.run --only likelihood,train_step --quick
    python -m bench.run --config llada8b --out docs/bench_h100.md     # GPU/TPU: LLaDA-8B shapes
    python -m bench.run --config llada8b --only forward --profile /tmp/prof --no_torch

Benchmarks (each also runs alone: `python -m bench.<name> --help`):
  forward     one jitted forward vs torch eager (bench/forward.py)
  sampler     tokens/s and NFE per sampler rule vs a torch reference loop (bench/sampler.py)
  likelihood  MF / 2-MF surrogate log-probs vs d1-style torch, and the exact likelihood (bench/likelihood.py)
  train_step  the LoRA RL step vs a d1-style torch step (bench/train_step.py)
Each reports JAX and torch side by side in the same process on the same weights (checked
equal before timing), the ratio, and MFU on GPU/TPU (FLOP formulas: bench/common.py and
docs/benchmarks.md). `--config llada8b` builds random bf16 weights directly on the device
(~16 GB per copy; torch holds a second copy): it needs a GPU/TPU and is refused on CPU.
`--out F.json` writes the results as JSON, any other `--out F` a markdown section.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from bench import common

import jax  # noqa: E402

from diffpo_jax.models.attention import resolve_impl  # noqa: E402

BENCHES = ("forward", "sampler", "likelihood", "train_step")

# Per config: benchmark -> its own command-line arguments (the --quick variant replaces them).
SETTINGS = {
    "tiny": {
        "forward": ["--shape", "tiny", "--batch", "8", "--length", "256"],
        "sampler": ["--preset", "tiny", "--batch", "4", "--prompt_len", "32", "--gen_length", "64",
                    "--block_length", "32"],
        "likelihood": ["--batch", "8", "--prompt_len", "32", "--gen_length", "128"],
        "train_step": ["--batch", "8", "--group", "4", "--prompt_len", "32", "--gen_length", "128",
                       "--remat", "dots_no_batch", "--torch_remat", "none"],  # each side's fastest on CPU
    },
    "tiny_quick": {
        "forward": ["--shape", "tiny", "--batch", "2", "--length", "32"],
        "sampler": ["--preset", "tiny", "--batch", "2", "--prompt_len", "8", "--gen_length", "16",
                    "--block_length", "8", "--rules", "topk,eb"],
        "likelihood": ["--batch", "4", "--prompt_len", "8", "--gen_length", "16", "--surrogates", "mf,2mf,exact"],
        "train_step": ["--batch", "4", "--group", "4", "--prompt_len", "8", "--gen_length", "16"],
    },
    "llada8b": {
        "forward": ["--llada8b", "--batch", "8", "--length", "512"],
        "sampler": ["--llada8b", "--batch", "8", "--prompt_len", "128", "--gen_length", "256"],
        "likelihood": ["--llada8b", "--batch", "8", "--prompt_len", "128", "--gen_length", "256"],
        "train_step": ["--llada8b", "--batch", "6", "--group", "6", "--prompt_len", "128", "--gen_length", "256",
                       "--remat", "full"],
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list from {BENCHES}")
    ap.add_argument("--config", default="tiny", choices=("tiny", "llada8b"))
    ap.add_argument("--quick", action="store_true", help="smallest shapes, 1 warm-up, 2 timed calls (tiny only)")
    ap.add_argument("--out", default=None, help="write results: *.json as JSON, else a markdown section")
    ap.add_argument("--profile", default=None, help="jax.profiler trace of each timed region, under DIR/<bench>")
    ap.add_argument("--batch", type=int, default=None, help="override every benchmark's batch")
    ap.add_argument("--prompt_len", type=int, default=None, help="override (sampler, likelihood, train_step)")
    ap.add_argument("--gen_length", type=int, default=None, help="override (sampler, likelihood, train_step)")
    ap.add_argument("--n_layers", type=int, default=None, help="override the layer count (e.g. 8B smoke runs)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None, help="timed calls per implementation (sampler: repeats)")
    ap.add_argument("--no_torch", action="store_true", help="JAX only (e.g. no CUDA torch on the machine)")
    ap.add_argument("--torch_threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="peak of all devices together, TFLOP/s")
    common.add_attention_arg(ap)
    args = ap.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    bad = sorted(set(only) - set(BENCHES))
    if bad or not only:
        ap.error(f"--only {args.only!r}: unknown {bad}; choose from {','.join(BENCHES)}")
    args.only = only
    if args.quick and args.config != "tiny":
        ap.error("--quick applies to --config tiny only")
    return args


def bench_argv(name: str, args: argparse.Namespace) -> list:
    """The benchmark's own argv for this run (suite settings + overrides)."""
    argv = list(SETTINGS["tiny_quick" if args.quick else args.config][name])
    flag = lambda f, v: argv.extend([f, str(v)]) if v is not None else None  # noqa: E731
    flag("--batch", args.batch)
    if name == "forward":
        flag("--length", args.gen_length and (args.prompt_len or 0) + args.gen_length)
    else:
        flag("--prompt_len", args.prompt_len)
        flag("--gen_length", args.gen_length)
    flag("--n_layers", args.n_layers)
    flag("--peak_tflops", args.peak_tflops)
    flag("--torch_threads", args.torch_threads)
    flag("--attention_impl", args.attention_impl)
    warmup, iters = (1, 2) if args.quick else (args.warmup, args.iters)
    flag("--warmup", warmup if name != "sampler" else None)
    flag("--repeats" if name == "sampler" else "--iters", iters)
    if args.profile:
        argv += ["--profile", f"{args.profile}/{name}"]
    if args.no_torch:
        argv.append("--no_torch")
    return argv


def main(argv=None) -> list:
    args = parse_args(argv)
    if args.config == "llada8b" and common.on_cpu():
        raise SystemExit("bench.run: --config llada8b needs a GPU or TPU: jax sees only CPU devices here, and the "
                         "8B model (random bf16 weights, ~16 GB per copy, two copies with torch) is not benchmarked "
                         "on CPU. Run it on an accelerator machine, or use --config tiny.")
    if not args.no_torch and not common.on_cpu() and common.default_torch_device() == "cpu":
        print("# torch has no CUDA device here while JAX runs on an accelerator: JAX only (--no_torch)")
        args.no_torch = True
    import importlib
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    env = common.env_line(None if args.no_torch else common.default_torch_device())
    impl = resolve_impl(args.attention_impl, "bfloat16" if args.config == "llada8b" else "float32",
                        128 if args.config == "llada8b" else 16)
    print(f"# {env}\n# command: {command}\n# JAX attention: {args.attention_impl} -> {impl}", flush=True)
    results = []
    for name in args.only:
        mod = importlib.import_module(f"bench.{name}")
        sub = bench_argv(name, args)
        res = mod.run(mod.parse_args(sub))
        res["argv"] = sub
        results.append(res)
        print("\n" + common.render(res) + f"\n\n(`python -m bench.{name} {' '.join(sub)}`)", flush=True)
    if args.out:
        if args.out.endswith(".json"):
            with open(args.out, "w") as f:
                json.dump(dict(env=env, command=command, jax_backend=jax.default_backend(), results=results), f,
                          indent=2, default=str)
        else:
            with open(args.out, "w") as f:
                f.write(f"Device and versions: {env}.\nCommand: `{command}`\n\n")
                f.write("\n\n".join(common.render(r) for r in results) + "\n")
        print(f"# results written to {args.out}")
    return results


if __name__ == "__main__":
    main()

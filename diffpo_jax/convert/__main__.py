"""CLI: HF LLaDA or Dream checkpoint <-> diffpo-jax params checkpoint (orbax).

  python -m diffpo_jax.convert import --hf_dir /ckpt/LLaDA-8B-Instruct --out /ckpt/llada_jax
  python -m diffpo_jax.convert export --ckpt /ckpt/llada_jax --out /ckpt/llada_hf \
      --source_dir /ckpt/LLaDA-8B-Instruct
  python -m diffpo_jax.convert import --hf_dir /ckpt/Dream-v0-Instruct-7B --out /ckpt/dream_jax --family dream
The family (LLaDA: model_type 'llada'; Dream: model_type 'Dream') is read from config.json on
import and from the params checkpoint's config on export.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

EPILOG = """\
Families: LLaDA (GSAI-ML/LLaDA-8B-Instruct, config.json model_type 'llada') and Dream
(Dream-org/Dream-v0-Instruct-7B, model_type 'Dream'); the family is read from config.json
on import (--family checks it) and from the params checkpoint on export.

examples:
  python -m diffpo_jax.convert import --hf_dir /ckpt/LLaDA-8B-Instruct --out /ckpt/llada_jax
  python -m diffpo_jax.convert export --ckpt /ckpt/llada_jax --out /ckpt/llada_hf \\
      --source_dir /ckpt/LLaDA-8B-Instruct
  python -m diffpo_jax.convert import --hf_dir /ckpt/Dream-v0-Instruct-7B --out /ckpt/dream_jax --family dream
  python -m diffpo_jax.convert export --ckpt /ckpt/dream_jax --out /ckpt/dream_hf \\
      --source_dir /ckpt/Dream-v0-Instruct-7B

Memory: LLaDA-8B in bf16 is 8.0e9 params x 2 bytes = 16 GB of device memory in total
(Dream-7B: 7.6e9 x 2 = 15 GB), spread over the mesh; import reads each parameter block by
block from the safetensors files (host RAM: about the largest tensor, 1 GB). Export gathers
one tensor at a time and buffers one output shard (--max_shard_gb) on the host.
"""


def _mesh(spec: str):
    from diffpo_jax import sharding as shd

    if spec == "none":
        return None
    try:
        data, fsdp, tp = (1, -1, 1) if spec == "auto" else (int(s) for s in spec.split(","))
        return shd.make_mesh(data=data, fsdp=fsdp, tp=tp)
    except ValueError as e:
        raise SystemExit(f"--mesh {spec!r}: expected 'auto', 'none' or 'DATA,FSDP,TP' (e.g. 1,8,1) "
                         f"matching the device count: {e}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffpo_jax.convert", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="HF safetensors directory -> orbax params checkpoint",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("--hf_dir", required=True,
                     help="HF LLaDA or Dream directory (config.json + *.safetensors [+ index])")
    imp.add_argument("--family", default=None, choices=["llada", "dream"],
                     help="the family the checkpoint must be (default: whatever its config.json says)")
    imp.add_argument("--out", required=True, help="output directory (params/ + llada_config.json + hf_config.json)")
    imp.add_argument("--param_dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"],
                     help="dtype the params are stored in (default bfloat16, as released)")
    imp.add_argument("--mesh", default="auto",
                     help="'auto' (fsdp over all devices, default), 'none' (one device) or 'DATA,FSDP,TP'")
    exp = sub.add_parser("export", help="orbax params checkpoint -> HF safetensors directory",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("--ckpt", required=True, help="directory written by `import` (or save_orbax)")
    exp.add_argument("--out", required=True, help="output HF directory")
    exp.add_argument("--source_dir", default=None,
                     help="original HF directory: tokenizer, remote-code *.py and generation_config.json "
                          "are copied from it (without it, only weights + config.json are written). config.json "
                          "is built from --ckpt's hf_config.json when it has one (written by `import`), else "
                          "from this directory's config.json, else from the family's template (LLaDA-8B / "
                          "Dream-v0-7B); it must be of the checkpoint's family")
    exp.add_argument("--no_merge_lora", action="store_true",
                     help="export the base weights only (default: merge LoRA, W + A@B*alpha/r)")
    exp.add_argument("--peft_dir", default=None, help="also write the LoRA as a PEFT adapter here")
    exp.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                     help="output dtype (default: the param dtype)")
    exp.add_argument("--max_shard_gb", type=float, default=5.0, help="max bytes per safetensors shard, in GB")
    exp.add_argument("--mesh", default="auto", help="as for import")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from diffpo_jax.convert import hf_config, hf_export, hf_import, orbax_io
    from diffpo_jax.convert.errors import ConversionError

    try:
        if args.cmd == "import":
            family = {"family": args.family} if args.family else {}
            model = hf_import.load_hf(args.hf_dir, mesh=_mesh(args.mesh), param_dtype=args.param_dtype, **family)
            orbax_io.save_orbax(model, args.out, hf_config=hf_config.read_config(args.hf_dir))
            print(f"imported {args.hf_dir} -> {args.out} ({model.cfg.family}, "
                  f"{model.cfg.param_count() / 1e9:.3f}B params, {args.param_dtype})")
        else:
            model = orbax_io.load_orbax(args.ckpt, mesh=_mesh(args.mesh))
            if args.peft_dir and model.cfg.lora_rank == 0:
                raise ConversionError(f"--peft_dir {args.peft_dir}: {args.ckpt} has no LoRA (lora_rank 0 in its "
                                      "llada_config.json), so there is no adapter to write; drop --peft_dir")
            res = hf_export.save_hf(model, args.out, source_dir=args.source_dir, merge_lora=not args.no_merge_lora,
                                    max_shard_bytes=int(args.max_shard_gb * 1e9), dtype=args.dtype,
                                    hf_config=orbax_io.read_hf_config(args.ckpt))
            if args.peft_dir:
                hf_export.save_peft_adapter(model, args.peft_dir)
            print(f"exported {args.ckpt} -> {args.out} ({model.cfg.family}): {len(res['files'])} files")
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

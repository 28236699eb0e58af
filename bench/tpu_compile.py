"""Compile the LLaDA-8B / Dream-7B workloads for a Cloud TPU topology ahead of time, on a CPU host.

    pip install -e ".[tpu]"                  # libtpu: the TPU compiler (no TPU needed)
    python -m bench.tpu_compile              # v5e-8, v4-8, v5p-8, v6e-8: every workload
    python -m bench.tpu_compile --topology v5e:2x4 --mesh 1,4,2 --workloads train_step
    python -m bench.tpu_compile --accelerator v4-32 --joint --workloads train_step   # = launch/tpu_pod.sh fit
    python -m bench.tpu_compile --topology cpu:8 --config tiny    # the mechanics, on CPU devices
    python -m bench.tpu_compile --config dream7b --topology v5e:2x4,v4:2x2x1   # Dream-7B shapes

libtpu compiles for a TPU topology without the chips (`jax.experimental.topologies`): the
programs below are traced with their real shardings on a ('data', 'fsdp', 'tp') mesh over
the topology's devices, lowered and compiled by the TPU compiler (Mosaic for the splash
kernel), but never run. Per workload and topology it reports:
  compile s      trace + lower + compile on this host
  attention      what attention_impl=auto resolved to, and whether the splash kernel (a
                 Mosaic tpu_custom_call) is in the compiled program
  GiB / chip     the compiler's buffer assignment: arguments + outputs + temporaries −
                 donated (aliased) buffers, per chip; against the chip's HBM (HBM_GIB)
  fits           GiB / chip ≤ HBM per chip; "no (compiler: out of HBM)" when the TPU compiler
                 refuses the program (then GiB / chip shows its temporaries alone)
Workloads (LLaDA-8B shapes, or --config dream7b for Dream-7B's: GQA 28 / 4 heads, q/k/v biases,
vocab 152064; random bf16 weights: only shapes matter here; B = rows per chip × data·fsdp):
  forward     the rollout forward: logits `[B, P+L, V]` of one model call
  sampler     the whole compiled decoding loop (rule eb, or dream with --sampler_rule; blocks of
              --block_length; static steps)
  train_step  the LoRA (+ threshold head with --joint) RL step of diffpo_jax.rl.train_step,
              trainable state and optimiser state donated
Nothing here is a measurement of speed: that needs the chips (bench/run.py). (The MFU FLOP
formulas of bench/common.py are checked against XLA's own count in tests/test_bench_flops.py.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs on CPU; the TPU compiler is loaded for topologies
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is opened: two compiles may run side by side

if __package__ in (None, ""):  # `python bench/tpu_compile.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import dream, llada  # noqa: E402
from diffpo_jax.models.attention import resolve_impl  # noqa: E402
from diffpo_jax.models.threshold_head import Policy, ThresholdHead, trainable_filter  # noqa: E402
from diffpo_jax.rl import RLConfig  # noqa: E402
from diffpo_jax.rl.train_step import make_optimizer, make_train_step, opt_state_shardings  # noqa: E402
from diffpo_jax.sampling import SamplerConfig, make_sampler  # noqa: E402

WORKLOADS = ("forward", "sampler", "train_step")
# A topology per common 8-core slice (4 chips of 2 cores on v4 / v5p, 8 single-core chips on v5e / v6e).
DEFAULT_TOPOLOGIES = ("v5e:2x4", "v4:2x2x1", "v5p:2x2x1", "v6e:2x4")
# HBM per chip, GiB, by lower-case substring of the device kind; first match wins.
HBM_GIB = {"v5 lite": 16.0, "v5e": 16.0, "v6 lite": 32.0, "v6e": 32.0, "v5p": 95.0, "v5": 95.0, "v4": 32.0}
# --config: model shapes (bf16 params and compute for the full-size models).
CONFIGS = {"llada8b": common.llada8b_config, "tiny": llada.tiny, "dream_tiny": dream.tiny,
           "dream7b": lambda **kw: dream.dream_7b_instruct(**{"compute_dtype": "bfloat16", **kw})}


def hbm_gib(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((gib for key, gib in HBM_GIB.items() if key in kind), None)


def topology_for_accelerator(accelerator: str) -> str:
    """A Cloud TPU accelerator type (as `gcloud ... --accelerator-type`) -> libtpu topology name.

    v4-N / v5p-N count TensorCores (2 per chip) and are 3-D, starting at 2x2x1 (4 chips);
    v5litepod-N (v5e-N) / v6e-N count chips and are 2-D. Each doubling of the chips doubles
    the smallest dimension, the last one first: v4-32 -> v4:2x2x4, v5litepod-16 -> v5e:4x4."""
    m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", accelerator)
    if not m:
        raise SystemExit(f"--accelerator {accelerator}: expected v4-N, v5p-N, v5litepod-N (v5e-N) or v6e-N")
    family, n = m.group(1), int(m.group(2))
    three_d = family in ("v4", "v5p")
    chips = n // 2 if three_d else n
    dims = [2, 2, 1] if three_d else [1, 1]
    start = 4 if three_d else 1
    if chips < start or chips & (chips - 1):
        raise SystemExit(f"--accelerator {accelerator}: {chips} chips; expected a power of two"
                         f"{' of at least 4 (v4-8 / v5p-8)' if three_d else ''}")
    while dims[0] * dims[1] * (dims[2] if three_d else 1) < chips:
        i = max(j for j in range(len(dims)) if dims[j] == min(dims))
        dims[i] *= 2
    name = {"v5litepod": "v5e"}.get(family, family)
    return f"{name}:{'x'.join(map(str, dims))}"


def topology_devices(name: str) -> list:
    """Devices of `name`: a libtpu topology ('v5e:2x4') or 'cpu:N' (this host's first N CPU devices)."""
    if name.startswith("cpu:"):
        n = int(name.split(":", 1)[1])
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise SystemExit(f"--topology {name}: only {len(devices)} CPU devices; set XLA_FLAGS="
                             f"--xla_force_host_platform_device_count={n}")
        return devices[:n]
    from jax.experimental import topologies
    try:
        # v4 topologies default to one device per TensorCore; jax meshes want one per chip
        extra = {"chip_config_name": "megacore"} if name.startswith("v4") else {}
        return list(topologies.get_topology_desc(name, "tpu", **extra).devices)
    except Exception as e:  # no libtpu, or a name libtpu does not know
        raise SystemExit(f"--topology {name}: cannot get the TPU topology ({type(e).__name__}: {e}); "
                         "install the TPU compiler with `pip install -e \".[tpu]\"` and use names like "
                         "v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x4") from None


def abstract(tree, shardings):
    """ShapeDtypeStructs of `tree` carrying `shardings` (nothing is allocated)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_split(make, mesh, *filters):
    """(graphdef, abstract states...) of the module `make()` on its sharding.py shardings."""
    graphdef, *states = nnx.split(nnx.eval_shape(make), *filters)
    return (graphdef, *[abstract(s, shd.state_shardings(s, mesh)) for s in states])


def batch_struct(shape, dtype, mesh):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, len(shape)))


def key_struct(mesh):
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))


def report(compiled, seconds: float, hbm: float | None) -> dict:
    mem = compiled.memory_analysis()
    per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes) / 2**30
    text = compiled.as_text()
    return dict(compile_s=seconds, gib_per_chip=per_chip, args_gib=mem.argument_size_in_bytes / 2**30,
                temp_gib=mem.temp_size_in_bytes / 2**30, fits=None if hbm is None else per_chip <= hbm,
                splash_in_program="tpu_custom_call" in text and "splash" in text.lower())


def lower_and_compile(jitted, mesh, *args):
    """Trace and lower `jitted(*args)` under `mesh` (so attention resolves for its platform),
    then compile. Set-up runs outside the mesh: an eager op on a topology's devices fails."""
    with shd.use_mesh(mesh):
        lowered = jitted.trace(*args).lower()
    return lowered.compile()


def compile_forward(cfg, mesh, rows: int, seq: int):
    graphdef, state = abstract_split(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(0)), mesh)
    fn = jax.jit(lambda st, tokens: nnx.merge(graphdef, st)(tokens))
    return lower_and_compile(fn, mesh, state, batch_struct((rows, seq), jnp.int32, mesh))


def compile_sampler(cfg, mesh, rows: int, prompt_len: int, gen_length: int, block_length: int = 32,
                    rule: str = "eb"):
    graphdef, state = abstract_split(lambda: llada.LLaDA(cfg, rngs=nnx.Rngs(0)), mesh)
    steps = gen_length if rule == "dream" else None  # configs/dream7b.py: one token per step
    scfg = SamplerConfig(rule=rule, gen_length=gen_length, block_length=block_length, steps=steps)
    sampler = make_sampler(graphdef, scfg, mesh)
    f32 = batch_struct((rows,), jnp.float32, mesh)
    return lower_and_compile(sampler.jitted, mesh, state, batch_struct((rows, prompt_len), jnp.int32, mesh),
                             batch_struct((rows, prompt_len), jnp.bool_, mesh), key_struct(mesh), f32, f32, f32)


def compile_train_step(cfg, mesh, rl: RLConfig, rows: int, prompt_len: int, gen_length: int):
    def make():
        head = ThresholdHead(cfg.d_model, gamma_max=rl.gamma_max, gamma_init=rl.gamma_init, hidden=rl.head_hidden,
                             rngs=nnx.Rngs(1)) if rl.joint_sampler else None
        return Policy(llada.LLaDA(cfg, rngs=nnx.Rngs(0)), head)

    graphdef, trainable, frozen = abstract_split(make, mesh, trainable_filter(rl.joint_sampler), ...)
    tx = make_optimizer(rl)
    opt = abstract(jax.eval_shape(tx.init, trainable), opt_state_shardings(tx, trainable, mesh))
    step = make_train_step(graphdef, rl, tx, mesh, trainable=trainable, frozen=frozen)
    b, length = rows, gen_length
    batch = {"prompt": ((b, prompt_len), jnp.int32), "prompt_mask": ((b, prompt_len), jnp.bool_),
             "completion": ((b, length), jnp.int32), "completion_mask": ((b, length), jnp.bool_),
             "unmask_step": ((b, length), jnp.int32), "behaviour_logp": ((b, length), jnp.float32),
             "old_logp": ((b, length), jnp.float32), "ref_logp": ((b, length), jnp.float32),
             "nfe": ((b,), jnp.int32), "rewards": ((b,), jnp.float32)}
    if rl.joint_sampler:
        batch.update(gamma_raw=((b,), jnp.float32), head_old_logp=((b,), jnp.float32))
    batch = {k: batch_struct(shape, dtype, mesh) for k, (shape, dtype) in batch.items()}
    return lower_and_compile(step.jitted, mesh, trainable, opt, frozen, batch, key_struct(mesh))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.tpu_compile", description=__doc__.splitlines()[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topology", default=",".join(DEFAULT_TOPOLOGIES),
                    help="comma list of libtpu topologies (v5e:2x4, v4:2x2x1, ...) or cpu:N")
    ap.add_argument("--accelerator", default=None,
                    help="a Cloud TPU accelerator type (v4-32, v5litepod-16, ...) instead of --topology")
    ap.add_argument("--mesh", default=None, help="data,fsdp,tp (default: 1,<all devices>,1: FSDP, as the launch scripts)")
    ap.add_argument("--config", default="llada8b", choices=tuple(CONFIGS),
                    help="model shapes: llada8b | dream7b (Dream-v0-Instruct-7B) | tiny | dream_tiny")
    ap.add_argument("--n_layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--d_model", type=int, default=None, help="override the width (tiny: head_dim = d_model / n_heads)")
    ap.add_argument("--n_heads", type=int, default=None, help="override the query head count")
    ap.add_argument("--n_kv_heads", type=int, default=None, help="override the key/value head count (default: "
                    "--n_heads when that is set, i.e. no GQA)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list from {WORKLOADS}")
    ap.add_argument("--forward_rows", type=int, default=8, help="forward rows per data*fsdp shard")
    ap.add_argument("--sampler_rows", type=int, default=8, help="sampler rows per data*fsdp shard")
    ap.add_argument("--train_rows", type=int, default=6, help="train-step rows per data*fsdp shard (d1: 6 per GPU)")
    ap.add_argument("--group", type=int, default=6, help="G, completions per prompt of the train step (divides its B)")
    ap.add_argument("--prompt_len", type=int, default=128)
    ap.add_argument("--gen_length", type=int, default=256)
    ap.add_argument("--block_length", type=int, default=32, help="sampler block (configs/dream7b.py: = gen_length)")
    ap.add_argument("--sampler_rule", default="eb", choices=("eb", "dream"),
                    help="sampler rule: eb (joint rollouts, evaluation) | dream (Dream's entropy order, "
                         "steps = gen_length: configs/dream7b.py's other rollouts)")
    ap.add_argument("--method", default="2mf_is", help="RLConfig.method of the train step")
    ap.add_argument("--joint", action="store_true", help="train the threshold head too (joint model + sampler)")
    ap.add_argument("--micro_batches", type=int, default=1, help="RLConfig.micro_batches of the train step")
    ap.add_argument("--lora_rank", type=int, default=128)
    ap.add_argument("--remat", default="full", choices=llada.REMAT_POLICIES, help="train step remat policy")
    ap.add_argument("--attention_impl", default="auto", help="auto | xla | splash")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    if args.accelerator:
        args.topology = topology_for_accelerator(args.accelerator)
    bad = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if bad:
        ap.error(f"--workloads: unknown {bad}; choose from {WORKLOADS}")
    return args


def model_config(args, **kw) -> llada.LLaDAConfig:
    cfg = CONFIGS[args.config](attention_impl=args.attention_impl, **kw)
    overrides = {k: getattr(args, k) for k in ("n_layers", "d_model") if getattr(args, k)}
    if args.n_heads:
        overrides.update(n_heads=args.n_heads, n_kv_heads=args.n_heads)
    if args.n_kv_heads:
        overrides.update(n_kv_heads=args.n_kv_heads)
    return cfg.replace(**overrides)


def run_topology(name: str, args) -> list:
    devices = topology_devices(name)
    kind = devices[0].device_kind
    data, fsdp, tp = (int(x) for x in args.mesh.split(",")) if args.mesh else (1, -1, 1)
    mesh = shd.make_mesh(data=data, fsdp=fsdp, tp=tp, devices=devices)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    hbm = hbm_gib(kind) if devices[0].platform == "tpu" else None
    mesh_txt = "x".join(str(mesh.shape[a]) for a in shd.MESH_AXES)
    seq = args.prompt_len + args.gen_length
    rows = []
    for work in args.workloads.split(","):
        t0 = time.perf_counter()
        with shd.use_mesh(mesh):
            auto = resolve_impl(args.attention_impl, model_config(args).compute_dtype, model_config(args).head_dim)
        if work == "forward":
            b = args.forward_rows * shards
            build = lambda: compile_forward(model_config(args), mesh, b, seq)  # noqa: E731
            shape = f"B={b}, S={seq}"
        elif work == "sampler":
            b = args.sampler_rows * shards
            build = lambda: compile_sampler(model_config(args), mesh, b, args.prompt_len, args.gen_length,  # noqa
                                            args.block_length, args.sampler_rule)
            shape = (f"B={b}, P={args.prompt_len}, L={args.gen_length}, {args.sampler_rule}, "
                     f"blocks of {args.block_length}")
        else:  # train_step
            b = args.train_rows * shards
            if b % args.group:
                raise SystemExit(f"--group {args.group} does not divide the train step's B = {b}")
            rl = RLConfig(method=args.method, joint_sampler=args.joint, num_generations=args.group,
                          micro_batches=args.micro_batches)
            cfg = model_config(args, lora_rank=args.lora_rank, remat=args.remat)
            build = lambda: compile_train_step(cfg, mesh, rl, b, args.prompt_len, args.gen_length)  # noqa: E731
            shape = (f"B={b} (G={rl.num_generations}), P={args.prompt_len}, L={args.gen_length}, {args.method}"
                     f"{' + head' if args.joint else ''}, LoRA r={args.lora_rank}, remat {args.remat}"
                     f"{f', {args.micro_batches} micro-batches' if args.micro_batches > 1 else ''}")
        try:
            r = report(build(), time.perf_counter() - t0, hbm)
            cells = ["yes" if r["splash_in_program"] else "no", f"{r['gib_per_chip']:.3g}",
                     f"{r['args_gib']:.3g} / {r['temp_gib']:.3g}", "n/a" if hbm is None else f"{hbm:.0f}",
                     "n/a" if r["fits"] is None else ("yes" if r["fits"] else "**no**")]
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program that cannot fit
            need = re.search(r"temporaries \(([\d.]+)G\)", str(e))  # the compiler's G is GiB
            if "RESOURCE_EXHAUSTED" not in str(e) or not need:
                raise
            r = dict(compile_s=time.perf_counter() - t0)
            cells = ["?", f"> {float(need.group(1)):.3g}", f"? / {float(need.group(1)):.3g}",
                     "n/a" if hbm is None else f"{hbm:.0f}", "**no** (compiler: out of HBM)"]
        rows.append([name, kind, mesh_txt, work, shape, f"{r['compile_s']:.1f}", auto, *cells])
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    import importlib.metadata

    import flax
    try:
        libtpu = f", libtpu {importlib.metadata.version('libtpu')}"
    except importlib.metadata.PackageNotFoundError:
        libtpu = ""
    header = (f"# jax {jax.__version__}, flax {flax.__version__}{libtpu}; host {common.cpu_name()}, {os.cpu_count()} "
              f"cores; command: python -m bench.tpu_compile {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(header, flush=True)
    columns = ["topology", "device", "mesh d×f×t", "workload", "shapes", "compile s", "attention", "splash in HLO",
               "GiB / chip", "args / temp GiB", "HBM GiB", "fits"]
    print(common.markdown_table(columns, []), flush=True)
    rows = []
    for name in args.topology.split(","):
        rows += run_topology(name, args)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + "\n\n" + common.markdown_table(columns, rows) + "\n")


if __name__ == "__main__":
    main()

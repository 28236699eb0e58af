"""Prefix / dual KV cache of the sampler: speed-up, token agreement, and what it does to the
behaviour log-probs and the clamped IS weights of DiFFPO (SPEC §4), vs the uncached sampler.

    python -m bench.kv_cache                               # tiny random model on CPU (~2 min)
    python -m bench.kv_cache --rules eb --attn_scale 8     # context-sensitive random weights
    python -m bench.kv_cache --preset small --rules eb     # bigger CPU model (d 256, 4 layers)
    python -m bench.kv_cache --llada8b --batch 8 --prompt_len 128 --gen_length 256   # GPU / TPU

For every rule and `kv_cache` in (none, prefix, dual), on the same prompts, at T = 0:
  ms / call, speed-up    median wall time of one sampler call (interleaved, compile excluded),
                         and none's time / this one.
  forwards, NFE          batched model calls per call (and ms per call / forwards); mean
                         per-row NFE (1 NFE = 1 model call, full or partial).
  token agreement        fraction of completion tokens equal to the uncached sampler's.
  |Δ behaviour logp|     on the cached sampler's own rollouts, its `behaviour_logp` vs the
                         exact per-step log-prob of the same token (a full forward of the
                         state before the step = what the uncached sampler would have
                         recorded on that trajectory): mean and max over completion tokens.
                         The `none` rows give the replay's numerical floor (~1e-6 in fp32;
                         bf16 rounding, ~1e-2 nats, on the 8B shapes).
  IS at clamp            fraction of completion tokens whose clamped IS weight
                         w = min(C, exp(logp_2MF − behaviour_logp)) sits at C, with the
                         cached sampler's behaviour_logp ('own') and with the exact one
                         ('exact'); logp_2MF = `rl.likelihood.two_stage_logps` of the same
                         model (θ_old = θ, p_mask 0.15, stage-1 prompt masking, one τ draw).
Random weights (LM head × --head_scale so the rules reveal several tokens per step; optional
× --attn_scale on q/k to make every position's output depend strongly on the others): the
agreement and Δ measure the mechanism on this model, not the quality loss on a trained LLaDA.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/kv_cache.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402  (first: it sets the GPU allocator environment)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from diffpo_jax import sharding as shd  # noqa: E402
from diffpo_jax.models import llada  # noqa: E402
from diffpo_jax.rl import likelihood as lk  # noqa: E402
from diffpo_jax.rl.config import RLConfig  # noqa: E402
from diffpo_jax.sampling import SamplerConfig, make_sampler  # noqa: E402

MODES = ("none", "prefix", "dual")
PRESETS = {  # CPU-sized random models (bench/sampler.py's shapes)
    "tiny": {},
    "small": dict(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden=768),
}
RULE_KNOBS = {"eb": "gamma", "threshold": "threshold", "topk": None, "fixed": None}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llada8b", action="store_true", help="LLaDA-8B shapes, bf16, random weights (accelerator)")
    ap.add_argument("--preset", default="tiny", choices=tuple(PRESETS), help="CPU model (ignored with --llada8b)")
    ap.add_argument("--n_layers", type=int, default=None, help="override the layer count (smoke runs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--gen_length", type=int, default=128)
    ap.add_argument("--block_length", type=int, default=32)
    ap.add_argument("--rules", default="eb,threshold", help=f"comma list from {tuple(RULE_KNOBS)}")
    ap.add_argument("--gamma", type=float, default=1.0, help="eb's gamma")
    ap.add_argument("--threshold", type=float, default=0.9, help="threshold's tau")
    ap.add_argument("--head_scale", type=float, default=40.0, help="multiply the random LM head (sharper logits)")
    ap.add_argument("--attn_scale", type=float, default=1.0, help="multiply q_proj and k_proj (sharper attention)")
    ap.add_argument("--clamp_c", type=float, default=RLConfig().clamp_c, help="IS clamp C")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    common.add_attention_arg(ap)
    args = ap.parse_args(argv)
    bad = [r for r in args.rules.split(",") if r not in RULE_KNOBS]
    if bad:
        ap.error(f"--rules {args.rules!r}: unknown {bad}; choose from {tuple(RULE_KNOBS)}")
    if args.llada8b and common.on_cpu():
        ap.error("--llada8b needs a GPU/TPU (16 GB of bf16 weights); run the tiny default on CPU")
    return args


def build_model(args, mesh) -> llada.LLaDA:
    cfg = common.llada8b_config() if args.llada8b else llada.tiny(**PRESETS[args.preset])
    cfg = cfg.replace(n_layers=args.n_layers) if args.n_layers else cfg
    model = common.build_llada(cfg, seed=args.seed, mesh=mesh, attention_impl=args.attention_impl)
    model.lm_head[...] = (model.lm_head[...] * args.head_scale).astype(model.lm_head[...].dtype)
    for name in ("q_proj", "k_proj"):
        p = model.blocks[name]
        p[...] = (p[...] * args.attn_scale).astype(p[...].dtype)
    return model


def exact_logp_fn(graphdef, gen_length: int, chunk: int):
    """jitted (state, tokens [B, P+L], unmask_step [B, L], nfe [B]) -> [B, L] f32: for every
    completion token, log softmax of a full forward of the state before its reveal step
    `where(unmask_step < t, tokens, MASK)` at that token (one batched forward per step)."""

    def fn(state, tokens, unmask_step, nfe):
        model = nnx.merge(graphdef, state)
        p, mask_id = tokens.shape[1] - gen_length, model.cfg.mask_token_id
        comp = tokens[:, p:]

        def step(t, logp):
            x = jnp.concatenate([tokens[:, :p], jnp.where(unmask_step < t, comp, mask_id)], axis=1)
            lp = lk.token_logprobs(model, model.hidden(x)[:, p:], comp, chunk)
            return jnp.where(unmask_step == t, lp, logp)

        return jax.lax.fori_loop(1, jnp.max(nfe) + 1, step, jnp.zeros(comp.shape, jnp.float32))

    return jax.jit(fn)


def two_mf_fn(graphdef, gen_length: int, rl: RLConfig):
    """jitted (state, tokens, prompt_mask, unmask_step, nfe, key) -> 2-MF log-probs [B, L] f32."""

    def fn(state, tokens, prompt_mask, unmask_step, nfe, key):
        model = nnx.merge(graphdef, state)
        p = tokens.shape[1] - gen_length
        return lk.two_stage_logps(model, tokens[:, :p], prompt_mask, tokens[:, p:], unmask_step, nfe, key,
                                  p_mask=rl.p_mask, stages=rl.prompt_mask_stages, chunk=rl.logprob_chunk)

    return jax.jit(fn)


def run(args: argparse.Namespace) -> dict:
    mesh = shd.make_mesh(data=1, fsdp=-1, tp=1)
    model = build_model(args, mesh)
    graphdef, state = nnx.split(model)
    mcfg = model.cfg
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(0, min(mcfg.mask_token_id, mcfg.vocab_size), (args.batch, args.prompt_len)).astype(np.int32)
    prompts[prompts == mcfg.eos_token_id] = 1
    pmask = np.ones(prompts.shape, bool)
    rl = RLConfig()
    exact_fn = exact_logp_fn(graphdef, args.gen_length, rl.logprob_chunk)
    mf2_fn = two_mf_fn(graphdef, args.gen_length, rl)
    key_2mf = jax.random.key(args.seed + 1)
    log_c = math.log(args.clamp_c)
    rows, notes, ratios = [], [], {}
    for rule in args.rules.split(","):
        knob = RULE_KNOBS[rule]
        kw = {knob: getattr(args, knob)} if knob else {}
        samplers, compile_s = {}, {}
        for mode in MODES:
            cfg = SamplerConfig(rule=rule, gen_length=args.gen_length, block_length=args.block_length, kv_cache=mode)
            samplers[mode] = make_sampler(graphdef, cfg, mesh)
            t0 = time.perf_counter()
            jax.block_until_ready(samplers[mode](state, prompts, pmask, **kw))
            compile_s[mode] = time.perf_counter() - t0
        fns = {m: (lambda s=s: jax.block_until_ready(s(state, prompts, pmask, **kw))) for m, s in samplers.items()}
        timed = common.time_interleaved(fns, args.warmup, args.iters)
        base_t, base = timed["none"]
        for mode in MODES:
            t, out = timed[mode]
            toks, us, nfe = out.tokens, out.unmask_step, out.nfe
            cmask = np.asarray(out.completion_mask)
            with shd.use_mesh(mesh):
                exact = np.asarray(exact_fn(state, toks, us, nfe))
                mf2 = np.asarray(mf2_fn(state, toks, jnp.asarray(pmask), us, nfe, key_2mf))
            own = np.asarray(out.behaviour_logp)
            delta = np.abs(own - exact)[cmask]
            comp, base_comp = (np.asarray(a)[:, -args.gen_length:] for a in (toks, base.tokens))
            agree = float(np.mean(comp == base_comp))
            at_c_own = float(np.mean((mf2 - own)[cmask] >= log_c))
            at_c_exact = float(np.mean((mf2 - exact)[cmask] >= log_c))
            mean_w = float(np.mean(np.exp(np.minimum(mf2 - own, log_c))[cmask]))
            rows.append([rule, mode, f"{t * 1e3:.1f}", f"{base_t / t:.2f}x", int(out.forwards),
                         f"{t * 1e3 / max(1, int(out.forwards)):.2f}",
                         f"{float(np.mean(np.asarray(nfe))):.1f}", f"{agree:.3f}",
                         f"{float(delta.mean()):.2e}", f"{float(delta.max()):.2e}",
                         f"{at_c_own:.3f}", f"{at_c_exact:.3f}", f"{mean_w:.3f}"])
            if mode != "none":
                ratios[f"{rule} {mode} speed-up vs none"] = base_t / t
        notes.append(f"{rule}: compile + first call " + ", ".join(f"{m} {s:.1f}s" for m, s in compile_s.items()))
    knobs = ", ".join(f"{r} {RULE_KNOBS[r]}={getattr(args, RULE_KNOBS[r])}" for r in args.rules.split(",")
                      if RULE_KNOBS[r])
    shape = "LLaDA-8B shapes (bf16)" if args.llada8b else f"llada.tiny(**{PRESETS[args.preset]}) (fp32)"
    layers = f", {args.n_layers} layers" if args.n_layers else ""
    settings = (f"{shape}{layers}, random weights (LM head x{args.head_scale:g}, "
                f"q/k x{args.attn_scale:g}), batch {args.batch}, prompt {args.prompt_len}, gen {args.gen_length}, "
                f"block {args.block_length}, T = 0, {knobs}; IS clamp C = {args.clamp_c:g}; "
                f"median of {args.iters} interleaved calls after {args.warmup} warm-up")
    return dict(title="Prefix KV cache", settings=settings, notes=notes, ratios=ratios, env=common.env_line(),
                columns=["rule", "kv_cache", "ms / call", "speed-up", "forwards", "ms / forward", "mean NFE",
                         "token agreement", "mean abs Δ logp", "max abs Δ logp", "IS at C (own)",
                         "IS at C (exact)", "mean w (own)"],
                rows=rows)


def main(argv=None) -> None:
    common.print_result(run(parse_args(argv)))


if __name__ == "__main__":
    main()

"""The MFU FLOP formulas of bench/common.py against XLA's own count of the compiled program.

A 1-layer model, because XLA's cost analysis counts the body of the layer scan once. The
forward matches to ~1% (XLA also counts norms, RoPE and softmax). For the LoRA step XLA
skips what a 1-layer model does not need, the first layer's q/k/v input gradients (nothing
upstream trains), which the formula counts: ~23% of a layer's projection backward, so
0.7% of the body at LLaDA-8B's 32 layers; with that removed the two agree to ~2%.
"""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from bench import common
from diffpo_jax.models import llada

B, S = 4, 128


def _xla_flops(fn, *args) -> float:
    return jax.jit(fn).trace(*args).lower().compile().cost_analysis()["flops"]


@pytest.fixture(scope="module")
def split_model():
    cfg = llada.tiny(d_model=256, n_layers=1, n_heads=4, n_kv_heads=4, mlp_hidden=768, vocab_size=2048, lora_rank=8)
    graphdef, lora, rest = nnx.split(llada.LLaDA(cfg, rngs=nnx.Rngs(0)), nnx.LoRAParam, ...)
    return cfg, graphdef, lora, rest


def test_forward_flops_match_xla(split_model):
    cfg, graphdef, lora, rest = split_model
    tokens = jax.ShapeDtypeStruct((B, S), jnp.int32)
    xla = _xla_flops(lambda lo, re, t: nnx.merge(graphdef, lo, re)(t), lora, rest, tokens)
    assert xla == pytest.approx(common.forward_flops(cfg, B, S, lora=True), rel=0.03)


def test_lora_train_flops_match_xla(split_model):
    cfg, graphdef, lora, rest = split_model
    tokens = jax.ShapeDtypeStruct((B, S), jnp.int32)
    weights = jax.ShapeDtypeStruct((B, S, cfg.vocab_size), jnp.float32)

    def loss(lo, re, t, w):  # non-linear in the logits, like the real loss (a linear one lets XLA drop the head)
        return (jax.nn.log_softmax(nnx.merge(graphdef, lo, re)(t).astype(jnp.float32)) * w).sum()

    xla = _xla_flops(jax.grad(loss), lora, rest, tokens, weights)  # gradients for the LoRA factors only
    formula = common.train_flops(cfg, B, S, head_tokens=B * S)
    d, r, t = cfg.d_model, cfg.lora_rank, B * S
    first_layer_qkv_input_grads = 2 * 3 * d * d * t + 2 * 3 * r * d * t
    assert xla == pytest.approx(formula - first_layer_qkv_input_grads, rel=0.05)
    # the full-fine-tuning "3x forward" convention overstates a LoRA step by ~1.5x
    assert common.train_flops(cfg, B, S, head_tokens=t, convention="3x") > 1.3 * xla

"""PyTorch reference of LLaDA's forward (SPEC §1), written from the SPEC, for parity tests.

Module names match the HF checkpoint exactly, so `state_dict()` keys are the checkpoint's
tensor names: `model.transformer.wte.weight [V, D]`, `model.transformer.blocks.{i}.
{attn_norm,ff_norm}.weight [D]`, `.{q_proj,k_proj,v_proj,attn_out}.weight [out, in]`,
`.{ff_proj,up_proj}.weight [H, D]`, `.ff_out.weight [D, H]`, `model.transformer.ln_f.weight
[D]`, `model.transformer.ff_out.weight [V, D]` (the untied LM head).

Block (bidirectional, no causal mask):
    n1 = RMSNorm(x);  h = x + attn_out(SDPA(RoPE(q_proj n1), RoPE(k_proj n1), v_proj n1))
    n2 = RMSNorm(h);  y = h + ff_out(silu(ff_proj n2) * up_proj n2)
    logits = ff_out(ln_f(h_L))
RoPE is rotate-half (non-interleaved) in fp32; RMSNorm statistics in fp32.

`padding_mask=None` (default) attends to every key, padding included, exactly like the
released remote code (which ignores `attention_mask`); a `[B, L]` bool mask (True = real
token) masks padded keys.

`write_hf_checkpoint` writes a tiny HF-format checkpoint: `config.json` with the real LLaDA
keys + sharded safetensors + `model.safetensors.index.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class TorchLLaDAConfig:
    vocab_size: int = 320  # == embedding rows here
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    mlp_hidden_size: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 512
    mask_token_id: int = 300
    eos_token_id: int = 301
    pad_token_id: int = 301

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w; statistics in fp32, result cast back to x.dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * xf.to(x.dtype)


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x `[B, H, L, hd]` -> x*cos + rotate_half(x)*sin with angles pos / theta^(2j/hd), in fp32."""
    b, h, n, hd = x.shape
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)  # [L, hd/2]
    ang = torch.cat([ang, ang], dim=-1)  # [L, hd]
    xf = x.float()
    x1, x2 = xf[..., : hd // 2], xf[..., hd // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * ang.cos() + rotated * ang.sin()).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: TorchLLaDAConfig):
        super().__init__()
        d, kv, hid = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.mlp_hidden_size
        self.cfg = cfg
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, hid, bias=False)  # gate
        self.up_proj = nn.Linear(d, hid, bias=False)
        self.ff_out = nn.Linear(hid, d, bias=False)  # down

    def forward(self, x, attn_mask: Optional[torch.Tensor]):
        cfg = self.cfg
        b, n, d = x.shape
        hd = cfg.head_dim
        n1 = self.attn_norm(x)
        q = self.q_proj(n1).view(b, n, cfg.n_heads, hd).transpose(1, 2)
        k = self.k_proj(n1).view(b, n, cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(n1).view(b, n, cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = rope(q, cfg.rope_theta), rope(k, cfg.rope_theta)
        rep = cfg.n_heads // cfg.n_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False,
                                             scale=1.0 / hd ** 0.5)
        h = x + self.attn_out(att.transpose(1, 2).reshape(b, n, d))
        n2 = self.ff_norm(h)
        return h + self.ff_out(F.silu(self.ff_proj(n2)) * self.up_proj(n2))


class _Inner(nn.Module):
    def __init__(self, cfg: TorchLLaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.d_model),
            blocks=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)]),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
            ff_out=nn.Linear(cfg.d_model, cfg.vocab_size, bias=False),
        ))


class TorchLLaDA(nn.Module):
    """`forward(tokens [B, L] int64, padding_mask [B, L] bool | None) -> logits [B, L, V]`."""

    def __init__(self, cfg: TorchLLaDAConfig, seed: int = 0, std: float = 0.02):
        super().__init__()
        self.cfg = cfg
        self.model = _Inner(cfg)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight") or "ln_f" in name:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))  # non-trivial norms
                else:
                    p.copy_(std * torch.randn(p.shape, generator=gen))

    def forward(self, tokens, padding_mask: Optional[torch.Tensor] = None):
        t = self.model.transformer
        x = t.wte(tokens)
        attn_mask = None if padding_mask is None else padding_mask.bool()[:, None, None, :]
        for blk in t.blocks:
            x = blk(x, attn_mask)
        return t.ff_out(t.ln_f(x))


# ----------------------------------------------------------------------------- HF files


def hf_config_dict(cfg: TorchLLaDAConfig, dtype: str = "float32") -> dict:
    """config.json with the keys (and fixed switch values) of GSAI-ML/LLaDA-8B-Instruct."""
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": cfg.d_model,
        "embedding_dropout": 0.0,
        "embedding_size": cfg.vocab_size,
        "eos_token_id": cfg.eos_token_id,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": cfg.mask_token_id,
        "max_sequence_length": cfg.max_sequence_length,
        "mlp_hidden_size": cfg.mlp_hidden_size,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "n_layers": cfg.n_layers,
        "pad_token_id": cfg.pad_token_id,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": cfg.rope_theta,
        "scale_logits": False,
        "torch_dtype": dtype,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": cfg.vocab_size,
        "weight_tying": False,
    }


def write_hf_checkpoint(model: TorchLLaDA, out_dir: str, n_shards: int = 2,
                        dtype: torch.dtype = torch.float32) -> dict:
    """Write `config.json` + `model-0000k-of-0000n.safetensors` + the index into `out_dir`.

    Tensors are split, in state_dict order, into `n_shards` contiguous groups. Returns the state dict that was written (name -> tensor in `dtype`).
    """
    return write_sharded(model, out_dir, n_shards, dtype, hf_config_dict)


def write_sharded(model: nn.Module, out_dir: str, n_shards: int, dtype: torch.dtype, config_fn) -> dict:
    """`model.state_dict()` in `dtype` as `n_shards` safetensors files (contiguous groups in
    state_dict order) + `model.safetensors.index.json` + `config.json` = `config_fn(model.cfg,
    dtype name)`, in `out_dir`; returns the state dict written. Shared by the families' references."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    names = list(sd)
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k] for k in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_fn(model.cfg, str(dtype).replace("torch.", "")), f, indent=2)
    return sd


def load_hf_state_dict(model_dir: str) -> dict:
    """All tensors of an HF directory (index or single file) as a name -> tensor dict."""
    from safetensors.torch import load_file

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fname in files:
        out.update(load_file(os.path.join(model_dir, fname)))
    return out

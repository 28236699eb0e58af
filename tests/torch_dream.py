"""PyTorch reference of Dream's forward (Qwen2-style bidirectional dLLM), written from the
architecture description, for parity tests. Not Dream's released code (which is only run
locally, never shipped: tests/test_dream_parity.py, DIFFPO_DREAM_REF).

Module names match the HF checkpoint, so `state_dict()` keys are the checkpoint's tensor
names: `model.embed_tokens.weight [V, D]`, `model.layers.{i}.input_layernorm.weight [D]`,
`.post_attention_layernorm.weight [D]`, `.self_attn.{q,k,v}_proj.{weight [out, in], bias [out]}`,
`.self_attn.o_proj.weight [D, D]`, `.mlp.{gate,up}_proj.weight [H, D]`, `.mlp.down_proj.weight
[D, H]`, `model.norm.weight [D]`, `lm_head.weight [V, D]` (untied).

Block (bidirectional):
    n1 = RMSNorm(x);  h = x + o_proj(SDPA(RoPE(q_proj n1), RoPE(k_proj n1), v_proj n1))
    n2 = RMSNorm(h);  y = h + down_proj(silu(gate_proj n2) * up_proj n2)
    raw = lm_head(norm(h_L));  Dream's generation uses logits[:, i] = raw[:, i - 1] (i >= 1),
    logits[:, 0] = raw[:, 0]: `forward(..., shifted=True)` returns that alignment.
Padding (`padding_mask [B, L]` bool): RoPE positions `cumsum(mask) - 1` (pads at 1) and
padded keys masked, as Dream's `diffusion_generate` does for left-padded batches.

`write_hf_checkpoint` writes a tiny HF-format Dream checkpoint: `config.json` with the real
Dream keys + sharded safetensors + `model.safetensors.index.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from torch_llada import RMSNorm, load_hf_state_dict, write_sharded  # noqa: F401  (shared helpers)


@dataclasses.dataclass
class TorchDreamConfig:
    vocab_size: int = 320
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 512
    mask_token_id: int = 300
    pad_token_id: int = 301
    eos_token_id: int = 301
    bos_token_id: int = 301

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x `[B, H, L, hd]`, positions `[B, L]` -> rotate-half RoPE in fp32, back in x.dtype."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = positions.float()[..., None] * inv_freq  # [B, L, hd/2]
    ang = torch.cat([ang, ang], dim=-1)[:, None]  # [B, 1, L, hd]
    xf = x.float()
    rotated = torch.cat([-xf[..., hd // 2:], xf[..., : hd // 2]], dim=-1)
    return (xf * ang.cos() + rotated * ang.sin()).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TorchDreamConfig):
        super().__init__()
        d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(d, d, bias=True)
        self.k_proj = nn.Linear(d, kv, bias=True)
        self.v_proj = nn.Linear(d, kv, bias=True)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, positions, attn_mask):
        c = self.cfg
        b, n, d = x.shape
        q = self.q_proj(x).view(b, n, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        rep = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        return self.o_proj(att.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, cfg: TorchDreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: TorchDreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, positions, attn_mask):
        h = x + self.self_attn(self.input_layernorm(x), positions, attn_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class _Base(nn.Module):
    def __init__(self, cfg: TorchDreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class TorchDream(nn.Module):
    """`forward(tokens [B, L] int64, padding_mask [B, L] bool | None, shifted) -> logits [B, L, V]`."""

    def __init__(self, cfg: TorchDreamConfig, seed: int = 0, std: float = 0.02):
        super().__init__()
        self.cfg = cfg
        self.model = _Base(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))  # non-trivial norms
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))  # non-zero q/k/v biases
                else:
                    p.copy_(std * torch.randn(p.shape, generator=gen))

    def forward(self, tokens, padding_mask: Optional[torch.Tensor] = None, shifted: bool = True):
        b, n = tokens.shape
        if padding_mask is None:
            positions, attn_mask = torch.arange(n)[None].expand(b, n), None
        else:
            pm = padding_mask.bool()
            positions = (pm.long().cumsum(-1) - 1).masked_fill(~pm, 1)
            attn_mask = pm[:, None, None, :]
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, positions, attn_mask)
        logits = self.lm_head(self.model.norm(x))
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if shifted else logits


# ----------------------------------------------------------------------------- HF files


def hf_config_dict(cfg: TorchDreamConfig, dtype: str = "float32") -> dict:
    """config.json with the keys of Dream-org/Dream-v0-Instruct-7B (shapes from `cfg`)."""
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "mask_token_id": cfg.mask_token_id,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_hidden_layers,
        "model_type": "Dream",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pad_token_id": cfg.pad_token_id,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": cfg.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": cfg.vocab_size,
    }


def write_hf_checkpoint(model: TorchDream, out_dir: str, n_shards: int = 2,
                        dtype: torch.dtype = torch.float32) -> dict:
    """Write `config.json` + `model-0000k-of-0000n.safetensors` + the index into `out_dir`;
    returns the state dict written (name -> tensor in `dtype`)."""
    return write_sharded(model, out_dir, n_shards, dtype, hf_config_dict)


# ----------------------------------------------------------------------------- weights <-> ours

# our per-layer name -> HF name (Linear weights are [out, in] there, [in, out] here)
LAYER_NAMES = {
    "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight", "v_proj": "self_attn.v_proj.weight",
    "attn_out": "self_attn.o_proj.weight", "ff_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight",
    "ff_out": "mlp.down_proj.weight", "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias", "attn_norm": "input_layernorm.weight",
    "ff_norm": "post_attention_layernorm.weight",
}


def state_from_flax(model, merge_lora: bool = False) -> dict:
    """Our (Flax) Dream-family model's weights as a Dream HF state dict (fp32 torch tensors)."""
    import numpy as np

    c = model.cfg
    f32 = lambda x: torch.from_numpy(np.array(x, dtype=np.float32))  # noqa: E731
    sd = {"model.embed_tokens.weight": f32(model.embed[...]), "model.norm.weight": f32(model.ln_f[...]),
          "lm_head.weight": f32(model.lm_head[...]).T}
    for i in range(c.n_layers):
        for ours, hf in LAYER_NAMES.items():
            w = f32(model.blocks[ours][...][i])
            if hf.endswith("proj.weight"):
                if merge_lora and ours in model.lora_a:
                    a, b = f32(model.lora_a[ours][...][i]), f32(model.lora_b[ours][...][i])
                    w = w + a @ b * (c.lora_alpha / c.lora_rank)
                w = w.T
            sd[f"model.layers.{i}.{hf}"] = w
    return {k: v.contiguous() for k, v in sd.items()}


def torch_config_of(c) -> TorchDreamConfig:
    """The TorchDreamConfig with the shapes of our TransformerConfig `c`."""
    return TorchDreamConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                            num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                            intermediate_size=c.mlp_hidden, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
                            max_position_embeddings=c.max_sequence_length, mask_token_id=c.mask_token_id,
                            pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id, bos_token_id=c.eos_token_id)


def torch_from_flax(model, merge_lora: bool = False) -> TorchDream:
    """The torch reference holding the same weights as our Dream-family model."""
    tm = TorchDream(torch_config_of(model.cfg))
    tm.load_state_dict(state_from_flax(model, merge_lora), strict=True)
    return tm.eval()


def flax_state_from_hf(sd: dict, cfg) -> dict:
    """A Dream HF state dict -> the pure-dict values of our model's base parameters
    (`{'embed': ..., 'blocks': {name: [N, ...]}, 'ln_f': ..., 'lm_head': ...}`, fp32 NumPy)."""
    import numpy as np

    g = lambda k: sd[k].detach().float().numpy()  # noqa: E731
    blocks = {}
    for ours, hf in LAYER_NAMES.items():
        per = [g(f"model.layers.{i}.{hf}") for i in range(cfg.n_layers)]
        blocks[ours] = np.stack([w.T if hf.endswith("proj.weight") else w for w in per])
    return {"embed": g("model.embed_tokens.weight"), "blocks": blocks, "ln_f": g("model.norm.weight"),
            "lm_head": g("lm_head.weight").T}

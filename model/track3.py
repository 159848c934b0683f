"""Track 3's GPT: the model of modded-nanogpt's optimization track
(records/track_3_optimization/train_gpt_simple.py), selected by model.arch=track3.

A sibling of model/gpt.py rather than flags on it, so nanoGPT's readable GPT-2 stays as it is.
A LanguageModel (model/lm.py) as model/gpt.py's GPT is: forward -> (logits, mean loss),
num_params, flops_per_token, .config, .vocab_size. Their architecture, op for op: RMSNorm with gains after
the embedding, before each sub-block and before the head; a bias on every Linear; separate q, k,
v with RMS-normed q and k; half-truncated RoPE; attention scale 0.12; ReLU^2 MLP; an untied head
with a bias and the 15 tanh-like soft-cap of the logits. Their init (init_weights) draws the same
numbers from the same seed: modules are registered in their order (embed, blocks, head, norm1,
norm2); our head is `lm_head` where theirs is `proj` (state dicts map by that key rename).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import GPTConfig
from model.lm import LanguageModel, PreNormBlock

SOFTCAP = 15.0      # logits -> 15 x / sqrt(x^2 + 15^2)
ATTN_SCALE = 0.12   # their attention scale, in place of 1 / sqrt(head_dim)
# The Hyperball records' multipliers (model.init=normal_scaled / torch_scaled), by name suffix
PROJ_SCALES = {".attn.proj.weight": 1.25, ".mlp.proj.weight": 3.0, ".mlp.fc.weight": 1.5}


def proj_scale(name: str) -> float | None:
    return next((v for suffix, v in PROJ_SCALES.items() if name.endswith(suffix)), None)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gains = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), weight=self.gains.type_as(x))


class Linear(nn.Linear):
    """nn.Linear with a bias, run in the input's dtype (theirs: a bf16 embedding makes the whole
    forward bf16 while the weights stay float32)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=True)

    def forward(self, x):
        return F.linear(x, self.weight.type_as(x), self.bias.type_as(x))


class Rotary(nn.Module):
    """Half-truncated RoPE with base frequency 1024: head_dim/4 frequencies from 1 down to
    1/1024, then head_dim/4 zeros (those pairs are not rotated). Rotates (x1, x2), the two
    halves of the head, in float32."""

    def __init__(self, head_dim: int):
        super().__init__()
        freq = (1 / 1024) ** torch.linspace(0, 1, steps=head_dim // 4, dtype=torch.float32)
        self.register_buffer("angular_freq", torch.cat([freq, freq.new_zeros(head_dim // 4)]))

    def forward(self, x_BTHD):
        pos = torch.arange(x_BTHD.size(1), dtype=torch.float32, device=x_BTHD.device)
        theta = torch.outer(pos, self.angular_freq)[None, :, None, :]
        cos, sin = theta.cos(), theta.sin()
        x1, x2 = x_BTHD.to(dtype=torch.float32).chunk(2, dim=-1)
        y1 = x1 * cos + x2 * sin
        y2 = x1 * (-sin) + x2 * cos
        return torch.cat((y1, y2), 3).type_as(x_BTHD)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = dim // head_dim, head_dim
        hdim = self.num_heads * head_dim
        self.q = Linear(dim, hdim)
        self.k = Linear(dim, hdim)
        self.v = Linear(dim, hdim)
        self.proj = Linear(hdim, dim)
        self.rotary = Rotary(head_dim)

    def forward(self, x):
        B, T = x.size(0), x.size(1)
        q, k, v = (lin(x).view(B, T, self.num_heads, self.head_dim) for lin in (self.q, self.k, self.v))
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))   # QK-norm, no gains
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           scale=ATTN_SCALE, is_causal=True).transpose(1, 2)
        return self.proj(y.contiguous().view(B, T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = Linear(dim, 4 * dim)
        self.proj = Linear(4 * dim, dim)

    def forward(self, x):
        return self.proj(self.fc(x).relu().square())   # ReLU^2


class Block(PreNormBlock):
    PARTS = ("norm1", "attn", "norm2", "mlp")

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        # their registration order (attn, mlp, norm1, norm2): it fixes the init's RNG stream
        self.attn = CausalSelfAttention(dim, head_dim)
        self.mlp = MLP(dim)
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)


class Track3GPT(LanguageModel):
    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        dim = cfg.n_embd
        # Their order (embed, blocks, head, norm1, norm2): construction and init_weights draw
        # from the RNG in it. Theirs: nn.Embedding(...).bfloat16(); model.embed_dtype picks.
        self.embed = nn.Embedding(self.vocab_size, dim).to(getattr(torch, cfg.embed_dtype))
        self.blocks = nn.ModuleList([Block(dim, cfg.head_dim) for _ in range(cfg.n_layer)])
        self.lm_head = Linear(dim, self.vocab_size)   # theirs: `proj`
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Their init loop, call for call (so the RNG stream matches theirs). model.init=default,
        train_gpt_simple.py's: output projections and the head zero, the embedding N(0, 1), other
        matrices N(0, 0.33 / fan_in), biases zero, gains normal_(mean=1, std=0) (which is 1, and
        still draws from the generator). normal_scaled, result #5 MuonH's: the same draws with
        no matrix zeroed, then PROJ_SCALES. torch_scaled, results #4 AdamH's and #8 NorMuonH's:
        torch's construction init kept, PROJ_SCALES, then the head and the "proj" biases zero."""
        init = self.config.init
        for name, p in self.named_parameters():
            name = name.replace("lm_head.", "proj.")   # their name for the head
            w = p.data
            if init == "torch_scaled":
                if scale := proj_scale(name):
                    w.mul_(scale)
                elif "proj" in name:                      # the head's weight, the proj biases
                    w.zero_()
                continue
            if name.endswith("weight"):
                if "proj" in name and init == "default":
                    w.zero_()
                elif "embed" in name:
                    w.normal_()
                else:
                    w.normal_(std=0.33**0.5 / w.size(-1)**0.5)
            elif name.endswith("bias"):
                w.zero_()
            elif name.endswith("gains"):
                w.normal_(mean=1, std=0)
            else:
                raise AssertionError(f"uninitialized parameter: {name}")
            if init == "normal_scaled" and (scale := proj_scale(name)):
                w.mul_(scale)

    def forward(self, idx, targets=None, return_logits: bool = False):
        """(soft-capped float32 logits (B, T, vocab), None); with targets (None, their mean
        cross-entropy, targets -1 ignored; the logits too with return_logits). Runs in the
        embedding's dtype, as theirs (see Linear)."""
        x = self.norm1(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm2(x)).float()
        logits = SOFTCAP * logits * (logits.square() + SOFTCAP**2).rsqrt()
        return self.output(logits, targets, return_logits)

    def uncounted_embedding(self) -> nn.Embedding:
        # the token embedding (the untied head is counted, as GPT leaves out its position one)
        return self.embed

    def attention_width(self) -> int:
        return self.config.n_embd // self.config.head_dim * self.config.head_dim

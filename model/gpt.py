"""A minimal GPT-2, faithful to OpenAI's: the weights of a transformers GPT2LMHeadModel load
into it and give the same logits. In the spirit of nanoGPT's model.py: one screen per idea.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import GPTConfig
from model.lm import LanguageModel, PreNormBlock


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # packed q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.dropout = cfg.n_head, cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


# k and a of 2 z = k x (1 + a x^2); k as a CPU float32 scalar tensor made once (x.new_tensor(k)
# on every call made the whole GELU 0.4 ms slower here).
_GELU_K, _GELU_A = 2 * math.sqrt(2 / math.pi), 0.044715
_GELU_K_CPU = torch.tensor(_GELU_K, dtype=torch.float32)


class CPUTanhGELU(torch.autograd.Function):
    """GPT-2's tanh GELU for float32 CPU tensors, where ATen's kernels are slowed by tanh (fwd +
    bwd 1.5 ms vs 0.55 ms for the exact GELU on a 768 x 512 input here, scripts/bench_model.py).
    Through 0.5 (1 + tanh z) = sigmoid(2 z) with 2 z = k x (1 + a x^2), the same function to
    float32 rounding, in about as few passes over memory as the exact GELU:
    forward  y  = x s,                      s = sigmoid(k x (1 + a x^2))
    backward y' = s + x s (1 - s) k (1 + 3 a x^2)."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid_(torch.addcmul(_GELU_K_CPU, x, x, value=_GELU_A * _GELU_K).mul_(x))
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        slope = torch.addcmul(_GELU_K_CPU, x, x, value=3 * _GELU_A * _GELU_K).mul_(x)
        return slope.mul_(torch.addcmul(s, s, s, value=-1)).add_(s).mul_(grad)


def gelu_tanh(x):
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return CPUTanhGELU.apply(x)
    return F.gelu(x, approximate="tanh")  # one fused kernel on GPUs and in low precision


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers); model.gelu=exact
        # is nanoGPT's nn.GELU(), as the published NAMO and spectral-family runs train.
        self.act = gelu_tanh if cfg.gelu == "tanh" else F.gelu

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(PreNormBlock):
    PARTS = ("ln_1", "attn", "ln_2", "mlp")

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)


class GPT(LanguageModel):
    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(self.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, self.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT-2
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 n_layer) (two per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, return_logits: bool = False):
        """(logits (B, T, vocab), None); with targets (None, the mean cross-entropy, targets -1
        ignored): the full logits are not handed back unless return_logits, so neither they nor
        their float32 copy outlive the loss (1.2 GB in bf16 a micro-step at GPT-2's batch)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.output(self.lm_head(self.transformer.ln_f(x)), targets, return_logits)

    def uncounted_embedding(self) -> nn.Embedding:
        return self.transformer.wpe   # the position embedding, as nanoGPT's count

    def attention_width(self) -> int:
        return self.config.n_embd

    @torch.no_grad()
    def load_hf_state_dict(self, sd: dict) -> None:
        """Copy weights from a transformers GPT2LMHeadModel state dict (its Conv1D weights
        are stored transposed). The vocabulary rows beyond the checkpoint's stay as they are."""
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        own = dict(self.transformer.named_parameters())
        missing = [k for k in own if k not in sd]
        if missing:
            raise KeyError(f"checkpoint lacks {missing[:3]}")
        for name, p in own.items():
            src = sd[name]
            if name.endswith(conv1d):
                src = src.t()
            if name == "wte.weight":
                p[: src.shape[0]].copy_(src)
            elif src.shape != p.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(src.shape)} != {tuple(p.shape)}")
            else:
                p.copy_(src)

"""The settings the published runs need, each against an independent reference: exact GELU
(torch's erf GELU as nn.GELU), the NAMO repo's warmup (their get_lr_ratio), BeyondMuon's absolute
lr floor (their get_lr), and the NAMO repo's decay grouping (their configure_optimizers)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from model.gpt import GPT, GPTConfig
from optim import build_optimizer
from optim.config import OptimizerConfig
from optim.params import param_role
from trainer.config import TrainConfig
from trainer.loop import set_lr


def small(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **kw))


def test_exact_gelu_is_nn_gelu_and_tanh_stays_gpt2s():
    x = torch.randn(4, 16, 32, dtype=torch.float64)
    exact = small(gelu="exact").double()
    tanh = small(gelu="tanh").double()
    mlp_in = exact.transformer.h[0].mlp.c_fc(x)
    assert torch.equal(exact.transformer.h[0].mlp.act(mlp_in), torch.nn.GELU()(mlp_in))
    assert torch.allclose(tanh.transformer.h[0].mlp.act(mlp_in),
                          torch.nn.GELU(approximate="tanh")(mlp_in), atol=1e-12)
    idx = torch.randint(0, 50, (2, 16))
    assert not torch.allclose(exact(idx)[0], tanh(idx)[0])   # the option reaches the forward


def namo_ratio(step, warmup):   # minxin-zhg/namo src/train_gpt2.py get_lr_ratio (decay = 0)
    return 1.0 * step / warmup if step < warmup else 1.0


def beyond_lr(it, max_lr, min_lr, warmup, decay_iters):   # Ocram7/BeyondMuon train.py get_lr
    if it < warmup:
        return max_lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def groups_at(t: TrainConfig, base_lrs, step):
    opt = SimpleNamespace(param_groups=[{"base_lr": lr} for lr in base_lrs])
    set_lr(opt, step, t)
    return [g["lr"] for g in opt.param_groups]


def test_warmup_from_zero_is_the_namo_repos():
    t = TrainConfig(max_iters=100, warmup_iters=20, schedule="constant", warmup_from_zero=True)
    for step in range(100):
        assert groups_at(t, [9e-3], step)[0] == pytest.approx(9e-3 * namo_ratio(step, 20), abs=0)
    default = TrainConfig(max_iters=100, warmup_iters=20, schedule="constant")
    assert groups_at(default, [1.0], 0)[0] == pytest.approx(1 / 21)     # nanoGPT's, unchanged


@pytest.mark.parametrize("min_lr", [3e-6, 1e-6])
def test_absolute_min_lr_is_beyondmuons_floor_for_every_group(min_lr):
    t = TrainConfig(max_iters=200, warmup_iters=20, schedule="cosine", min_lr=min_lr)
    for step in range(200):
        matrix, vector = groups_at(t, [5.0, 3e-4], step)
        assert matrix == pytest.approx(beyond_lr(step, 5.0, min_lr, 20, 200), rel=1e-12)
        assert vector == pytest.approx(beyond_lr(step, 3e-4, min_lr, 20, 200), rel=1e-12)
    ratio = TrainConfig(max_iters=200, warmup_iters=20, schedule="cosine")   # the old rule
    assert groups_at(ratio, [5.0, 3e-4], 199) == pytest.approx([0.5, 3e-5], rel=1e-3)


def namo_repo_decay_names(model):   # their configure_optimizers: not dim < 2, lm_head, wte, wpe
    return {n for n, p in model.named_parameters()
            if not (p.dim() < 2 or any(s in n for s in ("lm_head", "wte", "wpe")))}


def decayed_names(model, opt) -> set:
    ids = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_decay_embeddings_false_is_the_namo_repos_grouping():
    model = small(bias=False)
    quiet = dict(log=lambda *a: None)
    opt = build_optimizer(model, OptimizerConfig(name="adamw", decay_embeddings=False), **quiet)
    assert decayed_names(model, opt) == namo_repo_decay_names(model)
    nanogpt = build_optimizer(model, OptimizerConfig(name="adamw"), **quiet)
    assert decayed_names(model, nanogpt) == {n for n, p in model.named_parameters() if p.dim() >= 2}
    # the AdamW backup of a matrix optimizer: its embeddings leave vector_weight_decay too
    muon = build_optimizer(model, OptimizerConfig(name="muon", decay_embeddings=False,
                                                  vector_weight_decay=0.1), **quiet)
    backup = [g for g in muon.param_groups if g["kind"] == "vector"]
    decayed = {id(p) for g in backup if g["weight_decay"] for p in g["params"]}
    assert decayed and all(p.dim() < 2 for g in backup for p in g["params"] if id(p) in decayed)


def test_roles():
    model = small()
    roles = {n: param_role([n], p) for n, p in model.named_parameters()}
    assert roles["transformer.wte.weight"] == roles["transformer.wpe.weight"] == "embed"
    assert roles["transformer.h.0.attn.c_attn.weight"] == "hidden"
    assert roles["transformer.ln_f.weight"] == roles["transformer.h.0.attn.c_attn.bias"] == "scalar"
    assert param_role(["lm_head.weight"], torch.zeros(3, 3)) == "head"

"""The pieces of Track 3's setup (modded-nanogpt records/track_3_optimization/train_gpt_simple.py)
each against its formula there: the cubic Newton-Schulz, the cooldown schedule, the eval
steps, the summed loss, and the per-role AdamW groups of result #36 (optimizer=track3_baseline)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from configs import load_config, to_object
from configs.errors import UserError
from model.gpt import GPT, GPTConfig
from optim import build_optimizer
from optim.spectral import CUBIC_COEFFS, newton_schulz
from trainer.config import TrainConfig
from trainer.loop import forward_backward, set_lr


def their_cubic(G, steps=12):   # zeropower_via_newtonschulz5 of train_gpt_simple.py, in G's dtype
    X = G.mT if G.size(-2) > G.size(-1) else G
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    a, b, c = 2, -1.5, 0.5
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if G.size(-2) > G.size(-1) else X


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (3, 48, 48)])
def test_cubic_newton_schulz_is_track3s_and_converges_to_the_polar_factor(shape):
    G = torch.randn(*shape, dtype=torch.float64)
    ours = newton_schulz(G, steps=12, dtype=torch.float64, coeffs=CUBIC_COEFFS)
    assert torch.allclose(ours, their_cubic(G), atol=1e-12)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    well = newton_schulz(G, steps=60, dtype=torch.float64, coeffs=CUBIC_COEFFS)
    assert torch.allclose(well, U @ Vh, atol=1e-6)


def their_eta(step, train_steps, cooldown_frac=0.7):   # set_hparams
    progress = step / train_steps
    return 1.0 if progress < 1 - cooldown_frac else (1 - progress) / cooldown_frac


def test_cooldown_schedule_and_eval_steps_are_track3s():
    t = TrainConfig(max_iters=3250, warmup_iters=0, schedule="cooldown", decay_frac=0.7,
                    min_lr_ratio=0.0, eval_interval=125, eval_tail_interval=25, eval_tail_frac=0.1)
    for step in range(3250):
        opt = SimpleNamespace(param_groups=[{"base_lr": 0.025}])
        set_lr(opt, step, t)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.025 * their_eta(step, 3250), rel=1e-12)
        freq = 125 if step / 3250 < 0.9 else 25     # their val_step_freq
        assert t.eval_due(step) == (step % freq == 0), step
    assert not TrainConfig(max_iters=100, eval_interval=30).eval_due(90 + 5)   # no tail unless set


def test_vector_groups_cool_down_over_their_own_fraction():
    # the Hyperball records (#4, #5, #8): matrices cooldown_frac 1.0, aux Adam 0.4 (their
    # set_hparams applies each group's own cooldown_frac)
    t = TrainConfig(max_iters=3325, warmup_iters=0, schedule="cooldown", decay_frac=1.0,
                    decay_frac_vector=0.4, min_lr_ratio=0.0)
    for step in range(0, 3325, 7):
        opt = SimpleNamespace(param_groups=[{"base_lr": 0.018, "kind": "matrix"},
                                            {"base_lr": 0.3, "kind": "vector", "role": "embed"}])
        set_lr(opt, step, t)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.018 * their_eta(step, 3325, 1.0), rel=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.3 * their_eta(step, 3325, 0.4), rel=1e-12)
    with pytest.raises(UserError, match="decay_frac_vector"):
        TrainConfig(decay_frac_vector=0.0)


class Batches:
    """A task serving fixed batches (data/task.py's protocol, the parts forward_backward uses)."""
    def __init__(self, batches):
        self.batches = batches

    def get_batch(self, split, batch_size, *, step, micro_step=0, rank=0, device="cpu"):
        return self.batches[micro_step]


def grads(reduction, batches, accum):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)).double()
    env = SimpleNamespace(rank=0, world_size=1, enabled=False, device="cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    from contextlib import nullcontext
    forward_backward(model, Batches(batches), scaler, step=0, accum=accum, batch_size=3, env=env,
                     autocast=nullcontext, reduction=reduction)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_summed_loss_is_the_token_count_times_the_mean():
    """Track 3 backpropagates the sum of the step's token losses: N x the mean's gradient
    (the model computes its cross-entropy in float32, hence the tolerance)."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 20, (3, 8), generator=g), torch.randint(0, 20, (3, 8), generator=g))
               for _ in range(2)]
    mean, total = grads("mean", batches, 2), grads("sum", batches, 2)
    for name in mean:
        want = mean[name] * 48
        assert (total[name] - want).norm() <= 1e-6 * want.norm(), name


def test_track3_baseline_groups_are_result_36s():
    cfg = to_object(load_config(["optimizer=track3_baseline"])).optimizer
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=True))
    opt = build_optimizer(model, cfg, log=lambda *a: None)
    matrix = [g for g in opt.param_groups if g["kind"] == "matrix"]
    assert {(g["lr"], g["weight_decay"], g["momentum"], g["ns"], g["ns_steps"], g["scale"])
            for g in matrix} == {(0.025, 0.05, 0.95, "cubic", 12, "original")}
    set_lr(opt, 0, TrainConfig(max_iters=10, warmup_iters=0, schedule="constant"))  # the loop's
    backup = {g["role"]: g for g in opt.param_groups if g["kind"] == "vector"}
    assert {r: g["lr"] for r, g in backup.items()} == {"embed": 0.7, "scalar": 0.015}  # tied: no head
    assert all(g["weight_decay"] == 0.001 and tuple(g["betas"]) == (0.8, 0.95) and g["eps"] == 1e-10
               for g in backup.values())


def test_roles_unset_keep_the_old_groups_and_set_ones_override():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))
    quiet = dict(log=lambda *a: None)
    old = build_optimizer(model, to_object(load_config(["optimizer=muon"])).optimizer, **quiet)
    assert len([g for g in old.param_groups if g["kind"] == "vector"]) == 1   # one backup group
    cfg = to_object(load_config(["optimizer=adamw", "optimizer.roles.scalar.lr=0.5",
                                 "optimizer.roles.embed.weight_decay=0",
                                 "optimizer.roles.embed.betas=[0.5,0.6]"])).optimizer
    opt = build_optimizer(model, cfg, **quiet)
    set_lr(opt, 0, TrainConfig(max_iters=10, warmup_iters=0, schedule="constant"))
    groups = {g["role"]: g for g in opt.param_groups}
    assert groups["scalar"]["lr"] == 0.5 and groups["hidden"]["lr"] == cfg.lr
    assert groups["embed"]["weight_decay"] == 0 and groups["hidden"]["weight_decay"] == 0.1
    assert groups["embed"]["betas"] == (0.5, 0.6) and groups["scalar"]["weight_decay"] == 0.0
    for bad in (["optimizer.roles.head.lr=-1"], ["optimizer.roles.scalar.betas=[0.9]"],
                ["optimizer=adam", "optimizer.roles.embed.lr=0.1"]):
        with pytest.raises(UserError):
            to_object(load_config(bad))

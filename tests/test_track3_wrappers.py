"""Issue 28's Track 3 pieces, each against its formula in the record's code (modded-nanogpt
records/track_3_optimization/results at f411b3d, rewritten here): PowerCool (#20), the
EMA-Nesterov wrapper (#39), the tail-EMA readout (#45), the u/w floor (#9); off by default they
change nothing; resume is exact with each on; 2 ranks give the one-process parameters."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import train
from configs.errors import UserError
from model.gpt import GPT, GPTConfig
from optim import OptimizerConfig, build_optimizer
from optim.ema_nesterov import EmaNesterov
from trainer.config import TrainConfig
from trainer.loop import set_lr
from trainer.stop import GracefulStop
from trainer.tail_ema import TailEma

from runs import tiny_args


def quiet(*args, **kwargs):
    pass


# ---- PowerCool (#20, 20260509_contra_soft_muon) ------------------------------------------------

# its constants, as printed there: t_end, power and power_c per group (the AdamW groups embed,
# proj, scalars; Muon), with each group's initial lr
FINAL_SCHEDULE_STEPS, FINAL_LR_POWER = 3105, 1.2
GROUPS = [(0.3, 4.976805410800738e-05, "vector"), (1 / 320, 5.184172302917436e-07, "vector"),
          (0.01, 1.6589351369335795e-06, "vector"), (0.0375, 3.3169534699576625e-06, "matrix")]


def their_lr(step, initial_lr, power_c, power=1.0):   # _lr
    t_end = FINAL_SCHEDULE_STEPS
    return min(initial_lr, power_c * max(0.0, t_end - step) ** power)


def test_powercool_is_result_20s_schedule_at_every_step():
    t = TrainConfig(max_iters=3040, warmup_iters=0, schedule="powercool", powercool_end=3105)
    opt = SimpleNamespace(param_groups=[{"base_lr": lr, "kind": kind} for lr, _, kind in GROUPS])
    flat_until = {}
    for step in range(3040):
        set_lr(opt, step, t)
        for (lr, c, kind), group in zip(GROUPS, opt.param_groups):
            assert group["lr"] == pytest.approx(their_lr(step, lr, c, FINAL_LR_POWER),
                                                rel=1e-13, abs=0), (step, lr)
            if group["lr"] == lr:
                flat_until[kind] = step
    # Muon leaves its flat phase far earlier than the AdamW groups (718 vs 1692 in the record)
    assert flat_until == {"matrix": 718, "vector": 1692}
    # null end: max_iters, so the lr reaches 0 at the end
    t = TrainConfig(max_iters=100, warmup_iters=0, schedule="powercool", powercool_decay_steps=50)
    opt = SimpleNamespace(param_groups=[{"base_lr": 1.0, "kind": "matrix"}])
    set_lr(opt, 99, t)
    assert opt.param_groups[0]["lr"] == pytest.approx(50 ** -1.2)


@pytest.mark.parametrize("key,value", [("powercool_power", 0), ("powercool_end", 0),
                                       ("powercool_decay_steps", -1),
                                       ("powercool_decay_steps_vector", 0),
                                       ("eval_ema_tau", 0.5), ("eval_ema_lambda", 2),
                                       ("eval_ema_start", -1)])
def test_bad_train_knobs_are_one_line(key, value):
    with pytest.raises(UserError, match=f"train.{key}="):
        TrainConfig(**{key: value})


# ---- EMA-Nesterov (#39, 20260522_ema_nesterov_muon) -------------------------------------------

def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)).double()


def set_grads(model, step):
    x = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(step))
    model.zero_grad(set_to_none=True)
    model(x, x)[1].backward()


def their_ema_nesterov_run(model, inner, t, steps, *, beta, gamma, prefill, rest):
    """The record's EMA_Nesterov around `inner`, its loop order: nesterov_step, forward/backward,
    set_hparams(step), step (inner step, then accum_lookahead)."""
    params = [p for g in inner.param_groups for p in g["params"]]
    # their inner_optimizer[0].param_groups[0]: the AdamW's first group (our AdamW backup's)
    first = next((g for g in inner.param_groups if g["kind"] == "vector"), inner.param_groups[0])
    prev = [p.detach().clone() for p in params]
    buf = [torch.zeros_like(p) for p in params]
    for it in range(steps):
        with torch.no_grad():
            if it + 1 > prefill and it < rest:
                g = first
                for p, b in zip(params, buf):
                    p.add_(b, alpha=beta * (g["lr"] / g["base_lr"]))   # get_lr_lambda
        set_grads(model, it)
        set_lr(inner, it, t)
        inner.step()
        with torch.no_grad():
            for p, q, b in zip(params, prev, buf):
                b.lerp_(p - q, 1 - gamma)
                q.copy_(p)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["sgd", "torch_adam", "muon"])
def test_ema_nesterov_trajectory_is_the_records(name):
    # powercool: the matrix and vector groups' lr ratios differ, so the group read matters
    t = TrainConfig(max_iters=10, warmup_iters=0, schedule="powercool", powercool_decay_steps=9,
                    powercool_decay_steps_vector=4)
    cfg = dict(name=name, lr=0.05, weight_decay=0.0, ns="svd")
    ref_model = tiny_model()
    inner = build_optimizer(ref_model, OptimizerConfig(**cfg), log=quiet)
    want = their_ema_nesterov_run(ref_model, inner, t, 10, beta=0.6, gamma=0.9, prefill=3, rest=8)

    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(**cfg, ema_nesterov=dict(
        enabled=True, gamma=0.9, beta=0.6, start=3, stop=8)), log=quiet)
    assert isinstance(opt, EmaNesterov)
    plain = tiny_model()
    plain_opt = build_optimizer(plain, OptimizerConfig(**cfg), log=quiet)
    for step in range(10):   # train.py's order: lookahead, lr, forward/backward, step
        opt.lookahead(step)
        set_lr(opt, step, t)
        set_grads(model, step)
        opt.step()
        opt.zero_grad()
        set_lr(plain_opt, step, t)
        set_grads(plain, step)
        plain_opt.step()
    for p, q in zip(model.parameters(), want):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-13)
    # and the lookahead mattered
    assert not all(torch.allclose(p, q, rtol=1e-6) for p, q in zip(model.parameters(),
                                                                    plain.parameters()))


def test_ema_nesterov_knobs_and_resume_refusals():
    with pytest.raises(UserError, match="optimizer.ema_nesterov.gamma=1"):
        OptimizerConfig(ema_nesterov=dict(gamma=1.0))
    with pytest.raises(UserError, match="stop=3"):
        OptimizerConfig(ema_nesterov=dict(start=5, stop=3))
    model = tiny_model()
    plain = build_optimizer(model, OptimizerConfig(name="adamw"), log=quiet)
    wrapped = build_optimizer(model, OptimizerConfig(name="adamw", ema_nesterov=dict(enabled=True)),
                              log=quiet)
    with pytest.raises(UserError, match="no EMA-Nesterov buffers"):
        wrapped.load_state_dict(plain.state_dict())


# ---- tail EMA (#45, 20260611_tailema_2720_submission) -----------------------------------------

def test_tail_ema_readout_is_the_records():
    model = tiny_model()
    ema = TailEma(model, tau=4.0, lam=0.6, start=3)
    scoped = {n: p for n, p in model.named_parameters() if "wte" not in n}   # "nonembed"
    assert "transformer.wpe.weight" in scoped   # only the token embedding is left out
    assert len(ema.params) == len(scoped) < len(list(model.parameters()))
    theirs = None
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        ema.update(step + 1)
        if step + 1 >= 3:   # maybe_update_tail_ema(step + 1)
            if theirs is None:
                theirs = {n: p.detach().clone() for n, p in scoped.items()}
            else:
                for n, p in scoped.items():
                    theirs[n].lerp_(p.detach(), 1.0 / 4.0)
    embed = model.transformer.wte.weight.detach().clone()
    want = {n: p.detach().lerp(theirs[n], 0.6) for n, p in scoped.items()}
    assert ema.apply()
    for n, p in scoped.items():
        assert torch.equal(p, want[n]), n
    assert torch.equal(model.transformer.wte.weight, embed)   # the embedding is not blended
    assert not TailEma(model, tau=4.0, lam=0.6, start=3).apply()   # nothing before start


def test_eval_ema_start_defaults_to_five_taus_before_the_end():
    assert TrainConfig(max_iters=2720, eval_ema_tau=150).eval_ema_first_step() == 1970
    assert TrainConfig(max_iters=2720, eval_ema_start=2000).eval_ema_first_step() == 2000


# ---- u/w floor (#9, 20260501_skylight001) -----------------------------------------------------

class Matrices(torch.nn.Module):
    def __init__(self, scales):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ws = torch.nn.ParameterList(
            torch.nn.Parameter(s * torch.randn(48, 32, generator=g, dtype=torch.float64))
            for s in scales)


def their_floored_step(p, G, lr, floor, s):
    """Muon.step's update with momentum 0: u = polar(G) x shape scale, then the u/w floor."""
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    update = U @ Vh * s
    p_fro = p.float().norm().clamp_min(1e-8) if p.dtype != torch.float64 else p.norm().clamp_min(1e-8)
    u_fro = update.norm().clamp_min(1e-8)
    scale = torch.where(u_fro / p_fro < floor, floor * p_fro / u_fro, torch.ones_like(p_fro))
    return p - lr * update * scale


def test_uw_floor_is_the_records_equation_in_float64():
    scales = [0.001, 0.02, 1.0, 5.0]   # u/w far above the floor for the small ones, below it after
    model = Matrices(scales)
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(model, OptimizerConfig(
        name="muon", lr=0.01, momentum=0.0, weight_decay=0.0, ns="svd", scale="original",
        uw_floor=0.35, matrix_patterns=["*"], vector_patterns=[]), log=quiet)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in model.parameters()]
    for p, gr in zip(model.parameters(), grads):
        p.grad = gr.clone()
    opt.step()
    s = max(1, 48 / 32) ** 0.5
    floored = 0
    for p, w, gr in zip(model.parameters(), before, grads):
        want = their_floored_step(w, gr, 0.01, 0.35, s)
        assert torch.allclose(p, want, rtol=1e-12, atol=1e-14)
        ratio = ((p - w).norm() / 0.01 / w.norm()).item()
        floored += ratio == pytest.approx(0.35, rel=1e-9)
        assert ratio >= 0.35 - 1e-9
    assert floored == 2   # the two large matrices were lifted to the floor


def test_uw_floor_needs_an_orthogonalizing_chain():
    with pytest.raises(UserError, match="optimizer.uw_floor=0.35 needs an orthogonalizing"):
        build_optimizer(tiny_model(), OptimizerConfig(name="namo", uw_floor=0.35), log=quiet)
    with pytest.raises(UserError, match="optimizer.uw_floor=0"):
        OptimizerConfig(uw_floor=0)


# ---- off by default; resume -------------------------------------------------------------------

def test_off_by_default_nothing_changes(monkeypatch):
    """Defaults: no wrapper, and the muon engine's trajectory bit for bit that of the engine
    without the floor's call (the code before it existed)."""
    model, ref = Matrices([0.02, 1.0]), Matrices([0.02, 1.0])
    cfg = OptimizerConfig(name="muon", lr=0.02, matrix_patterns=["*"], vector_patterns=[])
    assert cfg.uw_floor is None and not cfg.ema_nesterov.enabled
    opt = build_optimizer(model, cfg, log=quiet)
    assert not isinstance(opt, EmaNesterov) and not hasattr(opt, "lookahead")
    for step in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step),
                                 dtype=p.dtype)
        opt.step()
    import optim.matrix
    monkeypatch.setattr(optim.matrix, "uw_floor", lambda group, W, D, eta: eta)
    ref_opt = build_optimizer(ref, cfg, log=quiet)
    for step in range(3):
        for p in ref.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step),
                                 dtype=p.dtype)
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    t = TrainConfig()
    assert t.schedule == "cosine" and not t.eval_ema


class StopAfter(GracefulStop):
    """Acts as if a signal came during step `STEP` (now() is asked after every step)."""
    STEP = 13

    def __init__(self, env):
        super().__init__(env)
        self.asked = 0

    def now(self) -> bool:
        self.asked += 1
        return self.asked >= self.STEP


def summary(out):
    return json.loads((out / "summary.json").read_text())


def events(out):
    return [(r["step"], "val/loss" in r, r.get("val/loss", r.get("train/loss")))
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


OPTIONS = {
    "ema_nesterov": ["optimizer=muon", "optimizer.ema_nesterov.enabled=true",
                     "optimizer.ema_nesterov.start=4", "optimizer.ema_nesterov.stop=25"],
    "eval_ema": ["optimizer=adamw", "train.eval_ema=true", "train.eval_ema_tau=4",
                 "train.eval_ema_start=8"],
    "uw_floor_powercool": ["optimizer=muon", "optimizer.uw_floor=0.35", "train.schedule=powercool",
                           "train.powercool_decay_steps=20", "train.powercool_decay_steps_vector=10"],
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_resume_is_exact_with_the_option_on(tmp_path, small_text, monkeypatch, option):
    common = tiny_args(tmp_path, small_text, "train.max_iters=30", "train.eval_interval=10",
                       "train.ckpt_interval=10", "train.log_interval=1", "model.dropout=0.1",
                       *OPTIONS[option])
    full, out = tmp_path / "full", tmp_path / "stopped"
    assert train.main(common + [f"out_dir={full}"]) == 0
    with monkeypatch.context() as m:
        m.setattr(train, "GracefulStop", StopAfter)
        assert train.main(common + [f"out_dir={out}"]) == 3
    assert summary(out)["steps"] == StopAfter.STEP
    assert train.main(common + [f"out_dir={out}", "resume=true"]) == 0
    resumed, reference = summary(out), summary(full)
    assert resumed["status"] == "completed"
    for key in ("final_val_loss", "final_val_loss_full", "best_val_loss"):
        assert resumed[key] == reference[key], key
    assert events(out) == events(full)
    if option == "eval_ema":   # the readout moved the final weights
        state = torch.load(full / "ckpt.pt", weights_only=True)
        assert state["eval_ema"]["ema"] is not None


def test_eval_ema_changes_the_final_score(tmp_path, small_text):
    common = tiny_args(tmp_path, small_text, "train.max_iters=30", "optimizer=adamw")
    assert train.main(common + [f"out_dir={tmp_path / 'a'}"]) == 0
    assert train.main(common + [f"out_dir={tmp_path / 'b'}", "train.eval_ema=true",
                                "train.eval_ema_tau=4"]) == 0
    a, b = summary(tmp_path / "a"), summary(tmp_path / "b")
    assert a["best_val_loss"] == b["best_val_loss"] or a["final_val_loss"] != b["final_val_loss"]
    assert a["final_val_loss"] != b["final_val_loss"]
    assert events(tmp_path / "a")[:-1] == events(tmp_path / "b")[:-1]   # same run until the end


# ---- 2 ranks == 1 process ---------------------------------------------------------------------

def _two_ranks_match_one_process(rank, world):
    import torch.distributed as dist
    from test_distributed_optim import SHAPES

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.ws = torch.nn.ParameterList(torch.nn.Parameter(0.5 * torch.randn(s, generator=g))
                                             for s in SHAPES)
    cfg = dict(name="muon", lr=0.02, split_qkv=True, qkv_patterns=["ws.6"], uw_floor=0.35,
               ema_nesterov=dict(enabled=True, start=1, gamma=0.9))
    model, ref = Model(), Model()
    opt = build_optimizer(model, OptimizerConfig(**cfg), log=quiet)
    ref_opt = build_optimizer(ref, OptimizerConfig(**cfg, distributed=False), log=quiet)
    assert opt.parts["matrix"].world == world
    for step in range(4):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.lookahead(step)
            g = torch.Generator().manual_seed(step)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            o.step()
        mine = torch.cat([p.detach().flatten() for p in model.parameters()])
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        assert all(torch.equal(every[0], b) for b in every), f"ranks differ at step {step}"
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.equal(p, q), f"step {step}: differs from one process"


def test_two_ranks_match_one_process(tmp_path):
    from test_distributed_optim import spawn
    spawn(tmp_path, _two_ranks_match_one_process)

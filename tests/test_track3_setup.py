"""experiment=track3 is modded-nanogpt's Track 3 setup (records/track_3_optimization,
train_gpt_simple.py): what `python train.py --cfg job experiment=track3` composes, read against
the values written from their file; every registry name builds on it; and the CPU-size model
trains on it with the loss falling."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import train
from configs import load_config, to_object
from model import build_model
from model.config import GPTConfig
from optim import build_optimizer
from optim.registry import available
from runs import REPO, launch, why

TRACK3 = {  # train_gpt_simple.py
    "model.arch": "track3", "model.n_layer": 12, "model.n_embd": 768, "model.head_dim": 128,
    "model.embed_dtype": "bfloat16", "model.bias": True,
    "data.name": "fineweb10B", "data.sampling": "sequential", "data.val_tokens": 20 * 524288,
    "train.block_size": 1024, "train.max_iters": 3250, "train.warmup_iters": 0,
    "train.schedule": "cooldown", "train.decay_frac": 0.7, "train.min_lr_ratio": 0.0,
    "train.grad_clip": 0.0, "train.loss_reduction": "sum", "train.eval_interval": 125,
    "train.eval_tail_interval": 25, "train.eval_tail_frac": 0.1, "train.eval_at_end": True,
    "optimizer.name": "track3_baseline", "optimizer.lr": 0.025, "optimizer.weight_decay": 0.05,
    "optimizer.momentum": 0.95, "optimizer.nesterov": True, "optimizer.ns": "cubic",
    "optimizer.ns_steps": 12, "optimizer.scale": "original",
}
ROLES = {"embed": 0.7, "head": 0.004, "scalar": 0.015}   # #36's AdamW groups


def get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_cfg_job_shows_track3(capsys):
    capsys.readouterr()
    assert train.main(["--cfg", "job", "experiment=track3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    wrong = {k: (get(cfg, k), v) for k, v in TRACK3.items() if get(cfg, k) != v}
    assert not wrong, wrong
    for role, lr in ROLES.items():
        assert get(cfg, f"optimizer.roles.{role}") == {"lr": lr, "weight_decay": 0.001,
                                                        "betas": [0.8, 0.95], "eps": 1e-10}
    t = to_object(load_config(["experiment=track3"])).train
    for nproc in (1, 2, 4, 8):   # torchrun --nproc_per_node=K: the accumulation is shared
        per_rank = t.micro_steps_per_rank(nproc)
        assert nproc * per_rank * t.batch_size * t.block_size == 524_288
    assert [s for s in range(3251) if t.eval_due(s)][-3:] == [3200, 3225, 3250]


@pytest.mark.parametrize("name", available())
def test_every_registry_name_builds_on_track3(name):
    over = ["experiment=track3", f"optimizer={name}", "model.n_layer=1", "model.n_embd=256",
            "model.n_head=2"]
    if name == "external":
        over.append("optimizer.target=torch.optim.NAdam")
    cfg = to_object(load_config(over))
    model = build_model(GPTConfig(**{**vars(cfg.model), "block_size": 64, "vocab_size": 300}))
    opt = build_optimizer(model, cfg.optimizer, log=lambda *a: None)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters()}
    if name not in ("external",):   # the embedding and the head go to #36's AdamW groups
        roles = {g.get("role"): g["lr"] for g in opt.param_groups if g.get("role") in ROLES}
        assert roles.get("embed") == 0.7 and roles.get("head") == 0.004


def test_track3_mini_trains_with_track3_baseline(tmp_path, small_text):
    out = tmp_path / "run"
    proc = launch(["experiment=track3", "model=track3_mini", "data=shakespeare_char",
                   f"data.source={small_text}", f"data.root={tmp_path / 'data'}",
                   "data.sampling=sequential", "train.max_iters=40", "train.eval_interval=20",
                   "train.eval_tail_interval=null", "data.val_tokens=2048", "train.log_interval=5",
                   "train.batch_size=4", "train.block_size=128", "train.grad_accum_steps=1", "device=cpu", "threads=1",
                   f"out_dir={out}"])
    assert proc.returncode == 0, why(proc)
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in evals if "val/loss" in r]
    assert val[-1] < val[0] - 0.5, val


def test_sweep_preset_runs_experiment_track3_on_8_processes():
    from sweeper.points import plan
    p = plan(["sweep=track3"], [])
    assert p.cfg.nproc_per_run == 8 and len(p.points) == 10 * len(p.cfg.optimizers)
    assert all("experiment=track3" in pt.overrides for pt in p.points)
    assert {pt.lr for pt in p.points if pt.optimizer == "track3_baseline"} == {0.025}
    assert {pt.seed for pt in p.points} == set(range(10))

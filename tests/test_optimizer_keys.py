"""An optimizer.* key the chosen optimizer never reads gets one warning line at start-up
(trainer/optimizer_keys.py). What the probe calls unread is checked against behaviour: changing
an unread key leaves two optimizer steps bit for bit the same, changing a read one does not."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from configs import load_config, to_object
from trainer.optimizer_keys import given_keys, keys_read, probe_model, unread_warning


def run_cfg(name: str, *extra: str):
    return to_object(load_config([f"optimizer={name}", "model=tiny", *extra]))


def two_steps(cfg, model_cfg) -> list[torch.Tensor]:
    """The probe model's parameters after two steps of `cfg`'s optimizer on fixed gradients."""
    from optim import build_optimizer

    torch.manual_seed(0)
    model = probe_model(model_cfg)
    opt = build_optimizer(model, cfg, log=lambda *a, **k: None)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 0.01
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


# (optimizer, key, another valid value, whether that optimizer reads it)
CASES = [
    ("adamw", "ns", "polar_express", False),
    ("adamw", "momentum", 0.5, False),
    ("adamw", "eps", 1e-3, True),
    ("muon", "ns", "polar_express", True),
    ("muon", "clamp_c", 0.5, False),
    ("namo", "clamp_c", 0.5, False),
    ("namo_d", "clamp_c", 0.99, True),   # binds: column scales within 1% of their mean
    ("namo", "decay_style", "decoupled", True),
    ("normuon", "mu2", 0.5, True),
    ("dion", "ns_steps", 2, False),
]


@pytest.mark.parametrize("name,key,value,read", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_unread_keys_change_nothing_and_read_ones_do(name, key, value, read):
    cfg = run_cfg(name)
    assert (key in keys_read(cfg.optimizer, cfg.model)) == read
    before = two_steps(cfg.optimizer, cfg.model)
    after = two_steps(dataclasses.replace(cfg.optimizer, **{key: value}), cfg.model)
    same = all(torch.equal(a, b) for a, b in zip(before, after))
    assert same == (not read), f"{name}: changing {key} {'left the steps equal' if same else 'changed the steps'}"


def test_the_warning_names_only_the_unread_keys():
    cfg = run_cfg("adamw")
    line = unread_warning(["optimizer=adamw", "optimizer.ns=polar_express", "optimizer.lr=1e-3",
                           "optimizer.eps=1e-6", "+optimizer.momentum=0.9"], cfg.optimizer, cfg.model)
    assert line == ("warning: optimizer.ns, optimizer.momentum do not apply to optimizer=adamw "
                    "(nothing in it reads them): ignored")
    one = unread_warning(["optimizer.ns=svd"], cfg.optimizer, cfg.model)
    assert one == "warning: optimizer.ns does not apply to optimizer=adamw (nothing in it reads it): ignored"
    muon = run_cfg("muon")
    assert unread_warning(["optimizer.ns=polar_express", "optimizer.weight_decay=0"],
                          muon.optimizer, muon.model) is None
    assert unread_warning(["model.n_layer=2", "optimizer=muon"], muon.optimizer, muon.model) is None


def test_given_keys_are_the_top_fields_of_optimizer_overrides():
    assert given_keys(["optimizer=muon", "optimizer.ns=svd", "+optimizer.roles.embed.lr=0.5",
                       "~optimizer.power", "optimizer.ns=gram", "train.max_iters=3"]) == \
        ["ns", "roles", "power"]


def test_train_py_prints_the_warning_once(tmp_path, small_text, capsys):
    import train

    code = train.main(["model=tiny", "data=shakespeare_char", f"data.source={small_text}",
                       f"data.root={tmp_path / 'data'}", "train.batch_size=2",
                       "train.block_size=16", "train.max_iters=1", "train.eval_interval=1",
                       "train.eval_iters=1", "threads=1", f"out_dir={tmp_path / 'run'}",
                       "optimizer=adamw", "optimizer.ns=polar_express"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: optimizer.")]
    assert lines == ["warning: optimizer.ns does not apply to optimizer=adamw (nothing in it "
                     "reads it): ignored"]

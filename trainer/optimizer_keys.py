"""The optimizer.* keys a run's optimizer never reads: each one the command line set gets one
warning line at start-up (`optimizer=adamw optimizer.ns=polar_express`: AdamW has no
orthogonalizer, so ns is ignored).

Found by recording, not by a table that could drift from the code: the optimizer is built on a
one-layer copy of the run's model (CPU, one process) from a config that records every field its
builder reads, its param groups record every key its chains read, and it takes two steps. A key
read by nothing in that probe changes nothing in the run.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch

from optim.config import OptimizerConfig

# Keys not probed: the name itself, the lr (every optimizer reads it: no probe needed), and how
# the work is shared out under torchrun, which a one-process probe cannot see.
NOT_JUDGED = frozenset({"name", "lr", "distributed"})


class RecordedConfig:
    """An OptimizerConfig whose field reads are recorded in `read` (a method such as
    hyperparameters(), which copies every field into the groups, is the real object's)."""

    def __init__(self, cfg: OptimizerConfig, read: set):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_read", read)
        object.__setattr__(self, "_fields", {f.name for f in dataclasses.fields(cfg)})

    def __getattr__(self, name):
        if name in self._fields:
            self._read.add(name)
        return getattr(self._cfg, name)


class RecordedGroup(dict):
    """A param group that records the config fields its chain reads from it."""

    def __init__(self, group: dict, read: set, fields: set):
        super().__init__(group)
        self.read, self.fields = read, fields

    def _note(self, key):
        if key in self.fields:
            self.read.add(key)

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)


def parts(opt) -> Iterable[torch.optim.Optimizer]:
    """Every optimizer inside `opt` that owns param groups (the parts of a CombinedOptimizer,
    the inner optimizer of a wrapper), and `opt`."""
    yield opt
    if getattr(opt, "inner", None) is not None:
        yield from parts(opt.inner)
    elif getattr(opt, "parts", None):
        for part in opt.parts.values():
            yield from parts(part)


def probe_model(model_cfg):
    """The run's model at its smallest: one layer, narrow, a small vocabulary; the same
    parameter names, so the optimizer routes them as in the run."""
    from model import build_model

    head = 8
    small = dataclasses.replace(model_cfg, n_layer=1, n_head=2, n_embd=2 * head, head_dim=head,
                                vocab_size=32, block_size=8, pad_vocab_to=1)
    return build_model(small)


def keys_read(cfg: OptimizerConfig, model_cfg) -> set:
    """The fields of `cfg` that building its optimizer on a probe model and two steps read."""
    from optim import build_optimizer

    read: set = set()
    fields = {f.name for f in dataclasses.fields(cfg)}
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = probe_model(model_cfg)
        opt = build_optimizer(model, RecordedConfig(dataclasses.replace(cfg, distributed=False),
                                                    read), log=lambda *a, **k: None)
        for part in parts(opt):
            part.param_groups[:] = [RecordedGroup(g, read, fields) for g in part.param_groups]
        for _ in range(2):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.01
            opt.step()
    return read


def given_keys(overrides: Iterable[str]) -> list[str]:
    """The optimizer fields a command line sets: `optimizer.ns=x` -> ns, `optimizer.roles.embed.lr=1`
    -> roles (the group choice `optimizer=adamw` is none)."""
    keys = []
    for arg in overrides:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("optimizer."):
            keys.append(key.split(".")[1])
    return list(dict.fromkeys(keys))


def unread_warning(overrides: Iterable[str], cfg: OptimizerConfig, model_cfg) -> Optional[str]:
    """One warning line for the keys of `overrides` the optimizer never reads, or None."""
    given = [k for k in given_keys(overrides) if k not in NOT_JUDGED]
    if not given:
        return None
    try:
        read = keys_read(cfg, model_cfg)
    except Exception as exc:   # the run's own build succeeded: a probe's failure is no reason to stop
        return f"warning: could not check which optimizer.* keys apply ({type(exc).__name__}: {exc})"
    unread = [k for k in given if k not in read]
    if not unread:
        return None
    keys = ", ".join(f"optimizer.{k}" for k in unread)
    verb, it = ("do", "them") if len(unread) > 1 else ("does", "it")
    return f"warning: {keys} {verb} not apply to optimizer={cfg.name} (nothing in it reads {it}): ignored"

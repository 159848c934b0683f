"""Optimizers by name: `build_optimizer(model, cfg, log)`; `available()` lists the names.
`optim.config` (OptimizerConfig) is torch-free; the registry (optim/registry.py, which
imports torch) is imported when first asked for."""
import importlib

from optim.config import OptimizerConfig

__all__ = ["OptimizerConfig", "available", "build_optimizer"]


def __getattr__(name):
    if name in ("available", "build_optimizer"):
        return getattr(importlib.import_module("optim.registry"), name)
    raise AttributeError(name)

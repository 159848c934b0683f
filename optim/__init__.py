"""Optimizers by name: `build_optimizer(model, cfg, log)`; `available()` lists the names."""
from optim.config import OptimizerConfig
from optim.registry import available, build_optimizer, registry

__all__ = ["OptimizerConfig", "available", "build_optimizer", "registry"]

"""The schema of sweep.py: SweepConfig (configs/sweep.yaml, the presets configs/sweep/*.yaml,
overridden by sweep.*). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class SweepConfig:
    """A learning-rate sweep of sweep.py: configs/sweep/<preset>.yaml, overridden by sweep.*."""
    name: str = "sweep"
    optimizers: List[str] = field(default_factory=lambda: ["adamw"])
    lrs: List[float] = field(default_factory=list)                   # lr grid of every optimizer
    lr_grid: Dict[str, List[float]] = field(default_factory=dict)    # per optimizer; wins over lrs
    grid: Dict[str, List[Any]] = field(default_factory=dict)         # extra axes: {override key: values}
    seeds: List[int] = field(default_factory=lambda: [0])
    jobs: int = 1                        # runs at once
    nproc_per_run: int = 1               # processes per run (torchrun when > 1)
    dir: Optional[str] = None            # results; None = sweeps/<name>
    overrides: List[str] = field(default_factory=list)               # train.py overrides of the setup
    target_loss: Optional[float] = None  # tokens-to-target; None = the worst optimizer's best loss
    tolerance: float = 0.05              # stable range: within this of the best (relative for grokking_step)
    metric: str = "final_val_loss"       # final_val_loss | grokking_step


"""The top-level run config: typed dataclasses that Hydra validates every override against.

Each group's schema lives with the code that uses it (model/gpt.py GPTConfig,
data/config.py DataConfig, optim/config.py OptimizerConfig); this file adds the training
loop's knobs and assembles the tree. configs/config.yaml picks the default of each group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from data.config import DataConfig
from model.gpt import GPTConfig
from optim.config import OptimizerConfig


@dataclass
class TrainConfig:
    max_iters: int = 2000
    batch_size: int = 12                 # sequences per micro-step per process
    block_size: int = 64                 # context length (the model's block_size follows it)
    grad_accum_steps: int = 1            # micro-steps per step, summed over all processes
    eval_interval: int = 250
    eval_iters: int = 20                 # batches per split per evaluation
    log_interval: int = 10
    grad_clip: float = 1.0               # 0 disables
    schedule: str = "cosine"             # cosine | wsd | constant
    warmup_iters: int = 100
    decay_frac: float = 0.2              # wsd: share of max_iters spent decaying
    min_lr_ratio: float = 0.1            # final lr / peak lr
    diverge_loss: float = 20.0           # a train loss above this (or non-finite) ends the run
    ckpt_interval: int = 250             # 0: only at the end
    zero: bool = False                   # ZeRO-1 optimizer-state sharding (torchrun)
    eval_at_end: bool = True


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "matrix-optim-bench"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    mode: str = "auto"                   # auto (online if a key is set) | online | offline | disabled
    tags: list = field(default_factory=list)


@dataclass
class TaskConfig:
    name: str = "lm"                     # lm | grokking
    # grokking (configs/task/grokking.yaml)
    operation: str = "division"          # division | addition | subtraction | multiplication
    modulus: int = 97
    train_fraction: float = 0.5
    acc_threshold: float = 0.99          # memorization: train accuracy at least this
    stop_when_solved: bool = False       # end the run once val accuracy is 100% (see data/grokking.py)


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    out_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}"
    resume: bool = False
    overwrite: bool = False              # allow a fresh run into an out_dir that holds one
    seed: int = 1337
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    dtype: str = "float32"               # float32 | bfloat16 | float16 (autocast)
    compile: bool = False
    threads: int = 0                     # torch CPU threads; 0 leaves torch's default
    backend: str = "auto"                # torch.distributed backend: auto | gloo | nccl


_registered = False


def schemas() -> dict:
    """The root dataclass of each primary config (configs/<name>.yaml)."""
    return {"config": RunConfig, "sweep": SweepFile}


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="sweep_schema", node=SweepFile)
    _registered = True


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


@dataclass
class SweepFile:
    """The root of configs/sweep.yaml."""
    sweep: SweepConfig = field(default_factory=SweepConfig)

"""The config tree: assembles each group's dataclass (defined and validated beside the code it
configures) under the root keys of a run. Hydra validates every override against it.

    model      model/config.py      GPTConfig
    data       data/config.py       DataConfig
    task       data/config.py       TaskConfig
    optimizer  optim/config.py      OptimizerConfig
    train      trainer/config.py    TrainConfig
    wandb      trainer/config.py    WandbConfig
    sweep      sweeper/config.py    SweepConfig   (sweep.py's own tree, configs/sweep.yaml)

Nothing here imports torch: loading a config is cheap. configs/config.yaml picks the default
of each group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from configs.errors import UserError
from data.config import DataConfig, TaskConfig
from model.config import GPTConfig
from optim.config import OptimizerConfig
from sweeper.config import SweepConfig
from trainer.config import TrainConfig, WandbConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
COMPILE = ("auto", "true", "false")
BACKENDS = ("auto", "nccl", "gloo")


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Hydra's output directory: hydra.run.dir (runs/<date>_<time>), or each -m job's own
    out_dir: str = "${hydra:runtime.output_dir}"
    resume: bool = False
    overwrite: bool = False              # allow a fresh run into an out_dir that holds one
    seed: int = 1337
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    # What is asked for; trainer/precision.py resolves auto by the device (CUDA: bf16, or fp16
    # without bf16, compiled; CPU: float32, eager), and train.py reads only the resolved values.
    dtype: str = "auto"                  # auto | float32 | bfloat16 | float16 (autocast)
    compile: str = "auto"                # auto | true | false (a str: auto is no bool)
    tf32: bool = True                    # CUDA float32 matmuls in TF32 (nanoGPT); false: full fp32
    threads: int = 0                     # torch CPU threads; 0 leaves torch's default
    backend: str = "auto"                # torch.distributed backend: auto | gloo | nccl
    # How long a collective may wait (s) before the process group fails: rank 0's checkpoint
    # write of a large model must fit in it.
    dist_timeout_s: int = 600
    # DDP's gradient bucket size (MB): fewer, larger buckets mean fewer all-reduces and fewer
    # breaks of a compiled graph; torch's default is 25.
    ddp_bucket_mb: float = 25.0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UserError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        # The command line's compile=true reaches a str field as "True", a YAML or Python bool
        # as True: one spelling each, so that nothing tests a truthy "false".
        if str(self.compile).lower() not in COMPILE:
            raise UserError(f"compile={self.compile!r} is not one of {', '.join(COMPILE)}")
        self.compile = str(self.compile).lower()
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserError(f"unknown device={self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.dist_timeout_s < 1 or not self.ddp_bucket_mb > 0:
            raise UserError(f"dist_timeout_s={self.dist_timeout_s} must be >= 1 and ddp_bucket_mb="
                            f"{self.ddp_bucket_mb} > 0")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend={self.backend!r}; use {', '.join(BACKENDS[:-1])} "
                            f"or {BACKENDS[-1]}")


@dataclass
class SweepFile:
    """The root of configs/sweep.yaml."""
    sweep: SweepConfig = field(default_factory=SweepConfig)


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

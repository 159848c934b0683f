"""The schemas of the training loop (`train.*`) and of W&B logging (`wandb.*`), and RunConfig,
the root of a run's config (configs/config.yaml): the groups of model/, data/ and optim/ under
it, and the run's own keys (device, dtype, compile, ...). Importing this module registers
RunConfig with configs/schema.py. Torch-free; each dataclass validates itself when the config is
built."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from configs.errors import UserError
from configs.schema import register_root
from data.config import DataConfig, TaskConfig
from model.config import GPTConfig
from optim.config import OptimizerConfig
from trainer.schedule import SCHEDULES

WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class TrainConfig:
    max_iters: int = 2000
    batch_size: int = 12                 # sequences per micro-step per process
    block_size: int = 64                 # context length (the model's block_size follows it)
    grad_accum_steps: int = 1            # micro-steps per step, summed over all processes
    eval_interval: int = 250
    # Evaluate every eval_tail_interval steps once step / max_iters >= 1 - eval_tail_frac (Track 3:
    # every 125, every 25 in the last 10%); null: eval_interval throughout.
    eval_tail_interval: Optional[int] = None
    eval_tail_frac: float = 0.1
    eval_iters: int = 20                 # batches per split per evaluation
    # Periodic evaluations draw their windows from eval_seed, the same for every run, so runs
    # that differ in `seed` are scored on the same text; null: from the run's seed (the rule
    # of the results committed before 2026-11-24).
    eval_seed: Optional[int] = 0
    # At the end of a completed run: the loss over ALL non-overlapping block_size windows of
    # the val split (evenly spaced windows up to this many tokens on a larger split), written
    # as summary.json's final_val_loss_full; 0 turns it off.
    final_eval_tokens: int = 1_000_000
    log_interval: int = 10
    grad_clip: float = 1.0               # 0 disables
    schedule: str = "cosine"             # cosine | wsd | constant | cooldown (Track 3's) | powercool
    # powercool (Track 3 result #20): lr = min(peak, c (end - step)^power), c = peak /
    # decay_steps^power: flat until decay_steps before end. The defaults are the record's for its
    # end 3105 (3040 steps): Muon 2386.4, every AdamW group 1413 (the vector groups here;
    # null: powercool_decay_steps for them too). min_lr, min_lr_ratio, decay_frac not used.
    powercool_power: float = 1.2
    powercool_end: Optional[int] = None  # the step the lr reaches 0; null: max_iters
    powercool_decay_steps: float = 2386.4
    powercool_decay_steps_vector: Optional[float] = 1413.0
    warmup_iters: int = 100
    warmup_from_zero: bool = False       # warmup s / warmup_iters (NAMO repo) instead of nanoGPT's
                                         # (s + 1) / (warmup_iters + 1)
    decay_frac: float = 0.2              # wsd, cooldown: share of max_iters spent decaying
    # wsd, cooldown: the same for the vector groups (the AdamW backup and its role groups) when
    # it differs; null: decay_frac. The Hyperball records (Track 3 #4, #5, #8) cool the matrices
    # over the whole run and their aux Adam over the last 40%: decay_frac=1.0 decay_frac_vector=0.4.
    decay_frac_vector: Optional[float] = None
    min_lr_ratio: float = 0.1            # final lr / peak lr
    # An absolute final lr for every param group instead (BeyondMuon's min_lr_matrix and
    # min_lr_vector: lr = min_lr + c (peak - min_lr)); null: min_lr_ratio x each group's peak.
    min_lr: Optional[float] = None
    # Tail-EMA readout (Track 3 result #45, trainer/tail_ema.py): an EMA (time constant tau
    # steps) of the non-embedding weights from step eval_ema_start (null: 5 tau before the end),
    # blended in once at the end, W <- (1 - lambda) W + lambda EMA, before the final evaluation.
    eval_ema: bool = False
    eval_ema_tau: float = 150.0
    eval_ema_lambda: float = 0.6
    eval_ema_start: Optional[int] = None
    diverge_loss: float = 20.0           # a train loss above this (or non-finite) ends the run
    ckpt_interval: int = 250             # 0: only at the end
    async_ckpt: bool = True              # write ckpt.pt in a background thread (trainer/checkpoint.py)
    zero: bool = False                   # ZeRO-1 optimizer-state sharding (torchrun)
    eval_at_end: bool = True
    # The loss the gradient is taken of: mean (over the step's tokens) or sum (Track 3's: the
    # gradient N times the mean's for N tokens a step). Logged losses are means either way.
    loss_reduction: str = "mean"

    def __post_init__(self):
        for name in ("max_iters", "batch_size", "block_size", "grad_accum_steps", "eval_interval",
                     "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name}={getattr(self, name)} must be at least 1")
        if self.final_eval_tokens < 0:
            raise UserError(f"train.final_eval_tokens={self.final_eval_tokens} must be >= 0 "
                            "(0 turns the final full-val evaluation off)")
        if self.min_lr is not None and self.min_lr < 0:
            raise UserError(f"train.min_lr={self.min_lr} must be >= 0 (or null: train.min_lr_ratio)")
        if self.eval_tail_interval is not None and self.eval_tail_interval < 1:
            raise UserError(f"train.eval_tail_interval={self.eval_tail_interval} must be at least "
                            "1 (or null: train.eval_interval throughout)")
        if self.decay_frac_vector is not None and not 0 < self.decay_frac_vector <= 1:
            raise UserError(f"train.decay_frac_vector={self.decay_frac_vector} must be in (0, 1] "
                            "(or null: train.decay_frac)")
        if not 0 <= self.eval_tail_frac <= 1 or not 0 < self.decay_frac <= 1:
            raise UserError(f"train.eval_tail_frac={self.eval_tail_frac} and train.decay_frac="
                            f"{self.decay_frac} must be in [0, 1] and (0, 1]")
        if self.loss_reduction not in ("mean", "sum"):
            raise UserError(f"train.loss_reduction={self.loss_reduction!r} is not mean or sum")
        if self.powercool_power <= 0:
            raise UserError(f"train.powercool_power={self.powercool_power} must be positive")
        if self.powercool_end is not None and self.powercool_end < 1:
            raise UserError(f"train.powercool_end={self.powercool_end} must be at least 1 (or "
                            "null: max_iters)")
        for name in ("powercool_decay_steps", "powercool_decay_steps_vector"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"train.{name}={getattr(self, name)} must be positive (steps "
                                "before powercool_end where the cooldown starts)")
        if self.eval_ema_tau < 1 or not 0 <= self.eval_ema_lambda <= 1:
            raise UserError(f"train.eval_ema_tau={self.eval_ema_tau} must be >= 1 (steps) and "
                            f"train.eval_ema_lambda={self.eval_ema_lambda} in [0, 1]")
        if self.eval_ema_start is not None and self.eval_ema_start < 0:
            raise UserError(f"train.eval_ema_start={self.eval_ema_start} must be >= 0 (or null: "
                            "5 x eval_ema_tau steps before max_iters)")
        if self.schedule not in SCHEDULES:
            raise UserError(f"train.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")

    def eval_due(self, step: int) -> bool:
        """Whether step `step` (before its update) is evaluated: every eval_interval steps, every
        eval_tail_interval in the last eval_tail_frac of the run (the end is evaluated apart)."""
        tail = (self.eval_tail_interval is not None
                and step / self.max_iters >= 1 - self.eval_tail_frac)
        return step % (self.eval_tail_interval if tail else self.eval_interval) == 0

    def log_due(self, step: int) -> bool:
        """Whether the train loss is logged after step `step` (its update): every log_interval
        steps, and at the end."""
        return step % self.log_interval == 0 or step == self.max_iters

    def ckpt_due(self, step: int) -> bool:
        """Whether a periodic checkpoint is written after step `step`: every ckpt_interval steps
        (0: none), before the end (the end writes its own)."""
        return bool(self.ckpt_interval) and step % self.ckpt_interval == 0 and step < self.max_iters

    def eval_ema_first_step(self) -> int:
        """The step the tail EMA starts from (its first copy of the weights)."""
        if self.eval_ema_start is not None:
            return self.eval_ema_start
        return max(0, self.max_iters - round(5 * self.eval_ema_tau))

    def micro_steps_per_rank(self, world_size: int, where: str = "processes") -> int:
        """grad_accum_steps shared by `world_size` processes (as nanoGPT); it must divide.
        train.py checks it at start-up, sweep.py for each point before launching any."""
        if self.grad_accum_steps % world_size:
            raise UserError(f"train.grad_accum_steps={self.grad_accum_steps} is not divisible by "
                            f"the {world_size} {where}; use a multiple of {world_size}")
        return self.grad_accum_steps // world_size


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "matrix-optim-bench"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    mode: str = "auto"                   # auto (online if a key is set) | online | offline | disabled
    tags: list = field(default_factory=list)

    def __post_init__(self):
        if self.mode not in WANDB_MODES:
            raise UserError(f"wandb.mode={self.mode!r} is not one of {', '.join(WANDB_MODES)}")


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


register_root("config", RunConfig, store_as="run_schema")

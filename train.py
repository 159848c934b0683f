"""Train a GPT-2 with any optimizer of the registry, on CPU, one GPU or many (torchrun).

    python train.py                                   # baby GPT on shakespeare_char, AdamW
    python train.py optimizer=namo_d optimizer.lr=3e-3
    python train.py -m optimizer=adamw,muon optimizer.lr=1e-3,3e-3   # Hydra multirun: 4 jobs
    torchrun --standalone --nproc_per_node=4 train.py model=gpt2 data=openwebtext

A Hydra application (configs/config.yaml): Hydra's whole command line works (-m, --cfg job,
--info, -sc, hydra.* and hydra/launcher=...); a bad input is still one `error: ...` line and
exit code 2 (configs.run_hydra). `run(cfg)` runs one config, as sweeps and tests call it.
Outputs in out_dir (Hydra's output directory unless given): config.yaml, metrics.jsonl,
summary.json, ckpt.pt, .hydra/ (see docs/configuration.md).
SIGTERM, SIGUSR1, SIGUSR2 or SIGINT: the step ends, then ckpt.pt, summary.json (status
interrupted) and exit code 3; run the same command with resume=true to go on (trainer/stop.py).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch

from configs import CONFIG_DIR, check, run_hydra, to_object
from configs.errors import UserError, run_cli
from trainer import checkpoint
from trainer.config import RunConfig  # noqa: F401 (registers configs/config.yaml's root)
from trainer.distributed import DistEnv, exit_rank, on_rank0, setup, teardown
from trainer.divergence import StepLoss
from trainer.loop import (Progress, StepTimer, evaluate, final_eval, finish,
                          forward_backward, optimizer_step, set_lr)
from trainer.outputs import (EXIT_INTERRUPTED, FileLock, RunLogger, Status, prepare_out_dir,
                             read_metrics, truncate_metrics, write_atomic, write_hydra_record)
from trainer.precision import Precision, resolve_precision
from trainer.provenance import provenance
from trainer.stop import GracefulStop

# Peak dense bf16 FLOP/s by device name, for MFU; the first name found in the device's wins,
# so variants come before their family (an H100 PCIe is not an SXM H100).
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12,
              "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
              "4090": 165e12, "V100": 125e12}


def make_autocast(device: str, dtype: str):
    """A factory of autocast contexts (bf16/fp16), or of no-ops for float32. `dtype`: the
    resolved one (trainer/precision.py, which also refuses float16 off CUDA)."""
    if dtype == "float32":
        return nullcontext
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type=kind, dtype=getattr(torch, dtype))


def start_or_resume(cfg, env: DistEnv) -> tuple[bool, Path, FileLock | None]:
    """Rank 0 prepares and locks out_dir (refusing another live writer, or to overwrite another
    run) and decides; all agree, on rank 0's out_dir too (a default one follows each process's
    clock). Returns (resume, out_dir, the lock: rank 0's, None on the others)."""
    held = []

    def prepare() -> tuple[bool, str]:
        resuming, lock = prepare_out_dir(Path(cfg.out_dir), cfg.resume, cfg.overwrite)
        held.append(lock)
        return resuming, str(cfg.out_dir)
    resuming, out_dir = on_rank0(env, prepare)
    return bool(resuming), Path(out_dir), (held[0] if held else None)


def peak_flops_of(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a GPU by its name (torch.cuda.get_device_name), None if unknown."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def peak_flops(device: str) -> float | None:
    return peak_flops_of(torch.cuda.get_device_name(device)) if device.startswith("cuda") else None


def wrap_model(model, compile: bool, env: DistEnv, bucket_mb: float = 25.0):
    """(what the training steps call, what evaluation calls): compiled (the resolved compile,
    never the config's string) and, to train, under DDP; parameters stay the raw model's.
    Evaluation runs the compiled module without DDP (no gradients to synchronize); its batches
    have the training shapes, so it compiles once more (no_grad), not per batch.
    DDP: gradient_as_bucket_view (the gradients are views into the buckets: no second copy of
    every gradient) and bucket_cap_mb=ddp_bucket_mb."""
    if compile:
        model = torch.compile(model)
    evaluated = model
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[env.local_rank] if env.device.startswith("cuda") else None,
                    gradient_as_bucket_view=True, bucket_cap_mb=bucket_mb)
    return model, evaluated


def describe(raw_model, t, env: DistEnv, accum: int, block_size: int, tokens_per_step: int) -> str:
    return (f"model: {raw_model.num_params() / 1e6:.2f}M parameters, "
            f"{raw_model.flops_per_token(block_size) / 1e6:.1f} MFLOPs/token | global batch "
            f"{t.batch_size} x {t.grad_accum_steps} accum = {t.batch_size * t.grad_accum_steps} "
            f"sequences ({env.world_size} process(es) x {accum} micro-steps), "
            f"{tokens_per_step} tokens/step")


def warn_unread_keys(cfg, env) -> None:
    """One warning line for each optimizer.* key of the command line (a Hydra job's overrides)
    that the chosen optimizer never reads (trainer/optimizer_keys.py)."""
    from hydra.core.hydra_config import HydraConfig

    from trainer.optimizer_keys import unread_warning

    if env.is_main and HydraConfig.initialized():
        warning = unread_warning(HydraConfig.get().overrides.task, cfg.optimizer, cfg.model)
        if warning:
            print(warning, file=sys.stderr)


def run(cfg_node) -> dict:
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from data.task import build_task
    from model.config import GPTConfig
    from model import build_model
    from optim import build_optimizer

    cfg = to_object(cfg_node)
    env = setup(cfg.device, cfg.backend, cfg.dist_timeout_s)
    log = print if env.is_main else (lambda *a, **k: None)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device, t = env.device, cfg.train
    # TF32 for float32 matmuls and convolutions on Ampere and later (nanoGPT's choice); the
    # coupled iterations of optim/spectral.py turn it off for themselves.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    # dtype=auto, compile=auto: by the device (trainer/precision.py); nothing below reads cfg's
    precision = resolve_precision(device, cfg.dtype, cfg.compile)
    log(precision.line())
    autocast = make_autocast(device, precision.dtype)
    accum = t.micro_steps_per_rank(env.world_size)

    # Everything that can reject the input happens before anything is written.
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = build_model(GPTConfig(**{**vars(cfg.model), "block_size": task.block_size,
                                     "vocab_size": task.vocab_size})).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, log=log, zero=t.zero)
    warn_unread_keys(cfg, env)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=precision.dtype == "float16")
    tail_ema = None
    if t.eval_ema:   # train.eval_ema: the tail EMA of the weights (trainer/tail_ema.py)
        from trainer.tail_ema import TailEma
        tail_ema = TailEma(model, tau=t.eval_ema_tau, lam=t.eval_ema_lambda,
                           start=t.eval_ema_first_step())
    config = OmegaConf.to_container(cfg_node)
    config["compile"] = cfg.compile   # the checked spelling: the command line's true arrives "True"

    # A task with a finite train set (grokking) serves at most the whole set per batch.
    sequences = t.batch_size if task.train_size is None else min(t.batch_size, task.train_size)
    progress = Progress(tokens_per_step=sequences * task.block_size * t.grad_accum_steps)
    resuming, out_dir, lock = start_or_resume(cfg, env)   # rank 0 holds out_dir's train.lock
    cfg.out_dir = str(out_dir)
    try:
        history = []
        if resuming:
            progress.step, progress.best_val, history = checkpoint.restore(
                out_dir, model=model, optimizer=optimizer, scaler=scaler, device=device,
                config=config, tail_ema=tail_ema)
            if progress.step > t.max_iters:   # it would "complete" and rewrite its summary
                raise UserError(f"out_dir={out_dir} holds a run checkpointed at step "
                                f"{progress.step}, past train.max_iters={t.max_iters}: pass "
                                f"train.max_iters >= {progress.step} to go on, or a new out_dir")
            log(f"resumed from {out_dir / checkpoint.FILE} at step {progress.step}")
        record = provenance(env) if env.is_main else {}
        sent = set()   # (step, is a train record) of the records a resumed run sent before

        def write_start() -> list | None:
            """metrics.jsonl truncated to the checkpoint (each event logged once), config.yaml,
            .hydra/; an old checkpoint's eval history (None for one that holds it)."""
            if resuming:
                sent.update((r.get("step"), "lr" in r) for r in read_metrics(out_dir))
            kept = truncate_metrics(out_dir, progress.step) if resuming else []
            write_atomic(out_dir / "config.yaml",
                         OmegaConf.to_yaml({**config, "provenance": record}))
            write_hydra_record(out_dir, config)
            return checkpoint.legacy_history(kept) if history is None else None
        legacy = on_rank0(env, write_start)
        progress.history = history if history is not None else legacy

        raw_model = model
        flops_per_step = raw_model.flops_per_token(task.block_size) * progress.tokens_per_step
        peak = peak_flops(device) * env.world_size if peak_flops(device) else None
        log(describe(raw_model, t, env, accum, task.block_size, progress.tokens_per_step))
        progress.wall0 = time.time()
        trained, evaluated = wrap_model(model, precision.compile, env, cfg.ddp_bucket_mb)
        r = Run(cfg=cfg, env=env, task=task, model=trained, eval_model=evaluated,
                raw_model=raw_model, optimizer=optimizer, scaler=scaler, autocast=autocast,
                precision=precision, accum=accum,
                progress=progress, out_dir=out_dir, config=config, peak=peak,
                flops_per_step=flops_per_step, log=log, provenance=record,
                logger=RunLogger(out_dir, cfg.wandb, {**config, "provenance": record}, resuming,
                                 sent) if env.is_main else None,
                bar=tqdm(total=t.max_iters, initial=progress.step, disable=not env.is_main,
                         dynamic_ncols=True, desc=cfg.optimizer.name, mininterval=1.0),
                stop=GracefulStop(env), tail_ema=tail_ema,
                ckpt_writer=checkpoint.Writer() if t.async_ckpt and env.is_main else None)
        return r.run()
    finally:
        if lock is not None:
            lock.release()


@dataclass
class Run:
    """A run once set up, and the loop over its steps. Every rank runs the same loop; only
    rank 0 has a logger (and writes)."""
    cfg: Any
    env: DistEnv
    task: Any
    model: Any                # what the steps call (compiled, DDP-wrapped)
    eval_model: Any           # what evaluation calls (compiled, no DDP)
    raw_model: Any            # its parameters: what is saved
    optimizer: Any
    scaler: Any
    autocast: Any
    precision: Precision      # the dtype and compile the run resolved to
    accum: int                # micro-steps per rank
    progress: Progress
    out_dir: Path
    config: dict
    peak: float | None        # FLOP/s of all ranks, for MFU
    flops_per_step: float
    log: Any
    provenance: dict          # rank 0's reproducibility record (trainer/provenance.py)
    logger: RunLogger | None
    bar: Any
    stop: GracefulStop        # the signal handlers, installed while run() trains
    tail_ema: Any = None      # train.eval_ema's TailEma, or None
    ckpt_writer: Any = None   # train.async_ckpt: rank 0's background checkpoint writer

    def run(self) -> dict:
        """train() under the graceful-stop handlers; a crash is recorded (summary.json status
        failed) and re-raised."""
        clean = False
        try:
            with self.stop:
                summary = self.train()
            clean = True
        except Exception as exc:
            self.bar.close()
            error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            with suppress(Exception):   # the last checkpoint written so far stays valid
                self.ckpt_writer and self.ckpt_writer.wait()
            with suppress(UserError):   # a full disk may refuse summary.json as well
                self.write_summary(Status.FAILED, error=error)
            raise
        finally:
            teardown(self.env, clean=clean)
        return summary

    def train(self) -> dict:
        t, p, stop = self.cfg.train, self.progress, self.stop
        losses = StepLoss(t, self.env.device, self.env)
        timer = StepTimer(self.env.device)
        self.model.train()
        solved = False
        while p.step < t.max_iters:
            if t.eval_due(p.step) and p.last_eval != p.step:
                timer.pause()
                self.evaluate()
                timer.resume()
                if self.task.done(p.history):  # e.g. a grokking run that has solved its task
                    self.bar.write(f"task solved at step {p.step}: stopping early")
                    solved = True
                    break
            if hasattr(self.optimizer, "lookahead"):   # optimizer.ema_nesterov: before the lr
                self.optimizer.lookahead(p.step)        # is set, as the record (last step's lr)
            set_lr(self.optimizer, p.step, t)
            train_loss = forward_backward(self.model, self.task, self.scaler, step=p.step,
                                          accum=self.accum, batch_size=t.batch_size, env=self.env,
                                          autocast=self.autocast, reduction=t.loss_reduction)
            outcome = losses.after_backward(train_loss, p.step)
            if outcome.log:                # the read has just synced: time the interval now
                lap = timer.window(synced=True)
            if outcome.diverged_at is not None:
                p.diverged_at, p.step = outcome.diverged_at, outcome.kept_steps
                self.bar.write(f"diverged at step {p.diverged_at}: train loss non-finite or "
                               f"above train.diverge_loss={t.diverge_loss}")
                break
            optimizer_step(self.raw_model, self.optimizer, self.scaler, t.grad_clip)
            p.step += 1
            if self.tail_ema is not None:
                self.tail_ema.update(p.step)
            timer.step_done()
            if outcome.log:
                self.log_train(outcome.loss, *lap)
            self.bar.update(1)
            stop.exchange(p.step)           # torchrun: the ranks' flags, read one step late
            if stop.now():
                break
            if t.ckpt_due(p.step):
                timer.pause()
                self.save_checkpoint()
                timer.resume()
        timer.window()
        p.tokens_per_s = round(p.tokens_per_step * timer.steps / timer.seconds, 1) \
            if timer.seconds > 0 else None
        return self.end(solved)

    def end(self, solved: bool) -> dict:
        """The end of the loop: a diverged run's summary; a stopped one's checkpoint and
        summary (status interrupted); else the end of training and its summary."""
        p = self.progress
        if p.diverged_at is not None:
            status = Status.DIVERGED
        elif self.stop.now() and not solved:
            self.save_checkpoint()
            status = Status.INTERRUPTED
        else:
            self.end_of_training()
            status = Status.COMPLETED
        self.bar.close()
        if self.ckpt_writer is not None:   # the last checkpoint on disk before the summary
            self.ckpt_writer.wait()
        if status == Status.INTERRUPTED:
            ckpt = self.out_dir / checkpoint.FILE
            self.log(f"stopped by {self.stop.name} after step {p.step}: {ckpt} written; run the "
                     "same command with resume=true to go on")
        return self.write_summary(status)

    def evaluate(self) -> None:
        metrics = evaluate(self.task, self.eval_model, self.cfg.train, self.env, self.autocast)
        record = self.progress.eval_record(metrics)
        if self.logger:
            self.logger.log(record)
            self.bar.write(f"step {record['step']}: "
                           + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def log_train(self, loss: float, seconds: float, steps: int) -> None:
        if self.logger:
            rec = self.progress.train_record(self.optimizer.param_groups[0]["lr"], loss, seconds,
                                             steps, self.peak, self.flops_per_step)
            if self.env.device.startswith("cuda"):   # a host-side counter: no sync
                rec["max_mem_gb"] = round(torch.cuda.max_memory_allocated(self.env.device) / 2**30, 2)
            self.logger.log(rec)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def end_of_training(self) -> None:
        """The last evaluation, the whole-val-split score, the final checkpoint."""
        t, p = self.cfg.train, self.progress
        if self.tail_ema is not None and self.tail_ema.apply():
            p.last_eval = None   # the weights changed: evaluate them even if this step was
            self.log(f"train.eval_ema: weights blended toward their EMA (tau {t.eval_ema_tau}, "
                     f"lambda {t.eval_ema_lambda}, from step {self.tail_ema.start})")
        if t.eval_at_end and p.last_eval != p.step:
            self.evaluate()
        p.final_val_full = final_eval(self.task, self.eval_model, t, self.env, self.autocast)
        if p.final_val_full is not None:
            self.bar.write(f"final val loss on the whole val split: {p.final_val_full:.4f}")
        self.save_checkpoint()

    def save_checkpoint(self) -> None:
        checkpoint.save(self.out_dir, model=self.raw_model, optimizer=self.optimizer,
                        scaler=self.scaler, step=self.progress.step,
                        best_val_loss=self.progress.best_val,
                        history=self.progress.history, config=self.config,
                        device=self.env.device, is_main=self.env.is_main,
                        consolidate=self.env.enabled,   # matrix chains shard state on any W > 1
                        tail_ema=self.tail_ema, writer=self.ckpt_writer)

    def write_summary(self, status: str, error: str | None = None) -> dict:
        summary = finish(self.progress, status, self.task, self.raw_model, self.env, error)
        summary.extra["provenance"] = self.provenance
        # the Newton-Schulz dtype ns_dtype=auto resolved to (optim/capability.py); null: none run
        summary.extra["ns_dtype"] = getattr(self.optimizer, "ns_dtype", None)
        # what dtype=auto and compile=auto resolved to on this device (trainer/precision.py)
        summary.extra["dtype"] = self.precision.dtype
        summary.extra["compile"] = self.precision.compile
        if self.logger:
            summary.write(self.out_dir)
            self.logger.finish(summary)
            self.log(f"{status}: " + ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()
                                               if v is not None and not isinstance(v, dict)))
        return summary.to_dict()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def job(cfg_node) -> None:
    """One Hydra job (the run, or each job of -m): its config checked, then run(). Bad input
    (one `error: ...` line, code 2) or a run a signal stopped (EXIT_INTERRUPTED, 3) ends the
    process, and a -m sweep with it, with that code (past Hydra's report of a failed job)."""
    def work() -> int:
        check(cfg_node)   # resolved (${hydra:runtime.output_dir}: out_dir), +keys in the schema
        return exit_code(run(cfg_node))
    code = run_cli(work)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli(lambda: run_hydra(job, argv, prog="train.py"))


def exit_code(summary: dict) -> int:
    """0 for a completed or diverged run, EXIT_INTERRUPTED (3) for one a signal stopped."""
    return EXIT_INTERRUPTED if summary["status"] == Status.INTERRUPTED else 0


if __name__ == "__main__":
    # The job by its module's name, not __main__'s: launchers that pickle it for another process
    # (hydra/launcher=submitit_slurm) then pickle a reference, not this script's globals.
    import train
    code = train.main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_rank(code)  # its run is finished and written; see trainer/distributed.py
    sys.exit(code)

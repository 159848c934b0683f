"""Train a GPT-2 with any optimizer of the registry, on CPU, one GPU or many (torchrun).

    python train.py                                   # baby GPT on shakespeare_char, AdamW
    python train.py optimizer=namo_d optimizer.lr=3e-3
    torchrun --standalone --nproc_per_node=4 train.py model=gpt2 data=openwebtext

Outputs in out_dir: config.yaml, metrics.jsonl, summary.json, ckpt.pt (see README).
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from configs import load_config, to_object
from configs.errors import UserError, run_cli
from trainer import checkpoint
from trainer.distributed import DistEnv, exit_rank, setup, teardown
from trainer.loop import (Progress, evaluate, final_eval, finish, forward_backward, optimizer_step,
                          set_lr)
from trainer.outputs import RunLogger, Status, prepare_out_dir, truncate_metrics, write_atomic

# Peak dense bf16 FLOP/s by device name, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
              "4090": 165e12, "V100": 125e12}


def make_autocast(device: str, dtype: str):
    """A factory of autocast contexts (bf16/fp16), or of no-ops for float32."""
    if dtype == "float32":
        return nullcontext
    if dtype == "float16" and not device.startswith("cuda"):
        raise UserError("dtype=float16 needs CUDA; use dtype=bfloat16 or float32 on CPU")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type=kind, dtype=getattr(torch, dtype))


def micro_steps_per_rank(grad_accum_steps: int, env: DistEnv) -> int:
    if grad_accum_steps % env.world_size:
        raise UserError(f"train.grad_accum_steps={grad_accum_steps} is not divisible by the "
                        f"{env.world_size} processes; use a multiple of {env.world_size}")
    return grad_accum_steps // env.world_size  # as nanoGPT


def start_or_resume(cfg, env: DistEnv) -> bool:
    """Rank 0 prepares out_dir (refusing to overwrite another run) and decides; all agree."""
    resuming = prepare_out_dir(Path(cfg.out_dir), cfg.resume, cfg.overwrite) if env.is_main else False
    if env.enabled:
        flag = [float(resuming)]
        torch.distributed.broadcast_object_list(flag, src=0)
        resuming = bool(flag[0])
    return resuming


def peak_flops(device: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items()
                 if device.startswith("cuda") and k in torch.cuda.get_device_name(device)), None)


def wrap_model(model, cfg, env: DistEnv):
    """The model the loop calls: compiled and/or under DDP; parameters stay the raw model's."""
    if cfg.compile:
        model = torch.compile(model)
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[env.local_rank] if env.device.startswith("cuda") else None)
    return model


def describe(raw_model, t, env: DistEnv, accum: int, block_size: int, tokens_per_step: int) -> str:
    return (f"model: {raw_model.num_params() / 1e6:.2f}M parameters, "
            f"{raw_model.flops_per_token(block_size) / 1e6:.1f} MFLOPs/token | global batch "
            f"{t.batch_size} x {t.grad_accum_steps} accum = {t.batch_size * t.grad_accum_steps} "
            f"sequences ({env.world_size} process(es) x {accum} micro-steps), "
            f"{tokens_per_step} tokens/step")


def log_eval(logger, bar, progress: Progress, metrics: dict) -> None:
    record = progress.eval_record(metrics)
    if logger:
        logger.log(record)
        bar.write(f"step {record['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def run(cfg_node) -> dict:
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from data.task import build_task
    from model.config import GPTConfig
    from model.gpt import GPT
    from optim import build_optimizer

    cfg = to_object(cfg_node)
    env = setup(cfg.device, cfg.backend)
    log = print if env.is_main else (lambda *a, **k: None)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device, t = env.device, cfg.train
    autocast = make_autocast(device, cfg.dtype)
    accum = micro_steps_per_rank(t.grad_accum_steps, env)

    # Everything that can reject the input happens before anything is written.
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = GPT(GPTConfig(**{**vars(cfg.model), "block_size": task.block_size,
                             "vocab_size": task.vocab_size})).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, log=log, zero=t.zero)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "float16")
    config = OmegaConf.to_container(cfg_node)

    # A task with a finite train set (grokking) serves at most the whole set per batch.
    sequences = t.batch_size if task.train_size is None else min(t.batch_size, task.train_size)
    progress = Progress(tokens_per_step=sequences * task.block_size * t.grad_accum_steps)
    out_dir = Path(cfg.out_dir)
    resuming = start_or_resume(cfg, env)
    if resuming:
        progress.step, progress.best_val = checkpoint.restore(
            out_dir, model=model, optimizer=optimizer, scaler=scaler, device=device)
        log(f"resumed from {out_dir / checkpoint.FILE} at step {progress.step}")
    if env.is_main:
        if resuming:
            progress.history = [r for r in truncate_metrics(out_dir, progress.step) if "val/loss" in r]
        write_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(cfg_node))

    raw_model, model = model, wrap_model(model, cfg, env)
    flops_per_step = raw_model.flops_per_token(task.block_size) * progress.tokens_per_step
    peak = peak_flops(device)
    log(describe(raw_model, t, env, accum, task.block_size, progress.tokens_per_step))
    logger = RunLogger(out_dir, cfg.wandb, config, resuming) if env.is_main else None
    progress.wall0 = time.time()

    def save_checkpoint() -> None:
        checkpoint.save(out_dir, model=raw_model, optimizer=optimizer, scaler=scaler,
                        step=progress.step, best_val_loss=progress.best_val, config=config,
                        device=device, is_main=env.is_main, consolidate=t.zero and env.enabled)

    def write_summary(status: str, error: str | None = None) -> dict:
        summary = finish(progress, status, task, raw_model, env, error)
        if logger:
            summary.write(out_dir)
            logger.finish(summary)
            log(f"{status}: " + ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()
                                          if v is not None))
        return summary.to_dict()

    bar = tqdm(total=t.max_iters, initial=progress.step, disable=not env.is_main,
               dynamic_ncols=True, desc=cfg.optimizer.name, mininterval=1.0)
    clean = False
    try:
        model.train()
        while progress.step < t.max_iters:
            if progress.step % t.eval_interval == 0 and progress.last_eval != progress.step:
                log_eval(logger, bar, progress, evaluate(task, raw_model, t, env, autocast))
                if task.done(progress.history):  # e.g. a grokking run that has solved its task
                    bar.write(f"task solved at step {progress.step}: stopping early")
                    break
            set_lr(optimizer, progress.step, t)
            t0 = time.time()
            train_loss = forward_backward(model, task, scaler, step=progress.step, accum=accum,
                                          batch_size=t.batch_size, env=env, autocast=autocast)
            if not math.isfinite(train_loss) or train_loss > t.diverge_loss:
                progress.diverged_at = progress.step + 1
                bar.write(f"diverged at step {progress.diverged_at}: train loss {train_loss}")
                break
            optimizer_step(raw_model, optimizer, scaler, t.grad_clip)
            dt = time.time() - t0
            progress.step_done(dt)
            if progress.step % t.log_interval == 0 or progress.step == t.max_iters:
                mfu = flops_per_step / dt / peak / env.world_size if peak else None
                if logger:
                    lr = optimizer.param_groups[0]["lr"]
                    logger.log(progress.train_record(lr, train_loss, dt, mfu))
                bar.set_postfix(loss=f"{train_loss:.4f}",
                                tok_s=f"{progress.tokens_per_step / dt:.0f}", refresh=False)
            bar.update(1)
            if t.ckpt_interval and progress.step % t.ckpt_interval == 0 \
                    and progress.step < t.max_iters:
                save_checkpoint()
        if progress.diverged_at is None:
            if t.eval_at_end and progress.last_eval != progress.step:
                log_eval(logger, bar, progress, evaluate(task, raw_model, t, env, autocast))
            progress.final_val_full = final_eval(task, raw_model, t, env, autocast)
            if progress.final_val_full is not None:
                bar.write(f"final val loss on the whole val split: {progress.final_val_full:.4f}")
            save_checkpoint()
        bar.close()
        status = Status.COMPLETED if progress.diverged_at is None else Status.DIVERGED
        summary = write_summary(status)
        clean = True
    except Exception as exc:  # a crash mid-run is a recorded result, then re-raised
        bar.close()
        write_summary(Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        teardown(env, clean=clean)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        from configs import config_groups
        print(__doc__)
        print("config groups (group=choice):")
        for group, choices in config_groups().items():
            if group != "sweep":  # sweep presets belong to sweep.py
                print(f"  {group}: {', '.join(choices)}")
        return 0
    return run_cli(lambda: run(load_config(argv)))


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_rank(code)  # its run is finished and written; see trainer/distributed.py
    sys.exit(code)

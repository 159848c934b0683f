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
from configs.errors import UserError
from trainer import checkpoint
from trainer.distributed import DistEnv, all_mean, exit_rank, ranks_in_sync, setup, teardown
from trainer.logger import RunLogger, truncate_metrics
from trainer.schedule import SCHEDULES, lr_factor

# Peak dense bf16 FLOP/s by device name, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
              "4090": 165e12, "V100": 125e12}


def check_config(cfg) -> None:
    t = cfg.train
    if cfg.optimizer.lr <= 0:
        raise UserError(f"optimizer.lr={cfg.optimizer.lr} must be positive")
    for name in ("max_iters", "batch_size", "block_size", "grad_accum_steps", "eval_interval",
                 "eval_iters", "log_interval"):
        if getattr(t, name) < 1:
            raise UserError(f"train.{name}={getattr(t, name)} must be at least 1")
    if t.schedule not in SCHEDULES:
        raise UserError(f"train.schedule={t.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype={cfg.dtype!r} is not one of float32, bfloat16, float16")


def make_autocast(device: str, dtype: str):
    """A factory of autocast contexts (bf16/fp16), or of no-ops for float32."""
    if dtype == "float32":
        return nullcontext
    if dtype == "float16" and not device.startswith("cuda"):
        raise UserError("dtype=float16 needs CUDA; use dtype=bfloat16 or float32 on CPU")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type=kind, dtype=getattr(torch, dtype))


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Returns whether to resume. Refuses to overwrite another run without asking."""
    ckpt = out_dir / "ckpt.pt"
    if resume and ckpt.exists():
        return True
    if resume:
        print(f"resume=true but {ckpt} does not exist yet: starting fresh")
    elif (ckpt.exists() or (out_dir / "summary.json").exists()) and not overwrite:
        raise UserError(f"out_dir={out_dir} already holds a run; pass resume=true to continue it, "
                        "overwrite=true to replace it, or another out_dir=")
    for name in ("metrics.jsonl", "summary.json", "ckpt.pt"):
        (out_dir / name).unlink(missing_ok=True)
    return False


def run(cfg_node) -> dict:
    from omegaconf import OmegaConf

    from data import build_task
    from model import GPT, GPTConfig
    from optim import build_optimizer

    cfg = to_object(cfg_node)
    check_config(cfg)
    env: DistEnv = setup(cfg.device, cfg.backend)
    log = print if env.is_main else (lambda *a, **k: None)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = env.device
    autocast = make_autocast(device, cfg.dtype)
    t = cfg.train
    if t.grad_accum_steps % env.world_size:
        raise UserError(f"train.grad_accum_steps={t.grad_accum_steps} is not divisible by the "
                        f"{env.world_size} processes; use a multiple of {env.world_size}")
    accum = t.grad_accum_steps // env.world_size  # micro-steps per rank, as nanoGPT

    # Everything that can reject the input happens before anything is written.
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model_cfg = GPTConfig(**{**vars(cfg.model), "block_size": task.block_size,
                             "vocab_size": task.vocab_size})
    model = GPT(model_cfg).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, log=log, zero=t.zero)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "float16")

    out_dir = Path(cfg.out_dir)
    resuming = False
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        resuming = prepare_out_dir(out_dir, cfg.resume, cfg.overwrite)
    if env.enabled:
        flag = [float(resuming)]
        torch.distributed.broadcast_object_list(flag, src=0)
        resuming = bool(flag[0])

    step, best_val, history = 0, math.inf, []
    if resuming:
        state = checkpoint.load(out_dir / "ckpt.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and device.startswith("cuda"):
            torch.cuda.set_rng_state(state["rng_cuda"].cpu())
        step, best_val = state["step"], state["best_val_loss"]
        log(f"resumed from {out_dir / 'ckpt.pt'} at step {step}")
    if env.is_main:
        if resuming:
            history = [r for r in truncate_metrics(out_dir / "metrics.jsonl", step) if "val/loss" in r]
        checkpoint.atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg_node))

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[env.local_rank] if device.startswith("cuda") else None)

    # A task with a finite train set (grokking) serves at most the whole set per batch.
    sequences = min(t.batch_size, getattr(task, "train_size", t.batch_size))
    tokens_per_step = sequences * task.block_size * t.grad_accum_steps
    flops_per_step = raw_model.flops_per_token(task.block_size) * tokens_per_step
    peak = next((v for k, v in PEAK_FLOPS.items()
                 if device.startswith("cuda") and k in torch.cuda.get_device_name(device)), None)
    log(f"model: {raw_model.num_params() / 1e6:.2f}M parameters, "
        f"{raw_model.flops_per_token(task.block_size) / 1e6:.1f} MFLOPs/token | global batch "
        f"{t.batch_size} x {t.grad_accum_steps} accum = {t.batch_size * t.grad_accum_steps} "
        f"sequences ({env.world_size} process(es) x {accum} micro-steps), {tokens_per_step} tokens/step")

    logger = RunLogger(out_dir, cfg.wandb, OmegaConf.to_container(cfg_node), resuming) if env.is_main else None
    wall0, train_time, timed_tokens = time.time(), 0.0, 0

    def evaluate(at_step: int) -> dict:
        nonlocal best_val
        metrics = task.evaluate(raw_model, batch_size=t.batch_size, eval_iters=t.eval_iters,
                                device=device, autocast=autocast)
        keys = sorted(metrics)
        metrics = dict(zip(keys, all_mean([metrics[k] for k in keys], env)))
        best_val = min(best_val, metrics["val/loss"])
        record = {"step": at_step, "tokens": at_step * tokens_per_step, **metrics,
                  "time_s": round(time.time() - wall0, 3)}
        history.append(record)
        if logger:
            logger.log(record)
            bar.write(f"step {at_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return record

    def save_checkpoint(at_step: int) -> None:
        if t.zero and env.enabled:  # ZeRO-1: every rank sends its optimizer state shard to rank 0
            optimizer.consolidate_state_dict(to=0)
        if not env.is_main:
            return
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "step": at_step, "best_val_loss": best_val,
                 "rng_cpu": torch.get_rng_state(), "config": OmegaConf.to_container(cfg_node)}
        if device.startswith("cuda"):
            state["rng_cuda"] = torch.cuda.get_rng_state()
        checkpoint.save(out_dir / "ckpt.pt", state)

    def write_summary(status: str, diverged_at=None, error=None) -> dict:
        final_val = history[-1]["val/loss"] if history and status == "completed" else None
        summary = {"status": status, "final_val_loss": final_val,
                   "best_val_loss": best_val if math.isfinite(best_val) else None,
                   "steps": step, "tokens": step * tokens_per_step,
                   "wall_s": round(time.time() - wall0, 2),
                   "tokens_per_s": round(timed_tokens / train_time, 1) if train_time else None,
                   "diverged_at_step": diverged_at, "error": error, **task.summary(history)}
        if env.enabled and error is None:
            summary["world_size"] = env.world_size
            summary["ranks_in_sync"] = ranks_in_sync(raw_model, env)
        if env.is_main:
            checkpoint.atomic_write_json(out_dir / "summary.json", summary)
            logger.finish(summary)
            log(f"{status}: " + ", ".join(f"{k}={v}" for k, v in summary.items() if v is not None))
        return summary

    from tqdm.auto import tqdm
    bar = tqdm(total=t.max_iters, initial=step, disable=not env.is_main, dynamic_ncols=True,
               desc=cfg.optimizer.name, mininterval=1.0)
    last_eval, diverged_at, clean = None, None, False
    try:
        model.train()
        while step < t.max_iters:
            if step % t.eval_interval == 0 and last_eval != step:
                evaluate(step)
                last_eval = step
                if task.done(history):  # e.g. a grokking run that has solved its task
                    bar.write(f"task solved at step {step}: stopping early")
                    break
            factor = lr_factor(step, max_iters=t.max_iters, warmup_iters=t.warmup_iters,
                               schedule=t.schedule, min_lr_ratio=t.min_lr_ratio, decay_frac=t.decay_frac)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor

            t0 = time.time()
            loss_sum = 0.0
            for micro in range(accum):
                # Windows are indexed by the global micro-batch, so N processes with accum/N
                # micro-steps see exactly the batches of one process with accum micro-steps.
                x, y = task.get_batch("train", t.batch_size, step=step,
                                      micro_step=env.rank * accum + micro)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if env.enabled:  # sync gradients only on the last micro-step
                    model.require_backward_grad_sync = micro == accum - 1
                with autocast():
                    _, loss = model(x, y)
                scaler.scale(loss / accum).backward()
                loss_sum += loss.detach()
            (train_loss,) = all_mean([float(loss_sum) / accum], env)  # every rank agrees
            if not math.isfinite(train_loss) or train_loss > t.diverge_loss:
                diverged_at = step + 1
                bar.write(f"diverged at step {diverged_at}: train loss {train_loss}")
                break
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.time() - t0
            train_time, timed_tokens = train_time + dt, timed_tokens + tokens_per_step

            if step % t.log_interval == 0 or step == t.max_iters:
                rec = {"step": step, "tokens": step * tokens_per_step,
                       "lr": optimizer.param_groups[0]["lr"], "train/loss": train_loss,
                       "tokens_per_s": round(tokens_per_step / dt, 1),
                       "ms_per_step": round(1000 * dt, 2), "time_s": round(time.time() - wall0, 3)}
                if peak:
                    rec["mfu"] = flops_per_step / dt / peak / env.world_size
                if logger:
                    logger.log(rec)
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_step / dt:.0f}", refresh=False)
            bar.update(1)
            if t.ckpt_interval and step % t.ckpt_interval == 0 and step < t.max_iters:
                save_checkpoint(step)
        if diverged_at is None:
            if t.eval_at_end and last_eval != step:
                evaluate(step)
            save_checkpoint(step)
        bar.close()
        summary = write_summary("completed" if diverged_at is None else "diverged", diverged_at)
        clean = True
    except Exception as exc:  # a crash mid-run is a recorded result, then re-raised
        bar.close()
        write_summary("failed", error=f"{type(exc).__name__}: {exc}")
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
    try:
        run(load_config(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_rank(code)  # its run is finished and written; see trainer/distributed.py
    sys.exit(code)

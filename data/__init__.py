"""Data: `prepare` writes token files, `lm` serves language-model batches, `grokking` builds
the modular-arithmetic task. `build_task` picks the task of a run config; every task has
vocab_size, block_size, get_batch(split, batch_size, *, step, micro_step, rank),
evaluate(model, *, batch_size, eval_iters, device, autocast), done(history) (may the run
end early?) and summary(history).
Imports are lazy so that loading the config schema (data.config) stays cheap.
"""
from configs.errors import UserError


def build_task(cfg):
    """The task of a composed run config (uses cfg.task, cfg.data, cfg.train.block_size, cfg.seed)."""
    if cfg.task.name == "lm":
        from data.lm import LMTask
        return LMTask(cfg.data, block_size=cfg.train.block_size, seed=cfg.seed)
    if cfg.task.name == "grokking":
        from data.grokking import GrokkingTask
        return GrokkingTask(cfg.task, seed=cfg.seed)
    raise UserError(f"task.name={cfg.task.name} is unknown; use lm or grokking")


def open_prepared(data_cfg):
    """meta.json of the prepared dataset, None when not prepared; UserError when inconsistent."""
    from data.prepare import open_prepared
    return open_prepared(data_cfg)

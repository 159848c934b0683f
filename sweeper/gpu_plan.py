"""The GPU plan of a sweep (`python sweep.py plan sweep=<preset> ...`): per curve (optimizer and
grid values) its lrs, seeds and runs, a run's GPUs and tokens, the model's parameters and FLOPs a
token, and the GPU-hours at the assumed throughput (sweep.plan_mfu x sweep.plan_peak_flops: 0.40
of an H100's 989 TFLOP/s), with the totals. It launches nothing and reads no data (at most a
char dataset's meta.json, for its vocabulary): every run's config is composed and checked as for
a run, the dataset is never opened.

FLOPs a token are nanoGPT's estimate_mfu count, 6 N + 12 L H Q T (PaLM appendix B), the model's
own flops_per_token (the `mfu` train.py logs counts the same): N its num_params() (GPT-2 without
the position embedding; Track 3's GPT without the token embedding, a lookup, its untied head
counted), T the context. The model is built on the meta device (no memory, no init).
Runs (sweeper/stages.py): stage 1 (lrs x sweep.seeds), bracketing (up to sweep.max_extend more
lrs x sweep.seeds for a curve of 2+ lrs), tuning (sweep.tune's values x sweep.seeds), stage 2 (the chosen lr, with confirm_neighbours its
neighbours too, x sweep.confirm_seeds) and the baseline's budgets; min: no extension, max: all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Tuple

from sweeper.config import SweepConfig
from sweeper.points import Plan, curve_label, grid_values, plan

GPT2_VOCAB = {"r50k_base": 50257, "gpt2": 50257}   # GPT-2's BPE, known without its files
CHAR_VOCAB = 256                                   # a char vocabulary not prepared yet: assumed


@dataclass
class Row:
    """One line of the plan: a curve (or the baseline at a budget) and its runs."""
    curve: str
    lrs: str
    seeds: str
    runs: Tuple[int, int]      # (min, max)
    gpus: int                  # per run
    tokens: int                # per run
    params: int                # N of 6 N + 12 L H Q T
    flops_per_token: float

    def gpu_hours(self, cfg: SweepConfig) -> Tuple[float, float]:
        per_run = self.tokens * self.flops_per_token / (cfg.plan_mfu * cfg.plan_peak_flops) / 3600
        return self.runs[0] * per_run, self.runs[1] * per_run


def vocab_size(data) -> Tuple[int, Optional[str]]:
    """The vocabulary train.py reads from the prepared dataset, found without it: GPT-2's BPE by
    its size, another tiktoken encoding from its files, a char one from meta.json if prepared,
    else CHAR_VOCAB (with a note saying so)."""
    if data.tokenizer in GPT2_VOCAB:
        return GPT2_VOCAB[data.tokenizer], None
    if data.tokenizer != "char":
        from data.prepare import make_tokenizer
        return make_tokenizer(data, set())[2], None
    from data.prepare import dataset_dir
    try:
        return int(json.loads((dataset_dir(data) / "meta.json").read_text())["vocab_size"]), None
    except (OSError, ValueError, KeyError, TypeError):
        return CHAR_VOCAB, (f"{data.name} is not prepared: its character vocabulary is taken "
                            f"as {CHAR_VOCAB}")


def run_cost(run) -> Tuple[int, int, float, Optional[str]]:
    """(tokens a step, N, FLOPs a token, a note) of a composed run config, as train.py counts
    them: sequences x block_size x train.grad_accum_steps (the global accumulation)."""
    import torch

    from model import build_model
    from model.config import GPTConfig

    t, note = run.train, None
    if run.task.name == "grokking":   # its vocabulary and context are the task's
        from data.task import build_task
        task = build_task(run)
        vocab, block = task.vocab_size, task.block_size
        sequences = min(t.batch_size, task.train_size)
    else:
        (vocab, note), block, sequences = vocab_size(run.data), t.block_size, t.batch_size
    with torch.device("meta"):
        model = build_model(GPTConfig(**{**vars(run.model), "block_size": block,
                                         "vocab_size": vocab}))
    return sequences * block * t.grad_accum_steps, model.num_params(), \
        float(model.flops_per_token(block)), note


def span(seeds: List[int]) -> str:
    """'0-9' for consecutive seeds, else '0,2,5'."""
    s = sorted(seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))


def gpu_plan(sweep_args: List[str], train_args: List[str]) -> Tuple[Plan, List[Row], List[str]]:
    """The plan (checked as for a run, without the data), its rows and its notes."""
    from configs import load_config, to_object
    from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)

    p = plan(sweep_args, train_args, check_data=False)
    cfg = p.cfg
    k, c = len(cfg.seeds), len(cfg.confirm_seeds)
    seeds = span(cfg.seeds) + (f" + {span(cfg.confirm_seeds)}" if c else "")
    baseline = cfg.baseline or "adamw"
    rows, notes = [], []
    for opt, lrs in p.grids.items():
        for grid in grid_values(cfg, opt):
            first = next(q for q in p.points if q.optimizer == opt and q.grid == grid)
            run = to_object(load_config(first.overrides))
            per_step, n, fpt, note = run_cost(run)
            notes += [note] if note and note not in notes else []
            ext = cfg.max_extend if len(lrs) > 1 else 0
            # stage 2: the chosen lr; with neighbours, 1 or 2 of them (a grid end or not)
            chosen = ((min(2, len(lrs)), min(3, len(lrs) + ext)) if cfg.confirm_neighbours
                      else (1, 1))
            # sweep.tune: each axis' values at the chosen point x the tuning seeds (the default's
            # value, when it is in the grid, is a run already made: min)
            # max: every round (sweep.max_rounds) sweeps every axis with all its extensions, and
            # rounds after the first the lr at 2 more values (with extensions)
            tune = [len(values) for _, values in cfg.tune_axes(opt)]
            rounds = cfg.max_rounds if tune else 0
            most = rounds * sum(v + cfg.max_extend for v in tune) + \
                max(0, rounds - 1) * (2 + cfg.max_extend)
            runs = (len(lrs) * k + chosen[0] * c + sum(v - 1 for v in tune) * k,
                    (len(lrs) + ext) * k + chosen[1] * c + most * k)
            label = curve_label(opt, grid)
            rows.append(Row(label, ",".join(f"{lr:g}" for lr in lrs), seeds, runs,
                            cfg.nproc_per_run, run.train.max_iters * per_step, n, fpt))
            if opt == baseline and cfg.baseline_budgets and baseline not in \
                    {r.curve.split(" ")[0] for r in rows[:-1]}:
                for b in cfg.baseline_budgets:   # sweeper/stages.py later_points
                    steps = max(1, int(round(b * p.max_iters)))
                    if steps != p.max_iters:
                        m = c or k
                        rows.append(Row(f"{label} at {b:g}x steps", "its chosen",
                                        span(cfg.confirm_seeds or cfg.seeds), (m, m),
                                        cfg.nproc_per_run, steps * per_step, n, fpt))
    if p.device == "cpu":
        notes.append("the runs are device=cpu: the GPU-hours are what they would take on the "
                     "assumed GPU")
    return p, rows, notes


def totals(cfg: SweepConfig, rows: List[Row]) -> Tuple[Tuple[int, int], Tuple[float, float]]:
    runs = tuple(sum(r.runs[i] for r in rows) for i in (0, 1))
    hours = tuple(sum(r.gpu_hours(cfg)[i] for r in rows) for i in (0, 1))
    return runs, hours


def hours(h: float) -> str:
    return f"{h:.1f}" if h >= 1 else f"{h:.2g}"


def format_plan(p: Plan, rows: List[Row], notes: List[str]) -> str:
    """The plan as text: a table of the rows (a curve's grid values last), then the totals."""
    cfg = p.cfg

    def pair(lo, hi, f=str):
        return f(lo) if f(lo) == f(hi) else f"{f(lo)} to {f(hi)}"

    head = ("optimizer", "lrs", "seeds", "runs", "GPUs/run", "tokens/run", "params",
            "GFLOP/token", "GPU-hours", "settings")
    table = [head] + [(*(r.curve.split(" ", 1) + [""])[:1], r.lrs, r.seeds, pair(*r.runs),
                       str(r.gpus), f"{r.tokens:,}", f"{r.params / 1e6:.2f}M",
                       f"{r.flops_per_token / 1e9:.4g}", pair(*r.gpu_hours(cfg), f=hours),
                       (r.curve.split(" ", 1) + [""])[1]) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    (r0, r1), (h0, h1) = totals(cfg, rows)
    at_once = cfg.slurm.array_parallelism if cfg.launcher == "slurm" else cfg.jobs
    gpus = at_once * cfg.nproc_per_run
    lines = [f"sweep {cfg.name}: the GPU plan (nothing launched)",
             f"setup: {' '.join(p.setup) or '(no overrides)'}",
             f"throughput: MFU {cfg.plan_mfu:.2f} x {cfg.plan_peak_flops / 1e12:.0f} TFLOP/s a GPU "
             "(sweep.plan_mfu x sweep.plan_peak_flops; default: H100 SXM, dense bf16)",
             "FLOPs a token: 6 N + 12 L H Q T (nanoGPT's estimate_mfu), N = params, T = context",
             f"runs: stage 1 + bracketing (min: none, max: sweep.max_extend={cfg.max_extend} lrs a "
             "curve of 2+ lrs) + tuning (sweep.tune) + stage 2 + budgets", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines += ["", f"total: {pair(r0, r1)} runs, {pair(h0, h1, hours)} GPU-hours; wall-clock "
              f"about {pair(h0 / gpus, h1 / gpus, hours)} h at {at_once} run(s) at once x "
              f"{cfg.nproc_per_run} GPU(s)"]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)

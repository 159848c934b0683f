"""Learning-rate schedules as a factor of the peak lr: linear warmup, then cosine,
warmup-stable-decay (WSD), constant, or Track 3's cooldown; and Track 3's PowerCool, an lr per
param group (powercool_lr)."""
from __future__ import annotations

import math


def lr_factor(step: int, *, max_iters: int, warmup_iters: int, schedule: str,
              min_lr_ratio: float, decay_frac: float = 0.2, warmup_from_zero: bool = False) -> float:
    """warmup_from_zero: s / warmup_iters (step 0 at lr 0, the NAMO repo's warmup) instead of
    nanoGPT's (s + 1) / (warmup_iters + 1)."""
    if step < warmup_iters:
        return step / warmup_iters if warmup_from_zero else (step + 1) / (warmup_iters + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_iters) / max(1, max_iters - warmup_iters))
        return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_start = max(warmup_iters, int(max_iters * (1.0 - decay_frac)))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_iters - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if schedule == "cooldown":
        # Track 3's (modded-nanogpt train_gpt_simple.py set_hparams): constant while s / T <
        # 1 - decay_frac, then (1 - s / T) / decay_frac, linear to 0 at T (here to min_lr_ratio)
        progress = step / max_iters
        if progress < 1 - decay_frac:
            return 1.0
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1 - progress) / decay_frac
    raise ValueError(f"unknown schedule {schedule!r}")


def powercool_lr(step: int, base_lr: float, *, end: int, power: float,
                 decay_steps: float) -> float:
    """PowerCool (modded-nanogpt Track 3 result #20, 20260509_contra_soft_muon, `_lr`):
    min(initial_lr, power_c * max(0, end - step) ** power) with power_c = initial_lr /
    decay_steps ** power, i.e. flat until decay_steps before `end`, then a power-law cooldown to
    0 at `end` (the record: end 3105 for 3040 steps, power 1.2, decay_steps 2386.4 for Muon and
    1413 for every AdamW group; its power_c constants are these to the last digit or two)."""
    power_c = base_lr / decay_steps ** power
    return min(base_lr, power_c * max(0.0, end - step) ** power)


SCHEDULES = ("cosine", "wsd", "constant", "cooldown", "powercool")

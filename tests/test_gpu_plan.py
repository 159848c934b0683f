"""`python sweep.py plan`: the GPU plan's numbers against a hand computation (runs, tokens, FLOPs a
token from the built model's parameters, GPU-hours), the Track-3 preset's plan, and a bad input
as one error line. Nothing trains, no data is read."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sweep
from configs import load_config, to_object
from model.config import GPTConfig
from sweeper.gpu_plan import gpu_plan, totals

REPO = Path(__file__).resolve().parents[1]
PEAK = 0.4 * 989e12   # the defaults: MFU 0.40 of an H100's dense bf16 peak


def test_plan_numbers_equal_a_hand_computation(tmp_path):
    from model.gpt import GPT

    d = tmp_path / "sw"
    p, rows, _ = gpu_plan(["sweep=cpu_decisive", "sweep.optimizers=[adamw,muon]",
                           "sweep.lrs=[1e-3,2e-3]", "sweep.seeds=[0,1]",
                           "sweep.confirm_seeds=[100,101,102]", "sweep.baseline_budgets=[0.5,1.0]",
                           f"sweep.dir={d}"], ["data=shakespeare"])
    assert not d.exists()                                  # nothing launched, nothing written
    tokens = 1000 * 12 * 64 * 1                            # max_iters x batch x block x accum
    m = to_object(load_config(["model=baby"])).model
    model = GPT(GPTConfig(**{**vars(m), "block_size": 64, "vocab_size": 50257}))   # GPT-2 BPE
    n = sum(q.numel() for q in model.parameters()) - model.transformer.wpe.weight.numel()
    fpt = 6 * n + 12 * m.n_layer * m.n_head * (m.n_embd // m.n_head) * 64
    # per curve: 2 lrs x 2 seeds, up to 3 extensions x 2 seeds, the chosen lr x 3 held-out seeds;
    # adamw (the baseline) also at 0.5 x 1000 steps on the 3 held-out seeds (1.0x is its run)
    want = [("adamw", (7, 13), tokens), ("adamw at 0.5x steps", (3, 3), tokens // 2),
            ("muon", (7, 13), tokens)]
    assert [(r.curve, r.runs, r.tokens) for r in rows] == want
    assert all(r.params == n and r.flops_per_token == fpt and r.gpus == 1 for r in rows)
    (lo, hi), (h_lo, h_hi) = totals(p.cfg, rows)
    assert (lo, hi) == (17, 29)
    hour = fpt / PEAK / 3600          # the GPU-hours of one token
    assert h_lo == pytest.approx(hour * (2 * 7 * tokens + 3 * tokens // 2), rel=1e-12)
    assert h_hi == pytest.approx(hour * (2 * 13 * tokens + 3 * tokens // 2), rel=1e-12)


def test_track3_plan_lists_every_entry_at_8_gpus_and_its_tokens(capsys):
    from model.track3 import Track3GPT

    assert sweep.main(["plan", "sweep=track3"]) == 0
    out = capsys.readouterr().out
    preset = to_object(load_config(["sweep=track3"], config_name="sweep")).sweep
    with torch.device("meta"):
        model = Track3GPT(GPTConfig(**{**vars(to_object(load_config(["experiment=track3"])).model),
                                       "block_size": 1024, "vocab_size": 50257}))
    n = sum(q.numel() for q in model.parameters()) - model.embed.weight.numel()
    rows = {cols[0]: cols for cols in (re.split(r"\s{2,}", line) for line in out.splitlines())}
    for opt in preset.optimizers:
        assert rows[opt][4:7] == ["8", f"{3250 * 524288:,}", f"{n / 1e6:.2f}M"], out
    runs = 10 * len(preset.optimizers)
    hours = runs * 3250 * 524288 * (6 * n + 12 * 12 * 768 * 1024) / PEAK / 3600
    assert f"total: {runs} runs, {hours:.1f} GPU-hours" in out


def test_bad_input_is_one_error_line():
    proc = subprocess.run([sys.executable, "sweep.py", "plan", "sweep=track3",
                           "sweep.optimizers=[nosuch]"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and not proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown optimizer(s) nosuch"), lines


def test_plan_counts_the_tuning_runs(tmp_path):
    # 2 lrs x 2 seeds, then 3 weight decays at the best lr x 2 seeds (min: one of them is the
    # default's run already made), then 3 held-out seeds; muon tunes only its lr
    _, rows, _ = gpu_plan(["sweep=cpu_decisive", "sweep.optimizers=[adamw,muon]",
                           "sweep.lrs=[1e-3,2e-3]", "sweep.seeds=[0,1]", "sweep.max_extend=0",
                           "sweep.confirm_seeds=[100,101,102]",
                           "sweep.tune=[{optimizer.weight_decay:[0.0,0.1,0.4]}]",
                           "sweep.tune_by_optimizer={muon:[]}", "sweep.baseline_budgets=[]",
                           f"sweep.dir={tmp_path}"],
                          ["data=shakespeare"])
    assert {r.curve: r.runs for r in rows} == {"adamw": (4 + 2 * 2 + 3, 4 + 3 * 2 + 3),
                                               "muon": (4 + 3, 4 + 3)}

"""A sweep's stages: bracketing extends exactly when the best lr is at an end of its grid and
stops at sweep.max_extend; stage 2 scores the chosen lr on held-out seeds, and stage-1 runs never
enter a stage-2 verdict; speedups over the baseline; one tiny staged sweep end to end."""
from __future__ import annotations

import csv
import math
import statistics

import pytest

import sweep
from sweeper.stages import extension_lr
from sweeper.stats import LrStats
from test_sweep import JOBS, launches, loss_run, results, tiny_args, write_sweep_json


def per_lr(means: dict) -> list[LrStats]:
    """LrStats per lr from {lr: mean or None (diverged)}."""
    out = []
    for lr, m in sorted(means.items()):
        run = {"status": "completed" if m is not None else "diverged"}
        out.append(LrStats(lr, [m] if m is not None else [], [run], 0 if m is not None else 1))
    return out


def best_of(stats: list[LrStats]) -> LrStats:
    return min((s for s in stats if s.values), key=lambda s: (s.bad_share, s.mean))


@pytest.mark.parametrize("means, extended, want", [
    ({1e-3: 2.0, 2e-3: 2.1, 4e-3: 2.2}, 0, 5e-4),          # best at the low end: one ratio below
    ({1e-3: 2.2, 2e-3: 2.1, 4e-3: 2.0}, 0, 8e-3),          # at the high end: one ratio above
    ({1e-3: 2.2, 3e-3: 2.1, 9e-3: 2.0}, 2, 2.7e-2),        # the ratio of the grid's end
    ({1e-3: 2.2, 2e-3: 2.0, 4e-3: 2.1}, 0, None),          # interior: bracketed
    ({1e-3: 2.2, 2e-3: 2.0, 4e-3: None}, 0, None),         # a diverged end brackets too
    ({1e-3: 2.2, 2e-3: 2.1, 4e-3: 2.0}, 3, None),          # max_extend (3) used up
    ({1e-3: 2.0}, 0, None),                                # one lr: no ratio to extend by
])
def test_extension_lr(means, extended, want):
    stats = per_lr(means)
    got = extension_lr(stats, best_of(stats), extended, max_extend=3)
    assert got == (None if want is None else pytest.approx(want))


def test_stage_one_never_enters_a_stage_two_verdict(tmp_path):
    """Stage 1 says a >> b at the chosen lrs; the held-out seeds say the opposite: the verdict,
    the ranking and the scores must follow the held-out seeds only."""
    d = tmp_path / "hand"
    for seed in (0, 1):
        for lr, (a, b) in {1e-3: (1.90, 2.30), 2e-3: (1.95, 2.20), 4e-3: (2.00, 2.25)}.items():
            loss_run(d, "a", lr, seed, a + 0.001 * seed, stage="1")
            loss_run(d, "b", lr, seed, b + 0.001 * seed, stage="1")
    held = {10: (2.10, 2.00), 11: (2.12, 2.01), 12: (2.09, 2.00)}
    for seed, (a, b) in held.items():
        loss_run(d, "a", 1e-3, seed, a, stage="2")
        loss_run(d, "b", 2e-3, seed, b, stage="2")
    write_sweep_json(d, seeds=[0, 1], confirm_seeds=[10, 11, 12])
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    report = (d / "report.md").read_text()
    diffs = [b - a for a, b in held.values()]                 # b - a: b better, held out
    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    h = 4.303 * sd / math.sqrt(3)
    assert f"b better than a: b - a = {m:+.4f} nats, 95% CI [{m - h:+.4f}, {m + h:+.4f}]" in report
    assert "Ordering: b < a" in report and "held-out seeds (stage 2)" in report
    rank1 = next(l for l in report.splitlines() if l.startswith("| 1 |")).split("|")
    assert rank1[2].strip() == "b" and rank1[3].strip() == "0.002"      # chosen on stage 1
    assert rank1[4].strip().startswith(f"{statistics.mean(b for _, b in held.values()):.4f} ±")
    stages = {r["stage"] for r in results(d)}
    assert stages == {"1", "2"}


def test_speedup_over_the_baseline(tmp_path):
    """adamw reaches 2.0 at 10k tokens; x's curve crosses 2.0 halfway between its evals at 4k
    and 5k tokens: a speedup of 10k / 4.5k. D_eff from adamw's budgets on L = 0.5 (D/1e4)^-0.5 + 1.5."""
    d = tmp_path / "hand"
    law = lambda tokens: 0.5 * (tokens / 10_000) ** -0.5 + 1.5   # noqa: E731
    for seed in (0, 1):
        for tokens in (2_500, 5_000, 20_000):   # the budgets; 10k is the scored run below
            loss_run(d, "adamw", 1e-3, seed, law(tokens), stage="budget", tokens=tokens)
        loss_run(d, "adamw", 1e-3, seed, 2.0, curve=[4.0] * 10, stage="1")
        x_curve = [4.0, 3.0, 2.5, 2.2, 2.1, 1.9] + [1.8] * 4   # evals every 1000 tokens
        loss_run(d, "x", 1e-2, seed, 1.75, curve=x_curve, stage="1")
    write_sweep_json(d, seeds=[0, 1])
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    report = (d / "report.md").read_text()
    assert "## Speedup over adamw" in report
    row = next(l for l in report.splitlines() if l.startswith("| x |")).split("|")
    assert row[2].strip() == f"{10_000 / 4_500:.2f} [{10_000 / 4_500:.2f}, {10_000 / 4_500:.2f}]"
    assert row[3].strip() == "2/2"
    d_eff = 10_000 * (0.5 / (1.75 - 1.5)) ** 2                  # the law inverted at L = 1.75
    assert float(row[4].split("[")[0]) == pytest.approx(d_eff / 10_000, rel=1e-3)


@pytest.mark.slow
def test_staged_sweep_end_to_end(tmp_path, small_text, capsys):
    """Stage 1 (2 lrs), one bracketing extension (max_extend=1), stage 2 on 2 fresh seeds and
    the baseline at half the steps; a re-run launches nothing."""
    args = tiny_args(tmp_path, small_text, "sweep.optimizers=[adamw]", "sweep.lrs=[2e-3,4e-3]",
                     "sweep.max_extend=1", "sweep.confirm_seeds=[5,6]",
                     "sweep.baseline_budgets=[0.5]", "train.final_eval_tokens=2048")
    assert sweep.main(args) == 0
    d = tmp_path / "sw"
    rows = results(d)
    by_stage = {s: [r for r in rows if r["stage"] == s] for s in ("1", "extend", "2", "budget")}
    assert len(by_stage["1"]) == 2 and len(by_stage["extend"]) == 1
    ext_lr = float(by_stage["extend"][0]["lr"])
    assert ext_lr in (pytest.approx(1e-3), pytest.approx(8e-3))     # one ratio beyond an end
    chosen = {r["lr"] for r in by_stage["2"]}
    assert len(chosen) == 1 and {int(r["seed"]) for r in by_stage["2"]} == {5, 6}
    assert {(r["lr"], int(r["steps"])) for r in by_stage["budget"]} == {(chosen.pop(), 10)}
    assert all(r["final_val_loss_full"] for r in rows)
    report = (d / "report.md").read_text()
    assert "Scored by `final_val_loss_full`" in report and "held-out seeds [5, 6]" in report
    before = {r["run_id"]: launches(d / "runs" / r["run_id"]) for r in rows}
    assert sweep.main(args) == 0                                  # resumes: nothing to run
    assert {r["run_id"]: launches(d / "runs" / r["run_id"]) for r in results(d)} == before


def test_a_sweep_of_one_numeric_axis_plots_the_score_against_it(tmp_path):
    """sweep.grid with one numeric key (e.g. batch size): report writes grid_curves.png with
    each optimizer's score per axis value; listed variants or a second axis do not."""
    from test_sweep import fake_run
    from sweeper.config import SweepConfig
    from sweeper.report import grid_axis
    d = tmp_path / "hand"
    for opt, finals in {"a": {64: 2.0, 128: 1.9}, "b": {64: 2.1, 128: 1.8}}.items():
        for width, final in finals.items():
            for seed in (0, 1):
                fake_run(d, opt, 1e-3, seed, {"status": "completed", "final_val_loss": final + 0.01 * seed,
                                              "best_val_loss": final, "steps": 100, "tokens": 1000,
                                              "diverged_at_step": None},
                         [{"step": 100, "tokens": 1000, "val/loss": final}], grid={"model.n_embd": width})
    write_sweep_json(d, seeds=[0, 1], optimizers=["a", "b"], lrs=[1e-3],
                     grid={"model.n_embd": [64, 128]}, baseline="a")
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    assert (d / "grid_curves.png").stat().st_size > 0
    assert (d / "grid_lr.png").stat().st_size > 0                 # the best lr against the axis
    report = (d / "report.md").read_text()                        # the ordering at each value
    assert "- n_embd=64: a < b (a - b = -0.1000 [-0.1000, -0.1000])" in report
    assert "- n_embd=128: b < a (b - a = -0.1000 [-0.1000, -0.1000])" in report
    # every pair side by side along the axis: the difference's move with width
    assert "| pair | n_embd=64 | n_embd=128 |" in report
    assert "| a - b | **-0.1000 [-0.1000, -0.1000]** | **+0.1000 [+0.1000, +0.1000]** |" in report
    # speedups against the baseline at the same width (b@64 never reaches a@64's 2.0; b@128
    # reaches a@128's 1.9 at its only evaluation, 1000 tokens, as a did), never across widths
    assert "## Speedup over a at the same model.n_embd" in report
    assert "| b n_embd=128 | a n_embd=128 | 1.00 [1.00, 1.00] | 2/2 |" in report
    assert "| b n_embd=64 | a n_embd=64 | - | 0/2 |" in report
    assert grid_axis(SweepConfig(grid={"train.batch_size": [128, 512]})) == "train.batch_size"
    assert grid_axis(SweepConfig(grid={"train.batch_size": [128, 512], "model.n_embd": [64, 128]})) is None
    assert grid_axis(SweepConfig(grid={"optimizer.decay_style": ["adaptive", "decoupled"]})) is None
    assert grid_axis(SweepConfig(grid={"train.batch_size": [128, 512]},
                                 grid_points=[{"optimizer.weight_decay": 0.0}])) is None

"""The figures of a sweep (sweeper/plots.py) on a small synthetic sweep with a diverged point, a
bracketing point, a very bad lr, a tie and a resolved pair: colours by name, y-limits that leave
out the diverged and cut the very bad, legends outside the axes, the forest plot's rows, and
every file written by `sweep.py report`."""
from __future__ import annotations

from pathlib import Path

import pytest

import sweep
from sweeper.config import SweepConfig, stored_config
from sweeper.plots import (PALETTE, draw_best_curves, draw_lr_curves, draw_lr_grid_curves,
                           draw_verdicts, pyplot)
from sweeper.rows import collect
from sweeper.stats import summarize
from test_sweep import fake_run, write_sweep_json

# optimizer -> lr -> final loss per seed (None: diverged); held-out seeds 100-103
STAGE1 = {"adamw": {1e-3: [2.10, 2.12], 2e-3: [2.00, 2.02], 4e-3: [3.80, 3.70], 8e-3: [None, None]},
          "muon": {5e-3: [1.90, 1.91], 1e-2: [1.95, 1.96], 2.5e-3: [1.93, 1.92]},   # 2.5e-3: added
          "namo": {2e-2: [1.91, 1.90], 4e-2: [1.97, 1.99], 1e-2: [1.94, 1.95]}}
HELD = {"adamw": [2.01, 2.03, 2.02, 2.00], "muon": [1.900, 1.910, 1.905, 1.895],
        "namo": [1.902, 1.905, 1.910, 1.899]}        # muon ≈ namo (a tie) < adamw (resolved)


def run(d, opt, lr, seed, final, stage=None):
    curve = [4.0, 3.0, 2.5, final] if final is not None else [4.0, 9.0]
    evals = [{"step": 100 * i, "tokens": 1000 * i, "val/loss": v} for i, v in enumerate(curve)]
    summary = ({"status": "completed", "final_val_loss": final, "best_val_loss": final, "steps": 300,
                "tokens": 3000, "diverged_at_step": None} if final is not None else
               {"status": "diverged", "final_val_loss": None, "best_val_loss": None, "steps": 150,
                "tokens": 1500, "diverged_at_step": 150})
    fake_run(d, opt, lr, seed, summary, evals, stage=stage)


@pytest.fixture
def synthetic(tmp_path):
    d = tmp_path / "figs"
    for opt, per_lr in STAGE1.items():
        for lr, finals in per_lr.items():
            extend = (opt, lr) in {("muon", 2.5e-3), ("namo", 1e-2)}
            for seed, final in enumerate(finals):
                run(d, opt, lr, seed, final, stage="extend" if extend else None)
    for opt, finals in HELD.items():
        lr = {"adamw": 2e-3, "muon": 5e-3, "namo": 2e-2}[opt]
        for seed, final in zip(range(100, 104), finals):
            run(d, opt, lr, seed, final, stage="2")
    write_sweep_json(d, seeds=[0, 1], confirm_seeds=[100, 101, 102, 103],
                     optimizers=list(STAGE1), lrs=[])
    cfg = SweepConfig(name="figs", optimizers=list(STAGE1), seeds=[0, 1],
                      confirm_seeds=[100, 101, 102, 103])
    return d, summarize(collect(d), cfg), cfg


def legend_is_outside(fig, ax) -> bool:
    fig.canvas.draw()
    legend = ax.get_legend() or (fig.legends[0] if fig.legends else None)
    return legend is not None and legend.get_window_extent().x0 >= ax.get_window_extent().x1


def test_lr_curves_colour_by_name_cut_the_bad_and_keep_the_legend_outside(synthetic):
    d, s, cfg = synthetic
    fig = draw_lr_curves(s, cfg)
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert {name: lines[name].get_color() for name in STAGE1} == {n: PALETTE[n] for n in STAGE1}
    low, high = ax.get_ylim()
    assert high < 3.7 and low < 1.9       # 3.7-3.8 (a completed but very bad lr) are cut
    assert "not shown" in fig._suptitle.get_text()
    assert legend_is_outside(fig, ax)
    pyplot().close(fig)


def test_best_curves_zoom_on_the_second_half(synthetic):
    d, s, cfg = synthetic
    fig = draw_best_curves(s, cfg)
    full, zoom = fig.axes[:2]
    assert zoom.get_xlim()[0] >= 1500 and zoom.get_ylim()[1] < full.get_ylim()[1]
    assert legend_is_outside(fig, zoom)
    pyplot().close(fig)


def test_forest_plot_has_a_row_per_adjacent_pair(synthetic):
    d, s, cfg = synthetic
    fig = draw_verdicts(s, cfg)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(s.verdicts) == 2
    notes = [t.get_text().split(":")[0] for t in ax.texts]
    assert notes.count("tie") == 1 and notes.count("decided") == 1   # muon ≈ namo < adamw
    assert all("[" in t.get_text() and "n=4" in t.get_text() for t in ax.texts)   # the numbers
    pyplot().close(fig)


def test_lr_grid_curves_has_a_panel_per_curve_with_its_finals(synthetic):
    d, s, cfg = synthetic
    fig = draw_lr_grid_curves(s, cfg)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 3
    texts = " ".join(t.get_text() for ax in panels for t in ax.texts)
    assert "chosen 0.005: 1.9050" in texts and "0.008: diverged" in texts
    pyplot().close(fig)


def test_report_writes_every_figure(synthetic):
    d, s, cfg = synthetic
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    for name in ("lr_curves.png", "best_curves.png", "lr_grid_curves.png", "verdicts.png"):
        assert (d / name).stat().st_size > 0, name


def test_an_archived_sweep_rebuilds_its_report(synthetic, tmp_path):
    """scripts/archive_sweep.py keeps what `sweep.py report` needs: the committed study rebuilds
    the same report.md from the archive alone."""
    import importlib.util

    from runs import REPO
    d, s, cfg = synthetic
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    spec = importlib.util.spec_from_file_location("archive_sweep", REPO / "scripts" / "archive_sweep.py")
    archive_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archive_sweep)
    out = tmp_path / "archived"
    assert archive_sweep.archive(d, out) == sum(1 for _ in (d / "runs").glob("*"))
    (out / "report.md").unlink()
    assert sweep.main(["report", f"sweep.dir={out}"]) == 0
    strip = lambda t: t.split("\n", 3)[3]   # the setup line names the folder
    assert strip((out / "report.md").read_text()) == strip((d / "report.md").read_text())


def test_tuning_legend_names_every_curve_of_every_panel():
    """namo_decay_tuned (committed with its runs): the lr was re-swept (round 2) only for the
    two decoupled curves, so the lr panel has two; the legend still names all four."""
    from sweeper.plots import draw_tuning
    from sweeper.rows import collect
    from sweeper.runner import read_sweep
    from sweeper.stats import summarize

    d = Path(__file__).resolve().parents[1] / "docs" / "results" / "namo_decay_tuned"
    cfg = stored_config(SweepConfig(dir=str(d)), {"dir"}, read_sweep(d))
    fig = draw_tuning(summarize(collect(d), cfg), cfg)
    lr_panel, legend = fig.axes[1], fig.axes[1].get_legend()
    assert len(lr_panel.get_legend_handles_labels()[1]) == 2
    assert sorted(t.get_text() for t in legend.get_texts()) == [
        "namo decay_style=adaptive", "namo decay_style=decoupled",
        "namo_d decay_style=adaptive", "namo_d decay_style=decoupled"]

"""The sweep's stage decisions (sweeper/stages.py) on small synthetic result tables, each against
decisions worked out by hand: which lr extends a grid (and when it stops), which lrs and seeds
stage 2 confirms, which tuning points run next, which baseline budgets run, and the order in
which run_stages launches them. No training: rows are SweepRows written here, and run_stages
runs against a stand-in run_points that "finishes" each point with a loss from a formula."""
from __future__ import annotations

import json
import math

import pytest

from sweeper import stages
from sweeper.config import SweepConfig
from sweeper.points import Plan, curve_label, make_point, make_points
from sweeper.rows import SweepRow
from sweeper.stages import (confirm_lrs, curve_points, extension_lr, extensions, later_points,
                            run_stages, tune_points)
from sweeper.stats import CurveStats, LrStats
from sweeper.tuning import Tuning

WD = "optimizer.weight_decay"
SETUP = ["model=tiny"]


def make_plan(tmp_path, max_iters=100, **sweep) -> Plan:
    cfg = SweepConfig(name="sw", dir=str(tmp_path / "sw"), **sweep)
    grids = {opt: sorted(cfg.lrs) for opt in cfg.optimizers}
    return Plan(cfg, set(), grids, list(SETUP), make_points(cfg, grids, SETUP), [], False, max_iters)


def run_dir(tmp_path, name="run"):
    """A run directory whose config.yaml says the default weight decay is 0.1 (momentum 0.9)."""
    d = tmp_path / "runs" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text("optimizer:\n  weight_decay: 0.1\n  momentum: 0.9\n")
    return d


def row(tmp_path, opt, lr, seed, loss, stage="1", tuned=None, full=None, status=None,
        grid=None) -> SweepRow:
    """A finished run; loss None: diverged."""
    tuned, grid = dict(tuned or {}), dict(grid or {})
    point = make_point(opt, lr, seed, grid, SETUP, stage, tuned=tuned)
    return SweepRow(point.run_id, curve_label(opt, grid), opt, lr, seed, stage, run_dir(tmp_path),
                    status or ("completed" if loss is not None else "diverged"), grid=grid,
                    tuned=tuned, final_val_loss=loss, final_val_loss_full=full)


def table(tmp_path, losses: dict, seeds=(0, 1), stage="1") -> list[SweepRow]:
    """{optimizer: {lr: loss}} -> rows on every seed (seed s adds 0.001 s)."""
    return [row(tmp_path, opt, lr, s, None if v is None else v + 0.001 * s, stage)
            for opt, per_lr in losses.items() for lr, v in per_lr.items() for s in seeds]


def key(points) -> list:
    return [(p.stage, p.optimizer, p.lr, p.seed, p.tuned, p.budget) for p in points]


def stats(means: dict) -> list[LrStats]:
    """LrStats per lr from {lr: mean or None (diverged)}."""
    return [LrStats(lr, [m] if m is not None else [], [object()], 0 if m is not None else 1)
            for lr, m in sorted(means.items())]


# ---- extension_lr ------------------------------------------------------------------------------

@pytest.mark.parametrize("means, best, extended, max_extend, want", [
    ({1e-3: 2.0, 2e-3: 2.1}, 1e-3, 0, 3, 5e-4),            # a grid of two lrs extends too
    ({1e-3: 2.1, 2e-3: 2.0}, 2e-3, 0, 3, 4e-3),
    ({1e-3: 2.0, 3e-3: 2.1, 9e-3: 2.2}, 1e-3, 2, 3, 1e-3 / 3),   # one extension left
    ({1e-3: 2.2, 3e-3: 2.1, 9e-3: 2.0}, 9e-3, 0, 1, 2.7e-2),
    ({1e-3: 2.2, 4e-3: 2.1, 8e-3: 2.0}, 8e-3, 0, 3, 1.6e-2),     # the end's own ratio (2), not 4
    ({1e-4: 2.0, 2e-4: 2.1, 8e-4: 2.2}, 1e-4, 0, 3, 5e-5),       # the low end's ratio (2), not 4
    ({1e-3: 2.0, 2e-3: 2.1, 4e-3: 2.2}, 1e-3, 3, 3, None),       # max_extend used up
    ({1e-3: 2.0, 2e-3: 2.1, 4e-3: 2.2}, 1e-3, 0, 0, None),       # no extensions allowed
    ({1e-3: 2.1, 2e-3: 2.0, 4e-3: 2.2}, 2e-3, 0, 3, None),       # interior
    ({1e-3: 2.0}, 1e-3, 0, 3, None),                              # one lr
])
def test_extension_lr_by_hand(means, best, extended, max_extend, want):
    per_lr = stats(means)
    b = next(s for s in per_lr if s.lr == best)
    got = extension_lr(per_lr, b, extended, max_extend)
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, rel=1e-12)


# ---- extensions --------------------------------------------------------------------------------

def test_extensions_extend_each_curve_at_its_end_until_max_extend(tmp_path):
    """Grid 1e-3, 3e-3, 9e-3 (ratio 3), seeds 0 and 1, max_extend 2. a: best at the low end ->
    1e-3 / 3 = 0.000333333 (6 significant digits); b: at the high end -> 0.027; c: interior."""
    plan = make_plan(tmp_path, optimizers=["a", "b", "c"], lrs=[1e-3, 3e-3, 9e-3], seeds=[0, 1],
                     max_extend=2)
    rows = table(tmp_path, {"a": {1e-3: 2.0, 3e-3: 2.1, 9e-3: 2.2},
                            "b": {1e-3: 2.3, 3e-3: 2.2, 9e-3: 2.1},
                            "c": {1e-3: 2.2, 3e-3: 2.0, 9e-3: 2.1}})
    got = extensions(plan, rows)
    assert key(got) == [("extend", "a", 0.000333333, 0, {}, None), ("extend", "b", 0.027, 0, {}, None),
                        ("extend", "a", 0.000333333, 1, {}, None), ("extend", "b", 0.027, 1, {}, None)]
    assert got[0].lr == 0.000333333                      # rounded to 6 digits, not 1e-3 / 3
    assert got[0].run_id == make_point("a", 0.000333333, 0, {}, SETUP).run_id
    assert "optimizer.lr=0.000333333" in got[0].overrides

    # a: one extension (still best at its end) -> one more, 0.000333333^2 / 1e-3; b: two
    # extensions (0.027 and 0.081) used its max_extend although its best is still at the end
    rows += table(tmp_path, {"a": {0.000333333: 1.9}, "b": {0.027: 2.05, 0.081: 2.0}}, stage="extend")
    got = extensions(plan, rows)
    assert key(got) == [("extend", "a", 0.000111111, 0, {}, None),
                        ("extend", "a", 0.000111111, 1, {}, None)]
    rows += table(tmp_path, {"a": {0.000111111: 1.8}}, stage="extend")
    assert extensions(plan, rows) == []                   # a used its 2 too


def test_extensions_count_only_extend_runs_of_the_same_curve(tmp_path):
    """Stage-1 lrs are not extensions; another curve's extensions are not this curve's."""
    plan = make_plan(tmp_path, optimizers=["a", "b"], lrs=[1e-3, 2e-3], seeds=[0], max_extend=1)
    rows = table(tmp_path, {"a": {1e-3: 2.0, 2e-3: 2.1}, "b": {1e-3: 2.1, 2e-3: 2.0}}, seeds=[0])
    assert key(extensions(plan, rows)) == [("extend", "a", 5e-4, 0, {}, None),
                                           ("extend", "b", 4e-3, 0, {}, None)]
    rows += table(tmp_path, {"b": {4e-3: 1.9}}, seeds=[0], stage="extend")
    assert key(extensions(plan, rows)) == [("extend", "a", 5e-4, 0, {}, None)]


def test_extensions_follow_the_column_that_every_stage1_run_has(tmp_path):
    """Every stage-1 run has final_val_loss_full (it says: best at the low end) and
    final_val_loss (the opposite); a stage-2 run without the full loss must not switch the
    choice to final_val_loss, and stage-2 results never move the stage-1 choice."""
    plan = make_plan(tmp_path, optimizers=["a"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0], max_extend=3)
    full = {1e-3: 2.0, 2e-3: 2.1, 4e-3: 2.2}
    rows = [row(tmp_path, "a", lr, 0, 5.0 - v, full=v) for lr, v in full.items()]
    rows.append(row(tmp_path, "a", 4e-3, 7, 0.5, stage="2"))   # better, but held out
    assert key(extensions(plan, rows)) == [("extend", "a", 5e-4, 0, {}, None)]


def test_a_diverged_end_brackets(tmp_path):
    plan = make_plan(tmp_path, optimizers=["a"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0])
    rows = table(tmp_path, {"a": {1e-3: 2.3, 2e-3: 2.2, 4e-3: None}}, seeds=[0])
    assert extensions(plan, rows) == []
    rows = table(tmp_path, {"a": {1e-3: None, 2e-3: 2.2, 4e-3: 2.1}}, seeds=[0])
    assert key(extensions(plan, rows)) == [("extend", "a", 8e-3, 0, {}, None)]


# ---- curve_points ------------------------------------------------------------------------------

def test_curve_points_seed_major_with_tuned_values_and_extra(tmp_path):
    plan = make_plan(tmp_path, optimizers=["a", "b"], lrs=[1e-3], seeds=[0])
    got = curve_points(plan, "budget", {"b": [2e-3, 4e-3], "a": [1e-3]}, [3, 4],
                       extra=("train.max_iters=7",), budget=0.25,
                       tuned_by_curve={"b": [{WD: 0.2}]})
    assert key(got) == [("budget", "a", 1e-3, 3, {}, 0.25), ("budget", "b", 2e-3, 3, {WD: 0.2}, 0.25),
                        ("budget", "b", 4e-3, 3, {WD: 0.2}, 0.25),
                        ("budget", "a", 1e-3, 4, {}, 0.25), ("budget", "b", 2e-3, 4, {WD: 0.2}, 0.25),
                        ("budget", "b", 4e-3, 4, {WD: 0.2}, 0.25)]
    assert all("train.max_iters=7" in p.overrides for p in got)
    assert f"{WD}=0.2" in got[1].overrides and not any(o.startswith(WD) for o in got[0].overrides)
    assert curve_points(plan, "2", {}, [0]) == []


# ---- confirm_lrs -------------------------------------------------------------------------------

@pytest.mark.parametrize("means, best, neighbours, want", [
    ({1: None, 2: 2.0, 4: 2.1, 8: 2.2}, 2, True, [2, 4]),       # a diverged neighbour: left out
    ({1: 2.3, 2: 2.0, 4: 2.1, 8: 2.2}, 2, True, [1, 2, 4]),
    ({1: 2.3, 2: 2.0, 4: 2.1, 8: 2.2}, 2, False, [2]),
    ({1: 2.0, 2: 2.1, 4: 2.2, 8: 2.3}, 1, True, [1, 2]),         # the low end: one neighbour
    ({1: 2.3, 2: 2.2, 4: 2.1, 8: 2.0}, 8, True, [4, 8]),         # the high end: one neighbour
    ({1: 2.3, 2: 2.2, 4: 2.0, 8: None}, 4, True, [2, 4]),
    ({1: 2.0}, 1, True, [1]),
])
def test_confirm_lrs_by_hand(means, best, neighbours, want):
    per_lr = stats(means)
    b = next(s for s in per_lr if s.lr == best)
    assert confirm_lrs(CurveStats(per_lr, b, []), neighbours) == want


def test_confirm_lrs_of_a_tuned_curve_is_its_chosen_point_only():
    per_lr = stats({1: 2.3, 2: 2.0, 4: 2.1})
    c = CurveStats(per_lr, per_lr[1], [], tuning=Tuning(4, {WD: 0.2}, per_lr[2]))
    assert confirm_lrs(c, True) == [4] and confirm_lrs(c, False) == [4]


# ---- tune_points -------------------------------------------------------------------------------

def test_tune_points_axis_then_its_bracketing_then_nothing(tmp_path):
    """adamw: best stage-1 lr 2e-3; weight decay [0.0, 0.1, 0.2] at the default 0.1 -> 0.0 and
    0.2 on seeds 0, 1; 0.2 best at the top end -> 0.2 * 0.2 / 0.1 = 0.4 (max_extend 1); then
    nothing. muon tunes only its lr (tune_by_optimizer: [])."""
    plan = make_plan(tmp_path, optimizers=["adamw", "muon"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0, 1],
                     tune=[{WD: [0.0, 0.1, 0.2]}], tune_by_optimizer={"muon": []}, max_extend=1,
                     confirm_seeds=[9])
    rows = table(tmp_path, {"adamw": {1e-3: 2.2, 2e-3: 2.0, 4e-3: 2.1},
                            "muon": {1e-3: 2.2, 2e-3: 2.0, 4e-3: 2.1}})
    got = tune_points(plan, rows)
    assert key(got) == [("tune", "adamw", 2e-3, 0, {WD: 0.0}, None),
                        ("tune", "adamw", 2e-3, 0, {WD: 0.2}, None),
                        ("tune", "adamw", 2e-3, 1, {WD: 0.0}, None),
                        ("tune", "adamw", 2e-3, 1, {WD: 0.2}, None)]
    assert f"{WD}=0.2" in got[1].overrides
    assert key(later_points(plan, rows)) == [("2", "muon", 2e-3, 9, {}, None)]   # adamw waits
    for s in (0, 1):
        rows += [row(tmp_path, "adamw", 2e-3, s, 2.5, "tune", {WD: 0.0}),
                 row(tmp_path, "adamw", 2e-3, s, 1.9, "tune", {WD: 0.2})]
    assert key(tune_points(plan, rows)) == [("tune", "adamw", 2e-3, 0, {WD: 0.4}, None),
                                            ("tune", "adamw", 2e-3, 1, {WD: 0.4}, None)]
    for s in (0, 1):
        rows.append(row(tmp_path, "adamw", 2e-3, s, 1.95, "tune", {WD: 0.4}))
    assert tune_points(plan, rows) == []
    # stage 2: adamw at its tuned point only (no neighbours), muon at its best lr
    assert key(later_points(plan, rows)) == [("2", "adamw", 2e-3, 9, {WD: 0.2}, None),
                                             ("2", "muon", 2e-3, 9, {}, None)]


def test_a_curve_with_missing_tuning_runs_waits_for_stage2(tmp_path):
    plan = make_plan(tmp_path, optimizers=["adamw", "muon"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     tune=[{WD: [0.0, 0.1]}], tune_by_optimizer={"muon": []}, confirm_seeds=[9],
                     baseline_budgets=[0.5])
    rows = table(tmp_path, {"adamw": {1e-3: 2.2, 2e-3: 2.0, 4e-3: 2.1},
                            "muon": {1e-3: 2.2, 2e-3: 2.1, 4e-3: 2.0}}, seeds=[0])
    # adamw (the baseline) waits: no stage 2 and no budget runs for it yet
    assert key(later_points(plan, rows)) == [("2", "muon", 4e-3, 9, {}, None)]
    rows.append(row(tmp_path, "adamw", 2e-3, 0, 1.5, "tune", {WD: 0.0}))
    assert key(later_points(plan, rows)) == [("2", "adamw", 2e-3, 9, {WD: 0.0}, None),
                                             ("2", "muon", 4e-3, 9, {}, None),
                                             ("budget", "adamw", 2e-3, 9, {WD: 0.0}, 0.5)]


# ---- later_points ------------------------------------------------------------------------------

def test_stage2_with_neighbours_and_the_baseline_budgets(tmp_path):
    """Stage 2 on the confirm seeds at each curve's best lr and its finished grid neighbours;
    the baseline (adamw) at its best lr x budgets 0.5 (50 steps), 1.0 (= max_iters: stage 2
    already has it, left out) and 0.004 (0.4 steps: at least 1)."""
    plan = make_plan(tmp_path, optimizers=["adamw", "muon"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0, 1],
                     confirm_seeds=[10, 11], confirm_neighbours=True,
                     baseline_budgets=[0.5, 1.0, 0.004])
    rows = table(tmp_path, {"adamw": {1e-3: 2.2, 2e-3: 2.0, 4e-3: 2.1},
                            "muon": {1e-3: 2.2, 2e-3: 2.1, 4e-3: 2.0}})
    got = later_points(plan, rows)
    stage2 = []
    for s in (10, 11):
        stage2 += [("2", "adamw", lr, s, {}, None) for lr in (1e-3, 2e-3, 4e-3)]
        stage2 += [("2", "muon", lr, s, {}, None) for lr in (2e-3, 4e-3)]
    budget = [("budget", "adamw", 2e-3, s, {}, b) for b in (0.5, 0.004) for s in (10, 11)]
    assert key(got) == stage2 + budget
    steps = [[o for o in p.overrides if o.startswith("train.max_iters=")] for p in got]
    assert steps == [[]] * len(stage2) + [["train.max_iters=50"]] * 2 + [["train.max_iters=1"]] * 2
    assert got[-1].run_id == make_point("adamw", 2e-3, 11, {}, SETUP, extra=("train.max_iters=1",)).run_id


def test_without_stage2_the_budgets_run_on_the_tuning_seeds(tmp_path):
    plan = make_plan(tmp_path, max_iters=40, optimizers=["adamw", "muon"], lrs=[1e-3, 2e-3],
                     seeds=[0, 1], baseline="muon", baseline_budgets=[0.25, 2.0])
    rows = table(tmp_path, {"adamw": {1e-3: 2.0, 2e-3: 2.1}, "muon": {1e-3: 2.1, 2e-3: 2.0}})
    got = later_points(plan, rows)
    assert key(got) == [("budget", "muon", 2e-3, s, {}, b) for b in (0.25, 2.0) for s in (0, 1)]
    assert [o for p in got for o in p.overrides if o.startswith("train.max_iters=")] == \
        ["train.max_iters=10"] * 2 + ["train.max_iters=80"] * 2


def test_no_budgets_without_a_baseline_or_max_iters(tmp_path):
    losses = {"muon": {1e-3: 2.1, 2e-3: 2.0}}
    plan = make_plan(tmp_path, optimizers=["muon"], lrs=[1e-3, 2e-3], baseline_budgets=[0.5])
    assert later_points(plan, table(tmp_path, losses)) == []        # adamw, the baseline, not swept
    plan = make_plan(tmp_path, max_iters=0, optimizers=["muon"], lrs=[1e-3, 2e-3],
                     baseline="muon", baseline_budgets=[0.5])
    assert later_points(plan, table(tmp_path, losses)) == []
    plan = make_plan(tmp_path, optimizers=["muon"], lrs=[1e-3, 2e-3], baseline="muon")
    assert later_points(plan, table(tmp_path, losses)) == []
    plan = make_plan(tmp_path, optimizers=["muon"], lrs=[1e-3, 2e-3], baseline="muon",
                     baseline_budgets=[0.5])
    assert key(later_points(plan, table(tmp_path, losses, seeds=[0]))) == \
        [("budget", "muon", 2e-3, 0, {}, 0.5)]


# ---- run_stages --------------------------------------------------------------------------------

class Runs:
    """A stand-in for run_points and collect: each point finishes at once with loss(point)."""

    def __init__(self, tmp_path, plan, loss, stop_at=None):
        self.tmp_path, self.plan, self.loss, self.stop_at = tmp_path, plan, loss, stop_at
        self.rows, self.calls, self.backends = {}, [], []

    def run_points(self, plan, points, backend, on_end):
        assert plan is self.plan and backend is self.backends[-1]
        assert len(self.calls) < 12, "run_stages keeps launching the same points"
        self.calls.append([(p.stage, p.lr, p.seed, p.tuned) for p in points])
        if len(self.calls) == self.stop_at:
            return False
        for p in points:
            if p.run_id not in self.rows:
                loss = self.loss(p)
                failed = loss == "failed"
                self.rows[p.run_id] = row(self.tmp_path, p.optimizer, p.lr, p.seed,
                                          None if failed else loss, p.stage, p.tuned,
                                          status="failed" if failed else None)
                on_end()
        return True

    def collect(self, d):
        assert d == self.plan.cfg.path
        return list(self.rows.values())


@pytest.fixture
def runs(tmp_path, monkeypatch):
    def make(plan, loss, stop_at=None):
        r = Runs(tmp_path, plan, loss, stop_at)

        def backend(*args):
            r.backends.append(("local", *args))
            return r.backends[-1]
        monkeypatch.setattr(stages, "LocalBackend", backend)
        monkeypatch.setattr(stages, "run_points", r.run_points)
        monkeypatch.setattr(stages, "collect", r.collect)
        return r
    return make


def v_loss(p):
    """A valley in log2(lr) at 1e-3 (grid 2e-3, 4e-3: best at its low end twice)."""
    return 2.0 + math.log2(p.lr / 1e-3) ** 2 / 10


def test_run_stages_extends_until_bracketed_then_stage2(tmp_path, runs, capsys):
    plan = make_plan(tmp_path, optimizers=["adamw"], lrs=[2e-3, 4e-3], seeds=[0], max_extend=3,
                     confirm_seeds=[5])
    r = runs(plan, v_loss)
    ended = []
    assert run_stages(plan, ["g0"], 3, lambda: ended.append(1)) is True
    s1 = [("1", 2e-3, 0, {}), ("1", 4e-3, 0, {})]
    assert r.calls == [s1, s1 + [("extend", 1e-3, 0, {})],
                       s1 + [("extend", 1e-3, 0, {}), ("extend", 5e-4, 0, {})],
                       [("2", 1e-3, 5, {})]]
    assert r.backends == [("local", plan, ["g0"], 3)] and len(ended) == 5
    assert capsys.readouterr().out.splitlines() == [
        "sw: best lr at the end of its grid for adamw: extending by 0.001",
        "sw: best lr at the end of its grid for adamw: extending by 0.0005",
        "sw: stage 2 and budgets: 1 runs"]


def test_run_stages_names_every_curve_and_lr_it_extends(tmp_path, runs, capsys):
    plan = make_plan(tmp_path, optimizers=["b", "a"], lrs=[2e-3, 4e-3], seeds=[0, 1], max_extend=1)
    r = runs(plan, lambda p: v_loss(p) if p.optimizer == "a" else 3.0 - p.lr * 100)
    assert run_stages(plan, [], 1, lambda: None) is True
    assert len(r.calls) == 2 and sorted(r.calls[1][8:]) == [
        ("extend", 1e-3, 0, {}), ("extend", 1e-3, 1, {}), ("extend", 8e-3, 0, {}), ("extend", 8e-3, 1, {})]
    assert capsys.readouterr().out.splitlines() == [
        "sw: best lr at the end of its grid for a, b: extending by 0.001, 0.008"]


def test_run_stages_tunes_then_confirms_the_tuned_point(tmp_path, runs, capsys):
    """lr 2e-3 is interior; weight decay 0.2 beats the default 0.1 by 0.02 > resolve 0.005."""
    plan = make_plan(tmp_path, optimizers=["adamw"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     tune=[{WD: [0.0, 0.1, 0.2]}], max_extend=0, confirm_seeds=[5],
                     baseline_budgets=[0.5, 0.5])
    r = runs(plan, lambda p: 2.0 + abs(math.log2(p.lr / 2e-3)) / 10
             - {0.0: -0.01, 0.2: 0.02}.get(p.tuned.get(WD), 0.0))
    assert run_stages(plan, [], 2, lambda: None) is True
    s1 = [("1", lr, 0, {}) for lr in (1e-3, 2e-3, 4e-3)]
    assert r.calls == [s1, [("tune", 2e-3, 0, {WD: 0.0}), ("tune", 2e-3, 0, {WD: 0.2})],
                       [("2", 2e-3, 5, {WD: 0.2}), ("budget", 2e-3, 5, {WD: 0.2})]]
    assert capsys.readouterr().out.splitlines() == [
        f"sw: tuning {WD} for adamw: 2 runs", "sw: stage 2 and budgets: 2 runs"]


@pytest.mark.parametrize("stop_at, calls", [(1, 1), (2, 2), (3, 3)])
def test_run_stages_stops_when_interrupted(tmp_path, runs, stop_at, calls):
    """Calls: stage 1, the tuning axis, stage 2: interrupted at any -> False, nothing after."""
    plan = make_plan(tmp_path, optimizers=["adamw"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     tune=[{WD: [0.0, 0.1, 0.2]}], max_extend=0, confirm_seeds=[5])
    r = runs(plan, lambda p: 2.0 + abs(math.log2(p.lr / 2e-3)), stop_at=stop_at)
    assert run_stages(plan, [], 1, lambda: None) is False
    assert len(r.calls) == calls


def test_run_stages_through_submitit_for_other_launchers(tmp_path, runs, monkeypatch):
    import sweeper.slurm
    plan = make_plan(tmp_path, optimizers=["adamw"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     launcher="slurm")
    r = runs(plan, lambda p: 2.0 + abs(math.log2(p.lr / 2e-3)))

    def submitit(*args):
        r.backends.append(("submitit", *args))
        return r.backends[-1]
    monkeypatch.setattr(sweeper.slurm, "SubmititBackend", submitit)
    assert run_stages(plan, ["g0"], 4, lambda: None) is True
    assert r.backends == [("submitit", plan, 4)] and len(r.calls) == 1


def test_run_stages_tunes_curves_side_by_side_and_never_relaunches_a_failed_run(tmp_path, runs, capsys):
    """a tunes weight decay, b momentum then weight decay (defaults 0.1 and 0.9 win: every other
    value costs 0.01). a's run at weight decay 0 fails: a waits (no stage 2), and that run is not
    launched again while b goes on to its second axis."""
    plan = make_plan(tmp_path, optimizers=["a", "b"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     tune=[{WD: [0.0, 0.1, 0.2]}], max_extend=0, confirm_seeds=[5],
                     tune_by_optimizer={"b": [{"optimizer.momentum": [0.8, 0.9]},
                                              {WD: [0.0, 0.1, 0.2]}]})

    def loss(p):
        if p.optimizer == "a" and p.tuned == {WD: 0.0}:
            return "failed"
        return 2.0 + abs(math.log2(p.lr / 2e-3)) / 10 + 0.01 * len(p.tuned)
    r = runs(plan, loss)
    assert run_stages(plan, [], 1, lambda: None) is True
    s1 = [("1", lr, 0, {}) for lr in (1e-3, 2e-3, 4e-3)] * 2
    assert r.calls == [s1, [("tune", 2e-3, 0, {WD: 0.0}), ("tune", 2e-3, 0, {WD: 0.2}),
                            ("tune", 2e-3, 0, {"optimizer.momentum": 0.8})],
                       [("tune", 2e-3, 0, {WD: 0.0}), ("tune", 2e-3, 0, {WD: 0.2})],
                       [("2", 2e-3, 5, {})]]
    assert [p.optimizer for p in later_points(plan, r.collect(plan.cfg.path))] == ["b"]
    assert capsys.readouterr().out.splitlines() == [
        f"sw: tuning optimizer.momentum, {WD} for a, b: 3 runs",
        f"sw: tuning {WD} for b: 2 runs",
        "sw: stage 2 and budgets: 1 runs"]


def test_per_optimizer_variants_are_curves_of_their_own(tmp_path):
    """sweep.grid_points_by_optimizer: muon's two variants, each its own curve, tuned and
    confirmed at its own best lr; adamw has the one curve."""
    ns = {"optimizer.ns": "polar_express"}
    plan = make_plan(tmp_path, optimizers=["adamw", "muon"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     grid_points_by_optimizer={"muon": [{}, ns]}, confirm_seeds=[5],
                     tune_by_optimizer={"muon": [{WD: [0.1, 0.2]}]}, max_extend=0)
    assert curve_points(plan, "2", {"muon": [1e-3], "muon ns=polar_express": [2e-3],
                                    "adamw": [4e-3]}, [5]) == \
        [make_point("adamw", 4e-3, 5, {}, SETUP, "2"), make_point("muon", 1e-3, 5, {}, SETUP, "2"),
         make_point("muon", 2e-3, 5, ns, SETUP, "2")]
    rows = [row(tmp_path, opt, lr, 0, 2.0 + abs(math.log2(lr / best)), grid=grid)
            for opt, grid, best in (("adamw", {}, 2e-3), ("muon", {}, 2e-3), ("muon", ns, 4e-3))
            for lr in (1e-3, 2e-3, 4e-3)]
    got = tune_points(plan, rows)
    assert [(p.curve, p.lr, p.tuned) for p in got] == [("muon", 2e-3, {WD: 0.2}),
                                                        ("muon ns=polar_express", 4e-3, {WD: 0.2})]
    assert got[1].grid == ns and "optimizer.ns=polar_express" in got[1].overrides
    rows += [row(tmp_path, "muon", 2e-3, 0, 2.5, "tune", {WD: 0.2}),
             row(tmp_path, "muon", 4e-3, 0, 1.5, "tune", {WD: 0.2}, grid=ns)]
    assert [(p.curve, p.lr, p.tuned) for p in later_points(plan, rows)] == [
        ("adamw", 2e-3, {}), ("muon", 2e-3, {}), ("muon ns=polar_express", 4e-3, {WD: 0.2})]


def target_rows(tmp_path, spec) -> list[SweepRow]:
    """Fresh rows (their steps to target not yet measured) from {(opt, lr, stage, tuned): steps
    at which val/loss first reaches 3.0, or None: never}; each run's metrics.jsonl evaluates
    every 100 steps, val/loss 3.5 before that step and 2.9 from it."""
    rows = []
    for (opt, lr, stage, tuned), steps in spec.items():
        r = row(tmp_path, opt, lr, 0, 3.0, stage, dict(tuned))
        r.dir = run_dir(tmp_path, r.run_id)
        evals = [{"step": s, "val/loss": 2.9 if steps is not None and s >= steps else 3.5}
                 for s in range(100, 600, 100)]
        (r.dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
        rows.append(r)
    return rows


def test_steps_to_target_are_measured_before_every_decision(tmp_path):
    """metric=steps_to_target (sweep.target 3.0): fewer steps is better. 100 steps at the top
    lr -> extend to 8e-3; it never reaches the target -> 4e-3 bracketed; weight decay 0 and 0.2
    take longer: 4e-3 at the default confirmed."""
    plan = make_plan(tmp_path, optimizers=["a"], lrs=[1e-3, 2e-3, 4e-3], seeds=[0],
                     metric="steps_to_target", target=3.0, confirm_seeds=[5], max_extend=1,
                     tune=[{WD: [0.0, 0.1, 0.2]}])
    spec = {("a", 1e-3, "1", ()): 300, ("a", 2e-3, "1", ()): 200, ("a", 4e-3, "1", ()): 100}
    assert key(extensions(plan, target_rows(tmp_path, spec))) == [("extend", "a", 8e-3, 0, {}, None)]
    spec[("a", 8e-3, "extend", ())] = None
    assert extensions(plan, target_rows(tmp_path, spec)) == []
    assert key(tune_points(plan, target_rows(tmp_path, spec))) == [
        ("tune", "a", 4e-3, 0, {WD: 0.0}, None), ("tune", "a", 4e-3, 0, {WD: 0.2}, None)]
    spec[("a", 4e-3, "tune", ((WD, 0.0),))] = 300
    spec[("a", 4e-3, "tune", ((WD, 0.2),))] = 300
    assert key(later_points(plan, target_rows(tmp_path, spec))) == [("2", "a", 4e-3, 5, {}, None)]

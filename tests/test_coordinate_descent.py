"""sweep.tune's coordinate descent (sweeper/tuning.py) on a synthetic loss surface with a known
optimum, through sweep.py and a stand-in train.py: it finds the optimum, moves only where the gain
beats sweep.resolve, brackets each axis, stops at sweep.max_rounds, shares identical points
between axes and rounds, and a tuning stopped by a failed run resumes launching nothing twice."""
from __future__ import annotations

import csv
import json

import pytest

import sweep
from sweeper import runner
from sweeper.tuning import beyond

# loss = 3 + (log2(lr / lr*(wd)))^2 / 50 + (log2((wd + 0.05) / 0.85))^2 / 50, lr*(wd) = 4e-3 *
# 2^(-(wd - 0.1) / 0.7): the optimum is wd 0.8, lr 2e-3, but at the default wd 0.1 the best lr is
# 4e-3, so round 1 finds wd 0.8 at lr 4e-3 and round 2 moves the lr.
STAND_IN = r'''
import json, math, pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
lr, seed = float(args["optimizer.lr"]), int(args["seed"])
wd = float(args.get("optimizer.weight_decay", "0.1"))
out = pathlib.Path(args["out_dir"]); out.mkdir(parents=True, exist_ok=True)
fail_once = pathlib.Path(__file__).with_name("fail_once")
if fail_once.exists() and abs(wd - 3.2) < 1e-9 and abs(lr - 2e-3) < 1e-12 and seed == 1:
    fail_once.unlink()
    raise SystemExit("error: the stand-in fails this run once")
best_lr = 4e-3 * 2 ** (-(wd - 0.1) / 0.7)
final = 3 + math.log2(lr / best_lr) ** 2 / 50 + math.log2((wd + 0.05) / 0.85) ** 2 / 50 + 1e-4 * seed
(out / "config.yaml").write_text("optimizer:\n  weight_decay: 0.1\n")
(out / "metrics.jsonl").write_text(json.dumps({"step": 10, "tokens": 10, "val/loss": final}) + "\n")
(out / "summary.json").write_text(json.dumps({"status": "completed", "final_val_loss": final,
    "best_val_loss": final, "steps": 10, "tokens": 10}))
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    fake = tmp_path / "stand_in.py"
    fake.write_text(STAND_IN)
    monkeypatch.setattr(runner, "TRAIN_SCRIPT", fake)
    return fake


def args(tmp_path, small_text, *extra):
    return [f"sweep.dir={tmp_path / 'sw'}", "sweep.name=cd", "sweep.overrides=[]", "sweep.jobs=2",
            "sweep.optimizers=[adamw]", "sweep.lrs=[2e-3,4e-3,8e-3]", "sweep.seeds=[0,1]",
            "sweep.max_extend=3", "sweep.tune=[{optimizer.weight_decay:[0.0,0.1,0.2]}]",
            "sweep.confirm_seeds=[7]", "model=tiny", "data=shakespeare_char",
            f"data.source={small_text}", f"data.root={tmp_path / 'data'}", *extra]


def rows(tmp_path):
    with open(tmp_path / "sw" / "results.csv") as f:
        return list(csv.DictReader(f))


def points(got, stage):
    return sorted({(float(r["lr"]), float(r["optimizer.weight_decay"] or 0.1)) for r in got
                   if r["stage"] == stage})


def launches(tmp_path, got):
    return {r["run_id"]: (tmp_path / "sw" / "runs" / r["run_id"] / "train.log").read_text()
            .count("sweep.py launches") for r in got}


def test_descent_finds_the_optimum_brackets_and_shares_points(tmp_path, small_text, stand_in):
    assert sweep.main(args(tmp_path, small_text, "sweep.max_rounds=3")) == 0
    got = rows(tmp_path)
    held = [r for r in got if r["stage"] == "2"]
    assert [(float(r["lr"]), float(r["optimizer.weight_decay"])) for r in held] == [(2e-3, 0.8)]
    # round 1 at lr 4e-3: 0, 0.2 and the bracketing 0.4, 0.8, 1.6 (0.1 is stage 1's run);
    # round 2: the lr at wd 0.8 (2e-3, 8e-3, then 1e-3 past the low end; 4e-3 shared), then wd at
    # lr 2e-3 (0, 0.2, and 3.2 = 0.8 x 0.8 / 0.2 past its top end; 0.1 is stage 1's 2e-3 run, 0.8
    # the point itself); round 3 needs no
    # new run and moves nothing
    tune = points(got, "tune")
    assert set(tune) == {(4e-3, 0.0), (4e-3, 0.2), (4e-3, 0.4), (4e-3, 0.8), (4e-3, 1.6),
                         (2e-3, 0.8), (8e-3, 0.8), (1e-3, 0.8),
                         (2e-3, 0.0), (2e-3, 0.2), (2e-3, 3.2)}
    assert sum(r["stage"] == "tune" for r in got) == 2 * len(tune)      # each point once a seed
    assert set(launches(tmp_path, got).values()) == {1}
    report = (tmp_path / "sw" / "report.md").read_text()
    assert "weight_decay=0.8, lr 0.004 -> 0.002 (3 rounds)" in report
    assert "round 1, optimizer.weight_decay" in report and "1.6*" in report
    assert (tmp_path / "sw" / "tuning_curves.png").stat().st_size > 0


def test_confirm_untuned_scores_what_the_tuning_bought(tmp_path, small_text, stand_in):
    """sweep.confirm_untuned: the held-out seeds also run the untuned point (stage-1 best lr
    4e-3 at the default wd 0.1); the report's paired tuned - untuned is the surface's."""
    import math
    assert sweep.main(args(tmp_path, small_text, "sweep.max_rounds=3",
                           "sweep.confirm_seeds=[7,8]", "sweep.confirm_untuned=true")) == 0
    got = rows(tmp_path)
    assert points(got, "2") == [(2e-3, 0.8)] and points(got, "untuned") == [(4e-3, 0.1)]
    assert sorted(int(r["seed"]) for r in got if r["stage"] == "untuned") == [7, 8]

    def loss(lr, wd):   # the stand-in's surface without its seed term (it cancels in a pair)
        best_lr = 4e-3 * 2 ** (-(wd - 0.1) / 0.7)
        return math.log2(lr / best_lr) ** 2 / 50 + math.log2((wd + 0.05) / 0.85) ** 2 / 50
    gain = loss(2e-3, 0.8) - loss(4e-3, 0.1)
    report = (tmp_path / "sw" / "report.md").read_text()
    assert f"tuned - untuned = {gain:+.4f} nats" in report and "the tuned point better" in report
    # the untuned runs never score: the held-out score is the tuned point's two seeds alone
    table = report[report.index("| rank |"):report.index("## Tuning")]
    assert f"{3 + loss(2e-3, 0.8) + 7.5e-4:.4f} ± " in table and "(n=2)" in table
    assert "(n=4)" not in table


def test_one_round_keeps_the_stage1_lr(tmp_path, small_text, stand_in):
    assert sweep.main(args(tmp_path, small_text, "sweep.max_rounds=1")) == 0
    got = rows(tmp_path)
    assert points(got, "2") == [(4e-3, 0.8)]
    assert set(points(got, "tune")) == {(4e-3, w) for w in (0.0, 0.2, 0.4, 0.8, 1.6)}


def test_moves_only_where_the_gain_beats_resolve(tmp_path, small_text, stand_in):
    # wd 0.8 beats the default 0.1 by 0.105 nats at lr 4e-3: below a resolve of 0.2, a tie
    assert sweep.main(args(tmp_path, small_text, "sweep.max_rounds=3", "sweep.resolve=0.2")) == 0
    got = rows(tmp_path)
    assert points(got, "2") == [(4e-3, 0.1)]
    assert "weight_decay=0.1 (default)" in (tmp_path / "sw" / "report.md").read_text()


def test_a_stopped_tuning_resumes_launching_nothing_twice(tmp_path, small_text, stand_in):
    stand_in.with_name("fail_once").write_text("")
    assert sweep.main(args(tmp_path, small_text, "sweep.max_rounds=3")) == 0
    first = rows(tmp_path)
    failed = [r for r in first if r["status"] == "failed"]
    assert len(failed) == 1 and not [r for r in first if r["stage"] == "2"]   # stage 2 waits
    assert sweep.main(args(tmp_path, small_text, "sweep.max_rounds=3")) == 0
    got = rows(tmp_path)
    n = launches(tmp_path, got)
    assert n.pop(failed[0]["run_id"]) == 2 and set(n.values()) == {1}
    assert points(got, "2") == [(2e-3, 0.8)]


@pytest.mark.parametrize("values, low, want", [
    ([0.0, 0.1, 0.2], False, 0.4), ([0.0, 0.1, 0.2], True, None), ([0.1, 0.2], True, 0.05),
    ([0.0, 0.1], False, 0.2), ([100, 200], False, 400), ([-1.0, 0.0], True, -2.0)])
def test_beyond_steps_one_grid_step_past_an_end(values, low, want):
    assert beyond(values, low_end=low) == want

"""sweep.py: points and run ids, the scheduler with real train.py runs on the tiny model
(outputs, divergence, SIGKILL of the launcher then a re-run), the report's statistics on
hand-made runs, the W&B export, and the bad-input errors (one line, exit 2, nothing written)."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import yaml

import sweep
from sweeper import runner
from sweeper.config import load_sweep, lr_grids
from sweeper.points import (Point, canonical, make_points, make_run_id, plan, run_args, split_args,
                            validate_points)
from sweeper.rows import collect

REPO = Path(__file__).resolve().parents[1]
JOBS = min(2, len(os.sched_getaffinity(0)))


def tiny_args(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    """A sweep of tiny-model runs with no preset setup: each run is a few seconds."""
    return [f"sweep.dir={tmp_path / 'sw'}", "sweep.name=t", "sweep.overrides=[]",
            "sweep.seeds=[0]", f"sweep.jobs={JOBS}", "sweep.max_extend=0", "model=tiny",
            "data=shakespeare_char",
            f"data.source={source}", f"data.root={tmp_path / 'data'}", "train.batch_size=4",
            "train.block_size=32", "train.max_iters=20", "train.eval_interval=10",
            "train.eval_iters=2", "train.warmup_iters=2", "train.log_interval=5", *extra]


def results(d: Path) -> list[dict]:
    with open(d / "results.csv") as f:
        return list(csv.DictReader(f))


def launches(run_dir: Path) -> int:
    return (run_dir / "train.log").read_text().count("sweep.py launches")


def run_main(args: list[str], capsys) -> tuple[int, str]:
    code = sweep.main(args)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Points and run ids

def points_of(args: list[str], drop: tuple = ()) -> list[Point]:
    """The points of `python sweep.py <args>`, without the preset's overrides in `drop`."""
    sweep_args, train_args = split_args(args)
    cfg, _ = load_sweep(sweep_args)
    cfg.overrides = [o for o in cfg.overrides if o not in drop]
    grids = lr_grids(cfg)
    return make_points(cfg, grids, canonical(list(cfg.overrides) + train_args))


def test_run_ids_stable_and_distinct():
    base = ["sweep=cpu_ordering", "sweep.optimizers=[adamw,muon]", "sweep.lrs=[1e-3,3e-3]",
            "sweep.seeds=[0,1]", "train.max_iters=50"]
    ids = [p.run_id for p in points_of(base)]
    assert len(ids) == len(set(ids)) == 8
    assert ids[0].startswith("adamw_lr1e-03_s0_")
    # Same overrides in another order, plus launch-only keys: the same runs.
    same = ["train.max_iters=50", "wandb.enabled=true", "threads=3", *reversed(base)]
    assert [p.run_id for p in points_of(same)] == ids
    # Any override that changes what a run computes changes every id.
    other = [p.run_id for p in points_of(base[:-1] + ["train.max_iters=51"])]
    assert not set(other) & set(ids)
    # The last value of a key wins, as in Hydra.
    assert [p.run_id for p in points_of(base + ["train.max_iters=9", "train.max_iters=50"])] == ids


def test_cli_lrs_replace_preset_grids_and_grid_axes():
    pts = points_of(["sweep=cpu_ordering", "sweep.lrs=[0.01]"])
    assert {(p.optimizer, p.lr) for p in pts} == {(o, 0.01) for o in ("adamw", "muon", "namo", "namo_d")}
    pts = points_of(["sweep=cpu_ordering"])      # the preset's per-optimizer grids
    assert sorted({p.lr for p in pts if p.optimizer == "adamw"}) != \
        sorted({p.lr for p in pts if p.optimizer == "muon"})
    pts = points_of(["sweep=namo_clamp", "sweep.grid={optimizer.momentum:[0.9,0.95]}"])
    assert {p.grid["optimizer.momentum"] for p in pts} == {0.9, 0.95}
    assert all("optimizer.clamp_c" not in p.grid for p in pts), "the CLI grid replaces the preset's"
    pts = points_of(["sweep=namo_clamp"])
    assert len(pts) == 5 * 4 and len({p.curve for p in pts}) == 4
    assert "optimizer.clamp_c=0.4" in next(p for p in pts if p.grid["optimizer.clamp_c"] == 0.4).overrides



def test_grid_points_are_listed_variants_times_the_grid_product():
    # lrs and seeds given here, so the count does not follow the preset's grid
    pts = points_of(["sweep=namo_decay", "sweep.lrs=[0.01,0.02,0.04,0.08]", "sweep.seeds=[0,1]"])
    variants = {tuple(sorted(p.grid.items())) for p in pts}
    assert variants == {(("optimizer.weight_decay", 0.0),),
                        (("optimizer.decay_style", "adaptive"), ("optimizer.weight_decay", 0.1)),
                        (("optimizer.decay_style", "decoupled"), ("optimizer.weight_decay", 0.1))}
    assert len(pts) == 2 * 4 * 3 * 2 and len({p.curve for p in pts}) == 6
    assert len({p.run_id for p in pts}) == len(pts)
    one = next(p for p in pts if p.grid.get("optimizer.decay_style") == "decoupled")
    assert {"optimizer.decay_style=decoupled", "optimizer.weight_decay=0.1"} <= set(one.overrides)
    # times the product of sweep.grid: 3 variants x 2 momenta
    pts = points_of(["sweep=namo_decay", "sweep.grid={optimizer.momentum:[0.9,0.95]}"])
    assert len({p.curve for p in pts}) == 2 * 3 * 2


def test_grid_points_by_optimizer_replace_the_listed_variants_of_one_optimizer():
    pts = points_of(["sweep=cpu_muon_family"])
    curves = {p.curve for p in pts}
    assert {"muon", "muon ns=polar_express", "muon cautious_wd=true", "namo", "dion"} <= curves
    assert not any(c.startswith("namo ") for c in curves)      # namo keeps its one curve
    pe = next(p for p in pts if p.curve == "muon ns=polar_express")
    assert "optimizer.ns=polar_express" in pe.overrides and "optimizer=muon" in pe.overrides
    assert len({p.run_id for p in pts}) == len(pts)
    from sweeper.points import plan
    from sweeper.wandb_export import wandb_sweeps
    pl = plan(["sweep=cpu_muon_family"], [])
    out = wandb_sweeps(pl.cfg, pl.grids, pl.setup, pl.launch)
    fixed = [sw["parameters"] for sw in out.values() if "optimizer.ns" in sw["parameters"]]
    assert len(fixed) == 1 and fixed[0]["optimizer"]["values"] == ["muon"]


def test_optimizers_on_the_command_line_drop_the_presets_variants_of_the_others():
    from configs.errors import UserError
    from sweeper.config import load_sweep
    # the preset's adamw / normuon variants go with adamw; a variant given for it stays (refused)
    cfg, _ = load_sweep(["sweep=track3", "sweep.optimizers=[track3_baseline,normuon]",
                         "sweep.lr_grid.normuon=[0.03]"])
    assert set(cfg.grid_points_by_optimizer) == {"normuon"} and cfg.lr_grid["normuon"] == [0.03]
    for given in ("sweep.grid_points_by_optimizer.adamw=[{optimizer.eps:1e-8}]",
                  "sweep.grid_points_by_optimizer={adamw:[{optimizer.eps:1e-8}]}"):
        with pytest.raises(UserError, match="adamw is not in sweep.optimizers"):
            load_sweep(["sweep=track3", "sweep.optimizers=[normuon]", given])


def test_wandb_export_one_sweep_per_listed_variant():
    from sweeper.points import plan
    from sweeper.wandb_export import wandb_sweeps

    pl = plan(["sweep=namo_decay"], [])
    out = wandb_sweeps(pl.cfg, pl.grids, pl.setup, pl.launch)
    assert len(out) == 3
    fixed = sorted(tuple(sorted((k, v["value"]) for k, v in sw["parameters"].items() if "value" in v))
                   for sw in out.values())
    assert fixed[0] == (("optimizer.decay_style", "adaptive"), ("optimizer.weight_decay", 0.1))

# The committed results (docs/results/<study>/results.csv) and the commands of their READMEs:
# the same points must keep their run ids, or a sweep started before would not resume after.
# cpu_ordering's runs predate the preset's `model.bias=true model.pad_vocab_to=64` (the same
# model, spelled out when baby.yaml changed), which are part of every run's id.
@pytest.mark.parametrize("study,args,drop", [
    ("cpu_ordering", ["sweep=cpu_ordering", "sweep.seeds=[0,1]",
                      "data.source=../shared/data/tinyshakespeare.txt"],
     ("model.bias=true", "model.pad_vocab_to=64")),
    ("grokking/grok_optimizers", ["sweep=grok_optimizers", "sweep.lrs=[1e-3,3e-3]",
                                  "sweep.confirm_seeds=[]", "sweep.max_extend=0"], ()),
    ("grokking/grok_rank", ["sweep=grok_rank", "sweep.seeds=[0,1]"], ()),
    # namo_decay ran with the data file's absolute path (part of each run's id, see its README)
    ("namo_decay", ["sweep=namo_decay", "data.source=/work/shared/data/tinyshakespeare.txt"], ()),
    ("cpu_spectral_faithful", ["sweep=cpu_spectral_faithful",
                               "data.source=../shared/data/tinyshakespeare.txt"], ()),
    ("cpu_muon_family", ["sweep=cpu_muon_family",
                         "data.source=../shared/data/tinyshakespeare.txt"], ()),
    ("cpu_dion_rank", ["sweep=cpu_dion_rank", "data.source=../shared/data/tinyshakespeare.txt"], ()),
])
def test_committed_run_ids(study, args, drop):
    # stage-1 grid runs only: bracketing, held-out seeds and budgets follow from their results
    committed = {r["run_id"] for r in results(REPO / "docs" / "results" / study)
                 if r.get("stage", "1") == "1"}
    assert {p.run_id for p in points_of(args, drop)} == committed


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "configs" / "sweep").glob("*.yaml")))
def test_presets_compose(preset, tmp_path):
    pts = points_of([f"sweep={preset}"])
    assert pts and len({p.run_id for p in pts}) == len(pts)
    # One run's full train.py config composes (setup keys, data and model choices exist).
    cfg = validate_points(pts[:1], [], tmp_path)
    assert cfg.optimizer.name == pts[0].optimizer


# ---------------------------------------------------------------------------------------------
# End to end with train.py

@pytest.mark.slow
def test_sweep_outputs_divergence_and_rerun(tmp_path, small_text, capsys):
    d = tmp_path / "sw"
    args = tiny_args(tmp_path, small_text, "sweep.optimizers=[adamw,muon]",
                     "sweep.lr_grid={adamw:[3e-3,1e3],muon:[3e-3,1e-2]}")
    assert sweep.main(args) == 0
    for name in ("results.csv", "lr_curves.png", "best_curves.png", "report.md", "sweep.json"):
        assert (d / name).is_file(), name
    rows = {(r["optimizer"], float(r["lr"])): r for r in results(d)}
    assert sorted(rows) == [("adamw", 3e-3), ("adamw", 1e3), ("muon", 3e-3), ("muon", 1e-2)]
    huge = rows[("adamw", 1e3)]
    assert huge["status"] == "diverged" and int(huge["diverged_at_step"]) >= 1
    for key in [("adamw", 3e-3), ("muon", 3e-3), ("muon", 1e-2)]:
        r = rows[key]
        assert r["status"] == "completed" and int(r["steps"]) == 20, r
        summary = json.loads((d / "runs" / r["run_id"] / "summary.json").read_text())
        assert float(r["final_val_loss"]) == pytest.approx(summary["final_val_loss"])
    report = (d / "report.md").read_text()
    assert "| 1 |" in report and "| 2 |" in report and "## Verdicts" in report
    assert "(1/1 diverged)" in report
    # Same command again: every run is kept, nothing launched twice.
    logs = {r["run_id"]: launches(d / "runs" / r["run_id"]) for r in results(d)}
    assert set(logs.values()) == {1}
    assert sweep.main(args) == 0
    assert {r["run_id"]: launches(d / "runs" / r["run_id"]) for r in results(d)} == logs
    # `report` rebuilds the outputs from the runs alone.
    (d / "report.md").unlink()
    assert sweep.main(["report", f"sweep.dir={d}", "sweep.tolerance=10"]) == 0
    assert "(2 lrs)" in (d / "report.md").read_text()  # every stable lr is now in range
    # Another setup in the same sweep.dir is refused, nothing overwritten.
    before = (d / "sweep.json").read_text(), (d / "results.csv").read_text()
    capsys.readouterr()
    code, err = run_main(args[:-1] + ["sweep.lrs=[1e-3]", "train.max_iters=30"], capsys)
    assert code == 2 and err.startswith("error: ") and str(d) in err and "sweep.dir=<new path>" in err
    assert ((d / "sweep.json").read_text(), (d / "results.csv").read_text()) == before


@pytest.mark.slow
def test_sigkill_launcher_then_rerun(tmp_path, small_text):
    """SIGKILL the launcher while two long runs go, and one of those runs too (as in a crash):
    the re-run leaves the surviving run alone (its lock), resumes the killed one from its
    checkpoint, and every run is in results.csv exactly once, launched as often as needed."""
    d = tmp_path / "sw"
    # Two short runs first, then two long ones (a grid axis on the run length).
    args = tiny_args(tmp_path, small_text, "sweep.optimizers=[adamw]", "sweep.lrs=[1e-3,2e-3]",
                     "sweep.jobs=2", "sweep.grid={train.max_iters:[40,800]}",
                     "train.eval_interval=40", "train.ckpt_interval=20", "train.log_interval=20")
    launcher = subprocess.Popen([sys.executable, "sweep.py", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    long_runs = []
    deadline = time.time() + 240
    while time.time() < deadline and len(long_runs) < 2 and launcher.poll() is None:
        time.sleep(0.05)
        done = [p.parent for p in d.glob("runs/*/summary.json")]
        long_runs = [p.parent for p in d.glob("runs/*max_iters800*/ckpt.pt")
                     if not (p.parent / "summary.json").exists()]
    logs = "".join(p.read_text()[-1500:] for p in d.glob("runs/*/train.log"))
    assert done and len(long_runs) == 2, f"no moment with a finished run and two going:\n{logs}"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    victim, survivor = long_runs
    with suppress(ProcessLookupError):
        os.kill(json.loads((victim / "sweep.lock").read_text())["pid"], signal.SIGKILL)
    time.sleep(0.2)
    victim_finished = (victim / "summary.json").exists()  # a race we can lose; rarely

    rerun = subprocess.run([sys.executable, "sweep.py", *args], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = results(d)
    assert len(rows) == 4 and len({r["run_id"] for r in rows}) == 4
    for r in rows:
        run_dir = d / "runs" / r["run_id"]
        assert r["status"] == "completed" and r["steps"] == r["train.max_iters"], r
        expected = 2 if run_dir == victim and not victim_finished else 1
        assert launches(run_dir) == expected, (r["run_id"], (run_dir / "train.log").read_text()[-3000:])
        evals = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if "val/loss" in line]
        assert evals == list(range(0, int(r["steps"]) + 1, 40)), (r["run_id"], evals)
    assert survivor != victim


def test_crashed_run_is_a_result(tmp_path, small_text, monkeypatch):
    """A run that crashes is recorded as failed with its error, and the sweep goes on."""
    fake = tmp_path / "crash.py"
    fake.write_text("import sys\nargs = dict(a.split('=', 1) for a in sys.argv[1:])\n"
                    "if float(args['optimizer.lr']) > 1: raise RuntimeError('exploded on purpose')\n"
                    "import json, pathlib\nout = pathlib.Path(args['out_dir'])\n"
                    "(out / 'summary.json').write_text(json.dumps({'status': 'completed', "
                    "'final_val_loss': 1.5, 'best_val_loss': 1.5, 'steps': 1, 'tokens': 1}))\n")
    monkeypatch.setattr(runner, "TRAIN_SCRIPT", fake)
    d = tmp_path / "sw"
    assert sweep.main(tiny_args(tmp_path, small_text, "sweep.lrs=[1e-3,5.0]",
                                "sweep.optimizers=[adamw]")) == 0
    rows = {float(r["lr"]): r for r in results(d)}
    assert rows[1e-3]["status"] == "completed"
    assert rows[5.0]["status"] == "failed"
    assert "RuntimeError: exploded on purpose" in rows[5.0]["error"]
    assert "exploded on purpose" in (d / "report.md").read_text()


def test_failed_torchrun_run_carries_its_rank_own_error(tmp_path, small_text, monkeypatch):
    """Under torchrun the failing rank's `error: ...` line is the run's error in results.csv and
    the report, not torchrun's ChildFailedError."""
    fake = tmp_path / "refuse.py"
    fake.write_text("import os, sys, time\n"
                    "if os.environ['RANK'] == '1':\n"
                    "    print('error: rank 1 refuses on purpose; pass another input', file=sys.stderr)\n"
                    "    sys.exit(2)\n"
                    "time.sleep(120)   # rank 0 waits, as in a collective, until torchrun stops it\n")
    monkeypatch.setattr(runner, "TRAIN_SCRIPT", fake)
    d = tmp_path / "sw"
    # a rank's `error: ...` line is bad input: the sweep stops with it (exit 2)
    assert sweep.main(tiny_args(tmp_path, small_text, "sweep.lrs=[1e-3]", "sweep.optimizers=[adamw]",
                                "sweep.jobs=1", "sweep.nproc_per_run=2",
                                "train.grad_accum_steps=2")) == 2
    row = results(d)[0]
    assert row["status"] == "failed"
    assert row["error"].endswith("error: rank 1 refuses on purpose; pass another input"), row["error"]
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    assert "error: rank 1 refuses on purpose" in (d / "report.md").read_text()


def test_a_sweep_stops_at_its_first_bad_input_run(tmp_path, small_text, monkeypatch, capsys):
    """A run that exits 2 (bad input, shared by every run) stops the sweep there: one error line
    naming the run and its own line, exit 2, and no other run launched."""
    fake = tmp_path / "refuse.py"
    fake.write_text("import sys\nprint('error: data.source=x does not exist; pass a file', "
                    "file=sys.stderr)\nsys.exit(2)\n")
    monkeypatch.setattr(runner, "TRAIN_SCRIPT", fake)
    d = tmp_path / "sw"
    assert sweep.main(tiny_args(tmp_path, small_text, "sweep.lrs=[1e-3,2e-3,4e-3]",
                                "sweep.optimizers=[adamw]", "sweep.jobs=1")) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "failed on bad input" in err[0], err
    assert err[0].endswith("data.source=x does not exist; pass a file"), err[0]
    assert len(list(d.glob("runs/*/exit.json"))) == 1
    assert [r["status"] for r in results(d)] == ["failed"]


def test_a_sweep_prepares_its_dataset_once_before_any_run(tmp_path, small_text, monkeypatch,
                                                        capsys):
    """The dataset is prepared by the sweep itself before the first run launches (the stand-in
    train.py sees meta.json already there); a source that cannot be fetched is one error line
    and exit 2 with no run launched."""
    seen = tmp_path / "seen.txt"
    fake = tmp_path / "look.py"
    fake.write_text("import sys, pathlib\n"
                    f"meta = pathlib.Path({str(tmp_path / 'data' / 'shakespeare_char' / 'meta.json')!r})\n"
                    f"pathlib.Path({str(seen)!r}).write_text(str(meta.is_file()))\n"
                    "print('error: stop here on purpose; pass another input', file=sys.stderr)\n"
                    "sys.exit(2)\n")
    monkeypatch.setattr(runner, "TRAIN_SCRIPT", fake)
    assert sweep.main(tiny_args(tmp_path, small_text, "sweep.lrs=[1e-3]",
                                "sweep.optimizers=[adamw]", "sweep.jobs=1")) == 2
    assert seen.read_text() == "True"
    capsys.readouterr()

    # no local source and a download that cannot succeed (offline): refused before any run
    offline = [a for a in tiny_args(tmp_path / "b", small_text, "sweep.lrs=[1e-3]",
                                    "sweep.optimizers=[adamw]", "sweep.jobs=1")
               if not a.startswith("data.source=")]
    (tmp_path / "b").mkdir()
    assert sweep.main(offline + ["data.url=http://127.0.0.1:9/tinyshakespeare.txt"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: could not download"), err
    assert not list((tmp_path / "b" / "sw").glob("runs/*"))


# ---------------------------------------------------------------------------------------------
# The scheduler's loop (runner.run_points), with a stand-in backend

class StandInBackend:
    """Runs last `ticks` polls each, at most `at_once` live; records what the loop asks."""
    poll_s = 0.0
    counted = ("completed", "diverged", "failed", "interrupted")
    threads = 1

    def __init__(self, outcomes: dict, earlier: tuple = (), at_once: int = 2, ticks: int = 2,
                 stop_at_launch: int | None = None):
        self.outcomes, self.earlier_ids, self.at_once, self.ticks = outcomes, earlier, at_once, ticks
        self.stop_at_launch, self.launches = stop_at_launch, 0
        self.started, self.most_live, self.stopped = [], 0, None

    def earlier(self, todo):
        return {p.run_id: [self.ticks] for p in todo if p.run_id in self.earlier_ids}

    def waiting_line(self, live):
        return f"waiting for {sorted(live)}"

    def launch(self, todo, live, bar):
        self.launches += 1
        if self.launches == self.stop_at_launch:
            raise KeyboardInterrupt
        while todo and len(live) < self.at_once:
            p = todo.pop(0)
            self.started.append(p.run_id)
            live[p.run_id] = [self.ticks]
        self.most_live = max(self.most_live, len(live))

    def ended(self, rid, handle):
        handle[0] -= 1
        return self.outcomes[rid] if handle[0] < 0 else None

    def bad_input(self, rid):
        return None

    def ended_line(self, rid, handle, status):
        return f"{rid} ended {status}"

    def postfix(self, todo, live):
        return f"live {len(live)}, left {len(todo)}"

    def interrupted(self, live, bar):
        self.stopped = sorted(live)

    def summary(self, counts):
        return "summary " + ", ".join(f"{v} {k}" for k, v in counts.items())


def test_scheduler_runs_each_point_once_and_waits_for_earlier_runs(tmp_path, capsys):
    """A finished point is skipped, an earlier invocation's run is waited for (never started),
    every other point starts once, never more than at_once at a time; on_end after each run
    that ends; the counts and lines come from the backend; Ctrl-C hands the live runs to it."""
    from types import SimpleNamespace

    plan = SimpleNamespace(cfg=SimpleNamespace(name="t", path=tmp_path, reuse=[]))
    points = [SimpleNamespace(run_id=f"r{i}") for i in range(6)]
    (tmp_path / "runs" / "r0").mkdir(parents=True)
    (tmp_path / "runs" / "r0" / "summary.json").write_text(json.dumps({"status": "diverged"}))
    outcomes = {"r1": "completed", "r2": "failed", "r3": "completed", "r4": "diverged",
                "r5": "completed"}
    backend = StandInBackend(outcomes, earlier=("r3",))
    ends = []
    assert runner.run_points(plan, points, backend, on_end=lambda: ends.append(1))
    assert backend.started == ["r1", "r2", "r4", "r5"] and backend.most_live == 2
    assert len(ends) == 5
    out = capsys.readouterr().out
    assert "waiting for ['r3']" in out and "r2 ended failed" in out and "r4 ended diverged" in out
    assert "r1 ended" not in out
    assert out.rstrip().endswith("summary 3 completed, 1 diverged, 1 failed, 0 interrupted")
    # interrupted at the third poll: False, the two live runs handed to the backend
    backend = StandInBackend(outcomes, ticks=5, stop_at_launch=3)
    assert not runner.run_points(plan, points, backend, on_end=lambda: None)
    assert backend.stopped == ["r1", "r2"] and backend.started == ["r1", "r2"]


# ---------------------------------------------------------------------------------------------
# The report's statistics, on hand-made runs

def fake_run(d: Path, optimizer: str, lr: float, seed: int, summary: dict, evals: list[dict],
             grid: dict | None = None, stage: str | None = None) -> None:
    """A finished run's files, as a sweep leaves them (no `stage`: written before stages)."""
    grid = grid or {}
    own = [f"seed={seed}", f"optimizer.lr={lr}"]
    if stage is not None:   # budget runs differ from the others only in their steps
        own += [f"stage={stage}", f"train.max_iters={summary.get('tokens')}"]
    rid = make_run_id(optimizer, lr, seed, grid, own)
    run_dir = d / "runs" / rid
    run_dir.mkdir(parents=True)
    point = {"optimizer": optimizer, "lr": lr, "seed": seed, "grid": grid, "overrides": [],
             "run_id": rid}
    (run_dir / "point.json").write_text(json.dumps(point if stage is None else {**point, "stage": stage}))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))


def loss_run(d, optimizer, lr, seed, final, curve=(), stage=None, tokens=10_000):
    evals = [{"step": 10 * i, "tokens": 1000 * i, "val/loss": v} for i, v in enumerate([*curve, final])]
    fake_run(d, optimizer, lr, seed, {"status": "completed", "final_val_loss": final,
                                      "best_val_loss": final, "steps": 100, "tokens": tokens,
                                      "diverged_at_step": None}, evals, stage=stage)


def write_sweep_json(d: Path, **sweep_cfg) -> None:
    cfg = {"name": "hand", "optimizers": [], "lrs": [], "lr_grid": {}, "grid": {}, "seeds": [0],
           "jobs": 1, "nproc_per_run": 1, "dir": str(d), "overrides": [], "target_loss": None,
           "tolerance": 0.05, "metric": "final_val_loss", **sweep_cfg}
    (d / "sweep.json").write_text(json.dumps({"name": "hand", "setup": ["model=tiny"], "sweep": cfg}))


def test_report_statistics(tmp_path):
    d = tmp_path / "hand"
    finals = {  # optimizer -> lr -> final loss per seed (None: diverged)
        "a": {1e-3: [2.00, 2.02, 2.04], 2e-3: [1.90, 1.92, 1.91], 4e-3: [1.93, 1.94, 1.95],
              8e-3: [2.50, 2.40, 2.60], 1.6e-2: [1.80, None, 1.80]},
        "b": {1e-3: [1.98, 1.955, 1.95], 2e-3: [1.99, 2.00, 2.01], 4e-3: [None, None, None]},
    }
    for opt, per_lr in finals.items():
        for lr, values in per_lr.items():
            for seed, v in enumerate(values):
                if v is None:
                    fake_run(d, opt, lr, seed, {"status": "diverged", "final_val_loss": None,
                                                "steps": 3, "diverged_at_step": 3}, [])
                else:
                    loss_run(d, opt, lr, seed, v, curve=[4.0, v + 0.5 + 0.1 * seed, v + 0.02])
    write_sweep_json(d)
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    report = (d / "report.md").read_text()
    rank = {line.split("|")[2].strip(): line.split("|")[1:-1] for line in report.splitlines()
            if line.startswith("| 1 |") or line.startswith("| 2 |")}
    # a: best at 2e-3 (1.6e-2 has a lower mean but a diverged seed); stable 2e-3..4e-3.
    # Columns: rank, optimizer, chosen lr, score (mean ± CI half-width), stage-1 mean ± std,
    # stable lrs, width, where the best lies, one grid step off, tokens to target.
    a = rank["a"]
    assert a[0].strip() == "1" and a[2].strip() == "0.002"
    mean, std = statistics.mean([1.90, 1.92, 1.91]), statistics.stdev([1.90, 1.92, 1.91])
    assert a[4].strip() == f"{mean:.4f} ± {std:.4f} (n=3)"
    half = 4.303 * std / math.sqrt(3)                       # t table, 2 degrees of freedom
    assert a[3].strip() == f"{mean:.4f} ± {half:.4f} (n=3)"
    assert a[5].strip() == "0.002..0.004 (2 lrs)" and a[6].strip() == f"{math.log10(2):.2f}"
    assert a[7].strip() == "inside"
    b = rank["b"]
    assert b[0].strip() == "2" and b[2].strip() == "0.001" and b[5].strip() == "0.001..0.002 (2 lrs)"
    assert b[7].strip() == "at the grid's end"
    # Target: the worst optimizer's best mean, b's 1.9617. a's seeds first reach it at the
    # eval v + 0.02 (tokens 2000); b's only at their final eval (3000), two seeds of three.
    assert "val/loss <= 1.9617" in report
    assert a[9].strip() == "2k (3/3 seeds)"
    assert b[9].strip() == "3k (2/3 seeds)"
    # One grid step off the best: a's 1e-3 and 4e-3 means minus its best; b is at the low edge
    # of its grid and its next lr, 2e-3, costs 2.00 minus its best.
    below = statistics.mean([2.00, 2.02, 2.04]) - mean
    above = statistics.mean([1.93, 1.94, 1.95]) - mean
    assert a[8].strip() == f"+{below:.3f} (/2) / +{above:.3f} (x2)"
    b_mean = statistics.mean([1.98, 1.955, 1.95])
    assert b[8].strip() == f"edge / +{statistics.mean([1.99, 2.00, 2.01]) - b_mean:.3f} (x2)"
    # The paired verdict (same seeds): a - b per seed -0.08, -0.035, -0.04; its t interval
    # (2 degrees of freedom) still contains 0: a tie, though the unpaired means differ.
    d_ab = [1.90 - 1.98, 1.92 - 1.955, 1.91 - 1.95]
    m_ab, s_ab = statistics.mean(d_ab), statistics.stdev(d_ab)
    h_ab = 4.303 * s_ab / math.sqrt(3)
    assert m_ab + h_ab > 0
    assert (f"tie at this budget: a - b = {m_ab:+.4f} nats, 95% CI [{m_ab - h_ab:+.4f}, "
            f"{m_ab + h_ab:+.4f}]") in report
    assert "Ordering: a ≈ b" in report and "read these as provisional" in report
    rows = results(d)
    assert len(rows) == 24 and sum(r["status"] == "diverged" for r in rows) == 4
    assert (d / "lr_curves.png").stat().st_size > 0


def test_report_grokking(tmp_path):
    d = tmp_path / "grok"
    steps = {("a", 1e-3): [500, 700], ("a", 3e-3): [300, None], ("b", 1e-3): [900, 1100]}
    for (opt, lr), per_seed in steps.items():
        for seed, g in enumerate(per_seed):
            evals = [{"step": s, "tokens": s, "val/acc": min(1.0, s / (g or 1e9)),
                      "train/acc": 1.0} for s in (0, 250, 500, 1000, 1500)]
            fake_run(d, opt, lr, seed, {"status": "completed", "final_val_loss": 0.1,
                                        "grokking_step": g, "memorization_step": 100}, evals)
    write_sweep_json(d, metric="grokking_step", tolerance=0.5)
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    report = (d / "report.md").read_text()
    lines = [l for l in report.splitlines() if l.startswith("| 1 |") or l.startswith("| 2 |")]
    # a at 3e-3 grokked faster once but not in every seed: its best is 1e-3.
    assert lines[0].split("|")[2].strip() == "a" and lines[0].split("|")[3].strip() == "0.001"
    assert "600 ± 141 (n=2)" in lines[0] and "2/2" in lines[0] and "3/4" in lines[0]
    assert lines[1].split("|")[2].strip() == "b" and "1000 ± 141 (n=2)" in lines[1]
    # paired: a - b = -400 steps at both seeds, an interval of width 0 that excludes 0
    assert "a better than b: a - b = -400 steps" in report
    assert "grokking_step" in (d / "results.csv").read_text().splitlines()[0]
    assert (d / "best_curves.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# W&B export

def test_export_wandb(tmp_path):
    d = tmp_path / "wb"
    assert sweep.main(["export-wandb", "sweep=namo_gpt2_medium", f"sweep.dir={d}"]) == 0
    files = sorted(p.name for p in d.glob("*.yaml"))
    # NAMO-D runs at each clamp c of the published grid: one W&B sweep per variant
    assert files == ["wandb_namo_gpt2_medium_adamw_muon.yaml", "wandb_namo_gpt2_medium_namo.yaml"] + [
        f"wandb_namo_gpt2_medium_namo_d_v{i}.yaml" for i in range(4)]
    clamps = [yaml.safe_load((d / f).read_text())["parameters"]["optimizer.clamp_c"]["value"]
              for f in files[2:]]
    assert clamps == [0.12, 0.40, 0.75, 0.90]
    doc = yaml.safe_load((d / files[1]).read_text())
    assert doc["method"] == "grid" and doc["program"] == "train.py"
    assert doc["parameters"]["optimizer"]["values"] == ["namo"]
    assert doc["parameters"]["optimizer.lr"]["values"] == [5e-3, 7e-3, 9e-3, 1.2e-2, 1.5e-2]
    assert doc["parameters"]["seed"]["values"] == [0]
    cmd = doc["command"]
    assert cmd[:5] == ["${env}", "torchrun", "--standalone", "--nproc_per_node=4", "${program}"]
    assert cmd[-1] == "${args_no_hyphens}"
    assert "model=gpt2-medium" in cmd and "wandb.enabled=true" in cmd
    assert "wandb.group=namo_gpt2_medium" in cmd
    assert not (d / "sweep.json").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written

@pytest.mark.parametrize("extra,needle", [
    (["sweep.optimizers=[adamw,adamx]"], "unknown optimizer(s) adamx in sweep.optimizers; known: "),
    (["sweep.lrs=[]"], "sweep.lrs is empty"),
    (["sweep.lrs=[1e-3,0]"], "non-positive"),
    (["sweep.lrs=[1e-3,-1e-2]"], "non-positive"),
    (["sweep.jobs=999", "sweep.nproc_per_run=2", "train.grad_accum_steps=2"], "lower sweep.jobs"),
    (["sweep.nproc_per_run=2"], "train.grad_accum_steps=1 is not divisible by the 2 processes"),
    (["sweep.seeds=[]"], "sweep.seeds is empty"),
    (["sweep.metrik=x"], "sweep.metrik"),
    (["train.max_itres=3"], "max_itres"),
    (["out_dir=/tmp/x"], "out_dir is set by sweep.py"),
    (["optimizer=muon"], "give sweep.optimizers=[...] instead of optimizer=muon"),
])
def test_bad_input(tmp_path, small_text, capsys, extra, needle):
    code, err = run_main(tiny_args(tmp_path, small_text, "sweep.optimizers=[adamw]",
                                   "sweep.lrs=[1e-3]", *extra), capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "sw").exists()


def test_refuses_a_dir_that_is_not_a_sweep(tmp_path, small_text, capsys):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "notes.txt").write_text("mine")
    code, err = run_main(tiny_args(tmp_path, small_text, "sweep.lrs=[1e-3]",
                                   "sweep.optimizers=[adamw]"), capsys)
    assert code == 2 and "sweep.dir=<new path>" in err
    assert os.listdir(tmp_path / "sw") == ["notes.txt"]


def test_wandb_group_and_name_only_when_enabled(tmp_path):
    base = ["sweep=cpu_ordering", "sweep.name=grp", "sweep.optimizers=[adamw]", "sweep.lrs=[1e-3]",
            f"sweep.dir={tmp_path}"]
    for enabled in (False, True):
        sweep_args, train_args = split_args(base + [f"wandb.enabled={str(enabled).lower()}"])
        p = plan(sweep_args, train_args)
        points = p.points
        args = run_args(points[0], tmp_path / points[0].run_id, p.launch, 1, p.wandb)
        assert p.wandb is enabled
        assert ("wandb.group=grp" in args) is enabled
        assert (f"wandb.name={points[0].run_id}" in args) is enabled
        assert f"out_dir={tmp_path / points[0].run_id}" in args and "resume=true" in args


def test_report_neighbour_that_diverged(tmp_path):
    """A grid step off the best that diverged in some seed is reported as such, not as a loss."""
    d = tmp_path / "hand"
    for seed in (0, 1):
        loss_run(d, "c", 1e-3, seed, 2.10 + 0.01 * seed)
        loss_run(d, "c", 3e-3, seed, 2.00 + 0.01 * seed)
    loss_run(d, "c", 1e-2, 0, 1.90)
    fake_run(d, "c", 1e-2, 1, {"status": "diverged", "final_val_loss": None, "steps": 3,
                               "diverged_at_step": 3}, [])
    write_sweep_json(d, seeds=[0, 1])
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    row = next(line.split("|")[1:-1] for line in (d / "report.md").read_text().splitlines()
               if line.startswith("| 1 |"))
    assert row[2].strip() == "0.003"
    assert row[8].strip() == "+0.100 (/3) / 1/2 diverged (x3.3)"


# ---------------------------------------------------------------------------------------------
# How a run that did not finish is read back

TORCHRUN_REPORT = """\
W1123 22:45:57.492000 404 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 557 closing signal SIGTERM
E1123 22:45:58.001000 404 site-packages/torch/distributed/elastic/multiprocessing/api.py:900] failed (exitcode: 1) local_rank: 1 (pid: 557) of binary: python
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
  error_file: <N/A>
"""


@pytest.mark.parametrize("attempt,expected", [
    # every rank's one line (a config error at this world size), then torchrun's report
    ("error: dtype=float16 needs CUDA; use dtype=bfloat16 or float32 on CPU\n" * 2 + TORCHRUN_REPORT,
     "error: dtype=float16 needs CUDA; use dtype=bfloat16 or float32 on CPU"),
    # rank 1 crashes first; rank 0 fails after it, in a collective
    ("Traceback (most recent call last):\n  File \"train.py\", line 1\nValueError: boom on rank 1\n"
     "Traceback (most recent call last):\n  File \"train.py\", line 2\n"
     "RuntimeError: [gloo] Connection closed by peer\n" + TORCHRUN_REPORT,
     "ValueError: boom on rank 1"),
    # rank 0's disk is full: its line, not the other rank's consequence
    ("Traceback (most recent call last):\nRuntimeError: [gloo] Connection closed by peer\n"
     "error: cannot write runs/x/ckpt.pt (No space left on device); free space\n" + TORCHRUN_REPORT,
     "error: cannot write runs/x/ckpt.pt (No space left on device); free space"),
    # one process: no error line at all
    ("step 10: loss 3.2\nKilled\n", "step 10: loss 3.2 | Killed"),
])
def test_log_error_is_the_failing_rank_own_line(tmp_path, attempt, expected):
    log = tmp_path / "train.log"
    log.write_text("\n=== 2026-11-23 10:00:00 sweep.py launches: python train.py a=1\n"
                   "error: an earlier attempt's error\n"
                   "\n=== 2026-11-23 11:00:00 sweep.py launches: python -m torch.distributed.run "
                   "train.py a=1\n" + attempt)
    assert runner.log_error(log) == expected


def test_interrupted_run_is_resumed_never_a_result(tmp_path):
    d = tmp_path / "hand"
    fake_run(d, "a", 1e-3, 0, {"status": "interrupted", "steps": 40, "tokens": 400,
                               "final_val_loss": None}, [{"step": 0, "tokens": 0, "val/loss": 4.0}])
    run_dir = next((d / "runs").iterdir())
    assert not runner.finished(run_dir)
    row = collect(d)[0]
    assert row.status == "interrupted" and row.error is None
    write_sweep_json(d)
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    assert "1 interrupted" in (d / "report.md").read_text()


def test_palette_is_one_colour_per_name():
    """Every figure colours a curve by its optimizer name (the same in every study); the
    registry's names get distinct colours; variants of a name share it."""
    from sweeper.plots import PALETTE, color_of

    assert len(set(PALETTE.values())) == len(PALETTE)
    assert color_of("muon") == color_of("muon ns=polar_express") == PALETTE["muon"]
    assert color_of("some_new_name") == color_of("some_new_name x=1")   # hashed: stable


def test_lr_axis_names_the_grid_lrs():
    """Under two decades matplotlib labels minor ticks, which overlap: the figure names the
    grid's lrs instead (up to 12), and leaves the decades for a longer grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sweeper.plots import label_lr_ticks

    fig, ax = plt.subplots()
    ax.plot([0.005, 0.01, 0.02], [1, 2, 3])
    ax.set_xscale("log")
    label_lr_ticks(ax, [0.01, 0.005, 0.02, 0.01])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.005", "0.01", "0.02"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {0}   # a factor 2 apart: level
    fig, ax = plt.subplots()   # two grids interleaved: slanted, so that they do not touch
    ax.set_xscale("log")
    label_lr_ticks(ax, [0.002, 0.0025, 0.004, 0.005])
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {45}
    many = [1e-4 * 2 ** k for k in range(14)]
    fig, ax = plt.subplots()
    ax.plot(many, many)
    ax.set_xscale("log")
    label_lr_ticks(ax, many)
    assert len(ax.get_xticks()) < 14
    plt.close("all")

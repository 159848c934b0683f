"""scripts/reproduce_run.py: the re-run command is the committed one with a new out_dir, and the
comparison is exact (one ulp in one logged loss is a difference)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("reproduce_run", REPO / "scripts" / "reproduce_run.py")
reproduce_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce_run)

COMMAND = "train.py optimizer=muon optimizer.lr=0.005 seed=100 out_dir=/somewhere/runs/x resume=true"


def fake_run(d: Path, val: float) -> Path:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(
        {"status": "completed", "final_val_loss": val, "provenance": {"command": COMMAND}}))
    records = [{"step": 0, "val/loss": 4.1}, {"step": 5, "train/loss": 3.0},
               {"step": 10, "train/loss": 2.5, "val/loss": val}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_the_rerun_is_the_committed_command_into_a_new_folder(tmp_path):
    cmd = reproduce_run.rerun_command(fake_run(tmp_path / "a", 2.0), tmp_path / "new")
    assert cmd == [sys.executable, "train.py", "optimizer=muon", "optimizer.lr=0.005", "seed=100",
                   f"out_dir={tmp_path / 'new'}", "resume=false"]


def test_equal_runs_pass_and_one_ulp_fails(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a", 2.0), fake_run(tmp_path / "b", 2.0)
    assert reproduce_run.compare(a, b) == 0 and "bit for bit" in capsys.readouterr().out
    c = fake_run(tmp_path / "c", math.nextafter(2.0, 3.0))
    assert reproduce_run.compare(a, c) == 1
    out = capsys.readouterr().out
    assert "(10, 'val/loss')" in out and "differs" in out


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    assert reproduce_run.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finished run" in err[0]

"""scripts/compare_results.py: a re-run's points matched to the committed study's by what they
are (not by run id), their differences by stage, and every pair's verdict compared."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import sweep
from tests.test_sweep import loss_run, write_sweep_json

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_results.py"
spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
compare_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_results)


def study(d: Path, held: dict, shift: float = 0.0) -> None:
    """a and b at lr 1e-3 on seeds 0, 1, then held out on `held`'s seeds: {seed: (a, b)}."""
    for seed in (0, 1):
        loss_run(d, "a", 1e-3, seed, 2.0 + shift, stage="1")
        loss_run(d, "b", 1e-3, seed, 2.1 + 0.01 * seed, stage="1")
    for seed, (a, b) in held.items():
        loss_run(d, "a", 1e-3, seed, a, stage="2")
        loss_run(d, "b", 1e-3, seed, b, stage="2")
    write_sweep_json(d, optimizers=["a", "b"], lrs=[1e-3], seeds=[0, 1],
                     confirm_seeds=sorted(held))


def test_the_same_study_again_matches_everywhere(tmp_path, capsys):
    held = {10: (2.00, 2.10), 11: (2.01, 2.12), 12: (2.00, 2.09)}
    study(tmp_path / "old", held)
    study(tmp_path / "new", held)
    assert compare_results.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 4 | 4 | 0 | 0 |" in out and "| 2 | 6 | 6 | 0 | 0 |" in out
    assert "Every pair in both: 1; verdicts changed: 0" in out


def test_a_changed_verdict_is_named_and_fails(tmp_path, capsys):
    study(tmp_path / "old", {10: (2.00, 2.10), 11: (2.01, 2.12), 12: (2.00, 2.09)})
    # the re-run: a's held-out values move up by 0.1 (a tie now), stage 1 by 0.003
    study(tmp_path / "new", {10: (2.10, 2.10), 11: (2.13, 2.12), 12: (2.08, 2.09)}, shift=0.003)
    # the re-run's run ids differ (as an extra override would make them): matched anyway
    for run in sorted((tmp_path / "new" / "runs").iterdir()):
        point = json.loads((run / "point.json").read_text())
        point["run_id"] += "_rerun"
        (run / "point.json").write_text(json.dumps(point))
        run.rename(run.with_name(point["run_id"]))
    assert compare_results.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    assert "| 1 | 4 | 2 | 0.0015 | 0.003 |" in out
    assert "ordering, committed: a < b" in out and "ordering, re-run:    a ≈ b" in out
    assert "- a vs b: a better -> tie" in out


def test_a_results_only_study_is_read_from_its_csv(tmp_path, capsys):
    held = {10: (2.00, 2.10), 11: (2.01, 2.12), 12: (2.00, 2.09)}
    study(tmp_path / "new", held)
    assert sweep.main(["report", f"sweep.dir={tmp_path / 'new'}"]) == 0
    old = tmp_path / "old"
    old.mkdir()
    for name in ("results.csv", "report.md"):   # as a study committed without its runs/
        (old / name).write_text((tmp_path / "new" / name).read_text())
    assert compare_results.main([str(old), str(tmp_path / "new")]) == 0
    assert "| 2 | 6 | 6 | 0 | 0 |" in capsys.readouterr().out


def test_a_folder_without_a_study_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    held = {10: (2.00, 2.10), 11: (2.01, 2.12)}
    study(tmp_path / "new", held)
    assert compare_results.main([str(tmp_path / "empty"), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1

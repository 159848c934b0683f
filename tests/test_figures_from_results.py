"""A study committed without its runs/ (sweeper/from_results.py): `sweep.py report` draws the
figures its results.csv allows (lr_curves.png; verdicts.png where it had a held-out stage), says
in one line what it did not draw and why, and leaves results.csv and report.md byte-identical;
the statistics read back from results.csv are those of the runs."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

import sweep
from configs.errors import UserError
from runs import REPO
from sweeper.config import SweepConfig
from sweeper.from_results import read_rows, report_ranking, study_config
from sweeper.plots import PALETTE, draw_lr_curves, draw_verdicts, pyplot
from sweeper.rows import collect
from sweeper.stats import summarize
from test_figures import HELD, STAGE1, legend_is_outside, synthetic  # noqa: F401 (a fixture)

RESULTS = REPO / "docs" / "results"
# the committed studies without runs/ (results.csv, report.md, figures)
STUDIES = sorted(p.parent for p in RESULTS.rglob("results.csv") if not (p.parent / "runs").exists())


def committed_only(src: Path, dst: Path) -> Path:
    """What an old study commits: results.csv and report.md, no runs/ and no sweep.json."""
    dst.mkdir(parents=True)
    for name in ("results.csv", "report.md"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture
def from_csv(synthetic, tmp_path):  # noqa: F811
    d, s, cfg = synthetic
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    return committed_only(d, tmp_path / "committed"), s


def test_results_csv_gives_the_statistics_of_the_runs(from_csv):
    d, s = from_csv
    rows = read_rows(d)
    cfg = study_config(d, rows, SweepConfig(), set())
    assert (cfg.seeds, cfg.confirm_seeds) == ([0, 1], [100, 101, 102, 103])
    again = summarize(rows, cfg)
    assert again.ranked == s.ranked == report_ranking(d)
    assert {c: sc.values for c, sc in again.scores.items()} == \
        {c: sc.values for c, sc in s.scores.items()}
    assert [(v.a, v.b, v.decided) for v in again.verdicts] == [(v.a, v.b, v.decided) for v in s.verdicts]
    assert again.extended == s.extended and \
        [st.n_bad for st in again.stats["adamw"]] == [st.n_bad for st in s.stats["adamw"]]


def test_figures_from_results_csv(from_csv):
    d, _ = from_csv
    rows = read_rows(d)
    cfg = study_config(d, rows, SweepConfig(), set())
    s = summarize(rows, cfg)
    fig = draw_lr_curves(s, cfg)
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert {n: lines[n].get_color() for n in STAGE1} == {n: PALETTE[n] for n in STAGE1}
    low, high = ax.get_ylim()
    assert high < 3.7 and low < 1.9          # the very bad lr cut, the diverged one at the edge
    from matplotlib.collections import PathCollection
    edge = [c for c in ax.collections if isinstance(c, PathCollection)
            and c.get_offset_transform() is not ax.transData]   # the diverged lr's x marks
    assert edge and all(0.9 < o[1] <= 1 for c in edge for o in c.get_offsets())   # x at the top
    assert legend_is_outside(fig, ax)
    pyplot().close(fig)
    fig = draw_verdicts(s, cfg)
    assert len(fig.axes[0].get_yticklabels()) == len(s.verdicts) == len(STAGE1) - 1
    pyplot().close(fig)


def test_report_draws_what_results_csv_allows_and_leaves_the_rest(from_csv, capsys):
    d, _ = from_csv
    before = {n: (d / n).read_bytes() for n in ("results.csv", "report.md")}
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    out = capsys.readouterr()
    assert {n: (d / n).read_bytes() for n in before} == before
    assert (d / "lr_curves.png").stat().st_size > 0 and (d / "verdicts.png").stat().st_size > 0
    assert not (d / "best_curves.png").exists() and not (d / "lr_grid_curves.png").exists()
    assert not (d / "runs").exists() and not (d / "sweep.json").exists()
    assert "drew from results.csv alone: lr_curves.png, verdicts.png" in out.out
    assert "best_curves.png, lr_grid_curves.png (they need each run's metrics.jsonl" in out.out
    assert "warning" not in out.err


def test_an_old_results_csv_without_stages_gets_no_forest_plot(from_csv, capsys):
    """Studies before stage 2 chose and scored the lr on the same seeds: no paired verdicts."""
    d, _ = from_csv
    with open(d / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"] != "2"]
    columns = [c for c in rows[0] if c not in ("stage", "final_val_loss_full")]
    with open(d / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    (d / "report.md").unlink()
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    out = capsys.readouterr().out
    assert (d / "lr_curves.png").exists() and not (d / "verdicts.png").exists()
    assert "verdicts.png (no held-out stage" in out and not (d / "report.md").exists()


def test_a_results_csv_of_something_else_is_refused(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "results.csv").write_text("name,value\na,1\n")
    with pytest.raises(UserError, match="lacks the column"):
        read_rows(d)
    assert sweep.main(["report", f"sweep.dir={d}"]) != 0


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_each_committed_study_ranks_as_its_report(study):
    """The config read off results.csv and report.md gives the ranking of report.md's table, so
    the redrawn figures show what the report says."""
    rows = read_rows(study)
    s = summarize(rows, study_config(study, rows, SweepConfig(), set()))
    assert s.ranked == report_ranking(study)


def test_a_committed_study_keeps_its_numbers(tmp_path, capsys):
    d = committed_only(RESULTS / "cpu_decisive", tmp_path / "cpu_decisive")
    before = {n: (d / n).read_bytes() for n in ("results.csv", "report.md")}
    assert sweep.main(["report", f"sweep.dir={d}"]) == 0
    assert {n: (d / n).read_bytes() for n in before} == before
    assert (d / "verdicts.png").exists() and "warning" not in capsys.readouterr().err

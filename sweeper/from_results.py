"""The figures of a study committed without its runs/ (results.csv, report.md and figures only),
redrawn from results.csv alone: `python sweep.py report sweep.dir=<study>` takes this path when
sweep.dir has a results.csv and no runs/ folder.

What a row of results.csv holds is enough for the figures drawn from final numbers, with the
same plotting code as a sweep's (sweeper/plots.py):
    lr_curves.png     each seed's value, the stage-1 mean, diverged x, the held-out star
    verdicts.png      the forest plot of the adjacent pairs, only where the study had a held-out
                      stage (stage 2): older studies chose and scored the lr on the same seeds,
                      and their report.md has no paired verdicts to draw
    grid_curves.png   a study of one numeric axis (grid_lr.png too, where a curve has 2+ lrs)
The curve figures (best_curves.png, lr_grid_curves.png, track3's) need each run's
metrics.jsonl: they are not drawn here, and the study's own command re-runs it.

results.csv and report.md are read, never written. The config comes from results.csv (seeds by
stage, the grid axes: the columns between the run's point and `status`), report.md (the metric
and the stable-range tolerance of its header lines) and sweep.json where there is one; sweep.*
on the command line wins. The ranking found is checked against report.md's table.
"""
from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Optional

from configs.errors import UserError
from sweeper.config import METRICS, SweepConfig
from sweeper.points import curve_label
from sweeper.rows import RESULT_FIELDS, SweepRow
from trainer.outputs import SUMMARY_FIELDS

POINT = ("run_id", "optimizer", "lr", "seed", "stage")
CURVE_FIGURES = ("best_curves.png", "lr_grid_curves.png")


def applies(d: Path) -> bool:
    """A committed study without its runs: results.csv and no runs/ folder."""
    return (d / "results.csv").is_file() and not (d / "runs").exists()


def cell(text: str):
    """A results.csv cell as the value it was written from (csv writes str(v); '' is None)."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_rows(d: Path, tuned_keys=()) -> list[SweepRow]:
    """results.csv's rows as SweepRows (their run directory, which does not exist, reads as a
    run without metrics). The axis columns, between the point's columns and `status`, are the
    grid (the keys in `tuned_keys`: tuned values); a row without a stage is stage 1."""
    path = d / "results.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("run_id", "optimizer", "lr", "seed", "status") if c not in header]
        if missing:
            raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: not a sweep's "
                            "results.csv")
        start = max(header.index(c) for c in POINT if c in header) + 1
        axes = header[start:header.index("status")]
        named = set(POINT) | set(axes) | set(SUMMARY_FIELDS) | {"error", "curve", "budget"}
        rows = []
        for rec in reader:
            values = {k: cell(v) for k, v in rec.items() if k is not None}
            grid = {k: values[k] for k in axes if values[k] is not None and k not in tuned_keys}
            tuned = {k: values[k] for k in axes if values[k] is not None and k in tuned_keys}
            row = SweepRow(
                run_id=rec["run_id"], curve=curve_label(rec["optimizer"], grid),
                optimizer=rec["optimizer"], lr=float(rec["lr"]), seed=int(rec["seed"]),
                stage=rec.get("stage") or "1", dir=d / "runs" / rec["run_id"],
                status=rec["status"], grid=grid, tuned=tuned, error=rec.get("error") or None,
                **{k: values.get(k) for k in SUMMARY_FIELDS[1:]},
                extra={k: v for k, v in values.items() if k not in named and k not in RESULT_FIELDS
                       and v is not None})
            if "steps_to_target" in values:
                row.steps_to_target, row.target_checked = values["steps_to_target"], True
            rows.append(row)
    return rows


def report_header(d: Path) -> dict:
    """What report.md's header says of the config: {metric, tolerance} where it says it."""
    path = d / "report.md"
    text = path.read_text() if path.is_file() else ""
    out = {}
    for line in text.splitlines()[:20]:
        metric = next((m.name for m in METRICS.values() if m.definition == line), None)
        if metric is not None:
            out["metric"] = metric
        found = re.match(r"Stable range: .* within ([0-9.]+)(%?) of the best\.", line)
        if found:
            value = float(found.group(1))
            out["tolerance"] = value / 100 if found.group(2) else value
    return out


def report_ranking(d: Path) -> list[str]:
    """The curves of report.md's ranking table, best first ([] without one)."""
    path = d / "report.md"
    lines = path.read_text().splitlines() if path.is_file() else []
    start = next((i for i, l in enumerate(lines) if l.startswith("| rank |")), None)
    out = []
    for line in lines[start + 2:] if start is not None else []:
        found = re.match(r"\| \d+ \| ([^|]+?) \|", line)
        if not found:
            break
        out.append(found.group(1))
    return out


def study_config(d: Path, rows: list[SweepRow], cli_cfg: SweepConfig,
                 cli_keys: set) -> SweepConfig:
    """The config of a study without sweep.json: its name, seeds and grid read off results.csv,
    its metric and tolerance off report.md's header; sweep.* on the command line wins."""
    grid = {}
    for r in rows:
        for k, v in r.grid.items():
            grid.setdefault(k, set()).add(v)
    found = {"name": d.name, "optimizers": list(dict.fromkeys(r.optimizer for r in rows)),
             "seeds": sorted({r.seed for r in rows if r.stage in ("1", "extend")}) or [0],
             "confirm_seeds": sorted({r.seed for r in rows if r.stage == "2"}),
             "grid": {k: sorted(v, key=str) if any(isinstance(x, str) for x in v) else sorted(v)
                      for k, v in grid.items()}, **report_header(d)}
    if "metric" not in found and any("grokking_step" in r.extra for r in rows) \
            and not any(r.final_val_loss is not None for r in rows):
        found["metric"] = "grokking_step"
    return dataclasses.replace(cli_cfg, **{k: v for k, v in found.items() if k not in cli_keys})


def draw_from_results(d: Path, cli_cfg: SweepConfig, cli_keys: set,
                      stored: Optional[SweepConfig] = None) -> tuple:
    """Draws what results.csv allows into d; returns (Summary, [files drawn], {figure: why not},
    report.md's ranking or [] when it has none). `stored`: the config of the study's sweep.json
    (with the command line's sweep.*), where it has one."""
    from sweeper.plots import draw_grid_axis, draw_grid_lr, draw_lr_curves, draw_verdicts, save
    from sweeper.report import grid_axis
    from sweeper.stats import summarize

    tuned_keys = set()
    if stored is not None:
        for axes in [stored.tune] + list(stored.tune_by_optimizer.values()):
            tuned_keys |= {k for a in axes for k in a}
    rows = read_rows(d, tuned_keys)
    if not rows:
        raise UserError(f"{d / 'results.csv'} has no rows: nothing to draw")
    cfg = stored if stored is not None else study_config(d, rows, cli_cfg, cli_keys)
    s = summarize(rows, cfg)
    drawn, skipped = [], {}
    save(draw_lr_curves(s, cfg), d / "lr_curves.png")
    drawn.append("lr_curves.png")
    held = any(r.stage == "2" for r in rows)
    if len(s.ranked) > 1 and held:
        save(draw_verdicts(s, cfg), d / "verdicts.png")
        drawn.append("verdicts.png")
    elif len(s.ranked) > 1:
        skipped["verdicts.png"] = ("no held-out stage: the lrs were chosen and scored on the "
                                   "same seeds, so there are no paired verdicts to draw")
    key = grid_axis(cfg)
    if key is not None:
        save(draw_grid_axis(s, cfg, key), d / "grid_curves.png")
        drawn.append("grid_curves.png")
        if any(len(per) > 1 for per in s.stats.values()):
            save(draw_grid_lr(s, cfg, key), d / "grid_lr.png")
            drawn.append("grid_lr.png")
    for name in CURVE_FIGURES:
        skipped[name] = "they need each run's metrics.jsonl: re-run the study"
    if any(r.stage == "tune" for r in rows):
        skipped["tuning_curves.png"] = "the tuning's axes are not in results.csv"
    return s, drawn, skipped, report_ranking(d)

"""A sweep's runs read back as rows: SweepRow, one typed row per run directory (its point, where
it is, how it stands, its results), and collect, which reads every run of a sweep.dir into them.
The statistics, the report, the figures and the stages all start from these rows; results.csv
is their one flat form (SweepRow.csv_fields).

    <sweep.dir>/runs/<run id>/point.json     the point (sweeper/points.py's Point)
    <sweep.dir>/runs/<run id>/summary.json   its results (trainer/outputs.py's RunSummary)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sweeper.points import curve_label
from sweeper.runner import RunLock, log_error
from trainer.outputs import SUMMARY_FIELDS, Status, read_json

# The named results of a row: summary.json's fields, and the steps to sweep.target the sweeper
# measures itself (sweeper/stats.py's with_targets).
RESULT_FIELDS = SUMMARY_FIELDS[1:] + ("steps_to_target",)


@dataclass
class SweepRow:
    """One run of a sweep as it stands."""
    run_id: str
    curve: str                  # optimizer and grid values (sweeper/points.py's curve_label)
    optimizer: str
    lr: float
    seed: int
    stage: str                  # 1 | extend | tune | 2 | budget ("1": a run made before stages)
    dir: Path                   # the run directory
    status: str                 # a result (completed, diverged) or how it stands (Status)
    budget: Optional[float] = None   # stage budget: the baseline's train.max_iters multiple
    grid: dict = field(default_factory=dict)    # {override key: value} of the extra axes
    tuned: dict = field(default_factory=dict)   # {key: value} of sweep.tune away from the defaults
    error: Optional[str] = None                 # why a failed run failed
    # summary.json's fields (None where a run has not written them)
    final_val_loss: Optional[float] = None
    final_val_loss_full: Optional[float] = None
    best_val_loss: Optional[float] = None
    steps: Optional[int] = None
    tokens: Optional[int] = None
    wall_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    diverged_at_step: Optional[int] = None
    # summary.json's other scalar fields (the task's, e.g. grokking_step)
    extra: dict = field(default_factory=dict)
    # With sweep.target: the first scheduled evaluation with val/loss <= target (None: never),
    # once with_targets has measured it (target_checked); results.csv has the column then.
    steps_to_target: Optional[int] = None
    target_checked: bool = False

    @property
    def axes(self) -> list:
        """The keys of its grid and tuned values: results.csv's axis columns."""
        return list(self.grid) + list(self.tuned)

    def value(self, column: str) -> Any:
        """A results column by name (what a Metric scores by): a named result, else the task's
        summary field; None where the run has none."""
        return getattr(self, column) if column in RESULT_FIELDS else self.extra.get(column)

    def score(self, column: str) -> Optional[float]:
        """`column` of a completed run with a finite number there, else None: a bad run
        (diverged, or no value: did not grok, did not reach the target)."""
        v = self.value(column)
        ok = self.status == Status.COMPLETED and isinstance(v, (int, float)) and math.isfinite(v)
        return v if ok else None

    def csv_fields(self) -> dict:
        """The row as results.csv's {column: value} (sweeper/report.py's write_results picks and
        orders the columns)."""
        out = {"run_id": self.run_id, "curve": self.curve, "optimizer": self.optimizer,
               "lr": self.lr, "seed": self.seed, "stage": self.stage, "budget": self.budget,
               **self.grid, **self.tuned}
        out.update({k: getattr(self, k) for k in SUMMARY_FIELDS[1:]}, status=self.status)
        out.update({k: v for k, v in self.extra.items() if k not in out})
        out["error"] = self.error
        if self.target_checked and "steps_to_target" not in out:
            out["steps_to_target"] = self.steps_to_target
        return out


def run_status(run_dir: Path, summary: dict) -> tuple[str, str | None]:
    """(status, error) of a run from its summary.json, exit.json, train.log and lock."""
    status = summary.get("status")
    if status in Status.RESULTS:
        return status, None
    ended = read_json(run_dir / "exit.json") or {}
    if status == Status.FAILED or ended.get("status") == Status.FAILED:
        return Status.FAILED, (ended.get("error") or summary.get("error")
                               or log_error(run_dir / "train.log"))
    if RunLock(run_dir).held_elsewhere() is not None:
        return Status.RUNNING, None
    return (Status.INTERRUPTED if status == Status.INTERRUPTED else Status.UNFINISHED), None


def collect(d: Path) -> list[SweepRow]:
    """A row per run directory holding a point.json (every run this sweep.dir has seen), in the
    order of their run ids."""
    rows = []
    for point_file in sorted((d / "runs").glob("*/point.json")):
        run_dir = point_file.parent
        point = read_json(point_file)
        if point is None:
            continue
        summary = read_json(run_dir / "summary.json") or {}
        status, error = run_status(run_dir, summary)
        grid, tuned = point["grid"], point.get("tuned", {})
        # the task's fields: any other scalar of summary.json not named like a column already
        named = {"run_id", "curve", "optimizer", "lr", "seed", "stage", "budget", *grid, *tuned,
                 *SUMMARY_FIELDS, "error"}
        extra = {k: v for k, v in summary.items()
                 if k not in named and not isinstance(v, (dict, list))}
        rows.append(SweepRow(
            run_id=point["run_id"], curve=curve_label(point["optimizer"], grid),
            optimizer=point["optimizer"], lr=point["lr"], seed=point["seed"],
            stage=point.get("stage", "1"), dir=run_dir, status=status,
            budget=point.get("budget"), grid=grid, tuned=tuned, error=error,
            **{k: summary.get(k) for k in SUMMARY_FIELDS[1:]}, extra=extra))
    return rows

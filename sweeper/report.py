"""The outputs of a sweep in sweep.dir, rebuilt from its runs: results.csv (a row per run),
report.md (best lr, stable range, the metric's columns, ranking, every lr, failed runs),
lr_curves.png (the metric against lr per curve) and best_curves.png (the runs at each curve's
best lr). Words, digits and curves that depend on the metric come from its Metric.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable, Dict, NamedTuple

from sweeper.config import fmt
from sweeper.runner import collect
from sweeper.stats import CurveStats, Summary, compare, neighbour_costs, summarize
from trainer.outputs import SUMMARY_FIELDS, Status, read_metrics, write_atomic


def write_results(d: Path, rows: list[dict]) -> None:
    first = ["run_id", "optimizer", "lr", "seed"]
    axes = sorted({k for r in rows for k in r["_axes"]})
    known = set(first + axes + list(SUMMARY_FIELDS)) | {"curve", "error", "_dir", "_axes"}
    extra = sorted({k for r in rows for k in r} - known)   # the task's, e.g. grokking_step
    columns = first + axes + list(SUMMARY_FIELDS) + extra + ["error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r["curve"], r["lr"], r["seed"])):
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_atomic(d / "results.csv", out.getvalue())


def fmt_tokens(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


# ---------------------------------------------------------------------------------------------
# report.md

def to_target_cell(c: CurveStats, s: Summary) -> str:
    reach = c.to_target
    if reach.mean_tokens is None:
        return "not reached"
    return f"{fmt_tokens(reach.mean_tokens)} ({reach.reached}/{reach.runs} seeds)"


# The columns a Metric can pick (Metric.columns): the cell of a ranked curve.
COLUMNS: Dict[str, Callable[[CurveStats, Summary], str]] = {
    "neighbours": lambda c, s: neighbour_costs(c, s.metric),
    "to_target": to_target_cell,
    "reached_at_best": lambda c, s: f"{len(c.best.values)}/{c.best.n}",
    "reached_all": lambda c, s: f"{c.reached_all}/{c.runs_all}",
}


def stable_cells(c: CurveStats) -> tuple[str, str]:
    """(stable lrs, their width in decades)."""
    if not c.stable:
        return "none", "-"
    lo, hi, n = c.stable[0].lr, c.stable[-1].lr, len(c.stable)
    return f"{lo:.3g}..{hi:.3g} ({n} lr{'s' if n > 1 else ''})", f"{math.log10(hi / lo):.2f}"


def ranking_table(s: Summary) -> list[str]:
    m = s.metric
    header = ["rank", "optimizer", "best lr", m.label, "stable lrs", "width (decades)"]
    header += [title.format(target=fmt(s.target)) for _, title in m.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, curve in enumerate(s.ranked, 1):
        c = s.curves[curve]
        b = c.best
        cells = [str(rank), curve, f"{b.lr:.3g}", f"{m.format(b.mean, b.std)} (n={len(b.values)})",
                 *stable_cells(c)]
        cells += [COLUMNS[kind](c, s) for kind, _ in m.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def every_lr_table(s: Summary) -> list[str]:
    curves = list(s.stats)
    lrs = sorted({st.lr for per in s.stats.values() for st in per})
    lines = ["", "## Every learning rate", "",
             "mean ± std (runs that finished; diverged or did not grok: marked)", "",
             "| lr | " + " | ".join(curves) + " |", "|" + "---|" * (len(curves) + 1)]
    for lr in lrs:
        cells = []
        for curve in curves:
            st = next((x for x in s.stats[curve] if x.lr == lr), None)
            if st is None:
                cells.append("")
                continue
            cell = s.metric.format(st.mean, st.std) if st.values else ""
            if st.n_bad:
                cell += f" ({st.n_bad}/{st.n} {s.metric.bad_short})"
            cells.append(cell.strip())
        lines.append(f"| {lr:.3g} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(rows: list[dict], cfg, setup: list[str], s: Summary) -> str:
    count = {k: sum(r["status"] == k for r in rows) for k in Status.ALL}
    lines = [f"# Sweep `{cfg.name}`", "",
             f"Setup of every run (train.py overrides): `{' '.join(setup) or '(defaults)'}`", "",
             f"Runs: {len(rows)} ({', '.join(f'{v} {k}' for k, v in count.items() if v)}); "
             "a row each in results.csv. Curves: lr_curves.png, best_curves.png.", ""]
    lines += s.metric.intro_lines(cfg.tolerance, s.target, cfg.target_loss is not None) + [""]
    lines += ranking_table(s)
    if len(s.ranked) > 1:
        lines += ["", "## Ranking", ""]
        for a, b in zip(s.ranked, s.ranked[1:]):
            lines.append(f"- {b} after {a}: "
                         + compare(s.curves[a].best, s.curves[b].best, s.metric))
    if s.stats:
        lines += every_lr_table(s)
    failed = [r for r in rows if r["status"] == Status.FAILED]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r['run_id']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots

class Figure(NamedTuple):
    fig: object
    ax: object
    plt: object


def new_figure() -> Figure:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    return Figure(fig, ax, plt)


def save_figure(f: Figure, path: Path, legend: bool) -> None:
    if legend:
        f.ax.legend(fontsize=8)
    write_atomic(path, lambda out: f.fig.savefig(out, format="png", dpi=120, bbox_inches="tight"))
    f.plt.close(f.fig)


def plot_lr_curves(s: Summary, cfg, path: Path) -> None:
    f = new_figure()
    ax = f.ax
    for i, (curve, per_lr) in enumerate(s.stats.items()):
        color = f"C{i % 10}"
        ok = [st for st in per_lr if st.values]
        if ok:
            ax.plot([st.lr for st in ok], [st.mean for st in ok], "o-", color=color, label=curve)
            ax.fill_between([st.lr for st in ok], [min(st.values) for st in ok],
                            [max(st.values) for st in ok], color=color, alpha=0.2, lw=0)
        bad = [st.lr for st in per_lr if st.n_bad]
        if bad:  # at the top of the axis, whatever the scale
            ax.scatter(bad, [0.97 - 0.025 * (i % 4)] * len(bad), marker="x", color=color,
                       transform=ax.get_xaxis_transform(), label=None if ok else curve)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(s.metric.axis_label)
    ax.set_title(f"{cfg.name}: mean over seeds, band min..max, x = {s.metric.bad_marks}",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    save_figure(f, path, legend=bool(s.stats))


def plot_best_curves(s: Summary, cfg, path: Path) -> None:
    """The runs at each curve's best lr: the Metric's series (val loss vs tokens; val and train
    accuracy vs step) of every seed."""
    m = s.metric
    f = new_figure()
    ax = f.ax
    for i, curve in enumerate(s.ranked):
        best = s.curves[curve].best
        for k, r in enumerate(best.runs):
            recs = read_metrics(r["_dir"])
            label = f"{curve} (lr {best.lr:.3g})" if k == 0 else None
            for series in m.series:
                pts = [x for x in recs if x.get(series.key) is not None]
                ax.plot([x[m.x_key] for x in pts], [x[series.key] for x in pts],
                        *([series.fmt] if series.fmt else []), color=f"C{i % 10}", lw=1,
                        label=label if series.labelled else None)
    if m.x_scale is not None:
        ax.set_xscale(m.x_scale[0], **dict(m.x_scale[1]))
    if s.target is not None:
        ax.axhline(s.target, color="gray", ls="--", lw=0.8, label="target loss")
    ax.set(xlabel=m.x_label, ylabel=m.y_label)
    ax.set_title(f"{cfg.name}: every seed at each optimizer's best lr", fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(f, path, legend=bool(s.ranked))


def write_outputs(d: Path, cfg, setup: list[str]) -> Summary:
    rows = collect(d)
    write_results(d, rows)
    s = summarize(rows, cfg)
    plot_lr_curves(s, cfg, d / "lr_curves.png")
    plot_best_curves(s, cfg, d / "best_curves.png")
    write_atomic(d / "report.md", report_markdown(rows, cfg, setup, s))
    return s

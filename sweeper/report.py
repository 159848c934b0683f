"""The outputs of a sweep in sweep.dir, rebuilt from its runs: results.csv (a row per run),
report.md (chosen lr and its held-out score, stable range, the metric's columns, paired verdicts,
every pair, speedups, Track 3's rule with sweep.target, the ordering at each value of a numeric
grid axis, the tuning, every lr, failed runs) and the figures (sweeper/plots.py). Words, digits
and curves that depend on the metric come from its Metric.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable, Dict, Optional

from sweeper.config import fmt
from sweeper.paired import mean_interval
from sweeper.points import curve_label
from sweeper.rows import SweepRow, collect
from sweeper.stats import UNTUNED, CurveStats, Summary, chain, neighbour_costs, summarize
from trainer.outputs import SUMMARY_FIELDS, Status, write_atomic


def write_results(d: Path, rows: list[SweepRow]) -> None:
    first = ["run_id", "optimizer", "lr", "seed", "stage"]
    axes = sorted({k for r in rows for k in r.axes})
    flat = [r.csv_fields() for r in sorted(rows, key=lambda r: (r.curve, r.lr, r.seed))]
    known = set(first + axes + list(SUMMARY_FIELDS)) | {"curve", "error", "budget"}
    extra = sorted({k for f in flat for k in f} - known)   # the task's, e.g. grokking_step
    columns = first + axes + list(SUMMARY_FIELDS) + extra + ["error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for f in flat:
        writer.writerow({k: ("" if f.get(k) is None else f.get(k)) for k in columns})
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


def score_cell(s: Summary, curve: str) -> str:
    sc, m = s.scores[curve], s.metric
    mean, low, high = sc.interval
    if not sc.values:
        return f"none ({sc.n_bad}/{sc.n} {m.bad_short})"
    ci = f" ± {fmt((high - low) / 2, m.digits)}" if len(sc.values) > 1 else ""
    bad = f", {sc.n_bad}/{sc.n} {m.bad_short}" if sc.n_bad else ""
    return f"{mean:.{m.digits}f}{ci} (n={len(sc.values)}{bad})"


def bracket_cell(s: Summary, curve: str) -> str:
    c = s.curves[curve]
    at_end = c.best is c.per_lr[0] or c.best is c.per_lr[-1]
    added = len(s.extended.get(curve, []))
    return ("at the grid's end" if at_end and len(c.per_lr) > 1 else "inside") + \
        (f" ({added} lr{'s' if added > 1 else ''} added)" if added else "")


def ranking_table(s: Summary) -> list[str]:
    m = s.metric
    held = any(sc.held_out for sc in s.scores.values())
    header = ["rank", "optimizer", "chosen lr",
              f"{m.label}{', held-out seeds' if held else ''} (mean ± 95% CI)",
              "stage-1 mean at that lr", "stable lrs", "width (decades)", "best lr"]
    header += [title.format(target=fmt(s.target)) for _, title in m.columns]
    tuning = any(c.tuning is not None for c in s.curves.values())
    if tuning:
        header.insert(3, "tuned (sweep.tune)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, curve in enumerate(s.ranked, 1):
        c = s.curves[curve]
        b = c.chosen
        cells = [str(rank), curve, f"{b.lr:.3g}", score_cell(s, curve),
                 f"{m.format(b.mean, b.std)} (n={len(b.values)})", *stable_cells(c),
                 bracket_cell(s, curve)]
        if tuning:
            cells.insert(3, tuned_cell(c))
        cells += [COLUMNS[kind](c, s) for kind, _ in m.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def tuned_cell(c: CurveStats) -> str:
    """'weight_decay=0.4, lr 0.004 -> 0.008 (2 rounds)': the tuned values at the chosen point."""
    t = c.tuning
    if t is None:
        return "lr only"
    keys = list(dict.fromkeys(a.key for a in t.axes if a.key != "optimizer.lr"))
    parts = []
    for key in keys:
        last = [a for a in t.axes if a.key == key][-1]
        value = t.tuned.get(key, last.default)
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}" + (" (default)" if key not in t.tuned else ""))
    if t.lr != c.best.lr:
        parts.append(f"lr {c.best.lr:.3g} -> {t.lr:.3g}")
    rounds = f" ({t.rounds} rounds)" if t.rounds > 1 else ""
    return ", ".join(parts) + rounds + ("" if t.complete else " (tuning unfinished)")


def tuning_lines(s: Summary, rows: list[SweepRow]) -> list[str]:
    """Each axis sweep of the descent at the point it started from, and every curve's runs by
    stage: what its tuning cost."""
    m = s.metric
    lines = ["", "## Tuning", "",
             "Coordinate descent on the tuning seeds: each axis of sweep.tune swept at the best "
             "point so far (round 1 from the stage-1 best lr; later rounds sweep the lr again "
             "first), bracketed while its best value is at an end (* = added); a value replaces "
             "the current one only when better by more than the resolve difference (a tie keeps "
             "it). Chosen values in bold; tuning_curves.png plots each axis.", ""]
    for curve in s.ranked:
        c = s.curves[curve]
        for a in (c.tuning.axes if c.tuning else []):
            cells = []
            for v, st in a.per_value:
                text = "running" if st is None else (m.format(st.mean, st.std) if st.values else "")
                if st is not None and st.n_bad:
                    text += f" ({st.n_bad}/{st.n} {m.bad_short})"
                mark = "**" if a.done and v == a.chosen else ""
                star = "*" if v in a.extended else ""
                cells.append(f"{mark}{v:g}{star}" if isinstance(v, float) else f"{mark}{v}{star}")
                cells[-1] += f"{' (default)' if v == a.default and a.key != 'optimizer.lr' else ''}: " \
                             f"{text.strip()}{mark}"
            lines.append(f"- {curve}, round {a.round}, {a.key}: " + "; ".join(cells))
    lines += tuning_gain_lines(s, rows)
    stages = sorted({r.stage for r in rows})
    lines += ["", "Runs per curve and stage (every tuning run counted):", "",
              "| curve | " + " | ".join(stages) + " | all |", "|" + "---|" * (len(stages) + 2)]
    for curve in sorted({r.curve for r in rows}):
        n = [sum(r.curve == curve and r.stage == st for r in rows) for st in stages]
        lines.append(f"| {curve} | " + " | ".join(map(str, n)) + f" | {sum(n)} |")
    return lines


def tuning_gain_lines(s: Summary, rows: list[SweepRow]) -> list[str]:
    """What the tuning bought (sweep.confirm_untuned): each moved curve's tuned point minus its
    untuned one (stage-1 best lr at the defaults) on the held-out seeds, paired."""
    from sweeper.paired import paired

    m, out = s.metric, []
    for curve in s.ranked:
        untuned = [r for r in rows if r.curve == curve and r.stage == UNTUNED
                   and r.status in Status.RESULTS]
        if not untuned:
            continue
        values = {r.seed: v for r in untuned if (v := r.score(s.column)) is not None}
        c, tuned = s.curves[curve], s.scores[curve].values
        pt = paired("tuned", tuned, "untuned", values)
        verdict = ("tie" if not pt.decided else "the tuned point better" if pt.mean < 0
                   else "the untuned point better")
        bad = len(untuned) - len(values)
        mean, low, high = mean_interval(list(values.values()))
        out.append(f"- {curve} ({tuned_cell(c)}): untuned (lr {c.best.lr:g}, defaults) "
                   f"{mean:.{m.digits}f} [{low:.{m.digits}f}, {high:.{m.digits}f}]"
                   + (f" ({bad}/{len(untuned)} {m.bad_short})" if bad else "")
                   + f"; tuned - untuned = {pt.mean:+.{m.digits}f} {m.unit}, 95% CI "
                   f"[{pt.low:+.{m.digits}f}, {pt.high:+.{m.digits}f}], n = {pt.n}: {verdict}")
    if not out:
        return []
    return ["", "What the tuning bought (sweep.confirm_untuned): each curve the descent moved, "
            "scored at its untuned point too, on the same held-out seeds, paired:", "", *out]


def verdict_lines(s: Summary, resolve: float) -> list[str]:
    m = s.metric
    held = all(sc.held_out for sc in s.scores.values())
    lines = ["", "## Verdicts", "",
             ("Paired over the held-out seeds (stage 2): the lrs were chosen on other seeds."
              if held else "Paired over the seeds that also chose the lrs (no held-out stage): "
              "the best of a grid is biased low, so read these as provisional."),
             "A difference is called only when its 95% t interval excludes 0; otherwise it is a "
             "tie at this budget, with the smallest difference the study could resolve.", "",
             f"Ordering: {chain(s)}", ""]
    lines += [f"- {v.verdict(m.unit, m.digits, resolve)}" for v in s.verdicts]
    if len(s.pairs) > len(s.verdicts):
        lines += ["", "Every pair (a - b; negative: a better):", "",
                  "| a | b | a - b | 95% t CI | p | bootstrap CI | n | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in s.pairs:
            lines.append(f"| {v.a} | {v.b} | {fmt(v.mean, m.digits)} | [{fmt(v.low, m.digits)}, "
                         f"{fmt(v.high, m.digits)}] | {v.p_value:.2g} | [{fmt(v.boot_low, m.digits)}, "
                         f"{fmt(v.boot_high, m.digits)}] | {v.n} | "
                         f"{(v.winner() + ' better') if v.decided else 'tie'} |")
    return lines


def interval_text(values: list, digits: int = 2) -> str:
    mean, low, high = mean_interval(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]")


def speedup_lines(s: Summary, cfg) -> list[str]:
    sp = s.speedups
    if sp is None or not sp.curves:
        return []
    if sp.per_value:   # a grid study: each curve against the baseline at its own grid values
        lines = ["", f"## Speedup over {sp.baseline} at the same {', '.join(sorted(cfg.grid))}",
                 "", f"Tokens: the tokens of {sp.baseline} at a curve's own grid values / the "
                 "tokens the curve's eval curve needs to reach that run's final val/loss at the "
                 "same seed (interpolated between evaluations); mean [95% t CI] over seeds.", ""]
    else:
        lines = ["", f"## Speedup over {sp.baseline}", "",
                 f"Tokens: {sp.baseline}'s tokens / the tokens each optimizer's eval curve needs to "
                 f"reach {sp.baseline}'s final val/loss at the same seed (interpolated between "
                 "evaluations); mean [95% t CI] over seeds.", ""]
    fitted = any(fit is not None for fit, _ in sp.fits.values())
    header = ["optimizer"] + ["over"] * sp.per_value + ["speedup in tokens", "reached"]
    if fitted:
        header.append("D_eff / D (Wen et al.)")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in sp.curves:
        got = [r for r in c.ratios.values() if r is not None]
        cells = [c.curve] + [c.baseline] * sp.per_value + [interval_text(got),
                                                            f"{len(got)}/{len(c.ratios)}"]
        if fitted:
            cells.append(interval_text(list(c.effective.values())))
        lines.append("| " + " | ".join(cells) + " |")
    for base, (f, budgets) in sp.fits.items():
        if f is not None:
            lines += ["", f"D_eff: {base}'s {s.column} at {len(budgets)} budgets fitted by "
                      f"L(D) = alpha (D / {f.scale:.3g})^-beta + gamma: alpha {f.alpha:.4f}, beta "
                      f"{f.beta:.4f}, gamma {f.gamma:.4f}; residuals "
                      + ", ".join(f"{r:+.4f}" for r in f.residuals) + " at "
                      + ", ".join(f"{fmt_tokens(d)} (n={n})" for d, _, n in budgets)
                      + ". An optimizer's loss L at D tokens is worth D_eff = D(L) of the "
                      "baseline; beyond the largest budget D_eff is an extrapolation."]
    unfitted = [base for base, (f, budgets) in sp.fits.items() if f is None and budgets]
    if unfitted:
        lines += ["", f"(D_eff needs {', '.join(unfitted)} at 3 or more budgets: "
                  "sweep.baseline_budgets)"]
    return lines


def every_lr_table(s: Summary) -> list[str]:
    curves = list(s.stats)
    lrs = sorted({st.lr for per in s.stats.values() for st in per})
    lines = ["", "## Every learning rate (stage 1)", "",
             "mean ± std (runs that finished; diverged or did not grok: marked; * = added by "
             "bracketing)", "",
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
        mark = "*" if any(lr in v for v in s.extended.values()) else ""
        lines.append(f"| {lr:.3g}{mark} | " + " | ".join(cells) + " |")
    return lines


def stage_counts(rows: list[SweepRow]) -> dict:
    out = {}
    for r in rows:
        out[r.stage] = out.get(r.stage, 0) + 1
    return dict(sorted(out.items()))


def report_markdown(rows: list[SweepRow], cfg, setup: list[str], s: Summary) -> str:
    count = {k: sum(r.status == k for r in rows) for k in Status.ALL}
    lines = [f"# Sweep `{cfg.name}`", "",
             f"Setup of every run (train.py overrides): `{' '.join(setup) or '(defaults)'}`", "",
             f"Runs: {len(rows)} ({', '.join(f'{v} {k}' for k, v in count.items() if v)}); "
             "a row each in results.csv. Curves: lr_curves.png, best_curves.png.", ""]
    lines += s.metric.intro_lines(cfg.tolerance, s.target, cfg.target_loss is not None)
    lines += [f"Scored by `{s.column}`" + (" (the final model on the whole val split)"
              if s.column == "final_val_loss_full" else "") + ". Chosen lr: each curve's stage-1 "
              f"best (seeds {list(cfg.seeds)}); " + (f"scored on the held-out seeds "
              f"{list(cfg.confirm_seeds)}." if cfg.confirm_seeds else "scored on those seeds."),
              "Runs by stage: " + ", ".join(f"{k} {v}" for k, v in stage_counts(rows).items()), ""]
    lines += ranking_table(s)
    if cfg.target is not None and s.ranked:
        from sweeper.report_track3 import section, summarize_track3
        lines += section(summarize_track3(s, cfg), cfg)
    if len(s.ranked) > 1:
        lines += verdict_lines(s, cfg.resolve if cfg.resolve is not None else s.metric.resolve)
    if (key := grid_axis(cfg)) is not None and s.ranked:
        lines += grid_value_lines(s, cfg, key)
    if any(c.tuning is not None for c in s.curves.values()):
        lines += tuning_lines(s, rows)
    lines += speedup_lines(s, cfg)
    if s.stats:
        lines += every_lr_table(s)
    failed = [r for r in rows if r.status == Status.FAILED]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r.run_id}`: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def grid_axis(cfg) -> Optional[str]:
    """The sweep's one numeric extra axis (sweep.grid with one key, no listed variants), if any:
    a study of that axis (batch size, width) gets grid_curves.png."""
    if len(cfg.grid) != 1 or cfg.grid_points or cfg.grid_points_by_optimizer:
        return None
    (key, values), = cfg.grid.items()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
    return key if numeric and len(values) > 1 else None


def grid_value_lines(s: Summary, cfg, key: str) -> list[str]:
    """The ordering at each value of the axis, with the paired verdict of each adjacent pair."""
    from sweeper.paired import paired

    m = s.metric
    lines = ["", f"## At each {key}", "",
             "Each value's curves ranked by their scores, adjacent pairs by the paired 95% t "
             "interval ('<' decided, '≈' a tie):", ""]
    for v in sorted(cfg.grid[key]):
        ranked = [c for c in s.ranked if c.endswith(f"{key.rsplit('.', 1)[-1]}={v}")]
        if not ranked:
            continue
        chain, notes = ranked[0].split(" ")[0], []
        for a, b in zip(ranked, ranked[1:]):
            pt = paired(a, s.scores[a].values, b, s.scores[b].values)
            chain += f" {'<' if pt.decided else '≈'} {b.split(' ')[0]}"
            notes.append(f"{a.split(' ')[0]} - {b.split(' ')[0]} = {pt.mean:+.{m.digits}f} "
                         f"[{pt.low:+.{m.digits}f}, {pt.high:+.{m.digits}f}]")
        lines.append(f"- {key.rsplit('.', 1)[-1]}={v}: {chain}" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines + pair_by_value_table(s, cfg, key)


def pair_by_value_table(s: Summary, cfg, key: str) -> list[str]:
    """Every pair of optimizers at each value of the axis, side by side: does a difference move
    along the axis (NAMO-D - NAMO with width)? Bold: decided (the interval excludes 0)."""
    from sweeper.paired import paired

    m, values, short = s.metric, sorted(cfg.grid[key]), key.rsplit(".", 1)[-1]
    present = {c.split(" ")[0] for c in s.ranked}
    names = [o for o in dict.fromkeys(cfg.optimizers) if o in present]   # the sweep's order
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            cells = []
            for v in values:
                ca, cb = (curve_label(o, {key: v}) for o in (a, b))
                if ca not in s.scores or cb not in s.scores:
                    cells.append("-")
                    continue
                pt = paired(ca, s.scores[ca].values, cb, s.scores[cb].values)
                cell = f"{pt.mean:+.{m.digits}f} [{pt.low:+.{m.digits}f}, {pt.high:+.{m.digits}f}]"
                cells.append(f"**{cell}**" if pt.decided else cell)
            rows.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", f"Every pair at each {short} (a - b, {m.unit}, paired 95% t interval; bold: "
            "decided, the interval excludes 0):", "",
            "| pair | " + " | ".join(f"{short}={v}" for v in values) + " |",
            "|---|" + "---|" * len(values), *rows]


def write_outputs(d: Path, cfg, setup: list[str]) -> Summary:
    from sweeper.plots import write_figures
    from sweeper.stats import with_targets
    rows = with_targets(collect(d), cfg)
    write_results(d, rows)
    s = summarize(rows, cfg)
    write_figures(d, s, cfg, grid_axis(cfg))
    if cfg.target is not None and s.ranked:
        from sweeper.report_track3 import plot_curves, plot_steps, summarize_track3
        t = summarize_track3(s, cfg)
        plot_curves(t, cfg, d / "track3_curves.png")
        plot_steps(t, cfg, d / "steps_to_target.png")
    write_atomic(d / "report.md", report_markdown(rows, cfg, setup, s))
    return s

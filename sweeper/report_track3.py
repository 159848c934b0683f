"""report.md's Track-3 section and its plots, for a sweep with sweep.target: each curve's steps
to the target by Track 3's rule (sweeper/track3.py) over its scoring runs, the pairwise rule
for every pair beside our paired t interval on the final val loss at equal steps, which rule
decides (sweep.decide) and where the two disagree; track3_curves.png (mean val loss against
step, the target and each curve's passing step) and steps_to_target.png (each run's own steps
to the target, mean with its 95% interval, beside the curve's Track-3 step).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List

from sweeper import track3
from sweeper.config import METRICS, fmt
from sweeper.paired import Paired, mean_interval, paired
from sweeper.stats import Summary, val_curve
from trainer.outputs import Status


@dataclass
class Track3Summary:
    target: float
    margin: float
    entries: Dict[str, track3.Entry]     # by curve
    ranked: List[str]                    # Track 3's order
    pairs: List[tuple]                   # (Pairwise a vs b, Paired final loss a - b), a ranked first
    final_column: str
    final_std: Dict[str, float]          # measured seed std of the final loss per curve
    rule: str                            # "track3" or "paired": what the headline rests on


def summarize_track3(s: Summary, cfg) -> Track3Summary:
    m = track3.margin(cfg.target_sigma, cfg.target_p)
    final_column = METRICS["final_val_loss"].column(
        [r for runs in s.scored.values() for r in runs])
    entries, finals = {}, {}
    for curve in s.ranked:
        runs = [r for r in s.scored.get(curve, []) if r.status in Status.RESULTS]
        entries[curve] = track3.score(curve, {r.seed: val_curve(r.dir) for r in runs},
                                      cfg.target, m)
        finals[curve] = {r.seed: v for r in runs if (v := r.score(final_column)) is not None}
    ranked = [e.name for e in track3.rank(list(entries.values()))]
    pairs = [(track3.pairwise(entries[a], entries[b], cfg.target_loss_per_step, m),
              paired(a, finals[a], b, finals[b]))
             for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    std = {c: statistics.stdev(v.values()) if len(v) > 1 else math.nan for c, v in finals.items()}
    return Track3Summary(cfg.target, m, entries, ranked, pairs, final_column, std, cfg.rule)


def agreement(pw: track3.Pairwise, pt: Paired) -> str:
    """Do Track 3's pairwise rule and the paired interval on the final loss say the same?"""
    t3 = "a" if pw.a_beats_b else "-"
    t = "-" if not pt.decided else ("a" if pt.winner() == pw.a else "b")
    if pw.lhs is None:
        return "n/a (no step count)"
    return "agree" if t3 == t else "disagree"


def section(t: Track3Summary, cfg) -> List[str]:
    decides = ("Track 3's rule decides this sweep (sweep.decide=track3): steps to the target "
               "and the pairwise rule; the paired interval on the final loss is shown beside it."
               if t.rule == "track3" else
               "The paired interval at the fixed budget decides this sweep (sweep.decide=paired); "
               "Track 3's steps to the target and its pairwise rule are shown beside it.")
    lines = ["", f"## Track 3's rule: steps to val loss {t.target:g}", "",
             f"An entry's steps: the earliest scheduled evaluation step, the same for every seed, at "
             f"which the mean val loss over all its scoring runs (n, diverged ones included: a "
             f"missing or non-finite loss makes the mean infinite) passes `(target - mean) * "
             f"sqrt(n) >= {t.margin:g}` (one-sided z-test, sigma {cfg.target_sigma:g} "
             f"(sweep.target_sigma), p < {cfg.target_p:g}); no per-run stop. Pairwise, a beats b "
             f"when `((loss_b - loss_a) + (steps_b - steps_a) * {cfg.target_loss_per_step:g}) / "
             f"sqrt(1/n_a + 1/n_b) >= {t.margin:g}`.", "", decides, "",
             "| rank | optimizer | steps | evidence | (target - mean) sqrt(n) | each run's first "
             "step <= target: mean [95% CI] (reached) | seed std of the final loss (assumed "
             f"{cfg.target_sigma:g}) |", "|---|---|---|---|---|---|---|"]
    for rank, curve in enumerate(t.ranked, 1):
        e = t.entries[curve]
        reached = [v for v in e.per_seed.values() if v is not None]
        mean, low, high = mean_interval(reached)
        own = "-" if not reached else f"{mean:.0f}" + ("" if math.isnan(low) else
                                                       f" [{low:.0f}, {high:.0f}]")
        steps = str(e.step) if e.passed else "not reached"
        mark = "✓" if e.passed else "Ⓧ"
        where = "" if e.passed else (f" at step {e.steps[-1]}" if e.steps else "")
        lines.append(f"| {rank} | {curve} | {steps} | {fmt(e.mean)} (n={e.n}){where} {mark} | "
                     f"{e.lhs:+.4f} | {own} ({len(reached)}/{e.n}) | {fmt(t.final_std[curve])} |")
    if t.pairs:
        lines += ["", f"Every pair, a ranked before b by Track 3's rule. Pairwise: its left-hand "
                  f"side (a beats b when >= {t.margin:g}). Paired: a - b on `{t.final_column}` at "
                  "the same step count (every run's last step), 95% t interval over the shared "
                  "seeds.", "",
                  "| a | b | pairwise LHS | Track 3 | final loss a - b [95% CI] (n) | paired | rules |",
                  "|---|---|---|---|---|---|---|"]
        disagree = []
        for pw, pt in t.pairs:
            t3 = "-" if pw.lhs is None else ("a beats b" if pw.a_beats_b else "not significant")
            ptxt = "-" if pt.n < 2 else ((pt.winner() + " better") if pt.decided else "tie")
            agree = agreement(pw, pt)
            if agree == "disagree":
                disagree.append(f"{pw.a} vs {pw.b}")
            lines.append(f"| {pw.a} | {pw.b} | {'-' if pw.lhs is None else f'{pw.lhs:+.4f}'} | {t3} "
                         f"| {fmt(pt.mean)} [{fmt(pt.low)}, {fmt(pt.high)}] ({pt.n}) | {ptxt} | "
                         f"{agree} |")
        lines += ["", "The two rules disagree on: " + (", ".join(disagree) if disagree else
                                                       "no pair") + "."]
    return lines


# ---------------------------------------------------------------------------------------------
# Plots

def plot_curves(t: Track3Summary, cfg, path) -> None:
    """Each entry's mean val loss over its runs against step, the target, the significance line
    target - margin / sqrt(n), and a dot at the entry's Track-3 step."""
    from sweeper.plots import color_of, legend_outside, pyplot, save, short_label

    fig, ax = pyplot().subplots(figsize=(7.5, 4.8))
    lows = []
    for i, curve in enumerate(t.ranked):
        e = t.entries[curve]
        pts = [(s, m) for s, m in zip(e.steps, e.means) if math.isfinite(m)]
        if not pts:
            continue
        half = [(s, m) for s, m in pts if s >= pts[-1][0] / 2]   # the second half: where it's decided
        ax.plot([s for s, _ in half], [m for _, m in half], "-", color=color_of(curve), lw=1.2,
                label=f"{short_label(curve)} ({e.step if e.passed else 'not reached'})")
        lows.append(min(m for _, m in half))
        if e.passed:
            ax.plot([e.step], [e.mean], "o", color=color_of(curve), ms=6)
    ax.axhline(t.target, color="gray", ls="--", lw=0.8, label=f"target {t.target:g}")
    n = max((e.n for e in t.entries.values()), default=1)
    ax.axhline(t.target - t.margin / math.sqrt(max(n, 1)), color="gray", ls=":", lw=0.8,
               label=f"mean needed at n={n}")
    if lows:
        ax.set_ylim(min(lows) - 0.02 * abs(t.target), t.target + 0.06 * abs(t.target))
    ax.set(xlabel="step", ylabel="mean validation loss over the scoring seeds")
    ax.set_title(f"{cfg.name}: mean val loss (second half), dot = Track-3 step", fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    save(fig, path)


def plot_steps(t: Track3Summary, cfg, path) -> None:
    """Each run's own steps to the target: mean with 95% t interval per entry (k/n reached), and
    the entry's Track-3 step (x)."""
    from sweeper.plots import legend_outside, pyplot, save, short_label

    fig, ax = pyplot().subplots(figsize=(7.5, 0.45 * len(t.ranked) + 1.6))
    labelled = set()
    for y, curve in enumerate(t.ranked):
        e = t.entries[curve]
        reached = [v for v in e.per_seed.values() if v is not None]
        if reached:
            mean, low, high = mean_interval(reached)
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            ax.errorbar([mean], [y], xerr=err, fmt="o", color="C0", capsize=3,
                        label=None if "runs" in labelled else "each run's first step <= target (95% CI)")
            labelled.add("runs")
            ax.annotate(f"{len(reached)}/{e.n}", (mean, y), textcoords="offset points",
                        xytext=(0, 6), fontsize=8, ha="center")
        if e.passed:
            ax.plot([e.step], [y], "x", color="C3", ms=9,
                    label=None if "step" in labelled else "Track-3 step (mean passes the z-test)")
            labelled.add("step")
    ax.set_yticks(range(len(t.ranked)), [short_label(c) for c in t.ranked], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("steps")
    ax.set_title(f"{cfg.name}: steps to val loss {t.target:g}", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    legend_outside(ax)
    save(fig, path)

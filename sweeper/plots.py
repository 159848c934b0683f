"""The figures of a sweep, drawn so that a reader sees the verdict: one colour per optimizer name
in every figure and study (variants of a name: line styles and markers), legends outside the
axes, y-limits set by the runs that did not diverge, 150 dpi.

    lr_curves.png       stage 1: each seed's point, the mean line, x for diverged runs, the
                        held-out score (star with its 95% CI); small multiples past 6 curves
    lr_grid_curves.png  one panel per curve: val loss against tokens at every lr of its grid
                        (mean over the stage-1 seeds), the final losses under it, the chosen bold
    best_curves.png     the scoring runs' mean and 95% band per curve, and the last half zoomed
    verdicts.png        the forest plot of report.md's verdicts: each adjacent pair's paired
                        difference with its 95% CI and the zero line
    grid_curves.png, grid_lr.png, tuning_curves.png: a numeric grid axis and sweep.tune
Every draw_* returns the matplotlib figure (tests inspect it); write_figures saves and closes
each (save).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Optional

from sweeper.paired import mean_interval
from sweeper.points import curve_label
from trainer.outputs import Status, read_metrics, write_atomic

DPI = 150
# One colour per registry name, the same in every figure and study: tab10 first, then darker
# shades (tab20b/c, Dark2) that read on white as a thin line; a name not listed gets a TAB20
# colour from a hash of the name: stable too.
PALETTE = {
    "adamw": "#1f77b4", "muon": "#ff7f0e", "namo": "#2ca02c", "namo_d": "#d62728",
    "normuon": "#9467bd", "adamz": "#8c564b", "adamq": "#e377c2", "msgdz": "#7f7f7f",
    "dion": "#bcbd22", "track3_baseline": "#17becf", "muonh": "#5254a3", "adamh": "#bd9e39",
    "normuonh": "#1b9e77", "soap_muon": "#ad494a", "dynmuon": "#6a3d9a", "adam": "#a6761d",
    "adams": "#e7298a", "msgd": "#252525", "msgds": "#8ca252", "msgdq": "#0868ac",
    "adamuon": "#393b79", "muon_svd": "#637939", "shampoo": "#8c6d31", "soap": "#843c39",
    "sgd": "#7b4173", "rmsprop": "#3182bd", "torch_adam": "#e6550d",
}
TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
         "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
         "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"]
STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]
SMALL_MULTIPLES = 6     # more curves than this: one panel per optimizer name


def name_of(curve: str) -> str:
    return curve.split(" ", 1)[0]


def color_of(curve: str) -> str:
    """The colour of a curve's optimizer name (never of its variant)."""
    name = name_of(curve)
    if name in PALETTE:
        return PALETTE[name]
    return TAB20[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(TAB20)]


def variant_of(curve: str) -> str:
    """A curve's variant: its label without the name ('' for the name's plain curve)."""
    return short_label(curve).partition(" ")[2]


def variant_styles(curves: list) -> dict:
    """{curve: (line style, marker)}: one style per variant, the same for every name (the
    plain curve solid with circles, then the variants in sorted order), so that a dashed line
    means the same variant in every panel."""
    variants = sorted({variant_of(c) for c in curves}, key=lambda v: (v != "", v))
    k = {v: i for i, v in enumerate(variants)}
    return {c: (STYLES[k[variant_of(c)] % len(STYLES)], MARKERS[k[variant_of(c)] % len(MARKERS)])
            for c in curves}


def short_label(curve: str) -> str:
    """A legend label: the name and its variant's values, long role-lr variants folded."""
    parts = curve.split(" ")
    keep = [p for p in parts[1:] if not p.endswith("=null")]
    return " ".join([parts[0]] + keep)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path) -> None:
    write_atomic(path, lambda out: fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight"))
    pyplot().close(fig)


def below_title(fig) -> None:
    """Moves the panels down where the top row's titles would run into the figure's
    suptitle (tight_layout does not always leave it room)."""
    renderer = fig.canvas.get_renderer()
    bottom = fig._suptitle.get_window_extent(renderer).y0
    top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_visible())
    gap = 4 * fig.dpi / 72   # 4 points
    if top > bottom - gap:
        fig.subplots_adjust(top=fig.subplotpars.top - (top - bottom + gap) / fig.bbox.height)


def legend_outside(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, **kw)


CLOSE_LRS = 1.6   # adjacent grid lrs nearer than this factor: their labels would touch


def label_lr_ticks(ax, lrs: list) -> None:
    """Name the grid's lrs on a log x axis (up to 12; beyond, the decades). Matplotlib labels
    the minor ticks of a span under two decades, and those labels overlap; so would the labels
    of two grids interleaved (0.002, 0.0025): then they are slanted."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    grid = sorted(set(lrs))
    if 1 <= len(grid) <= 12:
        close = any(b / a < CLOSE_LRS for a, b in zip(grid, grid[1:]))
        ax.set_xticks(grid, [f"{lr:.3g}" for lr in grid], fontsize=7,
                      **({"rotation": 45, "ha": "right"} if close else {}))


def y_window(values: list, bests: list) -> tuple:
    """(low, high, how many values lie above high): the runs that did not diverge, with the top
    cut at the best curve's + 3 x the spread of the curves' bests (+ 0.05) so that one bad lr
    does not flatten the region where the curves differ."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    low = min(finite)
    top = max(finite)
    if bests:
        top = min(top, min(bests) + 3 * (max(bests) - min(bests)) + 0.05)
    pad = 0.04 * max(top - low, 1e-3)
    return low - pad, top + pad, sum(v > top + pad for v in finite)


# ---------------------------------------------------------------------------------------------
# lr_curves.png

def dodge(s, curves: list) -> dict:
    """{curve: x factor} for the held-out stars: curves whose stars share an lr are spread a few
    percent apart (on the log axis) so that each star and its CI stays visible."""
    at = {}
    for c in curves:
        sc = s.scores.get(c)
        if sc is not None and sc.held_out and sc.values:
            at.setdefault(sc.lr, []).append(c)
    return {c: 1.06 ** (j - (len(group) - 1) / 2) for group in at.values()
            for j, c in enumerate(group)}


def _lr_panel(ax, s, curves: list, styles: dict, metric, label=short_label) -> list:
    """Draws `curves` of stage 1 on ax; returns the values drawn (for the y window). `label`:
    a curve's legend entry."""
    drawn = []
    shift = dodge(s, curves)
    for i, curve in enumerate(curves):
        per_lr = s.stats[curve]
        color, (ls, marker) = color_of(curve), styles[curve]
        ok = [st for st in per_lr if st.values]
        for st in ok:   # each seed's value: a small marker
            ax.scatter([st.lr] * len(st.values), st.values, s=9, color=color, alpha=0.45,
                       marker=marker, lw=0)
            drawn += st.values
        if ok:
            ax.plot([st.lr for st in ok], [st.mean for st in ok], ls=ls, color=color, lw=1.4,
                    label=label(curve), marker=marker if len(ok) == 1 else None, ms=5)
            added = [st for st in ok if st.lr in s.extended.get(curve, [])]
            ax.scatter([st.lr for st in added], [st.mean for st in added], s=45,
                       facecolors="white", edgecolors=color, zorder=3)
        sc = s.scores.get(curve)
        if sc is not None and sc.held_out and sc.values:
            mean, low, high = sc.interval
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            ax.errorbar([sc.lr * shift.get(curve, 1.0)], [mean], yerr=err, fmt="*", ms=10,
                        color=color, capsize=3, zorder=4)
            drawn += [mean] + ([] if math.isnan(low) else [low, high])
        bad = [st.lr for st in per_lr if st.n_bad]
        if bad:   # at the top edge, whatever the scale
            ax.scatter(bad, [0.97 - 0.025 * (i % 4)] * len(bad), marker="x", color=color, s=30,
                       transform=ax.get_xaxis_transform(), label=None if ok else label(curve))
    return drawn


def draw_lr_curves(s, cfg):
    plt = pyplot()
    curves = [c for c in s.ranked if c in s.stats] + [c for c in s.stats if c not in s.ranked]
    names = list(dict.fromkeys(name_of(c) for c in curves))   # best first
    multiples = len(curves) > SMALL_MULTIPLES and len(names) > 1
    groups = [[c for c in curves if name_of(c) == n] for n in names] if multiples else [curves]
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols + (2.5 if not multiples else 0),
                                                 3.4 * rows + (0.5 if not multiples else 0)),
                            squeeze=False, sharex=True,
                            sharey=True)
    styles = variant_styles(curves)
    drawn, lrs = [], [st.lr for per in s.stats.values() for st in per]
    for ax, group in zip(axs.flat, groups):
        # in a panel of one name, the legend names the variants only (the title names it)
        drawn += _lr_panel(ax, s, group, styles, s.metric,
                           label=(lambda c: variant_of(c) or name_of(c)) if multiples else short_label)
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        if multiples:
            # a name's one curve: its variant in the title (no legend in the panel)
            ax.set_title(name_of(group[0]) if len(group) > 1 else short_label(group[0]),
                         fontsize=9, color=color_of(group[0]))
            if len(group) > 1:
                ax.legend(fontsize=6, frameon=False)
            if s.ranked and name_of(s.ranked[0]) != name_of(group[0]):   # the leader, to compare
                lead = s.curves[s.ranked[0]].best
                ax.axhline(lead.mean, color=color_of(s.ranked[0]), ls=":", lw=0.8)
    for ax in list(axs.flat)[len(groups):]:
        ax.set_visible(False)
    bests = [min(st.mean for st in per if st.values) for per in s.stats.values()
             if any(st.values for st in per)]
    window = y_window(drawn, bests) if s.metric.name in ("final_val_loss",) else None
    note = ""
    if window is not None:
        axs.flat[0].set_ylim(window[0], window[1])
        if window[2]:
            note = f"; {window[2]} value(s) above {window[1]:.2f} not shown"
    if lrs and (not drawn or max(lrs) / min(lrs) < 2):   # one lr: a factor 2 either side
        axs.flat[0].set_xlim(min(lrs) / 2, max(lrs) * 2)
    for ax in axs[-1]:
        ax.set_xlabel("peak learning rate")
        label_lr_ticks(ax, lrs)
    for ax in axs[:, 0]:
        ax.set_ylabel(s.metric.axis_label)
    if not multiples:
        legend_outside(axs.flat[0])
    lead = f", dotted = {name_of(s.ranked[0])}'s best (the leader)" if multiples and s.ranked else ""
    # the key names what the figure shows only
    key = ["dots = each seed", "line = stage-1 mean"]
    if any(s.extended.get(c) for c in curves):
        key.append("hollow = added by bracketing")
    if any(sc.held_out and sc.values for c, sc in s.scores.items() if c in curves):
        shared = any(f != 1.0 for g in groups for f in dodge(s, g).values())
        key.append("star = held-out score (95% CI)" +
                   (" (stars at one lr: left to right in legend order)" if shared else ""))
    else:
        key.append("no held-out stage (each lr chosen and scored on the same seeds)")
    if any(st.n_bad for c in curves for st in s.stats[c]):
        key.append(f"x = {s.metric.bad_marks}")
    import textwrap
    # the key in lines that fit the figure's width (about 17 characters an inch at 8 points;
    # tight_layout makes room for the lines, not for matplotlib's own wrapping)
    lines = textwrap.wrap(f"{cfg.name}: " + ", ".join(key) + f"{lead}{note}",
                          int(17 * fig.get_figwidth()))
    fig.suptitle("\n".join(lines), fontsize=8)
    fig.tight_layout()
    below_title(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# lr_grid_curves.png

def series(runs: list, key: str, x_key: str) -> tuple:
    """(the x values every run has, sorted; each run's {x: `key`}) from the runs' (SweepRows')
    metrics.jsonl."""
    curves = [{x[x_key]: x[key] for x in read_metrics(r.dir) if x.get(key) is not None}
              for r in runs]
    return sorted(set.intersection(*(set(c) for c in curves))) if curves else [], curves


def mean_curve(runs: list, key: str, x_key: str) -> tuple:
    """(x, mean y) over the runs at the x values all of them have."""
    common, curves = series(runs, key, x_key)
    return common, [sum(c[x] for c in curves) / len(curves) for x in common]


def draw_lr_grid_curves(s, cfg):
    """One panel per curve, the BeyondMuon figures' way: val loss against tokens at each lr."""
    plt = pyplot()
    from matplotlib import colormaps

    m = s.metric
    curves = [c for c in s.ranked] + [c for c in s.stats if c not in s.ranked]
    cols = min(3, max(1, len(curves)))
    rows = -(-len(curves) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False,
                            sharey=True)
    for ax, curve in zip(axs.flat, curves):
        per_lr = s.stats[curve]
        shades = colormaps["viridis"]([i / max(1, len(per_lr) - 1) for i in range(len(per_lr))])
        chosen = s.curves[curve].chosen_lr if curve in s.curves else None
        finals = []
        for st, shade in zip(per_lr, shades):
            done = [r for r in st.runs if r.status in Status.RESULTS]
            x, y = mean_curve(done, m.series[0].key, m.x_key) if done else ([], [])
            if x:
                ax.plot(x, y, color=shade, lw=2.0 if st.lr == chosen else 1.0,
                        label=f"{st.lr:g}")
            value = m.format(st.mean, st.std).split(" ")[0] if st.values else m.bad_short
            finals.append((f"{st.lr:g}: {value}", st.lr == chosen))
        ax.set_title(short_label(curve), fontsize=8, color=color_of(curve))
        ax.set_xlabel(m.x_label, fontsize=7)
        if m.x_key == "tokens":
            from matplotlib.ticker import EngFormatter
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
        text = "  ".join(t for t, _ in finals)
        ax.text(0.0, -0.32, "final: " + text, transform=ax.transAxes, fontsize=6, va="top",
                wrap=True)
        bold = [t for t, b in finals if b]
        if bold:
            ax.text(0.0, -0.42, f"chosen {bold[0]}", transform=ax.transAxes, fontsize=7,
                    va="top", weight="bold")
        ax.legend(fontsize=6, title="lr", title_fontsize=6, frameon=False)
    for ax in list(axs.flat)[len(curves):]:
        ax.set_visible(False)
    for ax in axs[:, 0]:
        ax.set_ylabel(m.y_label, fontsize=8)
    values = [v for per in s.stats.values() for st in per for v in st.values]
    if values and m.name == "final_val_loss":
        low = min(values)
        axs.flat[0].set_ylim(low - 0.05, low + 1.5)   # the approach to the end, not the start
    fig.suptitle(f"{cfg.name}: each lr of each grid (mean over the stage-1 seeds); thick = chosen",
                 fontsize=9)
    fig.tight_layout()
    below_title(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# best_curves.png

def band(runs: list, key: str, x_key: str) -> tuple:
    """(x, mean, low, high): the 95% t band over the runs at the x values they all have."""
    common, curves = series(runs, key, x_key)
    rows = [mean_interval([c[x] for c in curves]) for x in common]
    mean = [r[0] for r in rows]
    low = [r[1] if not math.isnan(r[1]) else r[0] for r in rows]
    high = [r[2] if not math.isnan(r[2]) else r[0] for r in rows]
    return common, mean, low, high


def draw_best_curves(s, cfg):
    plt = pyplot()
    m = s.metric
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 4.4))
    styles = variant_styles(s.ranked)
    tails = []
    for curve in s.ranked:
        runs = [r for r in s.scored.get(curve, s.curves[curve].best.runs)
                if r.status == Status.COMPLETED]
        if not runs:
            continue
        lr = s.curves[curve].chosen_lr
        for series in m.series:
            x, mean, low, high = band(runs, series.key, m.x_key)
            if not x:
                continue
            color, (ls, _) = color_of(curve), styles[curve]
            label = f"{short_label(curve)} (lr {lr:.3g}, n={len(runs)})" if series.labelled else None
            for ax in (full, zoom):
                ax.plot(x, mean, ls=series.fmt or ls, color=color, lw=1.2, label=label)
                ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
            half = [(xi, lo, hi) for xi, lo, hi in zip(x, low, high) if xi >= x[-1] / 2]
            tails += [v for _, lo, hi in half for v in (lo, hi)]
            if half:
                zoom.set_xlim(half[0][0], x[-1])
    if m.x_scale is not None:
        full.set_xscale(m.x_scale[0], **dict(m.x_scale[1]))
    if tails and m.name == "final_val_loss":
        pad = 0.05 * (max(tails) - min(tails) + 1e-3)
        zoom.set_ylim(min(tails) - pad, max(tails) + pad)
    if s.target is not None and m.has_target:
        for ax in (full, zoom):
            ax.axhline(s.target, color="gray", ls="--", lw=0.8, label="target loss" if ax is zoom else None)
    if m.x_key == "tokens":
        from matplotlib.ticker import EngFormatter
        for ax in (full, zoom):
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    full.set(xlabel=m.x_label, ylabel=m.y_label, title="whole run")
    zoom.set(xlabel=m.x_label, title="last half (zoomed)")
    for ax in (full, zoom):
        ax.grid(alpha=0.3)
    legend_outside(zoom)
    fig.suptitle(f"{cfg.name}: the scoring runs at each chosen lr, mean and 95% band", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# verdicts.png

def draw_verdicts(s, cfg):
    """The forest plot: each adjacent pair of the ranking, a - b with its 95% t interval."""
    plt = pyplot()
    m = s.metric
    pairs = s.verdicts
    height = 0.45 * max(len(pairs), 1) + 1.4
    fig, ax = plt.subplots(figsize=(11, height))
    # room for the pairs' names on the left and their numbers on the right (savefig's tight
    # box trims what is left over)
    fig.subplots_adjust(left=0.34, right=0.68, top=1 - 0.45 / height, bottom=0.75 / height)
    for i, v in enumerate(pairs):
        ok = v.n >= 2 and not math.isnan(v.low)
        color = "black" if v.decided else "gray"
        ax.errorbar([v.mean], [i], xerr=[[v.mean - v.low], [v.high - v.mean]] if ok else None,
                    fmt="o", color=color, capsize=3)
        # the numbers beside each row: a resolved gap next to a large one stays readable
        d = m.digits
        numbers = f"{v.mean:+.{d}f}" + (f" [{v.low:+.{d}f}, {v.high:+.{d}f}]" if ok else "") + \
            f", n={v.n}"
        ax.annotate(f"{'decided' if v.decided else 'tie'}: {numbers}", (1.02, i),
                    xycoords=("axes fraction", "data"), va="center", fontsize=7, color=color)
    ax.axvline(0, color="red", lw=0.8)
    ax.set_yticks(range(len(pairs)), [f"{short_label(v.a)} - {short_label(v.b)}" for v in pairs],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"paired difference ({m.unit}; negative: the first is better)")
    held = all(sc.held_out for sc in s.scores.values())
    ax.set_title(f"{cfg.name}: adjacent pairs of the ranking, 95% t interval over "
                 f"{'the held-out' if held else 'the tuning'} seeds", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return fig


# ---------------------------------------------------------------------------------------------
# A numeric grid axis (grid_curves.png, grid_lr.png) and sweep.tune (tuning_curves.png)

def draw_grid_axis(s, cfg, key: str):
    """Each optimizer's score (held-out seeds at its chosen point when there are any) against
    the axis' values, mean with its 95% t interval; "k/n" where only k of n runs reached one."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    optimizers = list(dict.fromkeys(name_of(c) for c in s.stats))
    drawn = []
    for opt in optimizers:
        xs, means, errs = [], [], []
        for v in sorted(cfg.grid[key]):
            sc = s.scores.get(curve_label(opt, {key: v}))
            if sc is None or not sc.values:
                continue
            mean, low, high = sc.interval
            xs.append(v)
            means.append(mean)
            errs.append((0.0, 0.0) if math.isnan(low) else (mean - low, high - mean))
            if sc.n_bad:
                ax.annotate(f"{sc.n - sc.n_bad}/{sc.n}", (v, mean), textcoords="offset points",
                            xytext=(5, 5), fontsize=8, color=color_of(opt))
        if xs:
            ax.errorbar(xs, means, yerr=list(zip(*errs)), fmt="o-", color=color_of(opt),
                        capsize=3, label=opt)
            drawn += means
    if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 10:
        ax.set_yscale("log")   # scores over decades (tokens against the batch): each step visible
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(cfg.grid[key]), [str(v) for v in sorted(cfg.grid[key])])
    ax.set_xlabel(key)
    ax.set_ylabel(s.metric.axis_label)
    held = any(sc.held_out for sc in s.scores.values())
    none = [short_label(c) for c in s.stats if c not in s.curves]   # no run reached a value
    ax.set_title(f"{cfg.name}: {'held-out seeds' if held else 'stage-1 seeds'} at each curve's "
                 f"chosen point, 95% CI; k/n: runs that reached a value" +
                 (f"\nno value at any lr ({s.metric.bad}): {', '.join(none)}" if none else ""),
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    return fig


def draw_grid_lr(s, cfg, key: str):
    """Does the best lr transfer along the axis (e.g. width)? Each optimizer's chosen lr against
    the axis' values, the bar its stable range (the lrs within sweep.tolerance of the best)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    optimizers = list(dict.fromkeys(name_of(c) for c in s.stats))
    for i, opt in enumerate(optimizers):
        pts = []
        for v in sorted(cfg.grid[key]):
            c = s.curves.get(curve_label(opt, {key: v}))
            if c is not None:
                lo, hi = (c.stable[0].lr, c.stable[-1].lr) if c.stable else (c.best.lr, c.best.lr)
                pts.append((v, c.chosen_lr, lo, hi))
        if pts:
            ax.errorbar([p[0] * (1 + 0.03 * (i - len(optimizers) / 2)) for p in pts],
                        [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts],
                                                   [p[3] - p[1] for p in pts]],
                        fmt="o-", color=color_of(opt), capsize=3, label=opt)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(cfg.grid[key]), [str(v) for v in sorted(cfg.grid[key])])
    ax.set_xlabel(key)
    ax.set_ylabel("chosen lr (bar: stable lrs)")
    ax.set_title(f"{cfg.name}: the best lr against {key} (stage-1 seeds)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    return fig


def draw_tuning(s, cfg) -> Optional[object]:
    """Sensitivity: per tuned axis (a panel each) every curve's metric against the axis' values
    in its last sweep, each seed a dot and the mean a line, the chosen value ringed."""
    keys = list(dict.fromkeys(a.key for c in s.curves.values() if c.tuning
                              for a in c.tuning.axes))
    if not keys:
        return None
    plt = pyplot()
    fig, axs = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    styles = variant_styles(s.ranked)
    for ax, key in zip(axs[0], keys):
        for curve in s.ranked:
            c = s.curves[curve]
            sweeps = [a for a in (c.tuning.axes if c.tuning else []) if a.key == key and a.done]
            if not sweeps:
                continue
            a = sweeps[-1]
            pts = [(v, st) for v, st in a.per_value if st is not None and st.values
                   and isinstance(v, (int, float))]
            if not pts:
                continue
            xs = [v for v, _ in pts]
            rows = [mean_interval(st.values) for _, st in pts]
            color, (ls, marker) = color_of(curve), styles[curve]
            ax.plot(xs, [r[0] for r in rows], ls=ls, marker=marker, color=color,
                    label=short_label(curve), ms=4)
            # each seed's value as a dot (a t band over 2 seeds spans everything: lr_curves')
            for v, st in pts:
                ax.scatter([v] * len(st.values), st.values, s=8, color=color, alpha=0.45,
                           marker=marker, lw=0)
            chosen = next((st for v, st in pts if v == a.chosen), None)
            if chosen is not None:
                ax.plot([a.chosen], [chosen.mean], "o", ms=11, mfc="none", color=color)
        values = [v for c in s.curves.values() if c.tuning for a in c.tuning.axes
                  if a.key == key for v, _ in a.per_value if isinstance(v, (int, float))]
        if values and min(values) > 0:
            ax.set_xscale("log")
        elif values:
            ax.set_xscale("symlog", linthresh=min([v for v in values if v > 0] or [1e-3]))
        ax.set_xlabel(key)
        ax.set_ylabel(s.metric.axis_label)
        ax.grid(alpha=0.3, which="both")
    # every panel's curves in one legend: a curve whose lr never moved is in the first only
    handles = {}
    for ax in axs[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        axs[0][-1].legend(handles.values(), handles.keys(), loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    fig.suptitle(f"{cfg.name}: sensitivity around each tuned point (last sweep of each axis, "
                 "tuning seeds: dots = each seed, line = mean; ring = chosen)", fontsize=9)
    return fig


def write_figures(d: Path, s, cfg, key: Optional[str]) -> None:
    """Every figure of a sweep's outputs (report.py's write_outputs)."""
    save(draw_lr_curves(s, cfg), d / "lr_curves.png")
    save(draw_best_curves(s, cfg), d / "best_curves.png")
    if s.stats:
        save(draw_lr_grid_curves(s, cfg), d / "lr_grid_curves.png")
    if len(s.ranked) > 1:
        save(draw_verdicts(s, cfg), d / "verdicts.png")
    if key is not None:
        save(draw_grid_axis(s, cfg, key), d / "grid_curves.png")
        save(draw_grid_lr(s, cfg, key), d / "grid_lr.png")
    fig = draw_tuning(s, cfg)
    if fig is not None:
        save(fig, d / "tuning_curves.png")

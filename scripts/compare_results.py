"""Compare a study's committed results with a re-run of it (a replication, e.g. on another
machine): how far the same points moved, and whether the ranking and each verdict survived.

    python scripts/compare_results.py docs/results/cpu_decisive sweeps/cpu_decisive

Points are matched by what they are (optimizer, lr, seed, stage, grid and tuned values), not by
run id (an override such as optimizer.ns_dtype=float32 changes the id, not the training). Prints
a markdown table of the per-point differences by stage, then each study's ordering (its chain
of adjacent verdicts, sweeper/stats.py) and the every-pair verdicts that differ. Reads only.
Exit 0: every pair's verdict is the same; 1: some verdict changed; 2: bad input.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from configs.errors import UserError  # noqa: E402


def summary_of(d: Path):
    """(rows, Summary) of a study dir: its runs/ when it has them, else its results.csv."""
    from sweeper import from_results
    from sweeper.config import SweepConfig, stored_config
    from sweeper.rows import collect
    from sweeper.runner import read_sweep
    from sweeper.stats import summarize

    if not (d / "runs").is_dir() and not (d / "results.csv").is_file():
        raise UserError(f"{d} holds neither runs/ nor results.csv: give a study's folder or a "
                        "sweep.dir")
    stored = read_sweep(d)
    cfg = stored_config(SweepConfig(dir=str(d)), {"dir"}, stored) if stored else None
    if (d / "runs").is_dir():
        rows = collect(d)
    else:
        tuned = {k for a in (cfg.tune if cfg else []) for k in a}
        rows = from_results.read_rows(d, tuned)
    if cfg is None:
        cfg = from_results.study_config(d, rows, SweepConfig(), set())
    if not rows:
        raise UserError(f"{d} has no runs and no results.csv rows: nothing to compare")
    return rows, summarize(rows, cfg)


def point(r) -> tuple:
    return (r.optimizer, round(r.lr, 12), r.seed, r.stage,
            tuple(sorted((k, str(v)) for k, v in {**r.grid, **r.tuned}.items())))


def differences(old_rows, new_rows, column: str) -> tuple[list[str], int]:
    """Markdown lines of |new - old| per stage over the points both have; the count of points
    whose status differs (diverged in one only)."""
    old = {point(r): r for r in old_rows}
    by_stage, flips = {}, 0
    for r in new_rows:
        o = old.get(point(r))
        if o is None:
            continue
        if o.status != r.status:
            flips += 1
            continue
        a, b = o.score(column), r.score(column)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            by_stage.setdefault(r.stage, []).append(abs(b - a))
    lines = ["| stage | points in both | equal | median abs diff | max abs diff |",
             "|---|---|---|---|---|"]
    for stage, d in sorted(by_stage.items()):
        lines.append(f"| {stage} | {len(d)} | {sum(x == 0 for x in d)} | "
                     f"{statistics.median(d):.2g} | {max(d):.2g} |")
    return lines, flips


def verdicts(s) -> dict:
    """{(a, b): 'a better' | 'b better' | 'tie'} of every pair with held-out values."""
    out = {}
    for p in s.pairs:
        key = tuple(sorted((p.a, p.b)))
        word = "tie" if not p.decided else f"{p.a if p.mean < 0 else p.b} better"
        out[key] = word
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("committed", type=Path, help="the committed study's folder")
    ap.add_argument("rerun", type=Path, help="the re-run's sweep.dir (or another study folder)")
    args = ap.parse_args(argv)
    try:
        old_rows, old = summary_of(args.committed)
        new_rows, new = summary_of(args.rerun)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from sweeper.stats import chain

    lines, flips = differences(old_rows, new_rows, old.column)
    print(f"Scored by {old.column}; points matched by optimizer, lr, seed, stage and axes.\n")
    print("\n".join(lines))
    if flips:
        print(f"\n{flips} point(s) diverged in one study only.")
    print(f"\nordering, committed: {chain(old)}\nordering, re-run:    {chain(new)}")
    a, b = verdicts(old), verdicts(new)
    changed = [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    print(f"\nEvery pair in both: {len(set(a) & set(b))}; verdicts changed: {len(changed)}")
    for (x, y), was, now in changed:
        print(f"- {x} vs {y}: {was} -> {now}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())

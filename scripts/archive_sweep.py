"""Copy a sweep's outputs and its runs' small files into a results folder, so that the committed
study rebuilds its report and figures with `python sweep.py report sweep.dir=<folder>` (no
checkpoints, no logs: a few tens of kB a run).

    python scripts/archive_sweep.py sweeps/cpu_baselines_2026 docs/results/cpu_baselines_2026

Kept: sweep.json, results.csv, report.md, *.png; of each run: point.json, summary.json,
metrics.jsonl, config.yaml, exit.json, and reused.json (sweep.reuse's source) where there is one.
A run that is not finished (no summary.json) is left out unless --partial (a study committed
half-way, to be resumed by copying the folder back).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

OUTPUTS = ("sweep.json", "results.csv", "report.md")
RUN_FILES = ("point.json", "summary.json", "metrics.jsonl", "config.yaml", "exit.json", "reused.json")


def archive(src: Path, dst: Path, partial: bool = False) -> int:
    """Copies; returns the number of runs kept."""
    if not (src / "sweep.json").is_file():
        raise SystemExit(f"error: {src} holds no sweep.json (not a sweep's directory); pass a "
                         "sweep.dir")
    dst.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for png in src.glob("*.png"):
        shutil.copy2(png, dst / png.name)
    kept = 0
    for run in sorted((src / "runs").glob("*")):
        if not (run / "point.json").is_file() or not (partial or (run / "summary.json").is_file()):
            continue
        out = dst / "runs" / run.name
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, out / name)
        kept += 1
    return kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="the sweep.dir")
    ap.add_argument("dst", type=Path, help="the results folder, e.g. docs/results/<name>")
    ap.add_argument("--partial", action="store_true", help="keep unfinished runs too")
    args = ap.parse_args(argv)
    n = archive(args.src, args.dst, args.partial)
    print(f"{n} runs of {args.src} archived in {args.dst}; rebuild: python sweep.py report "
          f"sweep.dir={args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Re-run a committed run with its own command and say whether it reproduces bit for bit: every
logged train and val loss, and final_val_loss, equal to the last digit (floats compared exactly).
Bit-for-bit holds on the machine (CPU model, torch build, thread count) that made the run; on
another one expect float noise, and the table shows how large it is.

    python scripts/reproduce_run.py docs/results/track3_mini/runs/muon_lr5e-03_s100_0c4d47b7

The run's command is read from its summary.json (provenance.command) and run from the checkout
root with out_dir set to a fresh folder (--out, default a temporary one); the committed run is
only read. Exit 0: bit for bit; 1: it differs (the table says where); 2: bad input.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.outputs import read_metrics  # noqa: E402

KEYS = ("train/loss", "val/loss")


def losses(run_dir: Path) -> dict[tuple, float]:
    """{(step, key): value} of every logged train and val loss."""
    return {(r["step"], k): r[k] for r in read_metrics(run_dir) for k in KEYS if k in r}


def rerun_command(run_dir: Path, out: Path) -> list[str]:
    summary = json.loads((run_dir / "summary.json").read_text())
    command = (summary.get("provenance") or {}).get("command")
    if not command:
        raise SystemExit(f"error: {run_dir}/summary.json has no provenance.command; this run "
                         "predates provenance and cannot be re-run by this script")
    args = [a for a in shlex.split(command) if not a.startswith(("out_dir=", "resume="))]
    if args[0] != "train.py":
        raise SystemExit(f"error: {run_dir}'s command does not start with train.py: {command}")
    return [sys.executable, *args, f"out_dir={out}", "resume=false"]


def compare(old: Path, new: Path) -> int:
    a, b = losses(old), losses(new)
    fa = json.loads((old / "summary.json").read_text()).get("final_val_loss")
    fb = json.loads((new / "summary.json").read_text()).get("final_val_loss")
    differ = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    worst = max((abs(a[k] - b[k]) for k in differ if k in a and k in b), default=0.0)
    print("| what | committed | re-run | equal |\n|---|---|---|---|")
    print(f"| logged losses | {len(a)} | {len(b)} | {len(a) - len(differ)} of {len(a)} |")
    print(f"| final_val_loss | {fa!r} | {fb!r} | {fa == fb} |")
    if differ:
        print(f"first difference at (step, key) {differ[0]}; largest |diff| {worst:.3g}")
    same = not differ and fa == fb
    print("bit for bit" if same else "differs")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a committed run (holds summary.json, metrics.jsonl)")
    ap.add_argument("--out", type=Path, default=None, help="where the re-run writes (must not exist)")
    args = ap.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not (run_dir / "summary.json").is_file() or not (run_dir / "metrics.jsonl").is_file():
        print(f"error: {args.run_dir} is not a finished run (needs summary.json and "
              "metrics.jsonl); pass a folder under docs/results/<study>/runs/", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists():
        print(f"error: --out {args.out} exists; name a new folder", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="reproduce_")) / run_dir.name
    cmd = rerun_command(run_dir, out)
    print(" ".join(shlex.quote(c) for c in cmd[1:]), file=sys.stderr)
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode != 0:
        print(f"error: the re-run exited {done.returncode} (see {out}/train.log)", file=sys.stderr)
        return 1
    return compare(run_dir, out)


if __name__ == "__main__":
    sys.exit(main())

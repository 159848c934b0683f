"""Runs another sweep already ran (sweep.reuse): a point whose training is the same as a finished
run of a listed sweep directory is copied from it instead of trained again, so studies that share
points (a width ladder's middle width, a dispute's default arm) share their compute.

Same training means the same config as the run wrote it (config.yaml), composed and resolved,
less what only names or logs the run (TRAINING_IRRELEVANT) and with the model as GPTConfig
resolves it (model.n_head=null model.head_dim=32 at n_embd 128 is n_head=4). A finished run is a
result (completed or diverged); failed and interrupted runs are never copied. The copy lands
under this sweep's run id with this sweep's point.json, and reused.json says where it came from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

from configs.errors import UserError
from model.config import GPTConfig
from trainer.outputs import read_json, write_json

# Top-level keys that name, place or log a run, never change what it trains.
TRAINING_IRRELEVANT = ("out_dir", "resume", "overwrite", "wandb", "provenance")
# Files of a run dir that belong to the process or the sweep that ran it, not to its result.
NOT_COPIED = ("sweep.lock", "train.lock", "point.json", "reused.json", "summary.json")


def training_key(config: dict) -> Optional[str]:
    """A digest of what a run trains, from its composed config (a dict); None when its model
    section no longer builds (a run of an older schema: never matched)."""
    cfg = {k: v for k, v in config.items() if k not in TRAINING_IRRELEVANT}
    try:
        model = GPTConfig(**cfg.get("model", {}))
    except (TypeError, UserError):
        return None
    cfg["model"] = model_identity(model)
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model: GPTConfig) -> dict:
    """The model's fields as built: head_dim shapes only a track3 model once n_head is set."""
    fields = dataclasses.asdict(model)
    if model.arch != "track3":
        fields.pop("head_dim")
    return fields


def check_sources(sources: list[str], own: Path) -> list[Path]:
    """sweep.reuse's directories, absolute; each must hold a sweep (sweep.json), none this one."""
    dirs = []
    for s in sources:
        d = Path(s).expanduser().resolve()
        if not (d / "sweep.json").is_file():
            raise UserError(f"sweep.reuse lists {s}, which holds no sweep (no {d / 'sweep.json'}); "
                            "give the sweep.dir of a sweep that ran, or drop it")
        if d == own:
            raise UserError(f"sweep.reuse lists {s}, this sweep's own directory; drop it")
        dirs.append(d)
    return dirs


def index(sources: list[Path]) -> dict[str, Path]:
    """training key -> a finished run dir of the source sweeps (the first listed wins)."""
    from omegaconf import OmegaConf

    from trainer.outputs import Status

    found: dict[str, Path] = {}
    for d in sources:
        for run in sorted((d / "runs").glob("*/")):
            summary = read_json(run / "summary.json")
            if summary is None or summary.get("status") not in Status.RESULTS \
                    or not (run / "config.yaml").is_file():
                continue
            key = training_key(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
            if key is not None:
                found.setdefault(key, run)
    return found


def point_key(args: list[str]) -> Optional[str]:
    """The training key of a point launched with train.py arguments `args` (run_args)."""
    from omegaconf import OmegaConf

    from configs import load_config

    return training_key(OmegaConf.to_container(load_config(args), resolve=True))


def copy_run(source: Path, run_dir: Path, point: dict) -> None:
    """Copy a finished run into run_dir as this sweep's point: its files, then point.json and
    reused.json, then summary.json last (what makes a run finished), so a copy cut short is
    no result and is made again (or trained) by the next invocation."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name not in NOT_COPIED:
            shutil.copy2(f, run_dir / f.name)
    write_json(run_dir / "point.json", point, indent=1)
    write_json(run_dir / "reused.json", {"from": str(source),
                                         "point": read_json(source / "point.json")}, indent=1)
    shutil.copy2(source / "summary.json", run_dir / "summary.json.tmp")
    (run_dir / "summary.json.tmp").replace(run_dir / "summary.json")

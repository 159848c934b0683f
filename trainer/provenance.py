"""A run's reproducibility record, `provenance` in config.yaml, summary.json and W&B's run
config: the git commit of the code and whether its tree was dirty, torch's version, the device's
name, the world size, the host and the command line. Computed once, on rank 0.
"""
from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from trainer.distributed import DistEnv

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> Optional[str]:
    """A git command's output in the code's repository; None outside one (an installed copy)
    or without git."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name (/proc/cpuinfo) where the OS says it."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def command_line() -> str:
    """The command that repeats the run: in a Hydra job (one of -m too) its own overrides."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.instance().cfg
    args = list(hydra_cfg.hydra.overrides.task) if hydra_cfg is not None else sys.argv[1:]
    return shlex.join([Path(sys.argv[0]).name, *args])


def provenance(env: DistEnv) -> dict:
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"git_commit": commit.strip() if commit else None,
            "git_dirty": bool(status.strip()) if status is not None else None,
            "torch": str(torch.__version__), "device": env.device, "device_name": device_name(env.device),
            "world_size": env.world_size, "host": socket.gethostname(),
            "command": command_line()}

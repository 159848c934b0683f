"""What guards a run's files: one train.py per out_dir (an flock on out_dir/train.lock, beside
a sweep's sweep.lock; a killed holder never blocks), and a full disk (a checkpoint, a metrics
line or prepared tokens that cannot be written: one `error: ...` line naming the file, and the
checkpoint or dataset written before stays valid)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from configs import load_config, to_object
from data import prepare as P
from sweeper.runner import RunLock
from trainer import outputs
from trainer.outputs import TRAIN_LOCK, FileLock, read_metrics

from test_preempt import checkpointed_args, start_train, trained, wait_for

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def error_lines(err: str) -> list[str]:
    """The lines of stderr (progress bars end their updates with \\r) that say `error: `."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]


def check_one_error(code: int, err: str, *needles: str) -> str:
    lines = error_lines(err)
    assert code == 2 and "Traceback" not in err, (code, err[-2000:])
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-2000:]
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def files(d: Path) -> set[str]:
    """The run's files (not the temporary ones of a write under way)."""
    return {p.name for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}


# ---------------------------------------------------------------------------------------------
# One writer per out_dir

def test_second_train_py_on_the_same_out_dir_is_refused(tmp_path, small_text, capsys):
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = checkpointed_args(tmp_path, small_text, out, "train.max_iters=100000",
                             "train.ckpt_interval=20")
    proc = start_train(args, log)
    try:
        wait_for("a checkpoint", lambda: (out / "ckpt.pt").exists() and trained(out), proc, log)
        for extra in (["resume=true"], ["overwrite=true"], []):
            before = files(out)
            capsys.readouterr()
            code = train.main(args + extra)
            check_one_error(code, capsys.readouterr().err,
                            f"out_dir={out} is in use by another train.py (pid {proc.pid})")
            assert files(out) >= before, "a refused run removed files (overwrite=true?)"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The lock died with its holder: nothing stale blocks a resume.
    assert FileLock(out / TRAIN_LOCK).held_elsewhere() is None
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    (out / ".ckpt.pt.cut.tmp").write_bytes(b"half a checkpoint")   # as a kill mid-write leaves
    assert train.main(args[:-1] + [f"train.max_iters={step + 5}", "resume=true"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 5
    assert not list(out.glob(".*.tmp")), "the resume leaves no write a kill cut short"


def test_a_sweep_launched_run_takes_its_own_lock(tmp_path, small_text):
    """sweep.py holds <run dir>/sweep.lock while its run lives; train.py's lock is another file."""
    out = tmp_path / "run"
    out.mkdir()
    sweep_lock = RunLock(out)
    assert sweep_lock.acquire()
    try:
        assert train.main(checkpointed_args(tmp_path, small_text, out, "train.max_iters=5")) == 0
    finally:
        sweep_lock.release()
    assert (out / "sweep.lock").exists() and (out / TRAIN_LOCK).exists()


# ---------------------------------------------------------------------------------------------
# A full disk

def failing_fsync(name: str, after: int):
    """os.fsync that fails with ENOSPC on the temporary file of `name` after `after` calls."""
    real, calls = os.fsync, []

    def fsync(fd):
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(fd)
            if len(calls) > after:
                raise ENOSPC
        return real(fd)
    return fsync


class FullFile:
    """A binary file whose writes fail with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def failing_fdopen(name: str, after: int):
    """os.fdopen whose file fails to take the bytes of `name` (inside torch.save) after
    `after` files."""
    real, opened = os.fdopen, []

    def fdopen(fd, *a, **k):
        f = real(fd, *a, **k)
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            opened.append(fd)
            if len(opened) > after:
                return FullFile(f)
        return f
    return fdopen


@pytest.mark.parametrize("where", ["fsync", "torch.save"])
def test_checkpoint_on_a_full_disk(tmp_path, small_text, capsys, monkeypatch, where):
    """The second checkpoint cannot be written: one line naming ckpt.pt and why; the first
    checkpoint stays and resumes to the end of an uninterrupted run."""
    full, out = tmp_path / "full", tmp_path / "run"
    args = lambda o, *x: checkpointed_args(  # noqa: E731
        tmp_path, small_text, o, "train.max_iters=60", "train.ckpt_interval=20",
        "train.eval_interval=20", *x)
    assert train.main(args(full)) == 0
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", failing_fsync("ckpt.pt", after=1))
    else:
        monkeypatch.setattr(os, "fdopen", failing_fdopen("ckpt.pt", after=1))
    capsys.readouterr()
    code = train.main(args(out))
    check_one_error(code, capsys.readouterr().err, f"cannot write {out / 'ckpt.pt'}",
                    "No space left on device", "resume=true")
    monkeypatch.undo()
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 20
    assert not list(out.glob(".*.tmp"))
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "No space left on device" in s["error"]
    assert train.main(args(out, "resume=true")) == 0
    resumed, reference = (json.loads((d / "summary.json").read_text()) for d in (out, full))
    assert resumed["final_val_loss"] == reference["final_val_loss"]


def test_metrics_on_a_full_disk(tmp_path, small_text, capsys, monkeypatch):
    out = tmp_path / "run"
    real_open, lines = open, []

    class Metrics:
        """metrics.jsonl whose disk fills after 3 records."""

        def __init__(self, f):
            self.f, self.name = f, f.name

        def write(self, text):
            lines.append(text)
            if len(lines) > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(path, *a, **k):
        f = real_open(path, *a, **k)
        return Metrics(f) if Path(path).name == "metrics.jsonl" else f

    monkeypatch.setattr(outputs, "open", fake_open, raising=False)
    capsys.readouterr()
    code = train.main(checkpointed_args(tmp_path, small_text, out, "train.max_iters=60",
                                        "train.ckpt_interval=10"))
    check_one_error(code, capsys.readouterr().err, f"cannot write {out / 'metrics.jsonl'}",
                    "No space left on device")
    monkeypatch.undo()
    assert len(read_metrics(out)) == 3                       # the records before are intact
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 10


def test_prepared_tokens_on_a_full_disk(tmp_path, small_text, capsys, monkeypatch):
    """Re-preparing a dataset on a full disk: one line naming train.bin; the dataset prepared
    before is still the one served, byte for byte."""
    common = ["data=shakespeare_char", f"data.root={tmp_path}"]
    assert P.main(common + [f"data.source={small_text}"]) == 0
    folder = tmp_path / "shakespeare_char"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = tmp_path / "other.txt"
    other.write_text(small_text.read_text()[::-1])
    real_open = open

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullFile(f) if mode == "wb" else f

    monkeypatch.setattr(P, "open", fake_open, raising=False)
    capsys.readouterr()
    code = P.main(common + [f"data.source={other}"])
    check_one_error(code, capsys.readouterr().err, f"cannot write {folder / 'train.bin'}",
                    "No space left on device")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert P.open_prepared(to_object(load_config(common)).data) == json.loads(before["meta.json"])


def test_a_full_disk_in_a_real_process(tmp_path, small_text):
    """What a user sees: a sitecustomize makes every fsync of ckpt.pt after the first fail."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\nreal, n = os.fsync, [0]\n"
        "def fsync(fd):\n"
        "    if '.ckpt.pt.' in os.readlink(f'/proc/self/fd/{fd}'):\n"
        "        n[0] += 1\n"
        "        if n[0] > 1:\n"
        "            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return real(fd)\n"
        "os.fsync = fsync\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py",
                        *checkpointed_args(tmp_path, small_text, out, "train.max_iters=60",
                                           "train.ckpt_interval=20")],
                       cwd=Path(train.__file__).parent, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(hook)))
    check_one_error(r.returncode, r.stderr, "ckpt.pt", "No space left on device")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 20

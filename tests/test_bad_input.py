"""Every bad input is one line: a table of bad inputs to train.py, sweep.py and
`python -m data.prepare` (bad keys, types and ranges; missing, unreadable, empty, truncated or
foreign files; damaged ckpt.pt, metrics.jsonl, meta.json and sweep.json; a run directory of
another config; a sweep directory of another sweep; a sweep that can only fail), each: exit
code 2, exactly one `error: ...` line on stderr that names a fix, no traceback, and nothing
written before changed. In-process calls (train.main, sweep.main, data.prepare.main), and a
few real processes."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sweep
import train
from data import prepare

REPO = Path(__file__).resolve().parents[1]
# Words of a fix: every error line tells the user what to do.
FIX_WORDS = ("pass ", "use ", "give ", "set ", "re-run", "delete", "drop ", "restore", "move ",
             "point ", "convert ", "fix ", "lower ", "wait ", "choose", "add ", "run:", "resume",
             "see ", "go online", "instead", "download it", "must be", "must lie", "pick ",
             "free ", "--help", "is not one of", "known: ", "converted to")


# ---- the workspace every case starts from ----------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory, small_text) -> Path:
    """A prepared dataset, a finished tiny run, another sweep's directory, a few input files."""
    ws = tmp_path_factory.mktemp("bad_input_base")
    shutil.copy(small_text, ws / "text.txt")
    assert train.main(train_args(ws, "train.max_iters=10", "train.ckpt_interval=5")) == 0
    (ws / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (ws / "empty.txt").write_text("")
    (ws / "folder").mkdir()
    (ws / "docs.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (ws / "broken.jsonl").write_text('{"text": "one"}\n{"text": \n')
    (ws / "other_sweep").mkdir()
    (ws / "other_sweep" / "sweep.json").write_text(json.dumps(
        {"name": "other", "setup": ["model=baby"], "sweep": {"name": "other"}}))
    (ws / "not_a_sweep").mkdir()
    (ws / "not_a_sweep" / "notes.txt").write_text("mine")
    return ws


def train_args(ws: Path, *extra: str) -> list[str]:
    return ["model=tiny", "data=shakespeare_char", f"data.source={ws / 'text.txt'}",
            f"data.root={ws / 'data'}", "train.batch_size=4", "train.block_size=32",
            "train.max_iters=10", "train.eval_interval=5", "train.eval_iters=2",
            "train.warmup_iters=2", "train.log_interval=5", "threads=1", f"out_dir={ws / 'run'}",
            *extra]


def sweep_args(ws: Path, *extra: str) -> list[str]:
    return [f"sweep.dir={ws / 'sw'}", "sweep.name=t", "sweep.overrides=[]", "sweep.seeds=[0]",
            "sweep.jobs=1", "sweep.max_extend=0", "sweep.optimizers=[adamw]", "sweep.lrs=[1e-3]",
            "model=tiny", "data=shakespeare_char", f"data.source={ws / 'text.txt'}",
            f"data.root={ws / 'data'}", "train.batch_size=4", "train.block_size=32",
            "train.max_iters=10", *extra]


def prepare_args(ws: Path, *extra: str) -> list[str]:
    return ["data=shakespeare", f"data.root={ws / 'fresh'}", f"data.source={ws / 'text.txt'}",
            *extra]


# ---- what a case may change ------------------------------------------------------------------

def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and 'dir' for directories) under root. Lock files
    are left out: an flock's file holds a note on its current holder, not a result."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.suffix == ".lock":
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def damage_metrics(ws: Path) -> None:
    path = ws / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + ["this is not JSON"] + lines[1:]) + "\n")


def torch_save(path: Path, obj) -> None:
    torch.save(obj, path)


def other_config_ckpt(ws: Path) -> None:
    """ws/run holds a run of another model (its config and checkpoint)."""
    shutil.rmtree(ws / "run")
    assert train.main(train_args(ws, "model.n_layer=1", "train.max_iters=5")) == 0


def other_model_ckpt(ws: Path) -> None:
    """ws/run's checkpoint is another model's, and says nothing of its config."""
    other_config_ckpt(ws)
    state = torch.load(ws / "run" / "ckpt.pt", weights_only=True)
    del state["config"]
    torch.save(state, ws / "run" / "ckpt.pt")


class Raw(list):
    """The whole command line of a case (no workspace defaults before it)."""


T, S, P = "train", "sweep", "prepare"
DATA, RUN = "data/shakespeare_char", "run"   # in the workspace
NEW = "out_dir={ws}/new"           # a fresh run, so the case reaches its data
FRESH = "data.root={ws}/fresh"     # nothing prepared there: the run prepares from data.source
CASES = [
    # (id, entry point, arguments after the workspace's defaults ({ws}: the workspace),
    #  set-up of the workspace, what the one line names)
    # -- train.py: keys, types, ranges
    ("train-unknown-key", T, ["train.max_itres=3"], None, "max_itres"),
    ("train-bad-type", T, ["train.max_iters=abc"], None, "max_iters"),
    ("train-batch-0", T, ["train.batch_size=0"], None, "train.batch_size=0"),
    ("train-negative-lr", T, ["optimizer.lr=-1e-3"], None, "optimizer.lr"),
    ("train-unknown-optimizer", T, ["optimizer=nosuchopt"], None, "nosuchopt"),
    ("train-ns-steps-zero", T, ["optimizer=muon", "optimizer.ns_steps=0"], None,
     "optimizer.ns_steps=0 must be an integer >= 1"),
    ("train-coupled-steps-zero", T, ["optimizer=msgds", "optimizer.coupled_steps=0"], None,
     "optimizer.coupled_steps=0 must be an integer >= 1"),
    ("train-embd-heads", T, ["model.n_embd=33"], None, "model.n_embd=33"),
    ("train-dropout", T, ["model.dropout=1.5"], None, "model.dropout"),
    ("train-schedule", T, ["train.schedule=linear"], None, "train.schedule"),
    ("train-gelu", T, ["model.gelu=relu"], None, "model.gelu"),
    ("train-min-lr", T, ["train.min_lr=-1e-6"], None, "train.min_lr"),
    ("train-decay-embeddings-all-2d", T, ["optimizer=adam", "optimizer.decay_embeddings=false",
                                          "optimizer.weight_decay=0.1"], None, "decay_embeddings"),
    ("train-fp16-cpu", T, ["dtype=float16", "device=cpu"], None, "float16"),
    ("train-device", T, ["device=tpu"], None, "device='tpu'"),
    ("train-val-fraction", T, ["data.val_fraction=1.5"], None, "data.val_fraction"),
    ("train-modulus", T, ["task=grokking", "task.modulus=96"], None, "not prime"),
    ("train-cfg-job", T, Raw(["--cfg", "job", "train.max_itres=3"]), None, "max_itres"),
    # -- train.py: Hydra's command line
    ("train-unknown-option", T, ["--frob"], None, "unrecognized arguments: --frob"),
    ("train-unparsable", T, ["optimizer.betas=[0.9,"], None, "cannot parse 'optimizer.betas=[0.9,'"),
    ("train-sweep-without-m", T, ["optimizer=adamw,muon"], None, "--multirun"),
    ("train-multirun-value", T, Raw(["-m", "train.grad_clip=abc,0.5", "model=tiny",
                                     "hydra.sweep.dir={ws}/multi", "data.root={ws}/data"]),
     None, "grad_clip"),
    ("train-multirun-out-dir", T, Raw(["-m", "optimizer=adamw,muon", "out_dir={ws}/run"]), None,
     "hydra.sweep.dir"),
    ("train-overrides-split", T, Raw(["model=tiny", "-m", "optimizer=adamw,muon"]), None,
     "unrecognized arguments: optimizer=adamw,muon"),
    ("train-cfg-value", T, ["--cfg", "job", "train.batch_size=0"], None, "train.batch_size=0"),
    ("train-block-size", T, ["train.block_size=100000", NEW], None, "train.block_size=100000"),
    # -- train.py: input files
    ("train-source-missing", T, ["data.source={ws}/nope.txt", FRESH], None, "does not exist"),
    ("train-source-folder", T, ["data.source={ws}/folder", FRESH], None, "is a directory"),
    ("train-source-binary", T, ["data.source={ws}/binary.txt", FRESH], None, "not UTF-8"),
    ("train-source-empty", T, ["data.source={ws}/empty.txt", FRESH], None, "empty.txt"),
    ("train-data-root-file", T, ["data.root={ws}/text.txt"], None, "is a file, not a directory"),
    ("train-meta-truncated", T, [NEW], lambda ws: truncate(ws / DATA / "meta.json"), "meta.json"),
    ("train-bin-truncated", T, [NEW], lambda ws: truncate(ws / DATA / "train.bin"), "train.bin"),
    ("train-meta-other-tokenizer", T, ["data.tokenizer=r50k_base", NEW], None,
     "prepared with tokenizer char"),
    ("train-local-broken-jsonl", T, ["data=local", "data.source=null", "data.tokenizer=char",
                                     "data.files=[{ws}/broken.jsonl]", FRESH, NEW],
     None, "JSON parse error"),
    # -- train.py: out_dir
    ("train-out-dir-file", T, ["out_dir={ws}/text.txt"], None, "not a directory"),
    ("train-out-dir-under-file", T, ["out_dir={ws}/text.txt/run"], None, "cannot create out_dir="),
    ("train-out-dir-holds-run", T, [], None, "already holds a run"),
    ("train-ckpt-truncated", T, ["resume=true"], lambda ws: truncate(ws / RUN / "ckpt.pt"),
     "ckpt.pt cannot be read"),
    ("train-ckpt-text", T, ["resume=true"],
     lambda ws: (ws / RUN / "ckpt.pt").write_text("not a checkpoint\n"), "ckpt.pt cannot be read"),
    ("train-ckpt-foreign", T, ["resume=true"],
     lambda ws: torch_save(ws / RUN / "ckpt.pt", {"weights": torch.zeros(3)}),
     "not a checkpoint of train.py"),
    ("train-resume-past-the-end", T, ["resume=true", "train.max_iters=4"], None,
     "checkpointed at step 10, past train.max_iters=4"),
    ("train-other-config", T, ["resume=true"], other_config_ckpt,
     "holds a run of another config (model.n_layer=1 there, 2 here)"),
    ("train-ckpt-other-model", T, ["resume=true"], other_model_ckpt,
     "ckpt.pt does not fit this run's model"),
    ("train-metrics-damaged", T, ["resume=true"], damage_metrics,
     "metrics.jsonl is damaged (line 2"),
    ("train-metrics-binary", T, ["resume=true"],
     lambda ws: (ws / RUN / "metrics.jsonl").write_bytes(b"\xff\xfe" * 50),
     "metrics.jsonl is damaged (not UTF-8"),
    # -- sweep.py
    ("sweep-nproc-accum", S, Raw(["sweep=cpu_ordering", "sweep.nproc_per_run=2",
                                  "data.source={ws}/text.txt", "sweep.dir={ws}/swo"]),
     None, "train.grad_accum_steps=1 is not divisible by the 2 processes"),
    ("sweep-accum-3", S, ["sweep.nproc_per_run=2", "train.grad_accum_steps=3"], None,
     "train.grad_accum_steps=3 is not divisible"),
    ("sweep-unknown-optimizer", S, ["sweep.optimizers=[adamx]"], None, "adamx"),
    ("sweep-empty-lrs", S, ["sweep.lrs=[]"], None, "sweep.lrs is empty"),
    ("sweep-nan-lr", S, ["sweep.lrs=[nan]"], None, "non-positive"),
    ("sweep-unknown-key", S, ["sweep.metrik=x"], None, "sweep.metrik"),
    ("sweep-grid-point-twice", S, ["sweep.grid_points=[{{train.max_iters:3}},{{train.max_iters:3}}]"], None,
     "lists the same variant twice"),
    ("sweep-grid-and-point", S, ["sweep.grid_points=[{{train.max_iters:3}}]",
                                 "sweep.grid={{train.max_iters:[4]}}"], None, "both in sweep.grid"),
    ("sweep-train-key", S, ["train.max_itres=3"], None, "max_itres"),
    ("sweep-points-of-unswept", S, ["sweep.grid_points_by_optimizer={{soap:[{{optimizer.ns:svd}}]}}"],
     None, "soap is not in sweep.optimizers"),
    ("sweep-launcher", S, ["sweep.launcher=pbs"], None, "sweep.launcher='pbs' is not one of"),
    ("sweep-resolve-zero", S, ["sweep.resolve=0"], None, "sweep.resolve=0.0 must be > 0"),
    ("sweep-slurm-key", S, ["sweep.slurm.partiton=gpu"], None, "sweep.slurm.partiton"),
    ("sweep-slurm-time", S, ["sweep.launcher=slurm", "sweep.slurm.time=0"], None,
     "sweep.slurm.time=0 must be at least 1"),
    ("sweep-out-dir", S, ["out_dir=/tmp/x"], None, "out_dir is set by sweep.py"),
    ("sweep-not-key-value", S, ["frob"], None, "'frob' is not key=value"),
    ("sweep-unknown-command", S, Raw(["frobnicate", "sweep.dir={ws}/sw"]), None,
     "unknown command 'frobnicate'"),
    ("sweep-source-missing", S, ["data.source={ws}/nope.txt", FRESH], None, "does not exist"),
    ("sweep-meta-truncated", S, [], lambda ws: truncate(ws / DATA / "meta.json"), "meta.json"),
    ("sweep-of-another-sweep", S, ["sweep.dir={ws}/other_sweep"], None,
     "holds the results of another sweep"),
    ("sweep-dir-not-a-sweep", S, ["sweep.dir={ws}/not_a_sweep"], None, "holds no sweep.json"),
    ("sweep-dir-is-a-file", S, ["sweep.dir={ws}/text.txt"], None, "is a file"),
    ("sweep-json-damaged", S, ["sweep.dir={ws}/other_sweep"],
     lambda ws: truncate(ws / "other_sweep" / "sweep.json"), "sweep.json is damaged"),
    ("report-no-sweep", S, Raw(["report", "sweep.dir={ws}/not_a_sweep"]), None,
     "holds no sweep.json"),
    ("report-metrics-damaged", S, Raw(["report", "sweep.dir={ws}/other_sweep"]),
     lambda ws: fake_finished_run(ws / "other_sweep"), "metrics.jsonl is damaged"),
    # -- python -m data.prepare
    ("prepare-source-missing", P, ["data.source={ws}/nope.txt"], None, "does not exist"),
    ("prepare-source-folder", P, ["data.source={ws}/folder"], None, "is a directory"),
    ("prepare-source-binary", P, ["data.source={ws}/binary.txt"], None, "not UTF-8"),
    ("prepare-source-empty", P, ["data.source={ws}/empty.txt"], None, "empty.txt"),
    ("prepare-tokenizer", P, ["data.tokenizer=nope"], None, "data.tokenizer=nope"),
    ("prepare-val-fraction", P, ["data.val_fraction=0"], None, "data.val_fraction"),
    ("prepare-unknown-key", P, ["data.sourcee=x"], None, "sourcee"),
    ("prepare-root-is-file", P, ["data.root={ws}/text.txt"], None, "data.root="),
    ("prepare-no-input", P, Raw(["data=local", FRESH]), None, "has no input"),
    ("prepare-mixed-files", P, Raw(["data=local", FRESH,
                                    "data.files=[{ws}/text.txt,{ws}/docs.jsonl]"]), None,
     "mixes raw text"),
    ("prepare-broken-jsonl", P, Raw(["data=local", FRESH, "data.files=[{ws}/broken.jsonl]"]), None,
     "JSON parse error"),
    ("prepare-no-text-column", P, Raw(["data=local", FRESH, "data.files=[{ws}/docs.jsonl]",
                                       "data.text_field=body"]), None, "no column 'body'"),
]
DEFAULTS = {T: train_args, S: sweep_args, P: prepare_args}


def command_line(entry: str, args: list[str], ws: Path) -> list[str]:
    own = [a.format(ws=ws) for a in args]
    return own if isinstance(args, Raw) else DEFAULTS[entry](ws, *own)


def fake_finished_run(d: Path) -> None:
    """A run of sweep.dir `d` whose metrics.jsonl is damaged in its middle."""
    run = d / "runs" / "adamw_lr1e-03_s0_00000000"
    run.mkdir(parents=True)
    (run / "point.json").write_text(json.dumps({"optimizer": "adamw", "lr": 1e-3, "seed": 0,
                                                "grid": {}, "overrides": [], "run_id": run.name}))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "final_val_loss": 2.0,
                                                  "steps": 10, "tokens": 100}))
    (run / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "val/loss": 4.0}\n}{\n'
                                       '{"step": 10, "tokens": 100, "val/loss": 2.0}\n')


ENTRY = {T: train.main, S: sweep.main, P: prepare.main}


def check_one_line(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], (needle, lines[0])
    assert any(w in lines[0] for w in FIX_WORDS), f"names no fix: {lines[0]}"


def check_unchanged(before: dict, after: dict) -> None:
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"changed or removed: {changed}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, base, tmp_path, capsys):
    _, entry, args, set_up, needle = case
    ws = tmp_path / "ws"
    shutil.copytree(base, ws)
    if set_up is not None:
        set_up(ws)
    capsys.readouterr()
    before = tree(ws)
    code = ENTRY[entry](command_line(entry, args, ws))
    check_one_line(code, capsys.readouterr().err, needle)
    check_unchanged(before, tree(ws))


def test_table_is_large_enough():
    assert len(CASES) >= 30 and {c[1] for c in CASES} == {T, S, P}


# A few as real processes: what a user sees, exit code and all.
SUBPROCESS = [
    ("train.py", "train-ckpt-truncated"),
    ("train.py", "train-out-dir-file"),
    ("sweep.py", "sweep-nproc-accum"),
    ("-m data.prepare", "prepare-source-missing"),
]


@pytest.mark.parametrize("command,case_id", SUBPROCESS, ids=[c[1] for c in SUBPROCESS])
def test_bad_input_one_line_in_a_process(command, case_id, base, tmp_path):
    _, entry, args, set_up, needle = next(c for c in CASES if c[0] == case_id)
    ws = tmp_path / "ws"
    shutil.copytree(base, ws)
    if set_up is not None:
        set_up(ws)
    before = tree(ws)
    r = subprocess.run([sys.executable, *command.split(), *command_line(entry, args, ws)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    check_one_line(r.returncode, r.stderr, needle)
    check_unchanged(before, tree(ws))

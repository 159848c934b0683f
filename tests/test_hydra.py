"""train.py as a Hydra application: --cfg job, -m multirun (each job in its numbered directory
with its .hydra/ record), --help, shell completion, out_dir as Hydra's run directory, and the
one-line contract for what Hydra alone would report in several lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

import train
from runs import tiny_args

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    """A 3-step tiny run: these tests check what Hydra does around a run, not the training."""
    return tiny_args(tmp_path, source, "train.max_iters=3", "train.eval_interval=3",
                     "train.eval_iters=1", "train.warmup_iters=1", "train.log_interval=1", *extra)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cfg_job_prints_the_resolved_config_and_runs_nothing(tmp_path, capsys):
    r = cli("--cfg", "job", "--resolve", "model=tiny", "optimizer=muon", f"out_dir={tmp_path / 'x'}")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["optimizer"]["name"] == "muon" and cfg["model"]["n_layer"] == 2
    assert cfg["out_dir"] == str(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # without out_dir: Hydra's run directory, resolved (runs/<date>_<time>)
    assert train.main(["--cfg", "job", "--resolve"]) == 0
    assert "/runs/20" in yaml.safe_load(capsys.readouterr().out)["out_dir"]


def test_help_lists_the_groups_and_completion_completes_them(capsys, monkeypatch):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "optimizer: adam, adamh, adamq" in out and "model: baby, gpt2" in out
    assert "--multirun" in out and "python train.py -m" in out
    monkeypatch.setenv("COMP_LINE", "python train.py optimizer=na")
    assert train.main(["-sc", "query=bash"]) == 0
    assert capsys.readouterr().out.split() == ["optimizer=namo", "optimizer=namo_d"]


def test_multirun_runs_each_job_in_its_own_directory(tmp_path, small_text, capsys):
    sweep_dir = tmp_path / "multi"
    args = tiny(tmp_path, small_text, f"hydra.sweep.dir={sweep_dir}")
    assert train.main(["-m", "optimizer=adamw,muon", *args]) == 0
    assert (sweep_dir / "multirun.yaml").is_file()
    for num, opt in enumerate(["adamw", "muon"]):
        job = sweep_dir / str(num)
        s = json.loads((job / "summary.json").read_text())
        assert s["status"] == "completed" and s["steps"] == 3
        assert yaml.safe_load((job / "config.yaml").read_text())["out_dir"] == str(job)
        assert f"optimizer={opt}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"] == num
        assert s["provenance"]["command"].startswith(f"train.py optimizer={opt} ")


def test_out_dir_is_hydras_run_directory(tmp_path, small_text):
    out = tmp_path / "run"
    assert train.main(tiny(tmp_path, small_text, f"out_dir={out}")) == 0
    hydra_cfg = yaml.safe_load((out / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["runtime"]["output_dir"] == str(out)
    assert hydra_cfg["job"]["chdir"] is False
    # the reproducibility record, in config.yaml and summary.json alike
    prov = yaml.safe_load((out / "config.yaml").read_text())["provenance"]
    assert prov == json.loads((out / "summary.json").read_text())["provenance"]
    assert prov["world_size"] == 1 and prov["device"] == "cpu" and prov["torch"]
    assert len(prov["git_commit"] or "0" * 40) == 40 and prov["git_dirty"] in (True, False, None)
    assert set(prov) >= {"device_name", "host", "command"}


def test_refused_runs_leave_no_directory(tmp_path, small_text, capsys):
    """Hydra makes a run's directory before the job starts; a refused run removes it again."""
    for bad in (["train.batch_size=0"], [f"data.source={tmp_path / 'missing.txt'}",
                                         f"data.root={tmp_path / 'fresh'}"]):
        out = tmp_path / "new" / "run"
        assert train.main(tiny(tmp_path, small_text, f"out_dir={out}", *bad)) == 2
        assert not (tmp_path / "new").exists()
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 2 and all(l.startswith("error: ") for l in err), err


def test_multirun_bad_input_is_one_line(tmp_path, small_text, capsys):
    args = tiny(tmp_path, small_text, f"hydra.sweep.dir={tmp_path / 'm'}")
    # a job whose config cannot compose (Hydra's error), a job whose value is refused (ours)
    for sweep, needle in (("train.grad_clip=abc,1", "grad_clip"),
                          ("train.grad_accum_steps=0,1", "train.grad_accum_steps=0 must be at least 1")):
        capsys.readouterr()
        assert train.main(["-m", sweep, *args]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert train.main(["-m", "optimizer=adamw,muon", f"out_dir={tmp_path / 'o'}", *args]) == 2
    assert "hydra.sweep.dir" in capsys.readouterr().err

"""sweep.reuse (sweeper/reuse.py): a point that trains exactly as a finished run of another sweep
is copied from it, not trained; anything that changes the training (an lr, a model field that
is built) is not matched, nor is a run that is no result; a bad directory is one error line."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

import sweep
from configs import load_config
from sweeper import reuse
from tests.test_sweep import launches, results, run_main, tiny_args


def key(*overrides: str):
    return reuse.training_key(OmegaConf.to_container(load_config(list(overrides)), resolve=True))


def test_training_key_ignores_what_only_names_a_run_and_resolves_the_model():
    base = key("model=baby", "optimizer=namo", "optimizer.lr=0.04")
    assert base == key("model=baby", "optimizer=namo", "optimizer.lr=0.04", "out_dir=/x/y",
                       "wandb.enabled=true", "wandb.name=other", "resume=false")
    # 128 wide with 32-wide heads is the baby model's own 4 heads (head_dim unused by gpt2)
    assert base == key("model=baby", "model.n_head=null", "model.head_dim=32", "optimizer=namo",
                       "optimizer.lr=0.04")
    assert base == key("model=baby", "model.head_dim=64", "optimizer=namo", "optimizer.lr=0.04")
    # what trains differently never matches
    for other in (("optimizer.lr=0.08",), ("model.n_head=null", "model.head_dim=64"),
                  ("optimizer.decay_style=decoupled",), ("seed=1",), ("threads=2",)):
        assert key("model=baby", "optimizer=namo", "optimizer.lr=0.04", *other) != base, other


def test_a_model_of_another_schema_never_matches():
    cfg = OmegaConf.to_container(load_config(["model=baby"]), resolve=True)
    cfg["model"]["retired_field"] = 1
    assert reuse.training_key(cfg) is None


def test_index_keeps_results_only(tmp_path):
    cfg = OmegaConf.to_container(load_config(["model=tiny"]), resolve=True)
    for name, status in (("done", "completed"), ("blew_up", "diverged"), ("broke", "failed"),
                         ("stopped", "interrupted")):
        run = tmp_path / "src" / "runs" / name
        run.mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({**cfg, "seed": len(name)}), run / "config.yaml")
        (run / "summary.json").write_text(json.dumps({"status": status}))
    found = reuse.index([tmp_path / "src"])
    assert sorted(p.name for p in found.values()) == ["blew_up", "done"]


def test_bad_reuse_dirs_are_refused(tmp_path):
    with pytest.raises(Exception, match="holds no sweep"):
        reuse.check_sources([str(tmp_path / "nowhere")], tmp_path / "own")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "sweep.json").write_text("{}")
    with pytest.raises(Exception, match="own directory"):
        reuse.check_sources([str(tmp_path / "own")], tmp_path / "own")


def test_a_sweep_copies_the_runs_another_sweep_ran(tmp_path, small_text, capsys):
    """The real train.py: a source sweep at lr 3e-3; a second sweep (another name, its model
    given as n_head=null head_dim=32, i.e. the same 2 heads) at 3e-3 and 1e-2 copies the first
    and trains only the second."""
    source = tmp_path / "src"
    assert sweep.main(tiny_args(tmp_path, small_text, f"sweep.dir={source}", "sweep.name=src",
                                "sweep.optimizers=[adamw]", "sweep.lrs=[3e-3]")) == 0
    (src_row,) = results(source)
    d = tmp_path / "sw"
    args = tiny_args(tmp_path, small_text, "sweep.optimizers=[adamw]", "sweep.lrs=[3e-3,1e-2]",
                     f"sweep.reuse=[{source}]", "model.n_head=null", "model.head_dim=32")
    capsys.readouterr()
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "1 run(s) copied from sweep.reuse" in out and "this invocation ran 1 run(s)" in out
    rows = {float(r["lr"]): r for r in results(d)}
    copied, trained = d / "runs" / rows[3e-3]["run_id"], d / "runs" / rows[1e-2]["run_id"]
    assert rows[3e-3]["run_id"] != src_row["run_id"]
    # the copy keeps the source's log (how its result was made); only the new lr was launched
    assert (copied / "train.log").read_text() == \
        (source / "runs" / src_row["run_id"] / "train.log").read_text()
    assert launches(trained) == 1
    assert json.loads((copied / "reused.json").read_text())["from"] == \
        str(source / "runs" / src_row["run_id"])
    assert json.loads((copied / "point.json").read_text())["run_id"] == rows[3e-3]["run_id"]
    assert rows[3e-3]["final_val_loss"] == src_row["final_val_loss"]
    # again: nothing copied or launched twice
    assert sweep.main(args) == 0
    assert "copied" not in capsys.readouterr().out and launches(trained) == 1


def test_a_reuse_dir_without_a_sweep_is_one_error_line(tmp_path, small_text, capsys):
    code, err = run_main(tiny_args(tmp_path, small_text, f"sweep.reuse=[{tmp_path / 'none'}]"),
                         capsys)
    assert code == 2 and err.startswith("error: sweep.reuse lists") and len(err.splitlines()) == 1
    assert not (tmp_path / "sw" / "runs").exists()

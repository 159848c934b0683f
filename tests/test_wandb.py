"""W&B as the dashboards need it, read back from the offline runs W&B itself writes: tokens as the
x-axis of every metric, val/loss's summary its minimum, the resolved config with its provenance,
no point sent twice after a resume; sweep runs' group and tags; `sweep.py export-wandb` accepted
by W&B's own sweep-config checks."""
from __future__ import annotations

from pathlib import Path

import warnings

import pytest
import yaml

import sweep
import train
from sweeper.points import make_point, run_args, split_args
from wandb_records import config, history, metrics, offline_runs, records, run_record

with warnings.catch_warnings():   # sweeps 0.2 uses pydantic's v1 names
    warnings.simplefilter("ignore")
    import sweeps   # wandb[sweeps]: what `wandb sweep` validates a sweep config with


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def tiny(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    return ["model=tiny", "data=shakespeare_char", f"data.source={source}",
            f"data.root={tmp_path / 'data'}", "train.batch_size=4", "train.block_size=32",
            "train.eval_interval=5", "train.eval_iters=1", "train.warmup_iters=1",
            "train.log_interval=5", "train.ckpt_interval=5", "threads=1", "wandb.enabled=true",
            "wandb.mode=offline", "wandb.group=grp", f"out_dir={tmp_path / 'run'}", *extra]


def test_tokens_is_the_x_axis_and_resume_sends_each_point_once(tmp_path, small_text):
    out = tmp_path / "run"
    assert train.main(tiny(tmp_path, small_text, "train.max_iters=10", "wandb.tags=[t1]")) == 0
    [first] = offline_runs(out)
    recs = records(first)
    m = metrics(recs)
    assert m["val/loss"].step_metric == "tokens" and m["val/loss"].summary.min
    assert m["*"].step_metric == "tokens" and "tokens" in m      # train/*, lr, ...: tokens too
    rows = history(recs)
    assert all("tokens" in r for r in rows) and any("val/loss" in r for r in rows)
    run = run_record(recs)
    assert run.run_group == "grp" and list(run.tags) == ["t1"]
    cfg = config(recs)
    assert cfg["optimizer"]["name"] == "adamw" and cfg["out_dir"] == str(out)
    prov = cfg["provenance"]
    assert {"git_commit", "git_dirty", "command", "host", "torch", "device_name"} <= set(prov)

    # Resumed from its checkpoint at step 10 with a longer budget: the same W&B run id, and
    # the records sent before (steps 0-10, the evaluation at 10 that is redone) not sent again.
    assert train.main(tiny(tmp_path, small_text, "train.max_iters=20", "resume=true")) == 0
    runs = offline_runs(out)
    assert len(runs) == 2 and runs[1].name == first.name
    rows = [r for f in runs for r in history(records(f))]   # one row a step: train and val
    assert sorted(r["_step"] for r in rows) == [0, 5, 10, 15, 20], "a point sent twice or lost"
    assert [r["_step"] for r in rows if "val/loss" in r] == [0, 5, 10, 15, 20]
    assert [r["tokens"] for r in rows] == [s * 4 * 32 for s in (0, 5, 10, 15, 20)]


def test_sweep_runs_share_a_group_and_carry_their_point_as_tags(tmp_path):
    p = make_point("namo", 3e-3, 2, {}, ["model=tiny"], stage="2")
    _, train_args = split_args(["wandb.enabled=true", "wandb.tags=[paper]"])
    args = run_args(p, tmp_path, train_args + ["wandb.group=cpu_x"], 1, True)
    from configs import load_config
    w = load_config(args).wandb
    assert w.group == "cpu_x" and w.name == p.run_id
    assert list(w.tags) == ["paper", "optimizer:namo", "lr:3e-03", "seed:2", "stage:2"]


@pytest.mark.parametrize("preset", ["namo_gpt2", "cpu_decisive", "namo_decay"])
def test_export_wandb_passes_wandbs_sweep_checks(tmp_path, preset):
    d = tmp_path / "wb"
    assert sweep.main(["export-wandb", f"sweep={preset}", f"sweep.dir={d}"]) == 0
    files = sorted(d.glob("wandb_*.yaml"))
    assert files
    for f in files:
        doc = yaml.safe_load(f.read_text())
        assert sweeps.schema_violations_from_proposed_config(doc) == [], f
    broken = dict(doc, method="grud")
    assert sweeps.schema_violations_from_proposed_config(broken)

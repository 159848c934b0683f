"""Real multi-process training on CPU (gloo) through torchrun: the loss trajectory of 2
processes equals that of one process with the same global batch, and ranks stay in sync."""
from __future__ import annotations

import json

import pytest

from runs import launch, train_losses, why



@pytest.mark.parametrize("optimizer", ["adamw", "namo_d"])
def test_two_processes_match_one(tmp_path, small_text, optimizer):
    common = ["model=tiny", "data=shakespeare_char", f"data.source={small_text}",
              f"data.root={tmp_path / 'data'}", f"optimizer={optimizer}", "train.batch_size=4",
              "train.block_size=32", "train.grad_accum_steps=2", "train.max_iters=12",
              "train.eval_interval=6", "train.eval_iters=2", "train.log_interval=1",
              "train.warmup_iters=2", "threads=1"]
    single = launch(common + [f"out_dir={tmp_path / 'one'}"], 1)
    assert single.returncode == 0, why(single)
    multi = launch(common + [f"out_dir={tmp_path / 'two'}"], 2)
    assert multi.returncode == 0, why(multi)
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 13))
    for step in one:  # float32 reduction order differs: all-reduce vs local accumulation
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["ranks_in_sync"] is True
    assert s2["final_val_loss"] == pytest.approx(s1["final_val_loss"], rel=1e-4)


def test_accum_not_divisible_by_world(tmp_path, small_text):
    r = launch(["model=tiny", f"data.source={small_text}", f"data.root={tmp_path / 'data'}",
                "train.grad_accum_steps=3", "train.max_iters=2", f"out_dir={tmp_path / 'x'}",
                "threads=1"], 2)
    assert r.returncode != 0
    assert "train.grad_accum_steps=3 is not divisible by the 2 processes" in r.stderr

"""A run killed right after an evaluation that improved best_val_loss, at a step that is both a
checkpoint step and an eval step, resumes to exactly an uninterrupted run's best_val_loss,
final_val_loss and eval records (the evaluation of that step recorded once): in process, the
kill being an exception raised right after that evaluation (tests/test_preempt.py does the same
with SIGKILL and SIGTERM sent to a real process). The checkpoint of step 20 is written before
step 20's evaluation, so it holds the best_val_loss of step 0 only: the resumed run must take
the evaluation of step 20 again, not keep the record of it, and end with its value as best."""
from __future__ import annotations

import json

import pytest
import torch

import train
from runs import tiny_args
from trainer.outputs import read_metrics


class Killed(Exception):
    pass


def eval_records(out) -> list[tuple]:
    return [(r["step"], r["val/loss"]) for r in read_metrics(out) if "val/loss" in r]


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_killed_after_an_improving_eval_at_a_checkpoint_step_resumes_exactly(
        tmp_path, small_text, monkeypatch):
    args = tiny_args(tmp_path, small_text, "train.max_iters=30", "train.eval_interval=20",
                     "train.ckpt_interval=20", "train.eval_at_end=false", "model.dropout=0.1",
                     "train.final_eval_tokens=0")
    full, out = tmp_path / "full", tmp_path / "killed"
    assert train.main(args + [f"out_dir={full}"]) == 0
    reference = summary(full)
    (e0, l0), (e20, l20) = eval_records(full)
    assert (e0, e20) == (0, 20) and l20 < l0          # the evaluation of step 20 improved it
    assert reference["best_val_loss"] == l20 and reference["final_val_loss"] == l20

    evaluate = train.Run.evaluate

    def evaluate_then_die(self):
        evaluate(self)
        if self.progress.step == 20:
            if self.ckpt_writer is not None:
                self.ckpt_writer.wait()               # the checkpoint of step 20 is on disk
            raise Killed("killed right after the evaluation of step 20")
    monkeypatch.setattr(train.Run, "evaluate", evaluate_then_die)
    with pytest.raises(Killed):
        train.main(args + [f"out_dir={out}"])
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["step"] == 20 and state["best_val_loss"] == l0      # step 20's not in it
    assert [r["step"] for r in state["history"]] == [0]
    assert eval_records(out) == [(0, l0), (20, l20)]  # the killed run did log that evaluation

    monkeypatch.setattr(train.Run, "evaluate", evaluate)
    assert train.main(args + [f"out_dir={out}", "resume=true"]) == 0
    resumed = summary(out)
    assert resumed["status"] == "completed" and resumed["steps"] == 30
    assert resumed["best_val_loss"] == l20 and resumed["final_val_loss"] == l20
    assert eval_records(out) == [(0, l0), (20, l20)]  # step 20 once, the same value
    final, ref = (torch.load(d / "ckpt.pt", weights_only=True) for d in (out, full))
    assert final["best_val_loss"] == l20

    def timeless(history):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in history]
    assert timeless(final["history"]) == timeless(ref["history"])
    assert [r["step"] for r in final["history"]] == [0, 20]

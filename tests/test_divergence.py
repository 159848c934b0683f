"""Divergence: trainer/divergence.py's DivergenceWatch (add(loss, step) each step, read() at the
loop's look points -> (the 1-based FIRST diverged step or None, the last loss)) on hand-made loss
sequences, StepLoss (the look points, and each step's StepOutcome), and train.py end to end: a
run whose train loss goes bad at a known step ends with summary.json's diverged_at_step = that
step (1-based) and steps = diverged_at_step - 1 (the rollback: the bad step's update is never
applied)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import train
from runs import tiny_args
from trainer.config import TrainConfig
from trainer.divergence import DivergenceWatch, StepLoss, StepOutcome


def feed(watch: DivergenceWatch, losses: list, start: int) -> None:
    """Losses of 0-based steps start, start + 1, ..., as the loop adds them (float64 scalars)."""
    for i, loss in enumerate(losses):
        watch.add(torch.tensor(loss, dtype=torch.float64), start + i)


def test_healthy_window_reads_none_and_the_last_loss():
    watch = DivergenceWatch(limit=20.0, device="cpu")
    feed(watch, [4.0, 3.5, 3.25], start=0)
    assert watch.read() == (None, 3.25)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 20.5])
def test_first_bad_step_is_reported_one_based(bad):
    """Non-finite (nan, +-inf) and above-limit losses all count; the step is 1-based (0-based
    step 6 is the 7th step)."""
    watch = DivergenceWatch(limit=20.0, device="cpu")
    feed(watch, [4.0, 3.9, 3.8, 3.7, 3.6, 3.5, bad, 3.4], start=0)
    first, last = watch.read()
    assert first == 7 and last == 3.4


def test_the_limit_itself_is_not_divergence():
    """'above the limit': a loss equal to train.diverge_loss is still healthy."""
    watch = DivergenceWatch(limit=20.0, device="cpu")
    feed(watch, [20.0, 19.0], start=0)
    assert watch.read() == (None, 19.0)


def test_several_bad_steps_in_one_window_give_the_first():
    """Steps 12, 13 and 14 (0-based) are bad in one read window: the first, 13 (1-based), not the
    last (15) nor the count, whatever their kinds and order of size."""
    watch = DivergenceWatch(limit=10.0, device="cpu")
    feed(watch, [3.0, 2.9], start=10)
    feed(watch, [50.0, math.nan, 11.0], start=12)
    first, last = watch.read()
    assert first == 13 and math.isclose(last, 11.0)


def test_a_bad_step_of_an_earlier_window_is_kept():
    """A later read, of healthy or of other bad steps, keeps the first window's verdict."""
    watch = DivergenceWatch(limit=10.0, device="cpu")
    feed(watch, [3.0, 99.0, 3.0], start=0)            # step 1 (0-based) is bad: 2
    assert watch.read() == (2, 3.0)
    feed(watch, [2.5, 2.4, 2.3], start=3)
    assert watch.read() == (2, 2.3)
    feed(watch, [math.inf, 2.2], start=6)             # a later bad step does not replace it
    assert watch.read() == (2, 2.2)


def test_steps_need_not_start_at_zero():
    """A resumed run adds steps from its checkpoint's step on: the verdict is the step added."""
    watch = DivergenceWatch(limit=10.0, device="cpu")
    feed(watch, [3.0, 3.0, math.nan], start=300)
    assert watch.read()[0] == 303


def test_step_loss_reads_before_logs_evaluations_and_checkpoints_only():
    """StepLoss's outcome of each step of a 23-step run (log every 5, evaluate every 7,
    checkpoint every 4): it reads the loss when the step done (1-based) is a log point (5, 10,
    15, 20 and the end, 23), an evaluation (7, 14, 21) or a checkpoint (4, 8, 12, 16, 20; the end
    writes its own), logs at the log points only, and leaves the loss on the device otherwise."""
    t = TrainConfig(max_iters=23, log_interval=5, eval_interval=7, ckpt_interval=4)
    losses = StepLoss(t, device="cpu")
    outcomes = [losses.after_backward(torch.tensor(4.0 - s / 10, dtype=torch.float64), s)
                for s in range(23)]
    assert [s + 1 for s, o in enumerate(outcomes) if o.read] == [4, 5, 7, 8, 10, 12, 14, 15, 16,
                                                                  20, 21, 23]
    assert [s + 1 for s, o in enumerate(outcomes) if o.log] == [5, 10, 15, 20, 23]
    assert outcomes[4] == StepOutcome(read=True, log=True, loss=3.6, diverged_at=None)
    assert outcomes[5] == StepOutcome(read=False, log=False, loss=None, diverged_at=None)


def test_step_loss_reports_the_first_bad_step_at_the_next_read():
    """A bad loss at 0-based step 8 of a window read after step 10 (1-based): no outcome before
    that read knows of it; the read's outcome says diverged_at 9."""
    t = TrainConfig(max_iters=40, log_interval=5, eval_interval=20, ckpt_interval=0,
                    diverge_loss=10.0)
    losses = StepLoss(t, device="cpu")
    bad = {8: math.nan, 9: 50.0}
    outcomes = [losses.after_backward(torch.tensor(bad.get(s, 3.0), dtype=torch.float64), s)
                for s in range(10)]
    assert all(o.diverged_at is None for o in outcomes[:9])
    assert outcomes[9].read and outcomes[9].diverged_at == 9 and outcomes[9].loss == 50.0


def test_a_bad_first_step_is_step_1_and_stays_the_verdict():
    """0-based step 0 bad: diverged at 1 (the 0-based index 0 is a verdict, not "none yet"), and
    a later bad step does not replace it."""
    watch = DivergenceWatch(limit=10.0, device="cpu")
    feed(watch, [math.nan, 3.0], start=0)
    assert watch.read() == (1, 3.0)
    feed(watch, [2.0, 50.0, 2.5], start=2)
    assert watch.read() == (1, 2.5)


def test_the_last_loss_is_the_last_steps_of_the_window():
    watch = DivergenceWatch(limit=10.0, device="cpu")
    feed(watch, [4.0, 3.0, 2.0, 1.5], start=0)
    assert watch.read() == (None, 1.5)
    feed(watch, [1.25], start=4)                      # a window of one step
    assert watch.read() == (None, 1.25)


class TwoRanks:
    """A stand-in for a 2-rank torchrun (DistEnv's enabled and world_size): the other rank's
    losses are `other`, and all_reduce sums them in place."""
    enabled, world_size = True, 2

    def __init__(self, monkeypatch, other: list):
        self.other = list(other)
        monkeypatch.setattr(torch.distributed, "all_reduce", self.all_reduce)

    def all_reduce(self, tensor):
        n = len(tensor)
        tensor += torch.tensor(self.other[:n], dtype=tensor.dtype)
        del self.other[:n]


def test_the_verdict_is_on_the_mean_over_ranks(monkeypatch):
    """Under torchrun the losses are averaged over the ranks before the verdict: rank 0's 12 at
    0-based step 1 with the other rank's 6 is 9 <= 10 (healthy), rank 0's 4 at step 2 with 30 is
    17 > 10 (diverged at 3); the last loss read is the last step's mean, (12 + 6) / 2 and
    (2 + 4) / 2."""
    env = TwoRanks(monkeypatch, [2.0, 6.0, 30.0, 4.0])
    watch = DivergenceWatch(limit=10.0, device="cpu", env=env)
    feed(watch, [2.0, 12.0], start=0)
    assert watch.read() == (None, 9.0)
    feed(watch, [4.0, 2.0], start=2)
    assert watch.read() == (3, 3.0)


def test_step_loss_averages_over_the_ranks(monkeypatch):
    """StepLoss hands its watch the run's DistEnv: rank 0's losses 30 at every step with the
    other rank's 2 average 16 <= train.diverge_loss 20."""
    env = TwoRanks(monkeypatch, [2.0] * 5)
    losses = StepLoss(TrainConfig(max_iters=10, log_interval=5, eval_interval=100,
                                  ckpt_interval=0, diverge_loss=20.0), device="cpu", env=env)
    outcomes = [losses.after_backward(torch.tensor(30.0, dtype=torch.float64), s)
                for s in range(5)]
    assert outcomes[4] == StepOutcome(read=True, log=True, loss=16.0, diverged_at=None)


@pytest.mark.parametrize("diverge_loss,diverged_at", [(20.0, 3), (30.0, None), (25.0, None),
                                                     (24.5, 3)])
def test_step_loss_uses_train_diverge_loss(diverge_loss, diverged_at):
    """A finite loss of 25 at 0-based step 2 is divergence exactly when train.diverge_loss is
    below 25."""
    t = TrainConfig(max_iters=10, log_interval=5, eval_interval=100, ckpt_interval=0,
                    diverge_loss=diverge_loss)
    losses = StepLoss(t, device="cpu")
    outcomes = [losses.after_backward(torch.tensor(25.0 if s == 2 else 3.0,
                                                   dtype=torch.float64), s) for s in range(5)]
    assert outcomes[4] == StepOutcome(read=True, log=True, loss=3.0, diverged_at=diverged_at)


def test_the_rollback_keeps_the_steps_before_the_first_bad_one():
    """StepOutcome.kept_steps: the step count a diverged run ends with (train.py sets its step
    to it and applies no update): 12 for a divergence at step 13, 0 at step 1; None if healthy."""
    assert StepOutcome(read=True, loss=1e9, diverged_at=13).kept_steps == 12
    assert StepOutcome(read=True, loss=math.nan, diverged_at=1).kept_steps == 0
    assert StepOutcome(read=True, loss=3.0).kept_steps is None
    assert StepOutcome().kept_steps is None


def test_the_verdict_stays_on_the_runs_device():
    """The verdict so far (DivergenceWatch.first: the 0-based first bad step, or a negative "none
    yet") is a 0-dim int64 tensor on the run's device, so that a read updates it there without
    a host sync or a copy between devices; StepLoss puts its watch on the device it is given
    ("meta" here: a device other than the CPU this machine has)."""
    watch = DivergenceWatch(limit=10.0, device="meta")
    assert watch.first.device.type == "meta" and watch.first.dtype == torch.int64
    assert watch.first.shape == ()
    losses = StepLoss(TrainConfig(diverge_loss=7.0), device="meta")
    assert losses.watch.first.device.type == "meta" and losses.watch.limit == 7.0
    assert DivergenceWatch(limit=10.0, device="cpu").first.tolist() < 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a GPU (none here)")
def test_the_watch_on_a_gpu():
    """On a GPU the losses, the steps and the verdict stay on it until the one read."""
    watch = DivergenceWatch(limit=10.0, device="cuda")
    for i, loss in enumerate([3.0, 2.0, 50.0, math.nan, 1.5]):
        watch.add(torch.tensor(loss, dtype=torch.float64, device="cuda"), 4 + i)
    assert watch.first.device.type == "cuda"
    assert watch.read() == (7, 1.5)
    watch.add(torch.tensor(1.0, dtype=torch.float64, device="cuda"), 9)
    assert watch.read() == (7, 1.0)


# ---- train.py end to end -------------------------------------------------------------------------

def bad_loss_at(monkeypatch, bad: dict) -> None:
    """train.forward_backward with the returned loss replaced at the 0-based steps in `bad` (the
    gradients stay real): divergence at a step known in advance."""
    real = train.forward_backward

    def forward_backward(*args, step, **kw):
        loss = real(*args, step=step, **kw)
        return torch.full_like(loss, bad[step]) if step in bad else loss
    monkeypatch.setattr(train, "forward_backward", forward_backward)


@pytest.mark.parametrize("bad,first", [({12: math.nan, 13: math.nan, 14: 1e9}, 13),
                                       ({7: 25.0}, 8)])
def test_diverged_run_rolls_back_to_the_step_before(tmp_path, small_text, monkeypatch, bad, first):
    """log_interval 5: the loop reads the losses of steps 10-14 together; the bad steps 12-14
    (nan, nan, 1e9) give diverged_at_step 13 and steps 12 (13's update is not applied; 12 steps
    of tokens), and a loss of 25 > train.diverge_loss=20 at step 7 gives 8 and 7. Nothing is
    logged past the rollback, and there is no final evaluation."""
    bad_loss_at(monkeypatch, bad)
    out = tmp_path / "div"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}", "train.diverge_loss=20",
                                "train.max_iters=40")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged"
    assert s["diverged_at_step"] == first
    assert s["steps"] == first - 1
    assert s["tokens"] == (first - 1) * 4 * 32
    assert s["final_val_loss"] is None and s["final_val_loss_full"] is None
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in recs) <= first - 1

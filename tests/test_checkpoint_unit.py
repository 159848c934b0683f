"""trainer/checkpoint.py in process, on a tiny nn.Module and tmp_path (no training, no
subprocess): what save() writes (every part, the CUDA RNG and the tail EMA when there are, the
consolidation collective, the background writer), what load() and restore() give back exactly
(weights, optimizer and scaler state, CPU RNG, step, best_val_loss, the eval history less the
evaluation redone on resume, a legacy checkpoint's None), the refusals (a damaged or foreign
file, a checkpoint of another run or of another optimizer, one that does not fit the model:
UserErrors whose full text is the behaviour, the model left untouched) and the helpers
first_line, flat, to_host, Writer and legacy_history. Every expected value is written out here."""
from __future__ import annotations

import fractions
import threading
import time
from pathlib import Path

import pytest
import torch

from configs.errors import UserError
from trainer import checkpoint

BAD_READ = ("): it is damaged or not a checkpoint; delete it to restart the run from its "
            "start, or pass overwrite=true")
NOT_FIT = ("); resume with the run's own config, pass overwrite=true to replace it, or pass "
           "another out_dir=")


def config(optimizer="muon", n_layer=2, lr=0.02, **extra) -> dict:
    return {"model": {"n_layer": n_layer, "n_embd": 8}, "optimizer": {"name": optimizer, "lr": lr},
            "data": {"name": "shakespeare", "tokenizer": "gpt2", "seed": 1},
            "train": {"block_size": 16, "max_iters": 100}, "task": "lm", **extra}


def tiny(seed: int = 0):
    """A Linear(3, 2) with two AdamW steps taken (exp_avg, exp_avg_sq, step in its state) and
    an enabled CPU grad scaler at scale 1024."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt, torch.amp.GradScaler("cpu", init_scale=1024.0)


def fresh():
    """Another Linear(3, 2), untrained, its AdamW without state, its scaler at scale 2."""
    torch.manual_seed(123)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.5), \
        torch.amp.GradScaler("cpu", init_scale=2.0)


HISTORY = [{"step": 0, "tokens": 0, "val/loss": 4.0}, {"step": 5, "tokens": 640, "val/loss": 3.5},
           {"step": 10, "tokens": 1280, "val/loss": 3.25}]


def save(out: Path, model, opt, scaler, step=10, best=3.25, history=HISTORY, cfg=None, **kw):
    args = dict(model=model, optimizer=opt, scaler=scaler, step=step, best_val_loss=best,
                history=history, config=config() if cfg is None else cfg, device="cpu",
                is_main=True, consolidate=False)
    checkpoint.save(out, **{**args, **kw})


def restore(out: Path, model, opt, scaler, cfg=None, device="cpu", **kw):
    return checkpoint.restore(out, model=model, optimizer=opt, scaler=scaler, device=device,
                              config=config() if cfg is None else cfg, **kw)


def same_state(a: dict, b: dict) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k])
                                                                     for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_state, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


# ---- save -------------------------------------------------------------------------------------

def test_save_writes_every_part_of_the_run(tmp_path):
    model, opt, scaler = tiny()
    torch.manual_seed(77)
    rng = torch.get_rng_state()
    save(tmp_path, model, opt, scaler, step=10, best=3.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]   # no temporary left
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(state) == {"model", "optimizer", "scaler", "step", "best_val_loss", "history",
                          "rng_cpu", "config"}
    assert state["step"] == 10 and state["best_val_loss"] == 3.25
    assert state["history"] == HISTORY and state["config"] == config()
    assert same_state(state["model"], model.state_dict())
    assert same_state(state["optimizer"], opt.state_dict())
    assert int(state["optimizer"]["state"][0]["step"]) == 2
    assert state["scaler"] == {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                               "growth_interval": 2000, "_growth_tracker": 0}
    assert torch.equal(state["rng_cpu"], rng)


class FakeEma:
    def __init__(self):
        self.loaded = []

    def state_dict(self):
        return {"ema": torch.tensor([1.5, -2.0]), "n": 3}

    def load_state_dict(self, state, step):
        self.loaded.append((state, step))


def test_save_with_a_tail_ema_and_on_cuda_writes_them_too(tmp_path, monkeypatch):
    """train.eval_ema: the EMA's state as "eval_ema"; a CUDA device: the CUDA RNG as "rng_cuda"
    (faked here: this machine has no GPU)."""
    cuda_rng = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: cuda_rng.clone())
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, tail_ema=FakeEma(), device="cuda:0")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert same_state(state["eval_ema"], {"ema": torch.tensor([1.5, -2.0]), "n": 3})
    assert torch.equal(state["rng_cuda"], cuda_rng)
    save(tmp_path, model, opt, scaler, device="cpu")         # none of them on a CPU run
    assert "rng_cuda" not in torch.load(tmp_path / "ckpt.pt", weights_only=True)


class ShardedOpt(torch.optim.AdamW):
    """An optimizer with sharded state (the matrix chains, ZeRO-1): consolidate_state_dict."""
    def __init__(self, params):
        super().__init__(params)
        self.consolidated = []

    def consolidate_state_dict(self, to):
        self.consolidated.append(to)


@pytest.mark.parametrize("consolidate,is_main,calls,written", [
    (True, True, [0], True), (True, False, [0], False), (False, True, [], True),
    (False, False, [], False)])
def test_save_consolidates_on_every_rank_and_only_rank_0_writes(tmp_path, consolidate, is_main,
                                                                calls, written):
    model = torch.nn.Linear(3, 2)
    opt = ShardedOpt(model.parameters())
    save(tmp_path, model, opt, torch.amp.GradScaler("cpu", enabled=False),
         consolidate=consolidate, is_main=is_main)
    assert opt.consolidated == calls
    assert (tmp_path / "ckpt.pt").exists() == written


def test_save_with_a_writer_hands_it_the_state(tmp_path):
    """Through a writer (train.async_ckpt), save() does not write: the writer gets the path and
    the state dict."""
    class Recorder:
        submitted = []

        def submit(self, path, state):
            self.submitted.append((path, state))
    model, opt, scaler = tiny()
    writer = Recorder()
    save(str(tmp_path), model, opt, scaler, step=7, writer=writer)
    assert not (tmp_path / "ckpt.pt").exists()
    [(path, state)] = writer.submitted
    assert path == tmp_path / "ckpt.pt" and isinstance(path, Path)
    assert state["step"] == 7 and state["history"] == HISTORY


# ---- restore ----------------------------------------------------------------------------------

def test_restore_gives_back_the_run_exactly(tmp_path):
    """Weights, optimizer state (a further step is the same), scaler, CPU RNG (the next draws
    are those after the save), step, best_val_loss; the history less the evaluation of the
    checkpoint's step, which the resumed run does again."""
    model, opt, scaler = tiny()
    torch.manual_seed(5)
    save(tmp_path, model, opt, scaler, step=10, best=3.25)
    after_save = torch.rand(4)
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = opt.state_dict()
    m2, o2, s2 = fresh()
    restored = restore(tmp_path, m2, o2, s2)
    assert torch.equal(torch.rand(4), after_save)
    assert isinstance(restored, checkpoint.Restored)
    assert restored == (10, 3.25, HISTORY[:2])
    assert restored.step == 10 and restored.best_val_loss == 3.25
    assert restored.history == [{"step": 0, "tokens": 0, "val/loss": 4.0},
                                {"step": 5, "tokens": 640, "val/loss": 3.5}]
    assert same_state(m2.state_dict(), expected_weights)
    assert same_state(o2.state_dict(), expected_opt) and o2.param_groups[0]["lr"] == 0.1
    assert s2.get_scale() == 1024.0
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (m2, o2)):
        m(x).square().sum().backward()
        o.step()
    assert same_state(m2.state_dict(), model.state_dict())


@pytest.mark.parametrize("step,kept", [(4, [0]), (5, [0]), (6, [0, 5]), (10, [0, 5]),
                                       (11, [0, 5, 10])])
def test_restore_drops_the_records_the_resumed_run_redoes(tmp_path, step, kept):
    """Records of later steps and the evaluation of the checkpoint's own step are redone (the
    checkpoint of a step is saved before that step's evaluation); earlier ones are kept."""
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, step=step)
    assert [r["step"] for r in restore(tmp_path, *fresh()).history] == kept


def test_best_val_loss_survives_a_resume_with_no_history_left(tmp_path):
    """best_val_loss comes from the checkpoint, not from the history kept (here none: the only
    evaluation is the one redone)."""
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, step=0, best=2.75,
         history=[{"step": 0, "tokens": 0, "val/loss": 2.75}])
    assert restore(tmp_path, *fresh()) == (0, 2.75, [])


def test_a_legacy_checkpoint_restores_with_history_none(tmp_path):
    """A checkpoint saved before it held the eval history: history None, and legacy_history
    takes the eval records of the kept metrics.jsonl lines instead."""
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, step=10, best=3.0)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del state["history"], state["config"]          # older still: no config either
    torch.save(state, tmp_path / "ckpt.pt")
    assert restore(tmp_path, *fresh()) == (10, 3.0, None)
    kept = [{"step": 0, "val/loss": 4.0}, {"step": 1, "lr": 0.1, "train/loss": 5.0},
            {"step": 5, "val/loss": 3.5, "val/acc": 0.1}, {"step": 6, "train/loss": 3.0}]
    assert checkpoint.legacy_history(kept) == [{"step": 0, "val/loss": 4.0},
                                               {"step": 5, "val/loss": 3.5, "val/acc": 0.1}]
    assert checkpoint.legacy_history([]) == []


def test_restore_hands_the_tail_ema_its_state_and_the_step(tmp_path):
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, step=10, tail_ema=FakeEma())
    ema = FakeEma()
    restore(tmp_path, *fresh(), tail_ema=ema)
    [(state, step)] = ema.loaded
    assert step == 10 and same_state(state, {"ema": torch.tensor([1.5, -2.0]), "n": 3})
    save(tmp_path, model, opt, scaler, step=4)          # saved without one: None
    ema = FakeEma()
    restore(tmp_path, *fresh(), tail_ema=ema)
    assert ema.loaded == [(None, 4)]


def test_restore_on_cuda_maps_to_the_device_and_sets_the_cuda_rng(tmp_path, monkeypatch):
    """A CUDA run's checkpoint is loaded onto its device (map_location) and its CUDA RNG state
    restored (torch.load and the CUDA RNG faked: this machine has no GPU); a checkpoint without
    a CUDA RNG (saved on a CPU) resumes on a GPU without setting one."""
    cuda_rng = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: cuda_rng.clone())
    set_states, locations = [], []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, *a, **k: set_states.append(s))
    real_load = torch.load

    def load(path, map_location=None, **kw):
        locations.append(map_location)
        return real_load(path, map_location="cpu", **kw)
    monkeypatch.setattr(torch, "load", load)
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, step=3, device="cuda:1")
    got = restore(tmp_path, *fresh(), device="cuda:1")
    assert got.step == 3 and locations == ["cuda:1"]
    [state] = set_states
    assert torch.equal(state, cuda_rng) and state.device.type == "cpu"
    save(tmp_path, model, opt, scaler, step=3, device="cpu")      # no rng_cuda in it
    set_states.clear()
    restore(tmp_path, *fresh(), device="cuda:1")
    assert set_states == []
    restore(tmp_path, *fresh())
    assert set_states == [] and locations[-1] == "cpu"


# ---- refusals ---------------------------------------------------------------------------------

def params(model) -> list:
    return [p.detach().clone() for p in model.parameters()]


def test_a_muon_checkpoint_is_refused_as_namo(tmp_path):
    """optimizer.name is one of STATE_KEYS: the checkpoint of a muon run, resumed with
    optimizer=namo, is one UserError naming the key and both values; nothing is loaded."""
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler, cfg=config("muon"))
    m2, o2, s2 = fresh()
    before = params(m2)
    with pytest.raises(UserError) as err:
        restore(str(tmp_path), m2, o2, s2, cfg=config("namo"))
    assert str(err.value) == (
        f"out_dir={tmp_path} holds a run of another config (optimizer.name=muon there, namo "
        f"here); resume it with its own config ({tmp_path / 'config.yaml'}), pass "
        "overwrite=true to replace it, or pass another out_dir=")
    assert all(torch.equal(a, b) for a, b in zip(params(m2), before))
    assert o2.state_dict()["state"] == {} and s2.get_scale() == 2.0


def test_check_same_run_compares_the_state_keys_only():
    out = "/runs/x"
    check = checkpoint.check_same_run
    check(config(), config(), out)
    check(config(), config(lr=0.5, extra=1), out)           # the lr and new keys may change
    check(None, config(), out)                              # a checkpoint without a config
    check({"model": {"n_embd": 8}}, config(), out)          # keys of an older version: skipped
    old, new = config(), config()
    old["data"]["seed"], new["train"]["max_iters"] = 2, 5   # neither data.seed nor train.max_iters
    check(old, new, out)

    def refused(old: dict, new: dict) -> str:
        with pytest.raises(UserError) as err:
            check(old, new, out)
        return str(err.value)
    tail = ("; resume it with its own config (/runs/x/config.yaml), pass overwrite=true to "
            "replace it, or pass another out_dir=")
    assert refused(config(n_layer=2), config(n_layer=4)) == (
        "out_dir=/runs/x holds a run of another config (model.n_layer=2 there, 4 here)" + tail)
    for key, value in (("data", "name"), ("data", "tokenizer"), ("train", "block_size")):
        old, new = config(), config()
        new[key][value] = "other"
        assert refused(old, new) == (f"out_dir=/runs/x holds a run of another config "
                                     f"({key}.{value}={old[key][value]} there, other here)" + tail)
    assert refused(config(task="lm"), config(task="grokking")) == (
        "out_dir=/runs/x holds a run of another config (task=lm there, grokking here)" + tail)
    # two keys differ: the first in sorted order is named, whatever the order of the dicts
    new = config("namo", n_layer=3)
    new = {"optimizer": new.pop("optimizer"), **new}
    assert refused(config(), new) == (
        "out_dir=/runs/x holds a run of another config (model.n_layer=2 there, 3 here)" + tail)


def test_flat_joins_nested_keys_with_dots():
    assert checkpoint.flat({"a": {"b": 1, "c": {"d": [2], "e": None}}, "f": "g", "h": {}}) == \
        {"a.b": 1, "a.c.d": [2], "a.c.e": None, "f": "g"}
    assert checkpoint.flat({"x": 1}, "p.") == {"p.x": 1}
    assert checkpoint.flat({}) == {}


def test_a_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path):
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler)
    wide = torch.nn.Linear(3, 5)
    with pytest.raises(UserError) as err:
        restore(tmp_path, wide, torch.optim.AdamW(wide.parameters()), scaler)
    assert str(err.value) == (f"{tmp_path / 'ckpt.pt'} does not fit this run's model and "
                              "optimizer (Error(s) in loading state_dict for Linear:" + NOT_FIT)
    # an optimizer with another number of param groups: ValueError, the same refusal
    m2 = torch.nn.Linear(3, 2)
    two_groups = torch.optim.AdamW([{"params": [m2.weight]}, {"params": [m2.bias]}])
    with pytest.raises(UserError) as err:
        restore(tmp_path, m2, two_groups, scaler)
    assert str(err.value) == (f"{tmp_path / 'ckpt.pt'} does not fit this run's model and "
                              "optimizer (loaded state dict has a different number of "
                              "parameter groups" + NOT_FIT)
    # a scaler state that is not one (a foreign "scaler" entry)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["scaler"] = None
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"does not fit this run's model and optimizer \("):
        restore(tmp_path, *fresh())


@pytest.mark.parametrize("content,reason", [
    (b"not a checkpoint at all", "Weights only load failed"),
    (b"", "EOFError"),
])
def test_a_damaged_file_is_one_user_error(tmp_path, content, reason):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == f"{path} cannot be read ({reason}" + BAD_READ
    with pytest.raises(UserError) as err:            # restore refuses it before loading
        restore(tmp_path, *fresh())
    assert str(err.value) == f"{path} cannot be read ({reason}" + BAD_READ


def test_a_missing_or_truncated_checkpoint_is_one_user_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == (f"{path} cannot be read ([Errno 2] No such file or directory: "
                              f"'{path}'" + BAD_READ)
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    reason = str(err.value)[len(f"{path} cannot be read ("): -len(BAD_READ)]
    assert str(err.value) == f"{path} cannot be read ({reason}" + BAD_READ
    assert reason in ("[Errno 22] Invalid argument", "PytorchStreamReader failed reading zip "
                      "archive: failed finding central directory")


@pytest.mark.parametrize("force_no_weights_only", [None, "1"])
def test_pickled_objects_are_not_loaded(tmp_path, monkeypatch, force_no_weights_only):
    """weights_only: a file with an object that is not a tensor or a plain container (here a
    Fraction) is refused, even with every part present; passed explicitly, so
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (which turns off torch's default) does not turn it off."""
    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_no_weights_only)
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["best_val_loss"] = fractions.Fraction(1, 3)
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="cannot be read .Weights only load failed.: it is"):
        checkpoint.load(tmp_path / "ckpt.pt")


def test_load_maps_to_the_location_given(tmp_path):
    model, opt, scaler = tiny()
    save(tmp_path, model, opt, scaler)
    state = checkpoint.load(tmp_path / "ckpt.pt", map_location="meta")
    assert state["model"]["weight"].device.type == "meta"
    assert checkpoint.load(tmp_path / "ckpt.pt")["model"]["weight"].device.type == "cpu"


def test_a_foreign_file_lists_the_parts_it_lacks(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "step": 3, "other": 1}, path)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    tail = "); move it away to restart the run from its start, or pass overwrite=true"
    assert str(err.value) == (f"{path} is not a checkpoint of train.py (it lacks best_val_loss, "
                              "optimizer, rng_cpu, scaler" + tail)
    torch.save([3, 1, 2], path)                      # not a dict: it lacks every part, in order
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == (f"{path} is not a checkpoint of train.py (it lacks model, "
                              "optimizer, scaler, step, best_val_loss, rng_cpu" + tail)
    full = {p: 0 for p in checkpoint.PARTS}
    torch.save(full, path)
    assert checkpoint.load(path) == full             # every part: a checkpoint


# ---- helpers ----------------------------------------------------------------------------------

def test_first_line_is_the_first_sentence_of_the_first_line():
    fl = checkpoint.first_line
    assert fl(ValueError("Bad zip file. Try again\nsecond line. more")) == "Bad zip file"
    assert fl(RuntimeError("  one line only  ")) == "one line only"
    assert fl(RuntimeError("\nafter a blank line")) == "after a blank line"
    assert fl(EOFError()) == "EOFError"
    assert fl(KeyError.__new__(KeyError)) == "KeyError"
    assert fl(OSError("x" * 200)) == "x" * 160
    assert fl(OSError("y" * 150 + ". then")) == "y" * 150
    assert fl(ValueError("version 1.5 unknown")) == "version 1.5 unknown"


def test_to_host_copies_the_state_as_it_is_now():
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    state = {"a": t, "b": [torch.tensor(3), (torch.tensor(4.0), "s")], "c": 5, "d": None}
    host = checkpoint.to_host(state)
    with torch.no_grad():
        t.add_(10)
        state["b"][0].add_(1)
    assert same_state(host, {"a": torch.tensor([1.0, 2.0]), "b": [torch.tensor(3),
                                                                   (torch.tensor(4.0), "s")],
                             "c": 5, "d": None})
    assert not host["a"].requires_grad and type(host["b"][1]) is tuple


def writers() -> list:
    return [t for t in threading.enumerate() if t.name == "checkpoint-writer" and t.is_alive()]


def test_a_write_in_flight_does_not_keep_the_process_alive(tmp_path, monkeypatch):
    """The writer's thread is a daemon: a process that ends (a crash, a second signal) while a
    write is blocked is not held open by it (the atomic write leaves the old checkpoint)."""
    release, started = threading.Event(), threading.Event()
    real_save = torch.save

    def blocked_save(obj, f):
        started.set()
        assert release.wait(timeout=60)
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", blocked_save)
    writer = checkpoint.Writer()
    writer.submit(tmp_path / "ckpt.pt", {"step": 1})
    try:
        deadline = time.time() + 60
        while not started.is_set():                 # fails at once if the write never starts
            assert writers() and time.time() < deadline, "the write did not start"
            time.sleep(0.005)
        [thread] = writers()
        assert thread.daemon is True and thread.is_alive()
    finally:
        release.set()
        writer.wait()
    assert not writers()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a GPU's tensors (none here)")
def test_to_host_copies_gpu_tensors_to_pinned_host_memory():
    """From a GPU: a pinned host tensor of the same shape, dtype and values (the copy does not
    block; torch.cuda.synchronize before reading it, as Writer.submit does)."""
    x = torch.arange(12, dtype=torch.bfloat16, device="cuda").reshape(3, 4)
    host = checkpoint.to_host({"x": x, "n": [torch.tensor([7], dtype=torch.int32,
                                                          device="cuda")]})
    torch.cuda.synchronize()
    assert host["x"].device.type == "cpu" and host["x"].is_pinned()
    assert host["x"].dtype == torch.bfloat16 and host["x"].shape == (3, 4)
    assert torch.equal(host["x"], torch.arange(12, dtype=torch.bfloat16).reshape(3, 4))
    assert host["n"][0].is_pinned() and torch.equal(host["n"][0],
                                                    torch.tensor([7], dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.is_initialized(),
                    reason="a GPU that this process has not used yet (none here)")
def test_a_cpu_runs_write_does_not_start_cuda(tmp_path):
    """A CPU run on a machine with a GPU: the writer waits for CUDA copies only when CUDA is in
    use, and so does not create a CUDA context of its own."""
    writer = checkpoint.Writer()
    writer.submit(tmp_path / "ckpt.pt", {"step": 1, "w": torch.ones(2)})
    writer.wait()
    assert not torch.cuda.is_initialized()


def test_writer_writes_in_the_background_and_raises_a_failure_once(tmp_path, monkeypatch):
    writer = checkpoint.Writer()
    writer.wait()                                   # nothing submitted: nothing to wait for
    state = {"step": 4, "w": torch.tensor([1.0, 2.0])}
    writer.submit(tmp_path / "ckpt.pt", state)
    state["w"].add_(1)                              # training goes on meanwhile
    writer.wait()
    assert same_state(torch.load(tmp_path / "ckpt.pt", weights_only=True),
                      {"step": 4, "w": torch.tensor([1.0, 2.0])})
    threads = []
    real_save = torch.save

    def failing_save(obj, f):
        threads.append(threading.current_thread().name)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", failing_save)
    writer.submit(tmp_path / "ckpt.pt", {"step": 5})
    with pytest.raises(UserError) as err:
        writer.wait()
    assert threads == ["checkpoint-writer"] and "No space left on device" in str(err.value)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4   # the old one kept
    writer.wait()                                   # raised once
    writer.submit(tmp_path / "ckpt.pt", {"step": 6})   # the next submit surfaces the failure
    with pytest.raises(UserError):
        writer.submit(tmp_path / "ckpt.pt", {"step": 7})
    monkeypatch.setattr(torch, "save", real_save)
    writer.submit(tmp_path / "ckpt.pt", {"step": 8})
    writer.wait()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True) == {"step": 8}

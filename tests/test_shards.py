"""FineWeb10B's shards (data/shards.py) and sequential sampling (data/lm.py), on small synthetic
shards and a fake hub: the download resumes without refetching, every bad shard is one line
naming the file and the fix, and the batches and the val set are Track 3's, token for token."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.errors import UserError
from data import prepare as P
from data import shards as S
from data.config import DataConfig
from data.lm import LMTask, Sequential

REPO = Path(__file__).resolve().parents[1]


def fw_cfg(root: Path, shards: int, **kw) -> DataConfig:
    """data=fineweb10B's config on `root` (the preset's values, as the YAML composes them)."""
    from configs import load_config, to_object
    args = [f"{k}={v}" for k, v in kw.items()]
    return to_object(load_config(["data=fineweb10B", f"data.root={root}", f"data.shards={shards}",
                                  *[f"data.{a}" for a in args]])).data


def shard_tokens(i: int, n: int) -> np.ndarray:
    """Shard i's tokens: distinct per shard and position, so a slice shows where it came from."""
    return (i * 7919 + np.arange(n)) % 50000


def make_hub(tmp_path: Path, lengths: list[int], val_len: int = 3000) -> Path:
    """A local stand-in of the hub repo: the val shard and train shards 1..len(lengths)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    S.write_shard(hub / S.val_name(), shard_tokens(0, val_len))
    for i, n in enumerate(lengths, start=1):
        S.write_shard(hub / S.train_name(i), shard_tokens(i, n))
    return hub


def fake_hub(monkeypatch, hub: Path, fail_on: str | None = None) -> list[str]:
    """Replace hf_hub_download by a copy from `hub`; returns the list of files fetched. With
    `fail_on`, that file's download dies half-way (a partial file under .cache, as the hub's)."""
    import huggingface_hub
    fetched = []

    def download(*, repo_id, filename, repo_type, local_dir):
        assert (repo_id, repo_type) == ("kjj0/fineweb10B-gpt2", "dataset")
        if filename == fail_on:
            part = Path(local_dir) / ".cache" / "huggingface" / "download"
            part.mkdir(parents=True, exist_ok=True)
            (part / f"{filename}.incomplete").write_bytes((hub / filename).read_bytes()[:100])
            raise ConnectionError("connection reset by peer")
        fetched.append(filename)
        shutil.copy(hub / filename, Path(local_dir) / filename)
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return fetched


def assert_one_line(exc_info, *fragments):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


# ---- download -------------------------------------------------------------------------------

def test_prepare_downloads_checks_and_does_not_refetch(tmp_path, monkeypatch):
    hub = make_hub(tmp_path, [1000, 700, 1300])
    fetched = fake_hub(monkeypatch, hub)
    cfg = fw_cfg(tmp_path / "cache", 3)
    meta = P.prepare(cfg)
    folder = tmp_path / "cache" / "fineweb10B"
    assert fetched == [S.val_name(), S.train_name(1), S.train_name(2), S.train_name(3)]
    for name in fetched:   # the hub's bytes, in place
        assert (folder / name).read_bytes() == (hub / name).read_bytes()
    assert meta["tokens"] == {"train": 3000, "val": 3000} and meta["vocab_size"] == 50257
    fetched.clear()
    assert P.prepare(cfg)["tokens"] == meta["tokens"] and fetched == []
    # more shards later: only the new one is fetched
    S.write_shard(hub / S.train_name(4), shard_tokens(4, 500))
    assert P.prepare(fw_cfg(tmp_path / "cache", 4))["tokens"]["train"] == 3500
    assert fetched == [S.train_name(4)]


def test_interrupted_download_resumes_without_refetching(tmp_path, monkeypatch):
    hub = make_hub(tmp_path, [1000, 700, 1300])
    cfg = fw_cfg(tmp_path / "cache", 3)
    fetched = fake_hub(monkeypatch, hub, fail_on=S.train_name(2))
    with pytest.raises(UserError) as e:
        P.prepare(cfg)
    assert_one_line(e, S.train_name(2), "connection reset", "re-run the same command")
    assert fetched == [S.val_name(), S.train_name(1)]
    folder = tmp_path / "cache" / "fineweb10B"
    assert not (folder / S.train_name(2)).exists()   # a partial file is never in place
    assert P.open_prepared(cfg) is None              # so the dataset is not prepared
    fetched = fake_hub(monkeypatch, hub)
    P.prepare(cfg)
    assert fetched == [S.train_name(2), S.train_name(3)]
    assert P.open_prepared(cfg)["tokens"]["train"] == 3000


def test_download_needs_a_shard(tmp_path):
    with pytest.raises(UserError) as e:
        fw_cfg(tmp_path, 0)
    assert_one_line(e, "data.shards=0", "at least 1")


@pytest.mark.parametrize("damage, words", [
    ("magic", "magic number 12345"),
    ("version", "shard version 2"),
    ("truncated", "size 1524 bytes, header says 1300 tokens (3624 bytes)"),
    ("longer", "size 3626 bytes, header says 1300 tokens (3624 bytes)"),
    ("header", "size 100 bytes, shorter than a shard's header"),
])
def test_a_bad_shard_is_one_line_naming_file_and_fix(tmp_path, monkeypatch, damage, words):
    hub = make_hub(tmp_path, [1000, 700, 1300])
    path = hub / S.train_name(3)
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[:4] = np.int32(12345).tobytes()
    elif damage == "version":
        data[4:8] = np.int32(2).tobytes()
    elif damage == "truncated":
        data = data[:1524]
    elif damage == "longer":
        data += b"\0\0"
    else:
        data = data[:100]
    path.write_bytes(bytes(data))
    fake_hub(monkeypatch, hub)
    cfg = fw_cfg(tmp_path / "cache", 3)
    bad = tmp_path / "cache" / "fineweb10B" / S.train_name(3)
    fix = f"delete it and run: python -m data.prepare data=fineweb10B data.root={tmp_path / 'cache'} data.shards=3"
    with pytest.raises(UserError) as e:   # checked as it arrives
        P.prepare(cfg)
    assert_one_line(e, f"{bad}: {words}", fix)
    with pytest.raises(UserError) as e:   # and checked again when a run opens it
        LMTask(cfg, block_size=8, seed=0)
    assert_one_line(e, f"{bad}: {words}", fix)


def test_cli_bad_shard_and_train_without_shards_are_one_error_line(tmp_path):
    root = tmp_path / "cache"
    (root / "fineweb10B").mkdir(parents=True)
    S.write_shard(root / "fineweb10B" / S.val_name(), shard_tokens(0, 3000))
    (root / "fineweb10B" / S.train_name(1)).write_bytes(b"\0" * 2000)   # bad magic
    env_cmd = [sys.executable, "-m", "data.prepare", "data=fineweb10B", f"data.root={root}", "data.shards=1"]
    proc = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and S.train_name(1) in lines[-1]
    assert not any("Traceback" in line for line in lines)
    # train.py on shards that are not all there: the prepare command
    proc = subprocess.run([sys.executable, "train.py", "model=tiny", "data=fineweb10B",
                           f"data.root={root}", "data.shards=2", f"out_dir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: fineweb10B is not prepared in {root / 'fineweb10B'}; run: python -m data.prepare "
        f"data=fineweb10B data.root={root} data.shards=2")
    assert not (tmp_path / "run" / "summary.json").exists()


# ---- sequential sampling --------------------------------------------------------------------

def track3_generator(shards: list[np.ndarray], batch_size: int, world: int, rank: int, seq_len: int):
    """modded-nanogpt Track 3's distributed_data_generator, line for line, on arrays."""
    assert batch_size % world == 0
    local_batch_size = batch_size // world
    file_iter = iter(shards)
    tokens, pos = next(file_iter), 0
    while True:
        if pos + batch_size + 1 >= len(tokens):
            tokens, pos = next(file_iter), 0
        buf = tokens[pos + rank * local_batch_size:][:local_batch_size + 1]
        inputs, targets = buf[:-1], buf[1:]
        pos += batch_size
        yield inputs.reshape(-1, seq_len), targets.reshape(-1, seq_len)


# 48 tokens a step (3 sequences of 8, 2 micro-steps): 98 = 2 * 48 + 2 serves exactly 2 steps,
# 97 only 1 (the rule's boundary), the others a few more
LENGTHS = [300, 98, 97, 251, 400]


def shards_task(tmp_path, lengths=LENGTHS, accum=2, **kw) -> tuple[LMTask, list[np.ndarray]]:
    root = tmp_path / "cache"
    (root / "fineweb10B").mkdir(parents=True, exist_ok=True)
    S.write_shard(root / "fineweb10B" / S.val_name(), shard_tokens(0, 500))
    for i, n in enumerate(lengths, start=1):
        S.write_shard(root / "fineweb10B" / S.train_name(i), shard_tokens(i, n))
    kw.setdefault("val_tokens", 200)
    kw.setdefault("sampling", "sequential")
    cfg = fw_cfg(root, len(lengths), **kw)
    task = LMTask(cfg, block_size=8, seed=0, grad_accum_steps=accum)
    return task, [shard_tokens(i, n) for i, n in enumerate(lengths, start=1)]


def test_sequential_steps_are_track3s_stream(tmp_path):
    task, shards = shards_task(tmp_path)
    bs, accum, T = 3, 2, 8
    steps = Sequential(LENGTHS, bs * T * accum).total
    assert steps == 6 + 2 + 1 + 5 + 8
    # one Track 3 rank per micro-batch: micro m is rank m's slice
    refs = [track3_generator(shards, bs * T * accum, accum, m, T) for m in range(accum)]
    whole = track3_generator(shards, bs * T * accum, 1, 0, T * accum)
    for step in range(steps):
        for m, ref in enumerate(refs):
            x, y = task.get_batch("train", bs, step=step, micro_step=m)
            rx, ry = next(ref)
            assert x.dtype == torch.int64 and x.shape == (bs, T)
            assert np.array_equal(x.numpy(), rx) and np.array_equal(y.numpy(), ry), (step, m)
        # world sizes 1 and 2, as the loop calls it (micro_step = rank * accum + micro): the
        # step's tokens are the one contiguous slice Track 3 takes on one GPU
        wx, wy = next(whole)
        for world in (1, 2):
            per_rank = accum // world
            xs = [task.get_batch("train", bs, step=step, micro_step=r * per_rank + micro, rank=r)
                  for r in range(world) for micro in range(per_rank)]
            assert np.array_equal(torch.cat([x for x, _ in xs]).numpy().ravel(), wx.ravel())
            assert np.array_equal(torch.cat([y for _, y in xs]).numpy().ravel(), wy.ravel())
    with pytest.raises(RuntimeError, match="StopIteration"):   # Track 3 runs out where we do
        next(whole)
    with pytest.raises(UserError) as e:
        task.get_batch("train", bs, step=steps)
    assert_one_line(e, f"{steps + 1} steps of 48 tokens", "data.shards=")


def test_sequential_is_a_function_of_the_step(tmp_path):
    task, _ = shards_task(tmp_path)
    first = [task.get_batch("train", 3, step=s, micro_step=1) for s in (11, 2, 11, 7)]
    again, _ = shards_task(tmp_path)   # a resumed process: a new task, straight to step 11
    x, y = again.get_batch("train", 3, step=11, micro_step=1)
    assert torch.equal(x, first[0][0]) and torch.equal(y, first[0][1])
    assert torch.equal(first[0][0], first[2][0]) and not torch.equal(first[0][0], first[1][0])
    # the seed, the rank argument and the run's history play no part
    other = LMTask(again.cfg, block_size=8, seed=99, grad_accum_steps=2)
    assert torch.equal(other.get_batch("train", 3, step=7, micro_step=1, rank=1)[0], first[3][0])


def test_a_shard_too_small_for_a_step_is_skipped(tmp_path):
    task, shards = shards_task(tmp_path, lengths=[100, 30, 100], accum=1)
    # 24 tokens a step: 100 serves (100 - 2) // 24 = 4 steps, 30 serves 1, so step 4 is shard 2's
    x, _ = task.get_batch("train", 3, step=4)
    assert np.array_equal(x.numpy().ravel(), shards[1][:24])
    task, shards = shards_task(tmp_path / "b", lengths=[100, 20, 100], accum=1)
    x, _ = task.get_batch("train", 3, step=4)   # 20 < 24 + 2 serves none: on to shard 3
    assert np.array_equal(x.numpy().ravel(), shards[2][:24])


def test_too_short_a_stream_for_max_iters_names_the_shards(tmp_path):
    task, _ = shards_task(tmp_path)
    with pytest.raises(UserError) as e:
        LMTask(task.cfg, block_size=8, seed=0, grad_accum_steps=2, batch_size=3, max_iters=23)
    # 22 steps in 5 shards; 1 more step needs 1 more shard (8 steps in the fullest)
    assert_one_line(e, "23 steps of 48 tokens", "run: python -m data.prepare data=fineweb10B",
                    "data.shards=6 and train with data.shards=6")
    LMTask(task.cfg, block_size=8, seed=0, grad_accum_steps=2, batch_size=3, max_iters=22)


def test_val_tokens_beyond_the_val_shard(tmp_path):
    with pytest.raises(UserError) as e:
        shards_task(tmp_path, val_tokens=500)
    assert_one_line(e, "data.val_tokens=500 needs 501 tokens", "data.val_tokens=499")


def test_random_sampling_on_shards_reads_the_joined_stream(tmp_path):
    task, shards = shards_task(tmp_path, sampling="random")
    joined = np.concatenate(shards)
    x, y = task.get_batch("train", 64, step=3)
    starts = [int(np.flatnonzero(joined == row[0])[0]) for row in x.numpy()]
    for row, target, s in zip(x.numpy(), y.numpy(), starts):
        assert np.array_equal(row, joined[s:s + 8]) and np.array_equal(target, joined[s + 1:s + 9])
    assert torch.equal(task.get_batch("train", 64, step=3)[0], x)


def test_random_sampling_of_a_bin_dataset_is_unchanged(tmp_path, small_text):
    """The windows a .bin dataset always drew (the code before shards, inlined), bit for bit."""
    from data.lm import generator, split_windows
    cfg = DataConfig(root=str(tmp_path), name="ds", source=str(small_text), auto_prepare=True)
    task = LMTask(cfg, block_size=16, seed=5, grad_accum_steps=4)
    for split, step, micro in [("train", 0, 0), ("train", 7, 3), ("val", 2, 1)]:
        data = np.memmap(Path(tmp_path) / "ds" / f"{split}.bin", dtype=task.dtype, mode="r")
        g = generator(5, split, step, micro, 0)
        start = torch.randint(len(data) - 16, (6,), generator=g).numpy()
        want = split_windows(torch.from_numpy(data[start[:, None] + np.arange(17)].astype(np.int64)), "cpu")
        got = task.get_batch(split, 6, step=step, micro_step=micro)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sequential_on_a_bin_dataset(tmp_path, small_text):
    """sequential works on any prepared dataset: train.bin is a one-piece stream."""
    cfg = DataConfig(root=str(tmp_path), name="ds", source=str(small_text), auto_prepare=True,
                     sampling="sequential")
    task = LMTask(cfg, block_size=16, seed=0, grad_accum_steps=1)
    data = np.fromfile(Path(tmp_path) / "ds" / "train.bin", dtype=task.dtype).astype(np.int64)
    x, y = task.get_batch("train", 2, step=3)
    assert np.array_equal(x.numpy().ravel(), data[96:128]) and np.array_equal(y.numpy().ravel(), data[97:129])


def test_bad_sampling_values():
    with pytest.raises(UserError, match="data.sampling=shuffled is unknown"):
        DataConfig(sampling="shuffled")
    with pytest.raises(UserError, match="data.val_tokens=0"):
        DataConfig(val_tokens=0)


# ---- end to end -----------------------------------------------------------------------------

def test_train_py_on_fineweb_shards(tmp_path):
    root = tmp_path / "data"
    (root / "fineweb10B").mkdir(parents=True)
    S.write_shard(root / "fineweb10B" / S.val_name(), shard_tokens(0, 3000) % 500)
    for i in (1, 2):   # a small vocabulary of used ids, so a few steps learn something
        S.write_shard(root / "fineweb10B" / S.train_name(i), shard_tokens(i, 2000) % 500)
    out = tmp_path / "run"
    args = ["model=tiny", "data=fineweb10B", f"data.root={root}", "data.shards=2",
            "data.sampling=sequential", "data.val_tokens=1024", "train.batch_size=4",
            "train.block_size=32", "train.grad_accum_steps=2", "train.max_iters=12",
            "train.eval_interval=6", "train.eval_iters=2", "train.warmup_iters=2",
            "train.log_interval=3", "train.final_eval_tokens=1024", "threads=1", f"out_dir={out}"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["tokens"] == 12 * 4 * 32 * 2
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "val/loss" in r]
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"]
    assert summary["final_val_loss_full"] is not None
    # 256 tokens a step, 2 shards of 2000 tokens: 7 steps each; 15 steps do not fit
    proc = subprocess.run([sys.executable, "train.py", *args, "train.max_iters=15",
                           f"out_dir={tmp_path / 'long'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: 15 steps of 256 tokens need more than the train stream's 14 such steps")
    assert "data.shards=3" in proc.stderr

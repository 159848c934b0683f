"""Data pipeline: prepare writes what tiktoken / the text says, batches are reproducible, and
every bad input is one UserError line with nothing half-written left behind."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.errors import UserError
from data import build_task, prepare as P
from data.config import DataConfig
from data.lm import LMTask, generator

REPO = Path(__file__).resolve().parents[1]


def data_cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("name", "ds")
    return DataConfig(root=str(tmp_path / "cache"), **kw)


def read_bin(cfg, split):
    meta = json.loads((P.dataset_dir(cfg) / "meta.json").read_text())
    return np.fromfile(P.dataset_dir(cfg) / f"{split}.bin", dtype=meta["dtype"])


def split_text(path, val_fraction=0.1):
    text = path.read_text()
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def r50k():
    import tiktoken
    return tiktoken.get_encoding("r50k_base")


def write_docs(tmp_path, n=40):
    """The same n documents as JSONL and as parquet (plus a column the pipeline must ignore)."""
    import datasets
    docs = [f"Document {i}: " + " ".join(["alpha", "beta", "gamma"][j % 3] for j in range(i % 7 + 1))
            for i in range(n)]
    docs[3] = ""  # an empty document is still a document: just its end-of-text token
    table = datasets.Dataset.from_dict({"text": docs, "id": list(range(n))})
    table.to_json(tmp_path / "docs.jsonl")
    table.to_parquet(tmp_path / "docs.parquet")
    return docs


# ---- prepare: token ids ---------------------------------------------------------------------

@pytest.mark.parametrize("piece_chars", [P.PIECE_CHARS, 200])
def test_bpe_ids_equal_tiktoken(tmp_path, monkeypatch, shakespeare_path, small_text, piece_chars):
    # Small pieces put a piece boundary every few lines: the ids must not notice.
    monkeypatch.setattr(P, "PIECE_CHARS", piece_chars)
    enc = r50k()
    for i, path in enumerate([shakespeare_path, small_text]):
        cfg = data_cfg(tmp_path, name=f"bpe{i}", tokenizer="r50k_base", source=str(path), chunk_docs=64)
        meta = P.prepare(cfg)
        assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
        for split, text in zip(P.SPLITS, split_text(path)):
            ids = read_bin(cfg, split)
            assert ids.tolist() == enc.encode_ordinary(text)  # no end-of-text inside a raw text
            assert meta["tokens"][split] == len(ids)
            data = (P.dataset_dir(cfg) / f"{split}.bin").read_bytes()
            assert meta["sha256"][split] == hashlib.sha256(data).hexdigest()


def test_bpe_piece_boundaries_on_awkward_whitespace(tmp_path, monkeypatch):
    """Lines with trailing or leading spaces, tabs, blank lines and non-ASCII spaces: the
    places a piece must NOT be cut. A piece boundary is tried at every line."""
    import random
    rng = random.Random(0)
    atoms = ["a", "bc", "'s", " ", "  ", "\t", "7", ".", "\u00a0", "\u3000", "\u00e9", "\n"]
    lines = ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    (tmp_path / "t.txt").write_text("\n".join(lines))
    monkeypatch.setattr(P, "PIECE_CHARS", 1)
    cfg = data_cfg(tmp_path, tokenizer="r50k_base", source=str(tmp_path / "t.txt"))
    P.prepare(cfg)
    enc = r50k()
    for split, text in zip(P.SPLITS, split_text(tmp_path / "t.txt")):
        assert read_bin(cfg, split).tolist() == enc.encode_ordinary(text)


def test_char_level_tinyshakespeare(tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.setattr(P, "PIECE_CHARS", 5000)
    cfg = data_cfg(tmp_path, tokenizer="char", source=str(shakespeare_path))
    meta = P.prepare(cfg)
    assert meta["vocab_size"] == 65 and len(meta["itos"]) == 65 and meta["dtype"] == "uint16"
    assert meta["itos"] == sorted(set(shakespeare_path.read_text()))
    assert all(meta["stoi"][c] == i for i, c in enumerate(meta["itos"]))
    for split, text in zip(P.SPLITS, split_text(shakespeare_path)):
        assert "".join(meta["itos"][i] for i in read_bin(cfg, split)) == text


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_local_documents_are_eot_separated_with_deterministic_val(tmp_path, fmt):
    docs = write_docs(tmp_path)
    enc = r50k()
    cfg = data_cfg(tmp_path, name="local", tokenizer="r50k_base", files=[str(tmp_path / f"docs.{fmt}")],
                   chunk_docs=3)
    meta = P.prepare(cfg)
    assert meta["eot_token"] == enc.eot_token and meta["split_seed"] == 2357
    split_docs = {}
    for split in P.SPLITS:
        ids = read_bin(cfg, split).tolist()
        assert ids[-1] == enc.eot_token
        parts = np.split(np.array(ids), np.flatnonzero(np.array(ids) == enc.eot_token) + 1)[:-1]
        split_docs[split] = [enc.decode(p[:-1].tolist()) for p in parts]
    assert len(split_docs["val"]) == math.ceil(len(docs) * 0.1)
    assert sorted(split_docs["train"] + split_docs["val"]) == sorted(docs)
    # Deterministic: the same files give the same bytes; JSONL and parquet the same split.
    again = P.prepare(data_cfg(tmp_path, name="again", tokenizer="r50k_base", chunk_docs=5,
                               files=[str(tmp_path / "docs.jsonl")]))
    assert again["sha256"] == meta["sha256"]


def test_openwebtext_config_on_a_local_jsonl(tmp_path):
    """The openwebtext preset (hub path, nanoGPT's 0.0005 val split) run on local rows."""
    from configs import load_config, to_object
    docs = write_docs(tmp_path, n=50)
    cfg = to_object(load_config(["data=openwebtext", f"data.root={tmp_path}",
                                 f"data.source={tmp_path / 'docs.jsonl'}", "data.num_proc=1"])).data
    assert cfg.hf_path in ("Skylion007/openwebtext", "openwebtext") and not cfg.auto_prepare
    meta = P.prepare(cfg)
    eot = meta["eot_token"]
    assert (read_bin(cfg, "val") == eot).sum() == 1  # ceil(50 * 0.0005) documents
    assert sum((read_bin(cfg, s) == eot).sum() for s in P.SPLITS) == len(docs)


def test_prepare_cli_subprocess(tmp_path, small_text):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "data.prepare", "data=shakespeare",
                          f"data.source={small_text}", f"data.root={tmp_path}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "tokens/s" in run.stdout and "peak memory" in run.stdout
    meta = json.loads((tmp_path / "shakespeare" / "meta.json").read_text())
    assert meta["tokens"]["train"] == len(r50k().encode_ordinary(split_text(small_text)[0]))


# ---- loading: batches and evaluation --------------------------------------------------------

@pytest.fixture
def char_task(tmp_path, small_text):
    cfg = data_cfg(tmp_path, tokenizer="char", source=str(small_text), auto_prepare=True)
    return cfg, LMTask(cfg, block_size=32, seed=7)


def test_get_batch_reproducible_and_shifted(char_task):
    cfg, task = char_task
    x, y = task.get_batch("train", 4, step=3, micro_step=1, rank=0)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    data = read_bin(cfg, "train")
    windows = np.lib.stride_tricks.sliding_window_view(data, 33)
    for row in torch.cat([x, y[:, -1:]], 1).numpy():  # each row is a real window of train.bin
        assert (windows == row).all(1).any()
    again = LMTask(cfg, block_size=32, seed=7)  # e.g. a resumed run
    assert all(torch.equal(a, b) for a, b in zip((x, y), again.get_batch("train", 4, step=3, micro_step=1)))
    others = [task.get_batch("train", 4, step=4, micro_step=1)[0],
              task.get_batch("train", 4, step=3, micro_step=0)[0],
              task.get_batch("train", 4, step=3, micro_step=1, rank=1)[0],
              task.get_batch("val", 4, step=3, micro_step=1)[0],
              LMTask(cfg, block_size=32, seed=8).get_batch("train", 4, step=3, micro_step=1)[0]]
    assert not any(torch.equal(x, o) for o in others)


class RecordingModel(torch.nn.Module):
    """Stands in for the GPT: records its inputs, returns a loss that depends on them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, y):
        assert not self.training and not torch.is_grad_enabled()
        self.seen.append(x.clone())
        return None, (x.float().mean() - y.float().mean())


def test_evaluate_is_reproducible_and_restores_mode(char_task):
    _, task = char_task
    model = RecordingModel().train()
    entered = []

    def autocast():
        entered.append(1)
        return nullcontext()

    first = task.evaluate(model, batch_size=3, eval_iters=4, device="cpu", autocast=autocast)
    assert set(first) == {"train/loss", "val/loss"} and model.training and len(entered) == 8
    batches = model.seen
    task.get_batch("train", 3, step=10)  # training in between changes nothing
    model.seen = []
    second = task.evaluate(model.eval(), batch_size=3, eval_iters=4, device="cpu", autocast=nullcontext)
    assert not model.training and second == first
    assert all(torch.equal(a, b) for a, b in zip(batches, model.seen))
    expected = [float(x.float().mean() - y.float().mean()) for x, y in
                (task._batch("val", 3, generator(7, "val", "eval", k))
                 for k in range(4))]
    assert second["val/loss"] == pytest.approx(np.mean(expected), rel=1e-6)


def test_eval_windows_follow_eval_seed_not_the_run_seed(char_task):
    cfg, _ = char_task
    seen = {}
    for seed, eval_seed in ((1, 0), (2, 0), (1, None), (2, None)):
        model = RecordingModel().eval()
        LMTask(cfg, block_size=32, seed=seed, eval_seed=eval_seed).evaluate(
            model, batch_size=3, eval_iters=2, device="cpu", autocast=nullcontext)
        seen[seed, eval_seed] = torch.cat(model.seen)
    assert torch.equal(seen[1, 0], seen[2, 0])            # the same text whatever the seed
    assert not torch.equal(seen[1, None], seen[2, None])  # train.eval_seed=null: the old rule
    # and the train batches still follow the run's seed
    a = LMTask(cfg, block_size=32, seed=1, eval_seed=0).get_batch("train", 3, step=0)[0]
    b = LMTask(cfg, block_size=32, seed=2, eval_seed=0).get_batch("train", 3, step=0)[0]
    assert not torch.equal(a, b)


def test_final_eval_is_every_val_window(char_task):
    from model.config import GPTConfig
    from model.gpt import GPT

    cfg, task = char_task
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=task.vocab_size))
    val = torch.from_numpy(read_bin(cfg, "val").astype(np.int64))
    n = (len(val) - 1) // 32
    with torch.no_grad():   # the reference: one window at a time, a sum of token losses
        direct = sum(float(torch.nn.functional.cross_entropy(
            model(val[i * 32:(i + 1) * 32][None])[0][0], val[i * 32 + 1:(i + 1) * 32 + 1],
            reduction="sum")) for i in range(n))
    total, count = task.final_eval(model, batch_size=5, device="cpu", autocast=nullcontext,
                                   max_tokens=10**9)
    assert count == n * 32 and total / count == pytest.approx(direct / count, rel=1e-5)
    # two ranks' shares add up to the whole
    shares = [task.final_eval(model, batch_size=5, device="cpu", autocast=nullcontext,
                              max_tokens=10**9, rank=r, world=2) for r in (0, 1)]
    assert sum(c for _, c in shares) == count
    assert sum(t for t, _ in shares) == pytest.approx(total, rel=1e-5)
    # a cap: evenly spaced distinct windows, first and last included
    starts = task.full_val_windows(max_tokens=10 * 32)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == (n - 1) * 32
    assert (np.diff(starts) > 0).all() and (starts % 32 == 0).all()


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_final_eval_when_val_is_a_multiple_of_block_size(tmp_path, small_text, extra):
    """A window needs block_size + 1 tokens (its inputs and their next-token targets). With a
    val split of exactly k block_size + extra tokens, full_val_windows gives k - 1 windows for
    extra = 0 (the k-th block has no target for its last token) and k for extra >= 1, all
    within the split; final_eval reads every one of them (no IndexError past the end) and scores
    exactly windows x block_size tokens, equal to the windows scored one by one here."""
    from model.config import GPTConfig
    from model.gpt import GPT

    cfg = data_cfg(tmp_path, tokenizer="char", source=str(small_text), auto_prepare=True)
    P.prepare(cfg)
    # cut the val split to exactly k block + extra tokens (val.bin and meta.json together)
    block, k = 32, 60
    n = k * block + extra
    folder = P.dataset_dir(cfg)
    meta = json.loads((folder / "meta.json").read_text())
    val = read_bin(cfg, "val")[:n].copy()
    assert len(val) == n
    val.tofile(folder / "val.bin")
    meta["tokens"]["val"] = n
    (folder / "meta.json").write_text(json.dumps(meta))
    val = val.astype(np.int64)
    task = LMTask(cfg, block_size=block, seed=0)
    windows = k - 1 if extra == 0 else k
    starts = task.full_val_windows(max_tokens=10**9)
    assert list(starts) == [i * block for i in range(windows)]
    assert starts[-1] + block + 1 <= n                 # the last window's last target exists
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=block,
                          vocab_size=task.vocab_size))
    total, count = task.final_eval(model, batch_size=16, device="cpu", autocast=nullcontext,
                                   max_tokens=10**9)
    assert count == windows * block
    v = torch.from_numpy(val)
    with torch.no_grad():
        direct = sum(float(torch.nn.functional.cross_entropy(
            model(v[s:s + block][None])[0][0], v[s + 1:s + block + 1], reduction="sum"))
            for s in range(0, windows * block, block))
    assert total == pytest.approx(direct, rel=1e-5)


def test_build_task_auto_prepares(tmp_path, small_text):
    from configs import load_config, to_object
    cfg = to_object(load_config(["data=shakespeare_char", f"data.root={tmp_path}",
                                 f"data.source={small_text}", "train.block_size=16"]))
    task = build_task(cfg)
    assert task.block_size == 16 and task.vocab_size == len(set(small_text.read_text()))
    assert task.summary([{"val/loss": 1.0}]) == {}


# ---- bad input ------------------------------------------------------------------------------

def assert_one_line(exc_info, *fragments):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_unprepared_openwebtext_names_the_command(tmp_path):
    from configs import load_config, to_object
    cfg = to_object(load_config(["data=openwebtext", f"data.root={tmp_path}"]))
    with pytest.raises(UserError) as e:
        build_task(cfg)
    assert_one_line(e, "python -m data.prepare data=openwebtext")
    assert not (tmp_path / "openwebtext" / "meta.json").exists()


def test_failed_download_names_data_source(tmp_path):
    cfg = data_cfg(tmp_path, url="http://127.0.0.1:9/x.txt", auto_prepare=True)
    with pytest.raises(UserError) as e:
        LMTask(cfg, block_size=8, seed=0)
    assert_one_line(e, "data.source=<path>", "127.0.0.1:9")
    assert not any(p.name != ".lock" for p in P.dataset_dir(cfg).iterdir())


def test_unreadable_source(tmp_path):
    for path, words in [(tmp_path / "missing.txt", "does not exist"), (tmp_path, "is a directory")]:
        with pytest.raises(UserError) as e:
            P.prepare(data_cfg(tmp_path, source=str(path)))
        assert_one_line(e, f"data.source={path}", words)
    with pytest.raises(UserError) as e:
        P.prepare(data_cfg(tmp_path, name="local", files=[str(tmp_path / "nope.jsonl")]))
    assert_one_line(e, "data.files=", "does not exist")
    assert not (P.dataset_dir(data_cfg(tmp_path)) / "meta.json").exists()


def test_unreadable_source_socket(tmp_path, monkeypatch):
    """A path that exists, is no directory, and that open() refuses for every user, root
    included: a Unix socket (open gives ENXIO). So the 'cannot be read' error is tested where
    CI runs, as root, where no permission bits can make a file unreadable."""
    import socket
    monkeypatch.chdir(tmp_path)                 # a short relative name: sun_path holds ~108 bytes
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind("source.sock")
        with pytest.raises(UserError) as e:
            P.prepare(data_cfg(tmp_path, source=str(tmp_path / "source.sock")))
        assert_one_line(e, f"data.source={tmp_path / 'source.sock'}", "cannot be read")
    finally:
        sock.close()
    assert not (P.dataset_dir(data_cfg(tmp_path)) / "meta.json").exists()


def test_unreadable_source_permissions(tmp_path, small_text, monkeypatch):
    """A file without read permission. Permission bits cannot stop root (CAP_DAC_OVERRIDE reads
    any file), and CI runs as root: there, opening it raises the EACCES the OS gives any other
    user (Path.open patched for that one path), so the same error path runs everywhere."""
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def denied(self, *args, **kwargs):
            if self == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_open(self, *args, **kwargs)
        monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UserError) as e:
        P.prepare(data_cfg(tmp_path, source=str(locked)))
    assert_one_line(e, "cannot be read (Permission denied)")


def test_bin_size_disagreeing_with_meta(char_task):
    cfg, _ = char_task
    train = P.dataset_dir(cfg) / "train.bin"
    with open(train, "r+b") as f:
        f.truncate(train.stat().st_size - 2)
    for load in (lambda: P.open_prepared(cfg), lambda: LMTask(cfg, block_size=32, seed=0)):
        with pytest.raises(UserError) as e:
            load()
        assert_one_line(e, "train.bin", "meta.json", "python -m data.prepare")


def test_block_size_must_be_shorter_than_each_split(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefghij" * 10)  # 90 train, 10 val characters
    cfg = data_cfg(tmp_path, tokenizer="char", source=str(tmp_path / "t.txt"), auto_prepare=True)
    assert LMTask(cfg, block_size=9, seed=0).get_batch("val", 2, step=0)[0].shape == (2, 9)
    for block_size in (10, 11):
        with pytest.raises(UserError) as e:
            LMTask(cfg, block_size=block_size, seed=0)
        assert_one_line(e, f"train.block_size={block_size}", "val split", "has 10")


def test_tokenizer_change_is_caught(char_task):
    cfg, _ = char_task
    cfg.tokenizer = "r50k_base"
    with pytest.raises(UserError) as e:
        P.open_prepared(cfg)
    assert_one_line(e, "prepared with tokenizer char")


def test_cli_prints_error_and_exits_2(tmp_path, capsys):
    assert P.main(["data=shakespeare", f"data.root={tmp_path}", f"data.source={tmp_path}/no.txt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.source=") and err.count("\n") == 1


# ---- interrupted prepare --------------------------------------------------------------------

def test_interrupted_prepare_leaves_nothing_acceptable(tmp_path, small_text, monkeypatch):
    cfg = data_cfg(tmp_path, tokenizer="r50k_base", source=str(small_text), chunk_docs=1)
    real = P.make_tokenizer

    def failing_tokenizer(*args):
        encode, *rest = real(*args)
        calls = []

        def encode_then_fail(texts):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the train split
            return encode(texts)
        return (encode_then_fail, *rest)

    monkeypatch.setattr(P, "make_tokenizer", failing_tokenizer)
    monkeypatch.setattr(P, "PIECE_CHARS", 1000)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg)
    folder = P.dataset_dir(cfg)
    # only the resume record and the unfinished .tmp: nothing that passes for a dataset
    assert sorted(p.name for p in folder.iterdir()) == [".lock", P.PROGRESS, "train.bin.tmp"]
    assert P.open_prepared(cfg) is None
    with pytest.raises(UserError, match="not prepared"):
        LMTask(cfg, block_size=8, seed=0)  # auto_prepare is off

    monkeypatch.setattr(P, "make_tokenizer", real)
    meta = P.prepare(cfg)
    # An interrupted re-prepare leaves the previous dataset as it was, still valid.
    monkeypatch.setattr(P, "make_tokenizer", failing_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg)
    assert P.open_prepared(cfg) == meta


KILLABLE_PREPARE = """
import sys, time
from data import prepare as P
from data.config import DataConfig
real = P.make_tokenizer
def slow_tokenizer(*args):
    encode, *rest = real(*args)
    def slow(texts):
        time.sleep(0.05)
        return encode(texts)
    return (slow, *rest)
P.make_tokenizer = slow_tokenizer
P.PIECE_CHARS = 500
P.prepare(DataConfig(root=sys.argv[1], name="ds", tokenizer="r50k_base", source=sys.argv[2],
                     chunk_docs=1))
"""


def test_killed_prepare_resumes_from_its_last_finished_chunk(tmp_path, small_text, monkeypatch):
    """SIGKILL a real prepare mid-way; the same command then tokenizes only the chunks after the
    last recorded one, and the dataset equals an uninterrupted prepare's, byte for byte."""
    import signal
    import time
    cfg = data_cfg(tmp_path, tokenizer="r50k_base", source=str(small_text), chunk_docs=1)
    folder = P.dataset_dir(cfg)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_PREPARE, cfg.root, str(small_text)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record, deadline = folder / P.PROGRESS, time.time() + 120
    try:
        while time.time() < deadline:   # kill once a few chunks of train are recorded
            try:
                if json.loads(record.read_text())["splits"]["train"]["chunks"] >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert proc.poll() is None, "prepare finished before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = json.loads(record.read_text())["splits"]["train"]["chunks"]
    assert done >= 3 and P.open_prepared(cfg) is None

    monkeypatch.setattr(P, "PIECE_CHARS", 500)
    real, encoded = P.make_tokenizer, []

    def counting_tokenizer(*args):
        encode, *rest = real(*args)
        return ((lambda texts: encoded.append(1) or encode(texts)), *rest)
    monkeypatch.setattr(P, "make_tokenizer", counting_tokenizer)
    resumed = P.prepare(cfg)
    assert not record.exists()

    fresh_cfg = data_cfg(tmp_path / "fresh", tokenizer="r50k_base", source=str(small_text),
                         chunk_docs=1)
    n_before = len(encoded)
    fresh = P.prepare(fresh_cfg)
    n_all = len(encoded) - n_before
    assert resumed["sha256"] == fresh["sha256"] and resumed["tokens"] == fresh["tokens"]
    assert n_before == n_all - done   # the resume re-encoded nothing it had recorded


def test_killed_before_meta_json_is_not_prepared(tmp_path, small_text, monkeypatch):
    """Killed between renaming the new .bin files and writing meta.json: the old meta.json must
    not vouch for them, even though they have the old sizes (same characters, reordered)."""
    cfg = data_cfg(tmp_path, tokenizer="char", source=str(small_text))
    meta = P.prepare(cfg)
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("".join(sorted(small_text.read_text())))
    cfg.source = str(shuffled)
    real_write = P.write_atomic

    def killed_at_meta_json(path, *rest):   # the resume record still gets written
        if Path(path).name == "meta.json":
            raise KeyboardInterrupt
        return real_write(path, *rest)
    monkeypatch.setattr(P, "write_atomic", killed_at_meta_json)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg)
    assert P.open_prepared(cfg) is None
    monkeypatch.undo()
    cfg.auto_prepare = True  # ... and auto_prepare prepares it again
    again = LMTask(cfg, block_size=8, seed=0).meta
    assert again["tokens"] == meta["tokens"] and again["sha256"] != meta["sha256"]

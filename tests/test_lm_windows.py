"""data/lm.py on small hand-written datasets (a .bin dataset and token shards written here, no
tokenizer, no prepare): the windows of every batch against the positions worked out by hand,
the seeds of random batches (blake2b of the key, as the docstring says), sequential sampling's
step positions and its error messages, the val sequences, the evaluation means, and the final
eval's non-overlapping windows, their count at a val split that is a multiple of the block size
(k blocks: k - 1 windows, an off-by-one would read past the end) and their sum of token losses."""
from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import data.lm as lm
from configs.errors import UserError
from data import shards as S
from data.config import DataConfig
from data.lm import LMTask, Sequential, generator, split_windows

T = 8   # block size of every task here


def ref_generator(*parts) -> torch.Generator:
    """The seed rule written out: the first 8 bytes of blake2b(repr(parts)), little-endian."""
    seed = int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(seed)


def bin_task(tmp_path, n_train=400, n_val=81, block_size=T, seed=3, name="ds", **kw):
    """A prepared .bin dataset written by hand: train tokens 0, 1, ..., val tokens 1000, 1001, ..."""
    folder = tmp_path / "cache" / name
    folder.mkdir(parents=True, exist_ok=True)
    train = np.arange(n_train, dtype=np.uint16)
    val = (1000 + np.arange(n_val)).astype(np.uint16)
    train.tofile(folder / "train.bin")
    val.tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({
        "vocab_size": 2000, "dtype": "uint16", "tokenizer": "char",
        "tokens": {"train": n_train, "val": n_val}}))
    data_kw = {k: kw.pop(k) for k in ("sampling", "val_tokens") if k in kw}
    cfg = DataConfig(root=str(tmp_path / "cache"), name=name, **data_kw)
    return LMTask(cfg, block_size=block_size, seed=seed, **kw), train.astype(np.int64), val.astype(np.int64)


def shard_task(tmp_path, lengths, n_val=500, seed=0, **kw):
    """Token shards written by hand: shard i holds 10000 i, 10000 i + 1, ... (val: i = 0)."""
    folder = tmp_path / "cache" / "fw"
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [(10000 * i + np.arange(n)) for i, n in enumerate([n_val, *lengths])]
    S.write_shard(folder / S.val_name(), tokens[0])
    for i, t in enumerate(tokens[1:], start=1):
        S.write_shard(folder / S.train_name(i), t)
    data_kw = {k: kw.pop(k) for k in ("sampling", "val_tokens") if k in kw}
    cfg = DataConfig(root=str(tmp_path / "cache"), name="fw", shard_repo="me/fw",
                     shards=len(lengths), tokenizer="r50k_base", **data_kw)
    return LMTask(cfg, block_size=T, seed=seed, **kw), [t.astype(np.int64) for t in tokens]


class TokenLoss(torch.nn.Module):
    """A stand-in model: the loss of a token pair is a known function; records its inputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    @staticmethod
    def token_loss(x, y):
        return ((np.asarray(x) * 7 + np.asarray(y)) % 13) / 13.0

    def forward(self, x, y):
        assert not self.training and not torch.is_grad_enabled()
        assert x.dtype == y.dtype == torch.int64
        self.seen.append((x.clone(), y.clone()))
        return None, torch.as_tensor(self.token_loss(x.numpy(), y.numpy()).mean(), dtype=torch.float64)


def windows_at(stream, starts, block=T):
    w = np.stack([stream[s:s + block + 1] for s in starts])
    return w[:, :-1], w[:, 1:]


# ---- seeds and windows -------------------------------------------------------------------------

def test_generator_is_blake2b_of_the_key():
    for parts in [(0,), (7, "train", 3, 1, 0), (7, "val", "eval", 2)]:
        assert torch.equal(torch.randint(10**9, (4,), generator=generator(*parts)),
                           torch.randint(10**9, (4,), generator=ref_generator(*parts)))
    # the value itself, once: blake2b-64 of "(1, 'train', 0, 0, 0)", little-endian
    assert generator(1, "train", 0, 0, 0).initial_seed() == int.from_bytes(
        hashlib.blake2b(b"(1, 'train', 0, 0, 0)", digest_size=8).digest(), "little")


def test_split_windows_on_cpu_and_the_gpu_path():
    w = torch.arange(12).reshape(2, 6)
    x, y = split_windows(w, "cpu")
    assert torch.equal(x, w[:, :5]) and torch.equal(y, w[:, 1:])

    class Host:   # records what the GPU path does to the windows: pin, then one async copy
        def __init__(self):
            self.calls = []

        def pin_memory(self):
            self.calls.append("pin")
            return self

        def to(self, device, non_blocking=False):
            self.calls.append(("to", device, non_blocking))
            return w

    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        h = Host()
        x, y = split_windows(h, device)
        assert h.calls == ["pin", ("to", device, True)]
        assert torch.equal(x, w[:, :5]) and torch.equal(y, w[:, 1:])


def test_random_batches_of_a_bin_dataset_by_hand(tmp_path):
    task, train, val = bin_task(tmp_path, seed=3)
    assert task.vocab_size == 2000 and task.dtype == np.uint16 and task.train_size is None
    for split, stream, step, micro, rank in [("train", train, 5, 0, 0), ("train", train, 5, 1, 0),
                                             ("train", train, 5, 0, 2), ("val", val, 9, 3, 1)]:
        x, y = task.get_batch(split, 6, step=step, micro_step=micro, rank=rank)
        starts = torch.randint(len(stream) - T, (6,), generator=ref_generator(3, split, step, micro, rank))
        wx, wy = windows_at(stream, starts.numpy())
        assert x.dtype == y.dtype == torch.int64
        assert np.array_equal(x.numpy(), wx) and np.array_equal(y.numpy(), wy)


def test_random_windows_reach_the_last_token_and_never_past_it(tmp_path):
    """train of T + 1 tokens: the one window is the whole split (randint over len - T = 1)."""
    task, train, val = bin_task(tmp_path, n_train=T + 1, n_val=T + 1)
    for split, stream in (("train", train), ("val", val)):
        x, y = task.get_batch(split, 3, step=0)
        assert np.array_equal(x.numpy(), np.tile(stream[:T], (3, 1)))
        assert np.array_equal(y.numpy(), np.tile(stream[1:], (3, 1)))


def test_random_batches_of_shards_read_the_joined_stream(tmp_path):
    lengths = [30, 5, 40]
    task, tokens = shard_task(tmp_path, lengths, seed=4, sampling="random")
    joined = np.concatenate(tokens[1:])
    assert task.meta["tokens"]["train"] == 75 == len(joined)
    assert [p[1:] for p in task.pieces["train"]] == [(S.HEADER_BYTES, n) for n in lengths]
    # every token of the joined stream, in one gather and as a 2-d index
    assert np.array_equal(task._gather("train", np.arange(75)), joined)
    idx = np.array([[29, 30, 34, 35], [0, 74, 36, 5]])
    got = task._gather("train", idx)
    assert got.dtype == np.int64 and np.array_equal(got, joined[idx])
    got = task._gather("val", np.array([0, 499]))
    assert got.dtype == np.int64 and np.array_equal(got, [0, 499])
    for step in range(6):
        x, y = task.get_batch("train", 16, step=step, micro_step=1, rank=1)
        starts = torch.randint(75 - T, (16,), generator=ref_generator(4, "train", step, 1, 1))
        wx, wy = windows_at(joined, starts.numpy())
        assert np.array_equal(x.numpy(), wx) and np.array_equal(y.numpy(), wy)


# ---- construction and its refusals -------------------------------------------------------------

def test_the_task_remembers_its_seeds_and_pieces(tmp_path):
    task, _, _ = bin_task(tmp_path, seed=3)
    assert task.seed == 3 and task.eval_seed == 3 and task.block_size == T
    assert task.pieces == {"train": [(tmp_path / "cache" / "ds" / "train.bin", 0, 400)],
                           "val": [(tmp_path / "cache" / "ds" / "val.bin", 0, 81)]}
    task, _, _ = bin_task(tmp_path, seed=3, eval_seed=0)
    assert task.seed == 3 and task.eval_seed == 0
    assert task.done([]) is False and task.summary([{"val/loss": 1.0}]) == {}


def test_an_unprepared_dataset_is_refused_or_prepared(tmp_path, monkeypatch):
    cfg = DataConfig(root=str(tmp_path / "cache"), name="nothing")
    with pytest.raises(UserError) as e:
        LMTask(cfg, block_size=T, seed=0)
    assert str(e.value) == (f"nothing is not prepared in {tmp_path / 'cache' / 'nothing'}; run: "
                            f"python -m data.prepare data=nothing data.root={tmp_path / 'cache'}")
    bin_task(tmp_path, name="made")            # what the stand-in prepare returns
    made = json.loads((tmp_path / "cache" / "made" / "meta.json").read_text())
    asked = []

    def prepare(data_cfg, **kw):
        asked.append((data_cfg, kw))
        return made
    monkeypatch.setattr(lm, "prepare", prepare)
    cfg = DataConfig(root=str(tmp_path / "cache"), name="nothing", auto_prepare=True)
    task = LMTask(cfg, block_size=T, seed=0)
    assert asked == [(cfg, {"only_if_missing": True})] and task.meta == made


@pytest.mark.parametrize("split", ["train", "val"])
def test_block_size_needs_more_tokens_than_each_split(tmp_path, split):
    n = {"train": 400, "val": 81}
    n[split] = T
    with pytest.raises(UserError) as e:
        bin_task(tmp_path, n_train=n["train"], n_val=n["val"])
    assert str(e.value) == (f"train.block_size={T} needs more than {T} tokens but the {split} split "
                            f"of ds has {T}; use a smaller train.block_size or more data")
    n[split] = T + 1
    bin_task(tmp_path, n_train=n["train"], n_val=n["val"])   # T + 1: one window, accepted


# ---- sequential sampling -----------------------------------------------------------------------

@pytest.mark.parametrize("lengths, tps, steps", [
    ([100, 30, 100], 24, [4, 1, 4]),        # (n - 2) // 24
    ([50, 49, 26, 25], 24, [2, 1, 1, 0]),   # 50 = 2 * 24 + 2 serves 2; 25 < 24 + 2 serves none
    ([1, 2, 3], 1, [0, 0, 1]),              # (1 - 2) // 1 = -1: none, not -1
])
def test_sequential_steps_per_piece(lengths, tps, steps):
    s = Sequential(lengths, tps)
    assert s.steps == steps and list(s.ends) == list(np.cumsum(steps)) and s.total == sum(steps)


def test_sequential_locate_by_hand():
    s = Sequential([100, 30, 20, 100], 24)   # steps 4, 1, 0, 4
    got = [s.locate(k) for k in range(9)]
    assert got == [(0, 0), (0, 24), (0, 48), (0, 72), (1, 0), (3, 0), (3, 24), (3, 48), (3, 72)]
    for k in (9, -1):
        with pytest.raises(UserError, match=f"^{k + 1} steps of 24 tokens"):
            s.locate(k)


def test_sequential_messages_by_hand(tmp_path):
    s = Sequential([3000, 1100, 2000], 1024)   # steps 2, 1, 1: 4 in all
    plain = ("7 steps of 1,024 tokens need more than the train stream's 4 such steps (6,100 tokens "
             "in 3 file(s))")
    assert s.too_short(7) == f"{plain}; use fewer train.max_iters or more data"
    assert s.too_short(7, DataConfig()) == f"{plain}; use fewer train.max_iters or more data"
    shards = DataConfig(name="fw", shard_repo="me/fw", shards=3)
    # 3 steps short, at most 2 a shard: 2 more shards (ceil(3 / 2))
    assert s.too_short(7, shards) == (f"{plain}; run: python -m data.prepare data=fw data.shards=5 "
                                      "and train with data.shards=5")
    assert s.too_short(6, shards).endswith("data=fw data.shards=4 and train with data.shards=4")
    other = DataConfig(name="fw", shard_repo="me/fw", shards=3, root="/r")
    assert s.too_short(7, other).endswith("run: python -m data.prepare data=fw data.root=/r "
                                          "data.shards=5 and train with data.shards=5")
    none = Sequential([10, 20], 1024)           # no piece serves a step: no shard count helps
    assert none.too_short(1, shards) == ("1 steps of 1,024 tokens need more than the train "
                                         "stream's 0 such steps (30 tokens in 2 file(s)); use "
                                         "fewer train.max_iters or more data")
    s.check(4, shards)
    with pytest.raises(UserError) as e:
        s.check(5, shards)
    assert str(e.value).startswith("5 steps of 1,024 tokens") and "data.shards=4" in str(e.value)


def test_sequential_micro_batches_by_hand(tmp_path):
    """Shards of 100, 30, 100 tokens; 3 sequences of 8 a micro-batch, 2 micro-steps: 48 tokens
    a step, so shard 1 serves (100 - 2) // 48 = 2 steps, shard 2 none, shard 3 two."""
    task, tokens = shard_task(tmp_path, [100, 30, 100], sampling="sequential", val_tokens=100,
                              grad_accum_steps=2)
    for step, micro, shard, pos in [(0, 0, 1, 0), (0, 1, 1, 24), (1, 0, 1, 48), (1, 1, 1, 72),
                                    (2, 0, 3, 0), (3, 1, 3, 72)]:
        x, y = task.get_batch("train", 3, step=step, micro_step=micro, rank=5)
        assert np.array_equal(x.numpy().ravel(), tokens[shard][pos:pos + 24]), (step, micro)
        assert np.array_equal(y.numpy().ravel(), tokens[shard][pos + 1:pos + 25]), (step, micro)
        assert x.shape == (3, T)
    for micro in (2, -1):
        with pytest.raises(ValueError, match=rf"^micro_step={micro} outside 0\.\.1$"):
            task.get_batch("train", 3, step=0, micro_step=micro)
    with pytest.raises(UserError, match="^5 steps of 48 tokens"):
        task.get_batch("train", 3, step=4)


def test_sequential_on_a_bin_file(tmp_path):
    task, train, _ = bin_task(tmp_path, sampling="sequential", grad_accum_steps=1)
    x, y = task.get_batch("train", 2, step=3)
    assert np.array_equal(x.numpy().ravel(), train[48:64]) and np.array_equal(y.numpy().ravel(), train[49:65])


def test_a_stream_too_short_for_max_iters_is_refused_at_the_start(tmp_path):
    # 400 tokens, 16 a step: (400 - 2) // 16 = 24 steps
    bin_task(tmp_path, sampling="sequential", batch_size=2, max_iters=24)
    with pytest.raises(UserError, match="^25 steps of 16 tokens need more than the train stream's 24"):
        bin_task(tmp_path, sampling="sequential", batch_size=2, max_iters=25)
    bin_task(tmp_path, sampling="sequential", batch_size=2)            # no max_iters: no check
    bin_task(tmp_path, sampling="sequential", max_iters=10**6)          # no batch size: no check
    bin_task(tmp_path, sampling="random", batch_size=2, max_iters=10**6)   # random: no stream


@pytest.mark.parametrize("val_tokens, count", [(None, 10), (80, 10), (79, 9), (8, 1), (17, 2)])
def test_val_sequences_by_hand(tmp_path, val_tokens, count):
    """val of 81 tokens: all of it is 80 tokens (+1 target) = 10 sequences of 8."""
    task, _, _ = bin_task(tmp_path, sampling="sequential", val_tokens=val_tokens)
    assert task.val_count == count


def test_val_tokens_refusals(tmp_path):
    with pytest.raises(UserError) as e:
        bin_task(tmp_path, sampling="sequential", val_tokens=81)
    assert str(e.value) == ("data.val_tokens=81 needs 82 tokens but the val split of ds has 81; "
                            "pass data.val_tokens=80 or less")
    with pytest.raises(UserError) as e:
        bin_task(tmp_path, sampling="sequential", val_tokens=7)
    assert str(e.value) == ("data.val_tokens=7 is less than one sequence of train.block_size=8 "
                            "tokens; pass a larger data.val_tokens")


# ---- evaluation --------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_random_evaluate_is_the_mean_over_fixed_batches(tmp_path, training):
    task, train, val = bin_task(tmp_path, seed=3, eval_seed=11)
    entered = []

    def autocast():
        entered.append(1)
        return nullcontext()
    model = TokenLoss().train(training)
    out = task.evaluate(model, batch_size=4, eval_iters=3, device="cpu", autocast=autocast)
    assert model.training is training and len(entered) == 6
    want = {}
    for split, stream in (("train", train), ("val", val)):
        losses = []
        for k in range(3):
            starts = torch.randint(len(stream) - T, (4,), generator=ref_generator(11, split, "eval", k))
            losses.append(TokenLoss.token_loss(*windows_at(stream, starts.numpy())).mean())
        want[f"{split}/loss"] = np.mean(losses)
    assert out == pytest.approx(want, rel=1e-6)
    # two ranks: rank 1 scores batch 1 only, the reduce adds rank 0's batches 0 and 2
    shares = []
    task.evaluate(TokenLoss(), batch_size=4, eval_iters=3, device="cpu", autocast=nullcontext,
                  rank=1, world=2, reduce=lambda t: shares.append(t.clone()))
    assert [int((s != 0).sum()) for s in shares] == [1, 1]
    both = task.evaluate(TokenLoss(), batch_size=4, eval_iters=3, device="cpu", autocast=nullcontext,
                         rank=0, world=2, reduce=lambda t: t.add_(shares.pop(0)))
    assert both == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_sequential_evaluate_by_hand(tmp_path, training):
    """val_tokens 203: 25 sequences of 8 in batches of 4 (6 of 4 and one of 1), each token
    weighted once; train: the first 3 micro-batches (step 0's two, step 1's first)."""
    task, tokens = shard_task(tmp_path, [300, 300], sampling="sequential", val_tokens=203,
                              grad_accum_steps=2)
    assert task.val_count == 25
    model = TokenLoss().train(training)
    out = task.evaluate(model, batch_size=4, eval_iters=3, device="cpu", autocast=nullcontext)
    assert model.training is training
    assert [len(x) for x, _ in model.seen[:7]] == [4] * 6 + [1]
    val = tokens[0]
    assert np.array_equal(torch.cat([x for x, _ in model.seen[:7]]).numpy().ravel(), val[:200])
    want_val = TokenLoss.token_loss(val[:200], val[1:201]).mean()
    t1 = tokens[1]
    train = [(t1[p:p + 32], t1[p + 1:p + 33]) for p in (0, 32, 64)]   # 4 x 8 tokens each
    want_train = np.mean([TokenLoss.token_loss(x, y).mean() for x, y in train])
    assert out == pytest.approx({"val/loss": want_val, "train/loss": want_train}, rel=1e-6)
    shares = []
    task.evaluate(TokenLoss(), batch_size=4, eval_iters=3, device="cpu", autocast=nullcontext,
                  rank=1, world=2, reduce=lambda t: shares.append(t.clone()))
    assert [int((s != 0).sum()) for s in shares] == [3, 1]     # val batches 1, 3, 5; train 1
    both = task.evaluate(TokenLoss(), batch_size=4, eval_iters=3, device="cpu", autocast=nullcontext,
                         rank=0, world=2, reduce=lambda t: t.add_(shares.pop(0)))
    assert both == pytest.approx(out, rel=1e-6)
    # the same tokens every time: no step or earlier call plays a part
    assert task.evaluate(TokenLoss(), batch_size=4, eval_iters=3, device="cpu",
                         autocast=nullcontext) == out


# ---- the final eval's windows ------------------------------------------------------------------

@pytest.mark.parametrize("n_val, count", [
    (80, 9),     # 10 blocks exactly: the 10th block has no target for its last token
    (81, 10),    # one more token: its target
    (82, 10),
    (88, 10),    # 11 blocks exactly
    (89, 11),
    (9, 1),      # the smallest val split (block + 1)
])
def test_full_val_windows_count_by_hand(tmp_path, n_val, count):
    task, _, _ = bin_task(tmp_path, n_val=n_val)
    starts = task.full_val_windows(max_tokens=10**5)
    assert list(starts) == [8 * i for i in range(count)]
    assert starts[-1] + T + 1 <= n_val


@pytest.mark.parametrize("max_tokens, want", [
    (10 * 8, list(range(10))),                  # keep = count: every window
    (9 * 8, [0, 1, 2, 3, 4, 6, 7, 8, 9]),       # round(9 k / 8), k = 0..8 (4.5 -> 4)
    (3 * 8, [0, 4, 9]),                         # linspace(0, 9, 3) = 0, 4.5, 9: 4.5 rounds to 4
    (3 * 8 + 7, [0, 4, 9]),                     # a partial window's worth counts for nothing
    (2 * 8, [0, 9]),                            # the first and the last
    (7, [0]),                                   # less than a window: still one
    (0, [0]),
])
def test_full_val_windows_cap_by_hand(tmp_path, max_tokens, want):
    task, _, _ = bin_task(tmp_path, n_val=81)   # 10 windows
    assert list(task.full_val_windows(max_tokens)) == [8 * i for i in want]


@pytest.mark.parametrize("n_val", [80, 81, 88, 89])
@pytest.mark.parametrize("training", [True, False])
def test_final_eval_sums_every_windows_token_losses(tmp_path, n_val, training):
    """val of 80 tokens (10 blocks exactly): 9 windows, 72 tokens, and no read past the end."""
    task, _, val = bin_task(tmp_path, n_val=n_val)
    windows = (n_val - 1) // T
    model = TokenLoss().train(training)
    total, count = task.final_eval(model, batch_size=4, device="cpu", autocast=nullcontext,
                                   max_tokens=10**5)
    assert model.training is training
    assert count == windows * T
    assert [len(x) for x, _ in model.seen] == [4, 4, windows - 8]
    want = sum(TokenLoss.token_loss(val[s:s + T], val[s + 1:s + T + 1]).sum()
               for s in range(0, windows * T, T))
    assert total == pytest.approx(want, rel=1e-12)
    # two ranks: windows 0, 2, 4, ... and 1, 3, ...; their shares add up to the whole
    shares = [task.final_eval(TokenLoss(), batch_size=3, device="cpu", autocast=nullcontext,
                              max_tokens=10**5, rank=r, world=2) for r in (0, 1)]
    assert [c for _, c in shares] == [-(-windows // 2) * T, windows // 2 * T]
    even = sum(TokenLoss.token_loss(val[s:s + T], val[s + 1:s + T + 1]).sum()
               for s in range(0, windows * T, 2 * T))
    assert shares[0][0] == pytest.approx(even, rel=1e-12)
    assert shares[0][0] + shares[1][0] == pytest.approx(want, rel=1e-12)


def test_final_eval_with_a_cap_scores_the_spaced_windows(tmp_path):
    task, _, val = bin_task(tmp_path, n_val=81)
    model = TokenLoss()
    entered = []

    def autocast():
        entered.append(1)
        return nullcontext()
    total, count = task.final_eval(model, batch_size=2, device="cpu", autocast=autocast,
                                   max_tokens=3 * 8)
    assert count == 3 * T and len(entered) == 2
    starts = [0, 32, 72]
    assert [x[:, 0].tolist() for x, _ in model.seen] == [[1000, 1032], [1072]]
    want = sum(TokenLoss.token_loss(val[s:s + T], val[s + 1:s + T + 1]).sum() for s in starts)
    assert total == pytest.approx(want, rel=1e-12)


def test_final_eval_of_a_val_shard(tmp_path):
    """The val shard is read past its header: window 0 is tokens 0..7 of the val shard."""
    task, tokens = shard_task(tmp_path, [300], n_val=40)
    model = TokenLoss()
    total, count = task.final_eval(model, batch_size=8, device="cpu", autocast=nullcontext,
                                   max_tokens=10**5)
    val = tokens[0]
    assert count == 4 * T and np.array_equal(model.seen[0][0].numpy().ravel(), val[:32])
    assert total == pytest.approx(TokenLoss.token_loss(val[:32], val[1:33]).sum(), rel=1e-12)


def test_random_batches_of_two_shards(tmp_path):
    """Two train shards (40 and 20 tokens): windows of the joined 60, one may span both."""
    task, tokens = shard_task(tmp_path, [40, 20], seed=2, sampling="random")
    joined = np.concatenate(tokens[1:])
    got = task._gather("train", np.arange(60))
    assert got.dtype == np.int64 and np.array_equal(got, joined)
    x, y = task.get_batch("train", 32, step=1)
    starts = torch.randint(60 - T, (32,), generator=ref_generator(2, "train", 1, 0, 0))
    wx, wy = windows_at(joined, starts.numpy())
    assert np.array_equal(x.numpy(), wx) and np.array_equal(y.numpy(), wy)
    assert (starts.numpy() > 40 - T - 1).any()     # a window reaching into the second shard


def test_the_default_rank_is_rank_0(tmp_path):
    task, _, _ = bin_task(tmp_path)
    for a, b in zip(task.get_batch("train", 4, step=2), task.get_batch("train", 4, step=2, rank=0)):
        assert torch.equal(a, b)


def test_the_token_files_are_mapped_read_only(tmp_path):
    """Nothing a task does can write into a prepared dataset."""
    task, _, _ = bin_task(tmp_path)
    shards, _ = shard_task(tmp_path / "s", [40, 20])
    for piece in (task.pieces["train"][0], task.pieces["val"][0], shards.pieces["train"][1]):
        with pytest.raises(ValueError, match="read-only"):
            task._memmap(piece)[0] = 5


def test_a_shard_stream_too_short_names_the_shards_to_download(tmp_path):
    """Shards of 100 and 60 tokens, 16 a step: (100 - 2) // 16 + (60 - 2) // 16 = 6 + 3 = 9."""
    shard_task(tmp_path, [100, 60], sampling="sequential", batch_size=2, max_iters=9)
    with pytest.raises(UserError) as e:
        shard_task(tmp_path, [100, 60], sampling="sequential", batch_size=2, max_iters=16)
    # 7 steps short, 6 a shard at most: 2 more shards
    assert str(e.value) == ("16 steps of 16 tokens need more than the train stream's 9 such steps "
                            f"(160 tokens in 2 file(s)); run: python -m data.prepare data=fw "
                            f"data.root={tmp_path / 'cache'} data.shards=4 and train with data.shards=4")


class TorchOnDevice:
    """data.lm's torch, recording the device asked of every tensor it makes (and the dtype); the
    tensors themselves stay on the CPU, the one device this test has."""

    def __init__(self):
        self.made = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def zeros(self, *shape, **kw):
        self.made.append(("zeros", kw.get("device", "unset"), kw.get("dtype", "unset")))
        return torch.zeros(*shape, **{k: v for k, v in kw.items() if k != "device"})

    def tensor(self, data, **kw):
        self.made.append(("tensor", kw.get("device", "unset"), kw.get("dtype", "unset")))
        return torch.tensor(data, **{k: v for k, v in kw.items() if k != "device"})


@pytest.fixture
def on_device(monkeypatch):
    """Every window split_windows gets, with the device it was asked to put them on (then
    split on the CPU), and the tensors data.lm makes (TorchOnDevice)."""
    seen = []

    def split(windows, device):
        seen.append(device)
        return split_windows(windows, "cpu")
    fake = TorchOnDevice()
    monkeypatch.setattr(lm, "split_windows", split)
    monkeypatch.setattr(lm, "torch", fake)
    return seen, fake


def test_batches_and_eval_buffers_go_to_the_device_asked_for(tmp_path, on_device):
    """A GPU run's batches and loss buffers belong on its GPU (the all-reduce of the losses
    needs them there): every window and buffer is asked for on `device` ("cuda:3" here)."""
    seen, made = on_device
    dev = "cuda:3"
    task, _ = shard_task(tmp_path, [100, 60], sampling="random")
    task.get_batch("train", 2, step=0, device=dev)            # shards: the joined stream
    task.get_batch("val", 2, step=0, device=dev)              # one piece
    task.evaluate(TokenLoss(), batch_size=2, eval_iters=2, device=dev, autocast=nullcontext)
    assert seen == [dev] * 6
    assert [m[:2] for m in made.made] == [("zeros", dev)] * 2
    seen.clear(), made.made.clear()
    task, _ = shard_task(tmp_path / "s", [100, 60], sampling="sequential", val_tokens=40,
                         grad_accum_steps=2)
    task.get_batch("train", 2, step=1, micro_step=1, device=dev)
    task.evaluate(TokenLoss(), batch_size=2, eval_iters=2, device=dev, autocast=nullcontext)
    assert seen == [dev] * (1 + 3 + 2)           # 5 val sequences in batches of 2; 2 train
    assert [m[:2] for m in made.made] == [("zeros", dev), ("tensor", dev), ("zeros", dev)]
    seen.clear()
    task.final_eval(TokenLoss(), batch_size=2, device=dev, autocast=nullcontext, max_tokens=10**5)
    assert seen == [dev] * 31                     # (500 - 1) // 8 = 62 windows, 2 a batch

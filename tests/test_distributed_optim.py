"""The optimizers under torch.distributed, on 2 CPU processes (gloo): the matrix chains share their
transforms across ranks and give the single-process parameters, bit-identical on every rank after
every step; ZeRO-1 shards state and its checkpoints load at any world size; bad input."""
from __future__ import annotations

import copy
import dataclasses
import faulthandler
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from configs.errors import UserError
from optim import OptimizerConfig, build_optimizer
from trainer.distributed import exit_rank

from runs import launch, train_losses, why

REPO = Path(__file__).resolve().parents[1]
# Stacks of 3, 1 and 5 matrices: a short last slice, a rank with no rows, and the packed
# (96, 32) weight split into three (32, 32) matrices that straddle the two ranks' rows.
SHAPES = [(48, 32), (48, 32), (48, 32), (32, 80), (32, 32), (32, 32), (96, 32)]
STACKS = {(48, 32): 3, (32, 80): 1, (32, 32): 5}
NAMES = ["muon", "namo", "namo_d", "muon_svd", "adamq", "soap_muon", "dynmuon"]


def quiet(*args, **kwargs):
    pass


class Matrices(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(0.02 * torch.randn(s, generator=g))
                                         for s in SHAPES)


def config(name, **overrides) -> OptimizerConfig:
    if name in ("muonh", "adamh", "normuonh"):   # the hyperball names refuse weight decay
        overrides.setdefault("weight_decay", 0.0)
    return OptimizerConfig(name=name, lr=0.02, split_qkv=True, qkv_patterns=["ws.6"], **overrides)


def set_grads(model, seed):
    """The same gradients on every rank, as DDP's all-reduce leaves them."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def bits(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).view(torch.int32)


def assert_same_on_every_rank(model, what):
    mine = bits(model)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    assert all(torch.equal(every[0], b) for b in every), f"ranks differ: {what}"


def counting(opt) -> list:
    """Wrap the matrix part's transform to record (matrix shape, rows) of each call."""
    calls, chain = [], opt.parts["matrix"].chain

    def transform(group, X, work=None):
        calls.append((group["matrix_shape"], len(X)))
        return chain.transform(group, X, work)
    opt.parts["matrix"].chain = dataclasses.replace(chain, transform=transform)
    return calls


def own_rows(rank, world):
    """Rows of each stack that `rank` transforms: ceil(S / world), the last rank what is left."""
    rows = {}
    for shape, S in STACKS.items():
        k = -(-S // world)
        rows[shape] = max(0, min(S, (rank + 1) * k) - rank * k)
    return {shape: r for shape, r in rows.items() if r}


# ---- spawning ---------------------------------------------------------------------------------

def _worker(rank, world, init, fn, args):
    faulthandler.enable()  # a rank that aborts in C++ still shows its Python stack
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    fn(rank, world, *args)  # a failed assert raises: mp.spawn reports it
    dist.barrier()
    dist.destroy_process_group()
    exit_rank(0)


def spawn(tmp_path, fn, *args, world=2):
    """Run fn(rank, world, *args) on `world` gloo processes; a failed assert fails the test."""
    mp.spawn(_worker, args=(world, f"file://{tmp_path / 'rendezvous'}", fn, args), nprocs=world)


# ---- 1. distributed orthogonalization ----------------------------------------------------------

def _shared_transforms_match_one_process(rank, world, steps):
    for name in NAMES:
        model, ref = Matrices(), Matrices()
        opt = build_optimizer(model, config(name), log=quiet)
        ref_opt = build_optimizer(ref, config(name, distributed=False), log=quiet)
        assert opt.parts["matrix"].world == world and ref_opt.parts["matrix"].world == 1
        calls = counting(opt)
        for step in range(steps):
            set_grads(model, seed=step)
            set_grads(ref, seed=step)
            opt.step()
            ref_opt.step()
            assert_same_on_every_rank(model, f"{name} step {step}")
            for p, q in zip(model.parameters(), ref.parameters()):
                assert torch.equal(p, q), f"{name} step {step}: differs from one process"
        # each rank transformed only its own rows of every stack, once per step
        assert sorted(calls) == sorted(list(own_rows(rank, world).items()) * steps), (name, calls)


def test_shared_transforms_match_one_process(tmp_path):
    spawn(tmp_path, _shared_transforms_match_one_process, 3)


def _gathers_in_the_result_dtype(rank, world):
    """Newton-Schulz in bf16: the ranks' results are gathered as bf16 (half the bytes), and an
    identity transform (p = 1) is not gathered at all; the parameters still equal one
    process's, bit for bit, on every rank."""
    for name, overrides, want in (("muon", {"ns_dtype": "bfloat16"}, {torch.bfloat16}),
                                  ("msgdz", {"ns_dtype": "bfloat16"}, {torch.bfloat16}),
                                  ("adamq", {}, {torch.float32}),
                                  ("adam", {}, set()), ("msgd", {}, set())):
        model, ref = Matrices(), Matrices()
        opt = build_optimizer(model, config(name, **overrides), log=quiet)
        ref_opt = build_optimizer(ref, config(name, distributed=False, **overrides), log=quiet)
        engine, gathered = opt.parts["matrix"], []
        gather = engine._gather_rows
        engine._gather_rows = lambda mine, *a, **k: gathered.append(mine.dtype) or gather(mine, *a, **k)
        for step in range(2):
            set_grads(model, seed=step)
            set_grads(ref, seed=step)
            opt.step()
            ref_opt.step()
        assert set(gathered) == want, (name, gathered)
        assert_same_on_every_rank(model, name)
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.equal(p, q), f"{name}: differs from one process"


def test_gathers_in_the_result_dtype(tmp_path):
    spawn(tmp_path, _gathers_in_the_result_dtype)


# ---- 2. ZeRO-1 for the matrix chains: sharded state, portable checkpoints ----------------------

def _state_rows(opt) -> int:
    return sum(len(v) for s in opt.state.values() for k, v in s.items()
               if k == "momentum_buffer")


def _zero_matrix_state(rank, world, tmp):
    for name in ("muon", "namo_d", "normuonh", "soap_muon", "dynmuon"):
        model, ref = Matrices(), Matrices()
        opt = build_optimizer(model, config(name), log=quiet, zero=True)
        ref_opt = build_optimizer(ref, config(name, distributed=False), log=quiet)
        calls = counting(opt)
        for step in range(3):
            set_grads(model, seed=step)
            set_grads(ref, seed=step)
            opt.step()
            ref_opt.step()
            assert_same_on_every_rank(model, f"{name} zero step {step}")
            for p, q in zip(model.parameters(), ref.parameters()):
                assert torch.equal(p, q), f"{name} zero step {step}: differs from one process"
        assert sorted(calls) == sorted(list(own_rows(rank, world).items()) * 3), (name, calls)
        # this rank holds momentum for its rows only
        matrix = opt.parts["matrix"]
        assert _state_rows(matrix) == sum(own_rows(rank, world).values())
        with pytest.raises(RuntimeError, match="consolidate_state_dict"):
            matrix.state_dict()

        # consolidated on rank 0: the single-process state dict, which loads at world size 1 and 2
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            saved = opt.state_dict()
            torch.save(saved, tmp / f"{name}.pt")
            got, want = saved["matrix"]["state"], ref_opt.state_dict()["matrix"]["state"]
            assert got.keys() == want.keys()
            for i, st in want.items():
                for k, v in st.items():
                    assert torch.equal(got[i][k], v) if k != "step" else got[i][k] == v, k
        else:
            with pytest.raises(RuntimeError, match="consolidate_state_dict"):
                matrix.state_dict()
        dist.barrier()
        saved = torch.load(tmp / f"{name}.pt", weights_only=True)
        resumed, single = Matrices(seed=1), Matrices(seed=2)
        resumed.load_state_dict(model.state_dict())
        single.load_state_dict(model.state_dict())
        resumed_opt = build_optimizer(resumed, config(name), log=quiet, zero=True)
        single_opt = build_optimizer(single, config(name, distributed=False), log=quiet)
        resumed_opt.load_state_dict(copy.deepcopy(saved))
        single_opt.load_state_dict(copy.deepcopy(saved))    # a ZeRO checkpoint in one process
        assert _state_rows(resumed_opt.parts["matrix"]) == sum(own_rows(rank, world).values())
        for m, o in ((model, opt), (ref, ref_opt), (resumed, resumed_opt), (single, single_opt)):
            set_grads(m, seed=3)
            o.step()
        for p, q, r, s in zip(*(m.parameters() for m in (model, ref, resumed, single))):
            assert torch.equal(p, q) and torch.equal(p, r) and torch.equal(p, s), name


def test_zero_matrix_state_is_sharded_and_checkpoints_are_portable(tmp_path):
    spawn(tmp_path, _zero_matrix_state, tmp_path)


# ---- 3. ZeRO-1 through train.py: same losses, resume at another world size ---------------------


def test_zero_adamw_matches_and_resumes_in_one_process(tmp_path, small_text):
    common = ["model=tiny", "data=shakespeare_char", f"data.source={small_text}",
              f"data.root={tmp_path / 'data'}", "optimizer=adamw", "train.batch_size=4",
              "train.block_size=32", "train.grad_accum_steps=2", "train.eval_interval=100",
              "train.eval_iters=2", "train.log_interval=1", "train.warmup_iters=2",
              "train.schedule=constant", "threads=1"]
    ref = launch(common + ["train.max_iters=8", f"out_dir={tmp_path / 'ref'}"], 1)
    assert ref.returncode == 0, why(ref)
    zero = launch(common + ["train.max_iters=6", "train.zero=true", f"out_dir={tmp_path / 'z'}"], 2)
    assert zero.returncode == 0, why(zero)
    assert "ZeRO-1" in zero.stdout and "ranks_in_sync=True" in zero.stdout
    # the 2-process ZeRO checkpoint (step 6) continues in one process, where zero is moot
    resumed = launch(common + ["train.max_iters=8", "train.zero=true", "resume=true",
                               f"out_dir={tmp_path / 'z'}"], 1)
    assert resumed.returncode == 0, why(resumed)
    assert "resumed from" in resumed.stdout
    want, got = train_losses(tmp_path / "ref"), train_losses(tmp_path / "z")
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in want:  # float32 reduction order differs: all-reduce vs local accumulation
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), step
    summary = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(
        json.loads((tmp_path / "ref" / "summary.json").read_text())["final_val_loss"], rel=1e-4)


# ---- 4. bad input ------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_nccl_without_cuda(monkeypatch):
    from trainer.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="backend=nccl needs CUDA"):
        setup("cpu", "nccl")

"""The optimizers under torch.distributed, on 2 CPU processes (gloo): the matrix chains share their
work across ranks (whole matrices by optim/matrix.py's plan) and give the single-process
parameters, bit-identical on every rank after every step; the all-gather moves the exact
low-precision update; sharded state's checkpoints load at any world size; bad input."""
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
from optim.matrix import plan
from trainer.distributed import exit_rank

from runs import launch, train_losses, why

REPO = Path(__file__).resolve().parents[1]
# Stacks of 3, 1 and 5 matrices, the packed (96, 32) weight split into three (32, 32) matrices:
# on 2 ranks, rank 0 owns no (32, 80) matrix (it learns that group's step from the gather).
SHAPES = [(48, 32), (48, 32), (48, 32), (32, 80), (32, 32), (32, 32), (96, 32)]
# (k, m, n) of each parameter in the engine's order (shape groups in order of first appearance)
PARAM_SHAPES = [(1, 48, 32)] * 3 + [(1, 32, 80)] + [(1, 32, 32)] * 2 + [(3, 32, 32)]
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
    """Matrices of each shape that `rank` runs the chain on: the parameters plan() gives it."""
    rows = {}
    for (k, m, n), owner in zip(PARAM_SHAPES, plan(PARAM_SHAPES, world)):
        if owner == rank:
            rows[(m, n)] = rows.get((m, n), 0) + k
    return rows


def test_plan_balances_whole_matrices():
    """Greedy largest-first: deterministic, every parameter whole; GPT-2 small's 48 matrices
    on 8 ranks within 3% of the mean cost, and the test shapes' two ranks both busy."""
    from optim.matrix import ns_cost
    gpt2 = [(1, 2304, 768), (1, 768, 768), (1, 3072, 768), (1, 768, 3072)] * 12
    for shapes, world, bound in ((gpt2, 8, 1.03), (gpt2, 2, 1.01), (PARAM_SHAPES, 2, 1.1)):
        owners = plan(shapes, world)
        assert owners == plan(shapes, world)
        loads = [sum(ns_cost(*s) for s, r in zip(shapes, owners) if r == rank)
                 for rank in range(world)]
        assert max(loads) * world / sum(loads) <= bound, loads
    assert plan(gpt2, 1) == [0] * 48
    assert own_rows(0, 2) == {(48, 32): 1, (32, 32): 4}
    assert own_rows(1, 2) == {(48, 32): 2, (32, 80): 1, (32, 32): 1}


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


def segment_bytes(world, itemsize, scalars=()):
    """The largest rank's bytes in the flat buffer: its matrices' D in `itemsize` bytes and a
    block per tensor step size (eta, rho) of `scalars` bytes per matrix, each 16-byte aligned."""
    align = lambda b: -(-b // 16) * 16  # noqa: E731
    return max(sum(align(k * m * n * itemsize) + sum(align(k * b) for b in scalars)
                   for (m, n), k in own_rows(rank, world).items()) for rank in range(world))


def _gathers_in_the_result_dtype(rank, world):
    """Every orthogonalizing ns in bf16 (ZeRO too): one all-gather per step, of bf16 updates
    (half the bytes of float32) and nothing else where the step size is a float; float32
    where the update is (SVD, the coupled iterations, post links, p = 1). The parameters still
    equal one process's, bit for bit, on every rank."""
    import optim.matrix
    bf16 = {"ns_dtype": "bfloat16"}
    cases = [("muon", bf16, torch.bfloat16, ()), ("muon", dict(bf16, ns="polar_express"),
                                                 torch.bfloat16, ()),
             ("muon", dict(bf16, ns="gram"), torch.bfloat16, ()),
             ("muon", dict(bf16, ns="cubic"), torch.bfloat16, ()),
             ("msgdz", bf16, torch.bfloat16, ()), ("adamz", dict(bf16, ns="polar_express"),
                                                  torch.bfloat16, ()),
             ("muonh", bf16, torch.bfloat16, ()), ("soap_muon", bf16, torch.bfloat16, ()),
             ("namo", bf16, torch.bfloat16, (4, 4)), ("muon", dict(bf16, zero=True), torch.bfloat16, ()),
             ("muon", {"ns_dtype": "float32"}, torch.float32, ()), ("muon_svd", {}, torch.float32, ()),
             ("adamq", {}, torch.float32, ()), ("normuon", bf16, torch.float32, ()),
             ("adam", {}, torch.float32, ()), ("msgd", {}, torch.float32, ())]
    all_gather = optim.matrix.dist.all_gather_single
    for name, overrides, want, scalars in cases:
        overrides = dict(overrides)
        zero = overrides.pop("zero", False)
        model, ref = Matrices(), Matrices()
        opt = build_optimizer(model, config(name, **overrides), log=quiet, zero=zero)
        ref_opt = build_optimizer(ref, config(name, distributed=False, **overrides), log=quiet)
        engine, packed, sent = opt.parts["matrix"], [], []
        pack = engine._pack
        engine._pack = lambda send, offsets, forms, *a: packed.append(forms[0]) or pack(
            send, offsets, forms, *a)
        optim.matrix.dist.all_gather_single = lambda out, send, **k: sent.append(
            (send.dtype, send.numel(), out.numel())) or all_gather(out, send, **k)
        try:
            for step in range(2):
                set_grads(model, seed=step)
                set_grads(ref, seed=step)
                opt.step()
                ref_opt.step()
        finally:
            optim.matrix.dist.all_gather_single = all_gather
        what = f"{name} {overrides}"
        assert set(packed) == {want} and len(packed) == 2 * len(own_rows(rank, world)), what
        seg = segment_bytes(world, want.itemsize, scalars)
        assert sent == [(torch.uint8, seg, world * seg)] * 2, (what, sent, seg)
        assert_same_on_every_rank(model, name)
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.equal(p, q), f"{what}: differs from one process"


def test_gathers_in_the_result_dtype(tmp_path):
    spawn(tmp_path, _gathers_in_the_result_dtype)


def _dion_shares_its_work(rank, world):
    """Dion's power iteration (its post link) runs on each rank's own matrices only, with their
    state only, and the parameters equal one process's, bit for bit; the start-up line says how
    the work is shared."""
    for overrides in ({}, {"rank": 3}, {"rank": 3, "dion_transpose": True}):
        lines = []
        model, ref = Matrices(), Matrices()
        opt = build_optimizer(model, config("dion", **overrides), log=lines.append)
        ref_opt = build_optimizer(ref, config("dion", distributed=False, **overrides), log=quiet)
        engine, calls = opt.parts["matrix"], []
        post = engine.chain.post
        engine.chain = dataclasses.replace(engine.chain, post=lambda group, D, *a: calls.append(
            (group["matrix_shape"], len(D))) or post(group, D, *a))
        for step in range(3):
            set_grads(model, seed=step)
            set_grads(ref, seed=step)
            opt.step()
            ref_opt.step()
            assert_same_on_every_rank(model, f"dion {overrides} step {step}")
            for p, q in zip(model.parameters(), ref.parameters()):
                assert torch.equal(p, q), f"dion {overrides} step {step}: differs from one process"
        assert sorted(calls) == sorted(list(own_rows(rank, world).items()) * 3), calls
        assert _state_rows(engine) == sum(own_rows(rank, world).values())
        assert any("whole matrices dealt to 2 ranks" in line for line in lines), lines


def test_dion_shares_its_work(tmp_path):
    spawn(tmp_path, _dion_shares_its_work)


# ---- 2. ZeRO-1 for the matrix chains: sharded state, portable checkpoints ----------------------

def _state_rows(opt) -> int:
    return sum(len(v) for s in opt.state.values() for k, v in s.items()
               if k == "momentum_buffer")


def _zero_matrix_state(rank, world, tmp):
    # without train.zero the matrix chains shard their state just the same
    for name, zero in (("muon", True), ("namo_d", True), ("normuonh", True), ("soap_muon", True),
                       ("dynmuon", True), ("namo", False)):
        model, ref = Matrices(), Matrices()
        opt = build_optimizer(model, config(name), log=quiet, zero=zero)
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
        resumed_opt = build_optimizer(resumed, config(name), log=quiet, zero=zero)
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


def test_iterations_return_their_exact_dtype_without_a_workspace():
    """On GPUs (no Workspace) every iterative polar method returns its ns_dtype result as it is
    (no float32 round trip before the gather), the same values as the old cast-back result."""
    from optim import polar
    from optim.rules import ns_result_dtype, orthogonalize_transform
    X = torch.randn(3, 48, 32, generator=torch.Generator().manual_seed(0))
    for ns in [name for name, o in polar.ORTHOGONALIZERS.items() if o.iterative]:
        group = dict(ns=ns, ns_steps=5, ns_dtype="bfloat16", ns_eps=1e-7)
        D = orthogonalize_transform(group, X)
        assert D.dtype == ns_result_dtype(group, X) == torch.bfloat16, ns
        old = polar.orthogonalize(X, method=ns, steps=5, dtype=torch.bfloat16)
        assert old.dtype == torch.float32 and torch.equal(D.float(), old), ns

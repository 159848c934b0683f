"""optimizer.ns_dtype=auto decided by what the machine's matmuls are fast in (optim/capability.py):
the rule on mocked capabilities, an explicit ns_dtype always winning, a step with auto being the
step in the resolved dtype bit for bit, and the choice printed at start-up and kept in
summary.json."""
from __future__ import annotations

import json

import pytest
import torch

import train
from optim import OptimizerConfig, build_optimizer, capability
from optim.rules import resolve_ns_dtype
from test_optim import SHAPES, Matrices, quiet, random_grads, run_updates
from runs import tiny_args

NO_BF16 = frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512bw", "avx512_vnni"})


@pytest.fixture
def machine(monkeypatch):
    """Pretend this process runs on a CPU with the given flags (and oneDNN bf16 or not)."""
    def pretend(flags, onednn=True):
        monkeypatch.setattr(capability, "cpu_flags", lambda: flags)
        monkeypatch.setattr(capability, "mkldnn_bf16", lambda: onednn)
        capability.ns_auto.cache_clear()
    yield pretend
    capability.ns_auto.cache_clear()


@pytest.mark.parametrize("device,flags,onednn,want,words", [
    ("cuda", None, True, torch.bfloat16, "CUDA"),
    ("cpu", NO_BF16 | {"avx512_bf16"}, True, torch.bfloat16, "AVX512-BF16"),
    ("cpu", NO_BF16 | {"amx_bf16", "amx_tile", "avx512_bf16"}, True, torch.bfloat16, "AMX-BF16"),
    ("cpu", NO_BF16, True, torch.float32, "without AVX512-BF16/AMX"),
    ("cpu", frozenset({"fp", "asimd", "bf16"}), True, torch.float32, "without"),   # arm64
    ("cpu", None, True, torch.float32, "unreadable"),
    ("cpu", NO_BF16 | {"avx512_bf16"}, False, torch.float32, "no oneDNN"),
    ("mps", None, True, torch.float32, "mps"),
])
def test_decide(device, flags, onednn, want, words):
    choice = capability.decide(device, flags, onednn, "AVX512")
    assert choice.dtype == want and words in choice.reason


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert capability.cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16"}
    assert capability.cpu_flags(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("flags,auto", [(NO_BF16 | {"avx512_bf16"}, torch.bfloat16),
                                        (NO_BF16, torch.float32)])
def test_auto_follows_the_machine_and_explicit_always_wins(machine, flags, auto):
    machine(flags)
    cpu = torch.device("cpu")
    assert resolve_ns_dtype("auto", cpu) == auto
    assert resolve_ns_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_ns_dtype(name, cpu) == getattr(torch, name)
    assert OptimizerConfig().ns_dtype == "auto"


@pytest.mark.parametrize("flags,same_as", [(NO_BF16 | {"amx_bf16"}, "bfloat16"),
                                           (NO_BF16, "float32")])
def test_a_step_with_auto_is_the_step_in_the_resolved_dtype(machine, flags, same_as):
    """Bit for bit, for Muon and the spectral p = 0; and the two dtypes do differ."""
    machine(flags)
    for name in ("muon", "adamz"):
        finals = {}
        for dtype in ("auto", "float32", "bfloat16"):
            model = Matrices(SHAPES, seed=1)
            w0 = [p.detach().clone() for p in model.parameters()]
            opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.02, ns_dtype=dtype),
                                  log=quiet)
            assert opt.ns_dtype == (same_as if dtype == "auto" else dtype)
            run_updates(model, opt, random_grads(w0, 3, seed=2))
            finals[dtype] = [p.detach().clone() for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(finals["auto"], finals[same_as]))
        assert not all(torch.equal(a, b) for a, b in zip(finals["float32"], finals["bfloat16"]))


def test_no_newton_schulz_no_dtype():
    for cfg in (OptimizerConfig(name="adamq"), OptimizerConfig(name="muon", ns="svd"),
                OptimizerConfig(name="muon_svd")):
        assert build_optimizer(Matrices(SHAPES), cfg, log=quiet).ns_dtype is None


@pytest.mark.parametrize("flags,override,want,reason", [
    (NO_BF16 | {"avx512_bf16"}, [], "bfloat16", "auto: CPU has AVX512-BF16"),
    (NO_BF16, [], "float32", "auto: CPU without AVX512-BF16/AMX"),
    (NO_BF16 | {"avx512_bf16"}, ["optimizer.ns_dtype=float32"], "float32", "float32: set"),
])
def test_printed_at_start_and_kept_in_summary(machine, tmp_path, small_text, capsys, flags,
                                              override, want, reason):
    machine(flags)
    out = tmp_path / "run"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}", "optimizer=muon",
                                "train.max_iters=2", "train.eval_interval=2", *override)) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "Newton-Schulz in" in l]
    assert len(lines) == 1 and f"Newton-Schulz in {want} (optimizer.ns_dtype={reason}" in lines[0]
    assert json.loads((out / "summary.json").read_text())["ns_dtype"] == want
    adamw = tmp_path / "adamw"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={adamw}", "train.max_iters=2",
                                "train.eval_interval=2")) == 0
    assert json.loads((adamw / "summary.json").read_text())["ns_dtype"] is None

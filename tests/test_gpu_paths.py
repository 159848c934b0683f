"""The CUDA paths, checked on a CPU (with small mocks where a CUDA call is involved): GPT-2's
training shape, TF32, one host sync per log interval, warm-up-free timing, the MFU peak table,
eval batches split across ranks, fused AdamW, device selection, pinned batches, and sweeps of
CPU runs on a GPU host."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import train
from configs import load_config, to_object
from trainer.loop import StepTimer

REPO = str(Path(train.__file__).resolve().parent)


def tiny_args(tmp_path, source, *extra):
    return ["model=tiny", "data=shakespeare_char", f"data.source={source}",
            f"data.root={tmp_path / 'data'}", "train.batch_size=4", "train.block_size=32",
            "train.eval_iters=2", "threads=1", f"out_dir={tmp_path / 'run'}", *extra]


# ---- 1. GPT-2 trains with GPT-2's context -------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt2", "gpt2-medium", "gpt2-large"])
def test_gpt2_sizes_bring_gpt2_training_shape(model):
    cfg = to_object(load_config([f"model={model}", "data=openwebtext", "dtype=bfloat16", "compile=true"]))
    assert (cfg.train.block_size, cfg.train.batch_size, cfg.train.grad_accum_steps) == (1024, 12, 40)
    assert cfg.dtype == "bfloat16" and cfg.compile == "true"
    cfg = to_object(load_config([f"model={model}", "train.block_size=256", "train.grad_accum_steps=32"]))
    assert (cfg.train.block_size, cfg.train.grad_accum_steps) == (256, 32)   # the command line wins
    assert to_object(load_config(["model=baby"])).train.block_size == 64        # CPU sizes untouched


@pytest.mark.parametrize("preset", ["namo_gpt2", "namo_gpt2_medium", "namo_clamp", "spectral_gpt2"])
def test_gpu_presets_compile_in_bf16_at_block_1024(preset):
    from sweeper.points import plan
    p = plan([f"sweep={preset}"], [])
    cfg = to_object(load_config(p.points[0].overrides))
    assert cfg.compile == "true" and cfg.dtype == "bfloat16" and cfg.train.block_size == 1024


# ---- 2. TF32 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", [True, False])
def test_tf32_flag_is_set_and_settable(tmp_path, small_text, flag):
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        args = tiny_args(tmp_path, small_text, "train.max_iters=2", f"tf32={str(flag).lower()}")
        assert train.main(args) == 0
        assert torch.backends.cuda.matmul.allow_tf32 is flag
        assert torch.backends.cudnn.allow_tf32 is flag
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_coupled_iterations_turn_tf32_off_for_themselves():
    from optim.spectral import full_fp32_matmuls
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with full_fp32_matmuls(torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
        with full_fp32_matmuls(torch.device("cpu")):      # nothing to do on a CPU
            assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ---- 3. host syncs --------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adamw", "namo_d"])
def test_one_host_sync_per_log_interval(tmp_path, small_text, monkeypatch, optimizer):
    """Reading a device value on the host stalls a GPU; our code does it once per log interval
    (torch's own CPU-side step counters are not device reads and are not counted)."""
    count = {"n": 0}

    def counted(method):
        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(REPO) and "/tests/" not in caller:   # our code, not torch's
                count["n"] += 1
            return method(self, *a, **k)
        return wrapper

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    # evaluation has its own reads (one per split): leave it out of the count
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {"train/loss": 4.0, "val/loss": 4.0})
    args = tiny_args(tmp_path, small_text, f"optimizer={optimizer}", "train.max_iters=40",
                     "train.log_interval=10", "train.eval_interval=1000", "train.ckpt_interval=0",
                     "train.final_eval_tokens=0")
    assert train.main(args) == 0
    assert count["n"] <= 40 // 10, count


def test_step_timer_leaves_out_the_first_step_and_pauses(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr("trainer.loop.time.time", lambda: clock["t"])
    timer = StepTimer("cpu")
    clock["t"] += 30.0                  # step 1: compilation
    timer.step_done()
    for _ in range(4):                  # steps 2..5: 0.5 s each
        clock["t"] += 0.5
        timer.step_done()
    timer.pause()
    clock["t"] += 100.0                 # an evaluation
    timer.resume()
    clock["t"] += 0.5
    timer.step_done()
    assert timer.window() == (pytest.approx(2.5), 5)
    assert (timer.seconds, timer.steps) == (pytest.approx(2.5), 5)


def test_summary_tokens_per_s_is_the_steady_rate(tmp_path, small_text):
    import json
    assert train.main(tiny_args(tmp_path, small_text, "train.max_iters=20", "train.log_interval=5")) == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r]
    assert s["tokens_per_s"] > 0 and len(rates) == 4
    assert min(rates) * 0.5 <= s["tokens_per_s"] <= max(rates) * 2   # the same scale as the logs


# ---- 4. MFU peaks -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12),
    ("Some Other GPU", None)])
def test_mfu_peak_by_device_name(name, peak):
    assert train.peak_flops_of(name) == peak


# ---- 5. evaluation split across ranks ---------------------------------------------------------

def test_eval_batches_split_across_ranks_keep_the_mean(tmp_path, small_text):
    from data.config import DataConfig
    from data.lm import LMTask
    from model.config import GPTConfig
    from model.gpt import GPT

    cfg = DataConfig(name="ds", root=str(tmp_path / "c"), tokenizer="char", source=str(small_text),
                     auto_prepare=True)
    task = LMTask(cfg, block_size=16, seed=3, eval_seed=0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=task.vocab_size))
    one = task.evaluate(model, batch_size=3, eval_iters=5, device="cpu", autocast=nullcontext)
    shares = {}
    for rank in (0, 1):
        task.evaluate(model, batch_size=3, eval_iters=5, device="cpu", autocast=nullcontext,
                      rank=rank, world=2, reduce=lambda v, r=rank: shares.setdefault(r, []).append(v.clone()))
    for i, split in enumerate(("train", "val")):
        summed = shares[0][i] + shares[1][i]                 # what the all-reduce leaves
        assert (shares[0][i] != 0).sum() == 3 and (shares[1][i] != 0).sum() == 2
        assert summed.mean().item() == one[f"{split}/loss"]


# ---- 6. fused AdamW, device selection, pinned batches -----------------------------------------

def test_adamw_is_fused_on_cuda_unless_told_otherwise():
    from optim.config import OptimizerConfig
    from optim.registry import speed_flags
    assert speed_flags(torch.optim.AdamW, OptimizerConfig(), "cuda") == {"fused": True}
    assert speed_flags(torch.optim.AdamW, OptimizerConfig(), "cpu") == {}
    assert speed_flags(torch.optim.AdamW, OptimizerConfig(foreach=True), "cuda") == {"foreach": True}
    assert speed_flags(torch.optim.AdamW, OptimizerConfig(fused=False), "cuda") == {"fused": False}
    assert speed_flags(torch.optim.SGD, OptimizerConfig(), "cuda") == {}


def test_single_process_cuda_n_selects_its_device(monkeypatch):
    from trainer import distributed
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = distributed.setup("cuda:1")
    assert env.device == "cuda:1" and chosen == ["cuda:1"]


def test_cpu_batches_are_never_pinned(tmp_path, small_text, monkeypatch):
    from data.config import DataConfig
    from data.lm import LMTask
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pytest.fail("pinned on a CPU run"))
    cfg = DataConfig(name="ds", root=str(tmp_path / "c"), tokenizer="char", source=str(small_text),
                     auto_prepare=True)
    x, y = LMTask(cfg, block_size=16, seed=0).get_batch("train", 4, step=0, device="cpu")
    assert torch.equal(x[:, 1:], y[:, :-1])


# ---- 7. sweeps of CPU runs on a GPU host --------------------------------------------------------

def test_cpu_sweeps_reserve_no_gpus(monkeypatch):
    from sweeper.config import SweepConfig
    from sweeper.runner import resources
    from configs.errors import UserError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cfg = SweepConfig(jobs=2)
    gpus, threads = resources(cfg, "cpu")
    assert gpus == [] and threads == 2
    with pytest.raises(UserError, match="needs 2 GPUs"):
        resources(cfg, "cuda")

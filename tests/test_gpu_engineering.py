"""The training engine's GPU-facing choices, checked on CPU proxies: the loss-only forward keeps
no second copy of the logits, evaluation goes through the compiled module, DDP is built with
gradient_as_bucket_view and the configured bucket size, the peak-FLOPs table names the right GPU,
and bad settings are one error line."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import train
from configs.errors import UserError
from model import GPT, GPTConfig
from runs import tiny_args
from trainer.distributed import DistEnv


def saved_bytes_of_shape(model, x, y, numel: int) -> list:
    """The tensors autograd keeps for backward in model(x, y) with `numel` elements."""
    kept = []

    def pack(t):
        if t.numel() == numel and (t.dtype, tuple(t.shape), t.data_ptr()) not in kept:
            kept.append((t.dtype, tuple(t.shape), t.data_ptr()))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, y)
    return out, [k[:2] for k in kept]


def test_the_loss_only_forward_neither_returns_nor_keeps_a_second_logits_copy():
    torch.manual_seed(0)
    V, B, T = 512, 3, 16
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=T, vocab_size=V, pad_vocab_to=1))
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    (logits, loss), kept = saved_bytes_of_shape(model, x, y, B * T * V)
    assert logits is None and loss.ndim == 0
    assert kept == [(torch.float32, (B * T, V))]      # the log-probabilities cross-entropy needs
    logits, loss2 = model(x, y, return_logits=True)   # asked for: as before, the same loss
    assert logits.shape == (B, T, V) and torch.equal(loss, loss2)


def test_evaluation_runs_through_the_compiled_module(tmp_path, small_text, monkeypatch):
    calls = {"train": 0, "eval": 0}

    class Compiled(torch.nn.Module):   # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *a, **k):
            calls["train" if self.training else "eval"] += 1
            return self.inner(*a, **k)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

    monkeypatch.setattr(torch, "compile", lambda m, **k: Compiled(m))
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={tmp_path / 'run'}",
                                "compile=true", "train.max_iters=4", "train.eval_interval=2",
                                "train.final_eval_tokens=64")) == 0
    assert calls["train"] == 4 and calls["eval"] > 0


def test_ddp_is_built_with_bucket_views_and_the_bucket_size(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=64))
        env = DistEnv(rank=0, local_rank=0, world_size=2, device="cpu")   # enabled: wraps
        trained, evaluated = train.wrap_model(model, False, env, bucket_mb=7.5)
        assert trained.gradient_as_bucket_view and trained.bucket_bytes_cap == int(7.5 * 1024 * 1024)
        assert evaluated is model                     # evaluation skips DDP
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name, peak", [("NVIDIA L40", 181e12), ("NVIDIA L40S", 362e12),
                                        ("NVIDIA L4", 121e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                        ("NVIDIA H100 PCIe", 756e12)])
def test_peak_flops_names_the_right_gpu(name, peak):
    assert train.peak_flops_of(name) == peak


def test_bad_distributed_settings_are_one_error_line():
    from configs import load_config, to_object
    for bad in ("dist_timeout_s=0", "ddp_bucket_mb=0"):
        with pytest.raises(UserError, match="dist_timeout_s=.* ddp_bucket_mb="):
            to_object(load_config([bad]))


def test_the_checkpoint_write_is_off_the_steps_path(tmp_path, monkeypatch):
    """A slow disk: save() returns while the writer is still blocked, with the state as it was
    at save() (training may change the weights and add eval records meanwhile); wait() returns
    once it is on disk."""
    import threading

    from trainer import checkpoint

    release, started = threading.Event(), threading.Event()
    real_save = torch.save

    def slow_save(obj, f):
        started.set()
        assert release.wait(timeout=60), "the test never released the writer"
        real_save(obj, f)
    monkeypatch.setattr(checkpoint.torch, "save", slow_save)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=64))
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    writer = checkpoint.Writer()
    history = [{"step": 0, "val/loss": 4.0}]
    checkpoint.save(tmp_path, model=model, optimizer=opt, scaler=scaler, step=3, best_val_loss=1.0,
                    history=history, config={}, device="cpu", is_main=True, consolidate=False,
                    writer=writer)
    assert started.wait(timeout=60) and not (tmp_path / checkpoint.FILE).exists()   # still writing
    with torch.no_grad():                        # the next steps change the weights
        for p in model.parameters():
            p.add_(1.0)
    history.append({"step": 5, "val/loss": 3.0})
    release.set()
    writer.wait()
    saved = checkpoint.load(tmp_path / checkpoint.FILE)
    assert saved["step"] == 3 and saved["history"] == [{"step": 0, "val/loss": 4.0}]
    assert all(torch.equal(saved["model"][k], v) for k, v in before.items())


def test_a_failed_background_write_is_raised_by_wait(tmp_path, monkeypatch):
    from trainer import checkpoint

    def full_disk(obj, f):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    writer = checkpoint.Writer()
    writer.submit(tmp_path / checkpoint.FILE, {"step": 1})
    with pytest.raises((UserError, OSError)):
        writer.wait()
    writer.wait()                                 # raised once; the writer is usable again


def test_namo_d_column_sums_take_a_few_ops_off_the_cpu_path():
    """The GPU path of col_sum_sq(_each) (taken here by bf16 tensors): a few ops for 48
    matrices, not several per matrix, and the float64 reference's numbers."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from optim.rules import col_sum_sq, col_sum_sq_each

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    grads = [torch.randn(k, 32, 48).bfloat16() for k in [3, 1, 1, 1] * 12]   # 48 matrices
    with Count() as c:
        got = col_sum_sq_each(grads)
        stack = col_sum_sq(torch.cat(grads))
    assert c.ops <= 20, c.ops        # matrix by matrix: 4 ops each, about 200
    want = [g.double().square().sum(dim=1) for g in grads]
    assert all(torch.allclose(a.double(), b, rtol=1e-6) for a, b in zip(got, want))
    assert torch.allclose(stack.double(), torch.cat(want), rtol=1e-6)

"""The benchmark scripts run and report what they claim: bench_optim's targets lines at matched
dtype (on a tiny model, so quick), bench_prepare's nanoGPT steps writing the same token ids as
`python -m data.prepare` on its generated corpus. Behaviour only, never wall-clock time."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import prepare as P
from data.config import DataConfig
from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_optim_quick_prints_the_targets_at_matched_dtype(monkeypatch, capsys):
    bench = load_script("bench_optim")

    def tiny(layers, device):   # GPT-2's layout, small widths: the same code paths in seconds
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=layers, n_head=2, n_embd=32, block_size=16, vocab_size=64))
        for p in model.parameters():
            p.grad = 1e-3 * torch.randn_like(p)
        return model

    dtypes = []
    real_part = bench.matrix_part

    def matrix_part(model, name, ns_dtype, quiet):
        dtypes.append((name, ns_dtype))
        return real_part(model, name, ns_dtype, quiet)

    monkeypatch.setattr(bench, "gpt2_with_grads", tiny)
    monkeypatch.setattr(bench, "matrix_part", matrix_part)
    bench.main(["--quick", "--repeats", "1", "--warmup", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "ns_dtype=auto -> " in out.splitlines()[0]
    assert "2 layers" in out
    # ours in bf16 against torch's (bf16), ours in float32 beside them
    assert sorted(dtypes) == [("muon", "bfloat16"), ("muon", "float32"), ("namo", "bfloat16"),
                              ("namo_d", "bfloat16")]
    for row in ("muon (ns bf16)", "muon (ns float32)", "torch.optim.Muon (ns bf16)"):
        assert row in out
    targets = out.split("targets:")[1].splitlines()
    for label in ("muon (matrix part, bf16) / torch.optim.Muon (bf16) <= 1.0",
                  "namo / muon <= 1.1", "namo_d / muon <= 1.1"):
        line = next(t for t in targets if label in t)
        assert line.split()[-1] in ("met", "MISSED")
    assert "distributed plan, GPT-2 small with 12 layers: 48 matrices" in out   # --quick's last


def test_bench_optim_plan_balances_gpt2_small_on_8_ranks(capsys):
    """--plan: GPT-2 small's 48 matrices at W = 1, 2, 4, 8, computed at once; after, the largest
    rank's Newton-Schulz FLOPs and owner bytes within 10% of the mean, no rank idle, where the
    old row split left two of 8 idle; the optimizer's estimated share of a step smaller."""
    load_script("bench_optim").main(["--plan"])
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines()
            if line[:2].strip().isdigit()}
    assert sorted({w for w, _ in rows}) == ["1", "2", "4", "8"]
    for w in ("1", "2", "4", "8"):
        after = rows[(w, "after")]
        assert float(after[3]) <= 1.1 and float(after[5]) <= 1.1 and after[-1] == "0", after
        assert abs(float(after[6]) - 1) < 0.1, after    # the owner's bytes: 1/W of one process's
    assert rows[("8", "before")][-1] == "2"
    shares = [float(line.split(",")[-1].split("%")[0]) for line in out.splitlines()
              if line.strip().startswith(("before NS", "after  NS"))]
    assert len(shares) == 2 and shares[1] < shares[0], out


def test_bench_prepare_nanogpt_steps_equal_our_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    bench = load_script("bench_prepare")
    text = tmp_path / "text.txt"
    text.write_text("".join(f"Line {i}: to be, or not to be\n\n" if i % 7 == 0 else f"Line {i} says hi.\n"
                            for i in range(600)))
    corpus = bench.make_corpus(text, 0.05, tmp_path / "corpus.jsonl")
    assert corpus.stat().st_size >= 50_000
    assert bench.make_corpus(text, 0.05, corpus) == corpus   # reused, not rewritten
    ref = tmp_path / "nanogpt"
    ref.mkdir()
    bench.nanogpt_steps(str(corpus), str(ref), 1, str(tmp_path / "hf_cache"))
    cfg = DataConfig(name="ours", root=str(tmp_path / "cache"), tokenizer="r50k_base",
                     files=[str(corpus)], val_fraction=bench.VAL_FRACTION,
                     split_seed=bench.SPLIT_SEED, num_proc=1, chunk_docs=7)
    P.prepare(cfg)
    for split in ("train", "val"):
        ours = np.fromfile(P.dataset_dir(cfg) / f"{split}.bin", dtype=np.uint16)
        theirs = np.fromfile(ref / f"{split}.bin", dtype=np.uint16)
        assert len(ours) > 0 and np.array_equal(ours, theirs), split
    assert bench.tree_rss(os.getpid()) > 0


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_measure_reports_the_child_peak(tmp_path):
    bench = load_script("bench_prepare")
    grow = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    r = bench.measure([sys.executable, "-c", grow], dict(os.environ))
    assert r["rss_max_mib"] >= 200 and r["seconds"] > 0

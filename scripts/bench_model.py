"""Time the model's training step on this machine and print a table: the GELU kernels on a baby
GPT MLP activation, then forward + backward + AdamW for the baby GPT in the variants that set
its speed (biases, vocabulary padding, GELU form).

    python scripts/bench_model.py [--threads 2] [--repeats 200]

Figures from one process with nothing else running; each row is the median of 5 timed blocks.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model.gpt as gpt  # noqa: E402


def timed_ms(fn, repeats: int) -> float:
    for _ in range(max(5, repeats // 10)):
        fn()
    blocks = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats // 5):
            fn()
        blocks.append((time.perf_counter() - t0) / (repeats // 5) * 1e3)
    return statistics.median(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")

    x = torch.randn(12 * 64, 512, requires_grad=True)  # batch 12 x 64 tokens, 4 x 128 wide
    g = torch.randn_like(x)
    kernels = {
        "F.gelu tanh (ATen)": lambda t: F.gelu(t, approximate="tanh"),
        "gelu_tanh (ours, CPU float32 path)": gpt.gelu_tanh,
        "F.gelu exact (erf, nanoGPT's)": F.gelu,
    }
    print(f"| GELU on {tuple(x.shape)} | forward ms | forward + backward ms |\n|---|---|---|")
    for name, fn in kernels.items():
        fwd = timed_ms(lambda: fn(x.detach()), args.repeats * 2)
        both = timed_ms(lambda: torch.autograd.grad(fn(x), x, g), args.repeats * 2)
        print(f"| {name} | {fwd:.3f} | {both:.3f} |")

    idx, targets = torch.randint(65, (12, 64)), torch.randint(65, (12, 64))

    def step_ms(cfg: gpt.GPTConfig) -> float:
        torch.manual_seed(0)
        m = gpt.GPT(cfg)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)

        def step():
            _, loss = m(idx, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return timed_ms(step, args.repeats)

    base = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65)
    variants = [
        ("baby preset: no bias, vocab 65, gelu_tanh", dict(bias=False, pad_vocab_to=1), None),
        ("  with ATen's tanh GELU", dict(bias=False, pad_vocab_to=1), "aten"),
        ("  with the exact GELU (nanoGPT's model)", dict(bias=False, pad_vocab_to=1), "exact"),
        ("  with biases", dict(bias=True, pad_vocab_to=1), None),
        ("  with the vocabulary padded to 128", dict(bias=False, pad_vocab_to=64), None),
        ("old baby: biases, padded, ATen tanh GELU", dict(bias=True, pad_vocab_to=64), "aten"),
    ]
    swap = {"aten": lambda t: F.gelu(t, approximate="tanh"), "exact": F.gelu}
    print("\n| baby GPT, batch 12 x 64 | fwd + bwd + AdamW ms |\n|---|---|")
    for name, extra, gelu in variants:
        with mock.patch.object(gpt, "gelu_tanh", swap[gelu]) if gelu else nullcontext():
            print(f"| {name} | {step_ms(gpt.GPTConfig(**base, **extra)):.1f} |")


if __name__ == "__main__":
    main()

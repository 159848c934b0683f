"""Optimizer step time on GPT-2-small's parameters, and Newton-Schulz throughput.

    python scripts/bench_optim.py                                  # every name, 12 layers (124M)
    python scripts/bench_optim.py --layers 1 --repeats 3 --names muon namo namo_d
    python scripts/bench_optim.py --device cuda

Times (median of --repeats steps after --warmup) one optimizer step of every registry name
with its YAML defaults on the real GPT-2 parameters (--layers blocks 768 wide, the 50304 x 768
tied embedding, 1024 x 768 positions, LayerNorms, biases) with fixed random gradients. Then,
timed round-robin: the matrix parts of Muon, NAMO and NAMO-D, torch.optim.Muon (a loop over
parameters) on the same matrices, torch.optim.AdamW (foreach) on all parameters; and the
Newton-Schulz GFLOP/s per matrix shape against a bfloat16 matmul of the same size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config, to_object  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from optim import available, build_optimizer, spectral  # noqa: E402
from optim.params import shape_groups, split_params  # noqa: E402


TARGETED = ("muon", "namo", "namo_d")   # their matrix parts are timed against torch's Muon


def median_seconds(fns: dict, warmup: int, repeats: int, device: str) -> dict:
    """Median seconds of each function, timed round-robin so that load drifting on a shared
    machine hits all of them alike."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def ns_flops(S: int, m: int, n: int, steps: int) -> float:
    """Per step on the wide r x c orientation: X Xᵀ (2 r² c), A A (2 r³), B X (2 r² c)."""
    r, c = min(m, n), max(m, n)
    return S * steps * (4 * r * r * c + 2 * r ** 3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", nargs="*", default=None, help="registry names (default: all)")
    ap.add_argument("--layers", type=int, default=12, help="transformer blocks (GPT-2 small: 12)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.names or available()
    dev, quiet = args.device, (lambda *a, **k: None)
    bench = lambda fns: median_seconds(fns, args.warmup, args.repeats, dev)  # noqa: E731

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=args.layers, n_head=12, n_embd=768, block_size=1024,
                          vocab_size=50304)).to(dev)
    for p in model.parameters():
        p.grad = 1e-3 * torch.randn_like(p)
    base_cfg = to_object(load_config(["optimizer=muon"])).optimizer
    matrix, _ = split_params(model, base_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 shapes, {args.layers} layers: {n_params / 1e6:.1f}M params, {len(matrix)} "
          f"matrices; device {dev}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} steps after {args.warmup} warmup\n")

    rows, ms = [], {}
    for name in names:  # one at a time: optimizer states of 124M params add up
        cfg = to_object(load_config([f"optimizer={name}"])).optimizer
        opt = build_optimizer(model, cfg, log=quiet)
        ms[name] = 1e3 * bench({name: opt.step})[name]
        rows.append((name, f"{ms[name]:10.1f}", ""))
        del opt

    # The targets, timed together: matrix parts of muon / namo / namo_d vs torch.optim.Muon.
    fns = {}
    for name in TARGETED:
        if name in names:
            opt = build_optimizer(model, to_object(load_config([f"optimizer={name}"])).optimizer,
                                  log=quiet)
            fns[name] = opt.parts["matrix"].step
    fns["torch.optim.Muon"] = torch.optim.Muon([p for _, p in matrix], lr=1e-3,
                                               adjust_lr_fn="match_rms_adamw").step
    fns["torch.optim.AdamW"] = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True).step
    part = {k: 1e3 * v for k, v in bench(fns).items()}
    rows = [(n, t, f"{part[n]:10.1f}" if n in part else "") for n, t, _ in rows]
    rows.append(("torch.optim.AdamW (foreach, all)", f"{part['torch.optim.AdamW']:10.1f}", ""))
    rows.append(("torch.optim.Muon (matrices)", "", f"{part['torch.optim.Muon']:10.1f}"))
    del fns

    print(f"{'optimizer':34s} {'step ms':>10s} {'matrix ms':>10s}")
    for name, total, matrix_ms in rows:
        print(f"{name:34s} {total:>10s} {matrix_ms:>10s}")

    print(f"\n{'Newton-Schulz (5 steps, bf16)':34s} {'GFLOP/s':>10s} {'matmul':>10s} {'ratio':>7s}")
    ns_total = ns_time = 0.0
    mm_rates = []
    for (m, n), ps in shape_groups(matrix, base_cfg).items():
        X = torch.randn(len(ps), m, n, device=dev)
        r, c = min(m, n), max(m, n)
        A = torch.randn(len(ps), r, c, device=dev, dtype=torch.bfloat16)
        t, t_mm = bench({"ns": lambda: spectral.newton_schulz(X, steps=5),
                         "mm": lambda: torch.bmm(A, A.mT)}).values()
        flops = ns_flops(len(ps), m, n, 5)
        mm_rate = 2 * len(ps) * r * r * c / t_mm / 1e9
        mm_rates.append(mm_rate)
        ns_total, ns_time = ns_total + flops, ns_time + t
        print(f"  {len(ps)}x({m}, {n}){'':{22 - len(str((m, n))) - len(str(len(ps)))}s} "
              f"{flops / t / 1e9:10.1f} {mm_rate:10.1f} {flops / t / 1e9 / mm_rate:7.2f}")
    ns_rate, mm_best = ns_total / ns_time / 1e9, max(mm_rates)
    print(f"  {'all shapes':32s} {ns_rate:10.1f} {mm_best:10.1f} {ns_rate / mm_best:7.2f}")

    print("\ntargets:")
    def check(label, value, ok):
        print(f"  {label:44s} {value:7.2f}  {'met' if ok else 'MISSED'}")
    for name in ("namo", "namo_d"):
        if name in part and "muon" in part:
            x = part[name] / part["muon"]
            check(f"{name} / muon (matrix part), <= 1.1", x, x <= 1.1)
    if "muon" in part:
        x = part["muon"] / part["torch.optim.Muon"]
        check("muon (matrix part) / torch.optim.Muon, < 1", x, x < 1)
    check("Newton-Schulz / bf16 matmul rate, >= 0.5", ns_rate / mm_best, ns_rate / mm_best >= 0.5)


if __name__ == "__main__":
    main()

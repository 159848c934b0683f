"""Orthogonalization kernels side by side: optimizer.ns = newton_schulz (Muon's classic quintic),
polar_express, gram (optim/polar.py); ms per call on GPT-2-small's matrix stacks and the
orthogonality error max |σ_i - 1| of the result (float64 SVD).

    python scripts/bench_ns.py            # 12 stacked matrices per shape, 5 steps, fp32 on CPU
    python scripts/bench_ns.py --quick    # 2 per shape, fewer repeats
    python scripts/bench_ns.py --dtype bfloat16 --steps 5 --device cuda

Inputs are the shapes GPT-2 small's hidden weights stack to (12 layers: attention c_proj
768x768 (q, k, v split: 36 more), MLP c_fc 3072x768, MLP c_proj 768x3072; torch.nn.Linear's
(out, in)), filled with random Gaussian matrices (singular values spread as Marchenko-Pastur's)
or, with --cond, U diag(s) Vᵀ with s log-spaced over [1/cond, 1].
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from optim import polar  # noqa: E402

SHAPES = [(768, 768), (768, 3072), (3072, 768)]
METHODS = ("newton_schulz", "polar_express", "gram")


def inputs(m, n, stack, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    if cond is None:
        return torch.randn(stack, m, n, generator=g)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(stack, m, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(stack, n, k, generator=g))
    s = torch.logspace(0, -math.log10(cond), k)
    return (U * s.unsqueeze(-2)) @ V.mT


def timed(fn, repeats):
    fn()                                   # warm-up (and the CUDA context)
    best = math.inf
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 matrices per shape, 2 repeats")
    ap.add_argument("--stack", type=int, default=12, help="matrices per shape (12 layers)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cond", type=float, default=None, help="ill-conditioned inputs")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    stack, repeats = (2, 2) if args.quick else (args.stack, args.repeats)
    dtype = getattr(torch, args.dtype)
    print(f"# {args.device}, {args.dtype}, {args.steps} steps, {stack} matrices per shape, "
          f"{'cond ' + format(args.cond, 'g') if args.cond else 'Gaussian'} inputs, "
          f"{torch.get_num_threads()} threads; ms per call (best of {repeats}), "
          f"max |σ_i - 1| by float64 SVD")
    print("| shape (stack) | " + " | ".join(f"{m} ms | {m} err" for m in METHODS) + " |")
    print("| --- |" + " --- | --- |" * len(METHODS))
    for m, n in SHAPES:
        G = inputs(m, n, stack, args.cond).to(args.device)
        row = []
        for method in METHODS:
            def call():
                return polar.orthogonalize(G, method=method, steps=args.steps, dtype=dtype)
            ms = timed(call, repeats)
            err = (torch.linalg.svdvals(call().double().cpu()) - 1).abs().amax().item()
            row += [f"{ms:.1f}", f"{err:.3f}"]
        print(f"| {m}x{n} ({stack}) | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

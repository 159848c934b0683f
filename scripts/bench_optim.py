"""Optimizer step time on GPT-2-small's parameters, and Newton-Schulz throughput.

    python scripts/bench_optim.py --quick                          # 2 layers, a few minutes
    python scripts/bench_optim.py                                  # every name, 12 layers (124M)
    python scripts/bench_optim.py --layers 1 --repeats 3 --names muon namo namo_d
    python scripts/bench_optim.py --device cuda
    python scripts/bench_optim.py --procs 1 2 --layers 2 --names muon namo namo_d
    python scripts/bench_optim.py --plan                           # the distributed plan, at once

Times (median of --repeats steps after --warmup) one optimizer step of every registry name
with its YAML defaults on the real GPT-2 parameters (--layers blocks 768 wide, the 50304 x 768
tied embedding, 1024 x 768 positions, LayerNorms, biases) with fixed random gradients. Then,
timed round-robin at MATCHED dtype: the matrix parts of Muon, NAMO and NAMO-D with
optimizer.ns_dtype=bfloat16 against torch.optim.Muon (a loop over the same matrices, its
Newton-Schulz always in bf16), our Muon with ns_dtype=float32 beside them, torch.optim.AdamW
(foreach) on all parameters; and the Newton-Schulz GFLOP/s per matrix shape against a bfloat16
matmul of the same size. The matrices are the YAML's (GPT-2 small per layer: c_attn 2304 x 768,
attention c_proj 768 x 768, c_fc 3072 x 768, MLP c_proj 768 x 3072); torch.optim.Muon gets the
same tensors, so both orthogonalize the same shapes. ("step ms", the whole step, is at the
YAML's ns_dtype=auto; "matrix ms" at the dtype its row names.) The first line is the machine's
matmul capability (optim/capability.py: what ns_dtype=auto picks here, and why).

Every registry name has a row of the full table (muonh, adamh, normuonh included: their 12
cubic Newton-Schulz steps are the records').

--quick: 2 layers, muon namo namo_d, 3 repeats after 1 warmup, no per-name full-step table:
the targets line in a few minutes on 2 CPU cores. The full run (every name, 12 layers) is for
GPUs and idle machines.

--plan: only the distributed plan of a GPT-2-small step (--layers, default 12) at W = 1, 2, 4,
8 ranks, computed (optim/matrix.py's plan() on the shapes; no processes, no tensors): per rank
the Newton-Schulz FLOPs and the elementwise bytes (a model of Muon's kernels, ELEMENTWISE) before
(each shape group cut in ceil(S / W) rows, every link but the transform on every rank) and after
(whole matrices by FLOPs, the chain on the owner, the apply everywhere), and the optimizer's
estimated share of a step on 8 H100s (ESTIMATE). --quick prints it last.

--procs N ...: instead, the optimizer step time per rank with N CPU processes (gloo, --threads
each, default 1) that share the matrix transforms (see optim/matrix.py), for --names (default
muon namo namo_d); --zero shards the state too. Ranks start each timed step together.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config, to_object  # noqa: E402
from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)
from model import GPT, GPTConfig  # noqa: E402
from optim import available, build_optimizer, capability, spectral  # noqa: E402
from optim.matrix import ns_cost, param_shapes, plan  # noqa: E402
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


# Bytes of memory traffic per matrix parameter of Muon's elementwise kernels on a GPU (fp32
# weights, gradients and momentum, Newton-Schulz in bf16, Nesterov): each op's reads + writes.
#   precondition  lerp_(B, G) 12 + copy_(X, G) 8 + lerp_(X, B) 12                       = 32
#   NS prologue   X.to(bf16) 6 + its norm 2 + the division 4                             = 12
#   NS epilogue   (before) the result back to fp32 for the stack, 2 + 4                  =  6
#   send          (before) .to(bf16) of the own rows 4 + 2; (after) the pack copy 2 + 2
#   receive       the all-gather's write 2; (before) cast back to fp32, 2 + 4
#   apply         mul_(W, rho) 8 + add_(W, D): W 4 + D 4 (before, fp32) or 2 (after) + W 4
ELEMENTWISE = {"before": {"own": 12 + 6 + 6, "every": 32 + 2 + 6 + 8 + 12},
               "after": {"own": 32 + 12 + 4, "every": 2 + 8 + 10}}
# The optimizer's share of a GPT-2-small step on 8 H100 SXM: t = NS FLOPs / (peak x NS_MFU)
# + elementwise bytes / HBM + gathered bytes received / NVLINK, against forward + backward of
# 6 N FLOPs per token (N: all parameters, attention left out) at MODEL_MFU, 8 x 64 x 1024
# tokens a step shared by the 8 ranks (Track 3's batch).
ESTIMATE = dict(peak=989e12, ns_mfu=0.5, model_mfu=0.5, hbm=3.35e12, nvlink=450e9,
                tokens=8 * 64 * 1024, ns_steps=5)


def gpt2_shapes(layers: int) -> tuple[list[dict], int]:
    """GPT-2 small's matrix groups as Muon's YAML routes them (on the meta device: shapes
    only), and the number of parameters."""
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=layers, n_head=12, n_embd=768, block_size=1024,
                              vocab_size=50304))
    cfg = to_object(load_config(["optimizer=muon"])).optimizer
    matrix, _ = split_params(model, cfg)
    groups = [{"params": [p for _, p in ps], "matrix_shape": shape}
              for shape, ps in shape_groups(matrix, cfg).items()]
    return groups, sum(p.numel() for p in model.parameters())


def per_rank(groups: list[dict], world: int, how: str) -> list[dict]:
    """Per rank: NS FLOPs, elementwise bytes and all-gather bytes received, `before` (rows
    ceil(S / W) per shape group) or `after` (plan())."""
    shapes, steps, total = param_shapes(groups), ESTIMATE["ns_steps"], 0
    ranks = [dict(flops=0, own=0, gather=0) for _ in range(world)]
    if how == "after":
        for (k, m, n), r in zip(shapes, plan(shapes, world)):
            ranks[r]["flops"] += steps * ns_cost(k, m, n)
            ranks[r]["own"] += k * m * n
        segment = 2 * max(r["own"] for r in ranks)          # bf16, the largest rank's part
        gathered = (world - 1) * segment if world > 1 else 0
    else:
        gathered = 0
        for g in groups:
            (m, n), S = g["matrix_shape"], sum(p.numel() for p in g["params"]) // math.prod(
                g["matrix_shape"])
            k = -(-S // world)
            gathered += (world - 1) * k * m * n * 2 if world > 1 else 0
            for r in range(world):
                rows = max(0, min(S, (r + 1) * k) - r * k)
                ranks[r]["flops"] += steps * ns_cost(rows, m, n)
                ranks[r]["own"] += rows * m * n
    total = sum(k * m * n for k, m, n in shapes)
    model = ELEMENTWISE[how]
    for r in ranks:
        r["own_bytes"], r["every_bytes"] = r["own"] * model["own"], total * model["every"]
        r["bytes"], r["gather"] = r["own_bytes"] + r["every_bytes"], gathered
    return ranks


def print_plan(layers: int) -> None:
    groups, n_params = gpt2_shapes(layers)
    shapes = param_shapes(groups)
    stacks = ", ".join(f"{len(g['params'])}x{m}x{n}" for g in groups for m, n in [g["matrix_shape"]])
    print(f"distributed plan, GPT-2 small with {layers} layers: {len(shapes)} matrices ({stacks}), "
          f"{sum(k * m * n for k, m, n in shapes) / 1e6:.1f}M matrix params; per rank: Newton-Schulz "
          f"GFLOP ({ESTIMATE['ns_steps']} steps), elementwise MB (Muon's kernels, bytes model "
          f"ELEMENTWISE), all-gather MB received; max/mean over ranks")
    print(f"{'W':>2s} {'':6s} {'NS GFLOP':>9s} {'max/mean':>8s} {'owner MB':>9s} {'max/mean':>8s} "
          f"{'x 1/W':>6s} {'every MB':>9s} {'rank MB':>8s} {'gather MB':>9s} {'idle':>5s}")
    for world in (1, 2, 4, 8):
        for how in ("before", "after"):
            ranks = per_rank(groups, world, how)
            flops, own = [r["flops"] for r in ranks], [r["own_bytes"] for r in ranks]
            alone = per_rank(groups, 1, how)[0]["own_bytes"]   # the owner's part in one process
            print(f"{world:2d} {how:6s} {max(flops) / 1e9:9.1f} {max(flops) * world / sum(flops):8.3f} "
                  f"{max(own) / 1e6:9.0f} {max(own) * world / sum(own):8.3f} "
                  f"{max(own) * world / alone:6.2f} {ranks[0]['every_bytes'] / 1e6:9.0f} "
                  f"{max(r['bytes'] for r in ranks) / 1e6:8.0f} {ranks[0]['gather'] / 1e6:9.0f} "
                  f"{sum(f == 0 for f in flops):5d}")
    print("NS GFLOP: the largest rank's; owner MB: elementwise bytes of the links run on a "
          "rank's own rows/matrices only (x 1/W: against one process's / W); every MB: those "
          "run by every rank on every matrix; rank MB: their sum, the largest rank's; idle: "
          "ranks with no Newton-Schulz")
    print_estimate(groups, n_params)


def print_estimate(groups: list[dict], n_params: int, world: int = 8) -> None:
    """The optimizer's estimated share of a step on `world` H100s, before and after."""
    e = ESTIMATE
    fwd_bwd = 6 * n_params * e["tokens"] / world / (e["peak"] * e["model_mfu"])
    print(f"\nestimate on {world} H100 SXM ({e['peak'] / 1e12:.0f} TFLOP/s bf16, NS at "
          f"{e['ns_mfu']:.0%} MFU, HBM {e['hbm'] / 1e12:.2f} TB/s, all-gather "
          f"{e['nvlink'] / 1e9:.0f} GB/s): forward + backward 6 N x {e['tokens'] // world} "
          f"tokens per rank at {e['model_mfu']:.0%} MFU = {1e3 * fwd_bwd:.1f} ms")
    for how in ("before", "after"):
        ranks = per_rank(groups, world, how)
        ns = max(r["flops"] for r in ranks) / (e["peak"] * e["ns_mfu"])
        elem = max(r["bytes"] for r in ranks) / e["hbm"]
        comm = ranks[0]["gather"] / e["nvlink"]
        opt = ns + elem + comm
        print(f"  {how:6s} NS {1e3 * ns:.2f} + elementwise {1e3 * elem:.2f} + all-gather "
              f"{1e3 * comm:.2f} = {1e3 * opt:.2f} ms, {opt / (opt + fwd_bwd):.1%} of the step")


def gpt2_with_grads(layers: int, device: str) -> GPT:
    """GPT-2's parameter shapes with `layers` blocks, and fixed random gradients."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=layers, n_head=12, n_embd=768, block_size=1024,
                          vocab_size=50304)).to(device)
    for p in model.parameters():
        p.grad = 1e-3 * torch.randn_like(p)
    return model


def procs_worker(rank: int, world: int, args, init: str, out: str) -> None:
    """One rank: median wall and CPU seconds (this thread's: the rank's own compute, whatever
    else runs on the machine) of the whole step and of its matrix part, per name."""
    torch.set_num_threads(args.threads or 1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    together = dist.barrier if world > 1 else (lambda: None)
    model = gpt2_with_grads(args.layers, "cpu")
    times = {}
    for name in args.names or TARGETED:
        cfg = to_object(load_config([f"optimizer={name}"])).optimizer
        opt = build_optimizer(model, cfg, log=lambda *a, **k: None, zero=args.zero)
        parts = {"step": opt.step}
        if "matrix" in getattr(opt, "parts", {}):
            parts["matrix"] = opt.parts["matrix"].step
        for part, fn in parts.items():
            wall, cpu = [], []
            for i in range(args.warmup + args.repeats):
                together()
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
            times[f"{name} {part} wall"] = statistics.median(wall[args.warmup:])
            times[f"{name} {part} cpu"] = statistics.median(cpu[args.warmup:])
        del opt
    every = [times]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, times)
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(every))


def bench_procs(args) -> None:
    per_n = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            out = f"{tmp}/times{n}.json"
            mp.spawn(procs_worker, args=(n, args, f"file://{tmp}/rendezvous{n}", out), nprocs=n)
            per_n[n] = json.loads(Path(out).read_text())
    print(f"GPT-2 shapes, {args.layers} layers, CPU (gloo), {args.threads or 1} thread(s) per "
          f"process{', ZeRO-1' if args.zero else ''}: median ms of {args.repeats} steps after "
          f"{args.warmup} warmup; per rank (slowest rank = the step). wall: elapsed; cpu: the "
          f"rank's main-thread CPU time, its own work even on a busy machine\n")
    print(f"{'optimizer':25s} " + " ".join(f"{f'{n} proc(s) ms':>22s}" for n in args.procs)
          + f" {'speed-up':>9s}")
    for key in per_n[args.procs[0]][0]:
        ranks = {n: [1e3 * r[key] for r in per_n[n]] for n in args.procs}
        cols = " ".join(f"{' / '.join(f'{t:.1f}' for t in ranks[n]):>22s}" for n in args.procs)
        speedup = max(ranks[args.procs[0]]) / max(ranks[args.procs[-1]])
        print(f"{key:25s} {cols} {speedup:8.2f}x")


def matrix_part(model, name: str, ns_dtype: str, quiet):
    """The matrix part's step of optimizer `name` with Newton-Schulz in ns_dtype."""
    cfg = to_object(load_config([f"optimizer={name}", f"optimizer.ns_dtype={ns_dtype}"])).optimizer
    return build_optimizer(model, cfg, log=quiet).parts["matrix"].step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 layers, muon namo namo_d, 3 repeats, targets only (a few minutes)")
    ap.add_argument("--names", nargs="*", default=None, help="registry names (default: all)")
    ap.add_argument("--layers", type=int, default=None,
                    help="transformer blocks (GPT-2 small: 12; --quick: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 5; --quick 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--procs", type=int, nargs="*", default=None,
                    help="time the step per rank at these process counts (CPU, gloo)")
    ap.add_argument("--zero", action="store_true", help="with --procs: ZeRO-1 sharded state")
    ap.add_argument("--plan", action="store_true",
                    help="only the distributed plan at W = 1, 2, 4, 8 (computed, instant)")
    args = ap.parse_args(argv)
    if args.plan:
        return print_plan(args.layers or 12)
    args.layers = args.layers or (2 if args.quick else 12)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.quick and args.names is None:
        args.names = list(TARGETED)
    if args.procs:
        return bench_procs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.names or available()
    dev, quiet = args.device, (lambda *a, **k: None)
    bench = lambda fns: median_seconds(fns, args.warmup, args.repeats, dev)  # noqa: E731

    print(f"machine: {capability.describe(torch.device(dev).type)}")
    model = gpt2_with_grads(args.layers, dev)
    base_cfg = to_object(load_config(["optimizer=muon"])).optimizer
    matrix, _ = split_params(model, base_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    shapes = ", ".join(f"{len(ps)}x{m}x{n}" for (m, n), ps in shape_groups(matrix, base_cfg).items())
    print(f"GPT-2 shapes, {args.layers} layers: {n_params / 1e6:.1f}M params, {len(matrix)} "
          f"matrices ({shapes}); device {dev}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} steps after {args.warmup} warmup, round-robin\n")

    rows, ms = [], {}
    if not args.quick:
        for name in names:  # one at a time: optimizer states of 124M params add up
            cfg = to_object(load_config([f"optimizer={name}"])).optimizer
            opt = build_optimizer(model, cfg, log=quiet)
            ms[name] = 1e3 * bench({name: opt.step})[name]
            rows.append((name, f"{ms[name]:10.1f}", ""))
            del opt

    # The targets, timed together at matched dtype: matrix parts of muon / namo / namo_d with
    # Newton-Schulz in bf16 vs torch.optim.Muon (bf16), and our Muon in float32 beside them.
    fns = {}
    for name in TARGETED:
        if name in names:
            fns[name] = matrix_part(model, name, "bfloat16", quiet)
    fns["torch.optim.Muon"] = torch.optim.Muon([p for _, p in matrix], lr=1e-3,
                                               adjust_lr_fn="match_rms_adamw").step
    if "muon" in names:
        fns["muon fp32"] = matrix_part(model, "muon", "float32", quiet)
    fns["torch.optim.AdamW"] = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True).step
    part = {k: 1e3 * v for k, v in bench(fns).items()}
    label = {n: f"{n} (ns bf16)" for n in TARGETED}
    rows = [(label.get(n, n), t, f"{part[n]:10.1f}" if n in part else "") for n, t, _ in rows]
    rows += [(label[n], "", f"{part[n]:10.1f}") for n in TARGETED if n in part and n not in ms]
    if "muon fp32" in part:
        rows.append(("muon (ns float32)", "", f"{part['muon fp32']:10.1f}"))
    rows.append(("torch.optim.Muon (ns bf16)", "", f"{part['torch.optim.Muon']:10.1f}"))
    rows.append(("torch.optim.AdamW (foreach, all)", f"{part['torch.optim.AdamW']:10.1f}", ""))
    del fns

    print(f"{'optimizer':34s} {'step ms':>10s} {'matrix ms':>10s}")
    for name, total, matrix_ms in rows:
        print(f"{name:34s} {total:>10s} {matrix_ms:>10s}")

    ns_rate, mm_best = newton_schulz_table(matrix, base_cfg, bench, dev)
    print_targets(part, ns_rate, mm_best)
    if args.quick:   # GPT-2 small's plan (12 layers, whatever --quick timed), computed at once
        print()
        print_plan(12)


def newton_schulz_table(matrix, base_cfg, bench, dev) -> tuple[float, float]:
    """Newton-Schulz GFLOP/s per shape group against a bf16 matmul's; returns (the NS rate
    over all shapes, the best matmul rate)."""
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
        print(f"  {f'{len(ps)}x({m}, {n})':32s} "
              f"{flops / t / 1e9:10.1f} {mm_rate:10.1f} {flops / t / 1e9 / mm_rate:7.2f}")
    ns_rate, mm_best = ns_total / ns_time / 1e9, max(mm_rates)
    print(f"  {'all shapes':32s} {ns_rate:10.1f} {mm_best:10.1f} {ns_rate / mm_best:7.2f}")
    return ns_rate, mm_best


def print_targets(part: dict, ns_rate: float, mm_best: float) -> None:
    print("\ntargets:")
    def check(label, value, ok):
        print(f"  {label:58s} {value:7.2f}  {'met' if ok else 'MISSED'}")
    if "muon" in part:
        x = part["muon"] / part["torch.optim.Muon"]
        check("muon (matrix part, bf16) / torch.optim.Muon (bf16) <= 1.0", x, x <= 1.0)
    for name in ("namo", "namo_d"):
        if name in part and "muon" in part:
            x = part[name] / part["muon"]
            check(f"{name} / muon <= 1.1", x, x <= 1.1)
    check("Newton-Schulz / bf16 matmul rate >= 0.5", ns_rate / mm_best, ns_rate / mm_best >= 0.5)


if __name__ == "__main__":
    main()

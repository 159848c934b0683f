"""The measured figures of issue 28's fidelity notes (configs/optimizer/normuon.yaml, dion.yaml,
docs/optimizers.md's name table): how far our NorMuon and Dion defaults are from the authors' released
code, on GPT-2 small's hidden-matrix shapes and real gradients.

    python scripts/fidelity_figures.py        # 2 layers, 6 gradients of 8 x 256 tokens, fp32
    python scripts/fidelity_figures.py --layers 12 --dtypes float32 bfloat16

Gradients: GPT-2 small's widths (768, random init, seed 0; model/gpt.py; --layers blocks) on
batches of Tiny Shakespeare in GPT-2's BPE (r50k_base), the model held fixed, so each batch
gives one gradient of every hidden matrix (a batch of fewer tokens than a side has rank below
it, which Newton-Schulz then leaves with zero singular values: 2048 tokens by default): attn.c_attn 2304x768, attn.c_proj 768x768, mlp.c_fc 3072x768,
mlp.c_proj 768x3072 (nn.Linear's (out, in)). Both optimizers run on those gradients as a
sequence of steps (lr 1, no decay), so ||ΔW|| per step is the step length:
- normuon: optimizer.scale_rule=paper / released, quintic Newton-Schulz in float32 (and bf16);
  the ratio of their step lengths per shape (min-max over layers and steps).
- dion: optimizer.dion_transpose=false / true on mlp.c_proj (the one wide shape), at full rank
  and at rank fraction 1/4: ||ΔW_T - ΔW_N|| / ||ΔW_N|| of the summed update after t steps, and
  each update's distance to the polar factor of B = M + G (full rank: the same B both ways).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.config import GPTConfig  # noqa: E402
from model.gpt import GPT  # noqa: E402
from optim import OptimizerConfig, build_optimizer  # noqa: E402

KINDS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def quiet(*args, **kwargs):
    pass


def gradients(layers: int, batches: int, text: Path, batch: int, block: int):
    """{kind: [per batch: (layers, m, n) gradient stack]} of a fixed random-init GPT-2 small."""
    import tiktoken
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=layers, n_head=12, n_embd=768, block_size=block,
                          vocab_size=50257))
    ids = torch.tensor(tiktoken.get_encoding("r50k_base").encode(text.read_text()))
    g = torch.Generator().manual_seed(0)
    out = {k: [] for k in KINDS}
    for _ in range(batches):
        starts = torch.randint(len(ids) - block - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + block] for s in starts])
        y = torch.stack([ids[s + 1:s + block + 1] for s in starts])
        model.zero_grad()
        model(x, y)[1].backward()
        for k in KINDS:
            out[k].append(torch.stack([model.transformer.h[i].get_submodule(k).weight.grad.clone()
                                       for i in range(layers)]))
    return out


class Stack(torch.nn.Module):
    def __init__(self, shape, count):
        super().__init__()
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(shape))
                                         for _ in range(count))


def trajectory(grads, **cfg):
    """W after each step of `grads` from W = 0 (lr 1, no decay): (steps, layers, m, n)."""
    model = Stack(grads[0].shape[1:], len(grads[0]))
    opt = build_optimizer(model, OptimizerConfig(lr=1.0, weight_decay=0.0, vector_patterns=[],
                                                 **cfg), log=quiet)
    out = []
    for G in grads:
        for p, g in zip(model.ws, G):
            p.grad = g.clone()
        opt.step()
        out.append(torch.stack([p.detach().clone() for p in model.ws]))
    return torch.stack(out)


def steps_of(W):
    """Each step's update ΔW_t = W_t - W_{t-1} of a trajectory."""
    return torch.diff(W, dim=0, prepend=torch.zeros_like(W[:1]))


def fro(X):
    return torch.linalg.vector_norm(X, dim=(-2, -1))


def normuon_ratios(grads, dtypes):
    print("\nnormuon: paper step / released step at equal lr (min-max over layers x steps; "
          "exact-O formula 0.2 sqrt(max(m,n)) / sqrt(max(1, m/n)))")
    for dtype in dtypes:
        for k in KINDS:
            m, n = grads[k][0].shape[1:]
            base = dict(name="normuon", momentum=0.95, mu2=0.95, eps=1e-8, ns_dtype=dtype)
            paper = fro(steps_of(trajectory(grads[k], scale_rule="paper", **base)))
            released = fro(steps_of(trajectory(grads[k], scale_rule="released", **base)))
            r = paper / released
            exact = 0.2 * max(m, n) ** 0.5 / max(1.0, m / n) ** 0.5
            print(f"  {dtype:8s} {k:12s} {m}x{n}: {r.min():.2f}-{r.max():.2f} (mean {r.mean():.2f};"
                  f" exact O: {exact:.2f}); step RMS at lr 1: paper "
                  f"{paper.mean() / (m * n) ** .5:.3f}, released {released.mean() / (m * n) ** .5:.4f}")


def polar(B):
    U, _, Vh = torch.linalg.svd(B.double(), full_matrices=False)
    return (U @ Vh).float()


def dion_difference(grads):
    k = "mlp.c_proj"
    seq = grads[k]
    m, n = seq[0].shape[1:]
    print(f"\ndion on {k} ({m}x{n}): transposed (dion_reference.py) vs not (dion_simple.py, ours)")
    for fraction in (1.0, 0.25):
        cfg = dict(name="dion", momentum=0.95, rank_fraction=fraction)
        plain = trajectory(seq, **cfg)
        flip = trajectory(seq, dion_transpose=True, **cfg)
        # full rank: the feedback leaves M = mu B both ways, so B_t = sum_i mu^(t-i) G_i
        B = torch.zeros_like(seq[0])
        for t in range(len(seq)):
            d = fro(flip[t] - plain[t]) / fro(plain[t])
            line = (f"  rank fraction {fraction:g}, after {t + 1} step(s): summed update "
                    f"||ΔW_T - ΔW_N|| / ||ΔW_N|| {d.min():.3f}-{d.max():.3f} (mean {d.mean():.3f})")
            if fraction == 1.0:
                B = 0.95 * B + seq[t]
                target = torch.stack([polar(b) for b in B])
                for name, W in (("N", plain), ("T", flip)):
                    D = -steps_of(W)[t] / (m / n) ** 0.5
                    line += f"; ||D_{name} - UVᵀ||/||UVᵀ|| {(fro(D - target) / fro(target)).mean():.3f}"
            print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=6, help="gradients, one per step")
    ap.add_argument("--batch", type=int, default=8, help="sequences per gradient")
    ap.add_argument("--block", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], help="NorMuon's ns_dtype(s)")
    ap.add_argument("--text", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt")
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    grads = gradients(args.layers, args.batches, args.text, args.batch, args.block)
    normuon_ratios(grads, args.dtypes)
    dion_difference(grads)


if __name__ == "__main__":
    main()

"""soap_muon and dynmuon against the Track 3 records' own optimizer code, step for step on a CPU;
writes the fixture tests/test_soap_dynmuon.py replays.

    python scripts/compare_soap_dynmuon.py --modded-nanogpt PATH [--fixture tests/fixtures/soap_dynmuon.pt]

Their side: the optimizer section of each record (the text between its "Optimizer" banner and
the next banner; for a log, its python code: everything before the first "====" line), exec'd
with only CPU patches (PATCHES: Newton-Schulz in float32 instead of bf16, no torch.compile, a
one-process stand-in for torch.distributed):
  soap_muon  result #44: their functions composed as their Muon.step composes them for a SOAP
             matrix, without the record's other techniques (the radial brake, the u/w floor,
             rescale-to-radius; the EMA-Nesterov wrapper is another optimizer): momentum lerp,
             soap_precondition_momentum (on attn.q-like matrices through norm_preserving_blend
             with gate 1, as theirs), muon_update, p -= lr update, soap_update_preconditioner.
  dynmuon    result #28: their DynMuon class itself, with group["spectral_p"] set from their
             get_dynmuon_p(step, total) before each step (their set_hparams), lr constant.
Our side: build_optimizer(optimizer=<name>, ns_dtype float32) on the same matrices, the same
gradients. Matrices: Track 3's shapes scaled down 24x (q 32x32, mlp fc 128x32, mlp proj 32x128),
fixed random gradients (low rank + noise), float32, one thread.
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMIT = "f411b3d346aa52d3504324ca93c230fd84c6c07f"
RESULTS = "records/track_3_optimization/results/"
RECORDS = {"soap_muon": (44, RESULTS + "20260609_soap_f1_auxb2_clean/"
                             "H100_ff29b392-e7b7-453e-b9d5-a7dfe0605dd0.txt"),
           "dynmuon": (28, RESULTS + "20260519_dynmuon/train_gpt_simple_dynmuon.py")}
SHAPES = {"q": (32, 32), "fc": (128, 32), "proj": (32, 128)}
STEPS = {"soap_muon": 4, "dynmuon": 6}
DYN_TOTAL = 20          # dynmuon's schedule length here: p crosses 0 within the 6 steps
OVERRIDES = {"soap_muon": ["optimizer=soap_muon", "optimizer.ns_dtype=float32"],
             "dynmuon": ["optimizer=dynmuon", "optimizer.ns_dtype=float32",
                         f"optimizer.power_steps={DYN_TOTAL}"]}
# (old, new, why): each must occur in the record's text
PATCHES = [("X = G.bfloat16()", "X = G.float()", "Newton-Schulz in float32 on both sides"),
           ("@torch.compile\n", "", "no torch.compile on a CPU")]


class OneProcess:
    """torch.distributed for one process: rank 0 of 1; all_gather leaves the tensor as it is."""
    get_world_size = staticmethod(lambda: 1)
    get_rank = staticmethod(lambda: 0)

    @staticmethod
    def all_gather(outputs, tensor):
        if outputs[0] is not tensor:
            outputs[0].copy_(tensor)


def record_code(checkout: Path, name: str) -> tuple[str, str]:
    """(the record's optimizer section, patched; its full python text)."""
    text = (checkout / RECORDS[name][1]).read_text()
    if RECORDS[name][1].endswith(".txt"):       # a log: the code is what precedes its first ====
        text = text[:re.search(r"^====", text, re.M).start()]
    start = text.index("#              Optimizer")
    stop = text.index("########################################", text.index("\n", start) + 42)
    section = text[start:stop]
    for old, new, _why in PATCHES:
        if old not in section and name == "soap_muon" and "compile" in old:
            continue        # #44's muon_update is not compiled
        if old not in section:
            sys.exit(f"error: {RECORDS[name][1]} has no {old!r}; this script reads {COMMIT}")
        section = section.replace(old, new)
    return section, text


def their_scope(checkout: Path, name: str) -> dict:
    section, text = record_code(checkout, name)
    scope = {"torch": torch, "Tensor": torch.Tensor, "dist": OneProcess, "math": math,
             "nn": torch.nn, "F": torch.nn.functional}
    if name == "soap_muon":     # the module constants the section reads
        consts = re.findall(r"^[A-Z_0-9]+ = .*$", text[:text.index("#              Optimizer")], re.M)
        exec("\n".join(c for c in consts if not c.startswith(("SEED", "LOG_DIR"))), scope)
    exec(compile(section, RECORDS[name][1], "exec"), scope)
    if name == "dynmuon":       # get_dynmuon_p is defined inside their main section
        match = re.search(r"^( *)def get_dynmuon_p\(.*?(?=\n\n)", text, re.M | re.S)
        exec(textwrap.dedent(match.group(0)), scope)
    return scope


def problem(seed: int = 0, steps: int = 6) -> tuple[dict, list[dict]]:
    """Initial weights and per-step gradients (low rank + noise, so the bases matter)."""
    g = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(s, generator=g) / math.sqrt(s[1]) for k, s in SHAPES.items()}
    grads = []
    for _ in range(steps):
        grads.append({k: torch.randn(s[0], 2, generator=g) @ torch.randn(2, s[1], generator=g)
                      + 0.3 * torch.randn(s, generator=g) for k, s in SHAPES.items()})
    return init, grads


def run_theirs(scope: dict, name: str, init: dict, grads: list[dict]) -> list[dict]:
    W = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    out = []
    if name == "soap_muon":
        lr, mu, states = scope["MUON_LR"], scope["MU"], {}
        for G in grads:
            for k, p in W.items():
                s = states.setdefault(k, {})
                if not s:
                    s.update(momentum=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                             row_gg=torch.zeros(p.size(0), p.size(0)),
                             col_gg=torch.zeros(p.size(1), p.size(1)), q_row=None, q_col=None,
                             soap_step=0)
                grad = G[k].clone()
                with torch.no_grad():
                    s["momentum"].lerp_(grad, 1 - mu)
                    u = grad.lerp(s["momentum"], mu)
                    soap = scope["soap_precondition_momentum"](u, s)
                    u = (scope["norm_preserving_blend"](u, soap, torch.ones(())) if k == "q"
                         else soap)
                    p.add_(scope["muon_update"](u), alpha=-lr)      # their weight decay: 0
                    scope["soap_update_preconditioner"](grad, s)
            out.append({k: p.detach().clone() for k, p in W.items()})
        return out
    opt = scope["DynMuon"](list(W.values()), lr=0.02, weight_decay=0.025, p=0.0, lam=0.0)
    for step, G in enumerate(grads):
        for group in opt.param_groups:
            group["spectral_p"] = scope["get_dynmuon_p"](step, DYN_TOTAL)
        for k, p in W.items():
            p.grad = G[k].clone()
        opt.step()
        out.append({k: p.detach().clone() for k, p in W.items()})
    return out


class Matrices(torch.nn.Module):
    def __init__(self, init: dict):
        super().__init__()
        self.w = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in init.items()})


def run_ours(name: str, init: dict, grads: list[dict], overrides=None) -> list[dict]:
    from configs import load_config, to_object
    from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)
    from optim.registry import build_optimizer
    cfg = to_object(load_config(overrides or OVERRIDES[name])).optimizer
    model = Matrices(init)
    opt = build_optimizer(model, cfg, log=lambda *a: None)
    out = []
    for G in grads:
        for k, p in model.w.items():
            p.grad = G[k].clone()
        opt.step()
        out.append({k: p.detach().clone() for k, p in model.w.items()})
    return out


def step_rel(init: dict, ours: list[dict], theirs: list[dict]) -> list[float]:
    """Per step, the max over matrices of ||ΔW_ours - ΔW_theirs|| / ||ΔW_theirs|| (the steps
    themselves: the weights differ by lr times less)."""
    rel, before_o, before_t = [], init, init
    for o, t in zip(ours, theirs):
        rel.append(max(((o[k] - before_o[k]) - (t[k] - before_t[k])).norm().item()
                       / (t[k] - before_t[k]).norm().item() for k in t))
        before_o, before_t = o, t
    return rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modded-nanogpt", type=Path, required=True, help="checkout at " + COMMIT)
    ap.add_argument("--fixture", type=Path, default=REPO / "tests/fixtures/soap_dynmuon.pt")
    args = ap.parse_args()
    head = subprocess.run(["git", "-C", str(args.modded_nanogpt), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    if head != COMMIT:
        sys.exit(f"error: {args.modded_nanogpt} is at {head or 'no commit'}; check out {COMMIT}")
    torch.set_num_threads(1)
    fixture = {"commit": f"KellerJordan/modded-nanogpt@{COMMIT}", "cases": {}}
    for name in RECORDS:
        init, grads = problem(steps=STEPS[name])
        theirs = run_theirs(their_scope(args.modded_nanogpt, name), name, init, grads)
        ours = run_ours(name, init, grads)
        rel = step_rel(init, ours, theirs)
        print(f"{name} (result #{RECORDS[name][0]}, {RECORDS[name][1]}): max rel diff of the "
              f"update per step " + ", ".join(f"{r:.2e}" for r in rel))
        fixture["cases"][name] = {"result": RECORDS[name][0], "file": RECORDS[name][1],
                                  "overrides": OVERRIDES[name], "init": init, "grads": grads,
                                  "theirs": theirs, "max_rel": rel}
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.fixture)
    print(f"wrote {args.fixture}")


if __name__ == "__main__":
    main()

"""The hyperball names (muonh, adamh, normuonh) against the records' own optimizer code, on a CPU.

    python scripts/compare_hyperball.py --modded-nanogpt PATH [--fixture tests/fixtures/hyperball.pt]

Their side: the optimizer section of each record of modded-nanogpt's Track 3 (RECORDS: result #5
MuonH, #4 AdamH, #8 NorMuonH), exec'd from the file's own text (for the .txt logs, the code
before the first ==== line), with only what a CPU needs patched (PATCHES: Newton-Schulz in
float32 instead of bf16, no torch.compile) and a one-process stand-in for torch.distributed. Our
side: build_optimizer with configs/optimizer/<name>.yaml's matrix hyperparameters
(ns_dtype=float32). Both step the same float32 matrices (shapes SHAPES, seeded) with the same
seeded gradients for STEPS steps, at the record's lr scaled by LR_FACTORS per step (their
cooldown's shape; every step re-reads group["lr"]). The fixture keeps their weights after the
first and the last step; tests/test_hyperball.py replays our side against it.

The records' init too (INITS: #5's is model.init=normal_scaled, #4's and #8's torch_scaled): their
GPT classes and init section exec'd at compare_track3's reduced size (float32 embedding, as
compare_track3 patches it), against our Track3GPT with that model.init, from the same seed; the
fixture keeps their initial weights' fingerprints.
"""
from __future__ import annotations

import argparse
import textwrap
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from compare_track3 import OneProcess  # noqa: E402  (torch.distributed for one process)

COMMIT = "KellerJordan/modded-nanogpt@f411b3d346aa52d3504324ca93c230fd84c6c07f"
RESULTS = "records/track_3_optimization/results/"
# name: (file, first line of the optimizer code, their class, its constructor's keyword args)
RECORDS = {
    "muonh": (RESULTS + "20260430_muonh/train_gpt_simple_muonh.py",
              "def zeropower_via_newtonschulz5", "MuonH", dict(lr=0.018)),
    "adamh": (RESULTS + "20260430_adamh/7533dd87-107f-4a4f-8229-acbec0fb00ac.txt",
              "@torch.no_grad()\ndef scale_invariant_update_", "AdamH",
              dict(lr=0.018, betas=(0.9, 0.95), eps=1e-8)),
    "normuonh": (RESULTS + "20260430_normuonh/f45b5dcf-16bb-4e83-b5c7-4ef4981f0e9f.txt",
                 "def zeropower_via_newtonschulz5", "NorMuonH", dict(lr=0.018)),
}
STOP = "########################################\n#                Setup"
# (old, new): applied where they occur; every record must contain at least one of them
PATCHES = [("X = G.bfloat16()", "X = G.float()"),                     # NS in float32 both sides
           ("@torch.compile\ndef muon_update", "def muon_update"),     # no torch.compile on CPU
           ("@torch.compile\ndef normuon_update", "def normuon_update")]
SHAPES = [(32, 32), (32, 32), (96, 32), (32, 96)]   # square, tall (per-row v), wide (per-column v)
STEPS, SEED = 5, 0
LR_FACTORS = [1 - s / STEPS for s in range(STEPS)]   # their matrices' cooldown_frac 1.0


def their_code(checkout: Path, name: str) -> str:
    """The record's optimizer section (its functions and class), patched for a CPU."""
    file, start, _, _ = RECORDS[name]
    text = (checkout / file).read_text()
    if file.endswith(".txt"):
        text = text[:text.index("\n====")]
    if start not in text or STOP not in text:
        sys.exit(f"error: {file} has no {start!r}; this script reads {COMMIT}: check out that commit")
    code = text[text.index(start):text.index(STOP)]
    if "bfloat16" in code and "X = G.bfloat16()" not in code:
        sys.exit(f"error: {file}: its Newton-Schulz is not the one this script patches")
    for old, new in PATCHES:
        code = code.replace(old, new)
    return code


# name: our model.init for the record's init section
INITS = {"muonh": "normal_scaled", "adamh": "torch_scaled", "normuonh": "torch_scaled"}
INIT_STOPS = ("# create the optimizer(s)", "# split block-level")


def their_init(checkout: Path, name: str) -> dict:
    """The record's GPT at compare_track3's size, initialized by the record's own loop."""
    import compare_track3 as ct
    file, start, _, _ = RECORDS[name]
    text = (checkout / file).read_text()
    line_start = lambda i: text.rindex("\n", 0, i) + 1  # noqa: E731
    classes = text[text.index("class RMSNorm"):text.index(start)]
    classes = classes.replace(*ct.PATCHES[0][:2])                # the embedding in float32
    i = line_start(text.index("# initialize model parameters"))
    j = line_start(min(text.index(s, i) for s in INIT_STOPS if s in text[i:]))
    init = textwrap.dedent(text[i:j])    # #5's sits in a block, #4's and #8's at top level
    scope = {"torch": torch, "Tensor": torch.Tensor, "nn": torch.nn,
             "F": torch.nn.functional, "dist": OneProcess}
    exec(compile(classes, file, "exec"), scope)
    torch.manual_seed(ct.SEED)
    scope["model"] = scope["GPT"](vocab_size=ct.VOCAB_PADDED, num_layers=ct.LAYERS,
                                  model_dim=ct.WIDTH)
    exec(compile(init, file, "exec"), scope)
    return {k.replace("proj.", "lm_head.", 1) if k.startswith("proj.") else k: v.detach().clone()
            for k, v in scope["model"].state_dict().items()}


def our_init(init: str) -> dict:
    """Our Track3GPT at compare_track3's size with model.init=init, from the same seed."""
    import compare_track3 as ct
    from configs import load_config, to_object
    from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)
    from model import build_model
    from model.config import GPTConfig
    cfg = to_object(load_config(ct.OURS + [f"model.init={init}"]))
    torch.manual_seed(ct.SEED)
    model = build_model(GPTConfig(**{**vars(cfg.model), "block_size": ct.BLOCK, "vocab_size": 65}))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def matrices(dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return [0.02 * torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]


def gradients(dtype=torch.float32) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(SEED + 1)
    return [[torch.randn(s, generator=g, dtype=dtype) for s in SHAPES] for _ in range(STEPS)]


def run_theirs(checkout: Path, name: str) -> dict:
    """Their optimizer on the seeded matrices: the weights after step 1 and after the last."""
    scope = {"torch": torch, "Tensor": torch.Tensor, "dist": OneProcess}
    exec(compile(their_code(checkout, name), RECORDS[name][0], "exec"), scope)
    params = [torch.nn.Parameter(w) for w in matrices()]
    opt = scope[RECORDS[name][2]](list(params), **RECORDS[name][3])
    base = [g["lr"] for g in opt.param_groups]
    out = {}
    for step, grads in enumerate(gradients()):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * LR_FACTORS[step]
        opt.step()
        if step in (0, STEPS - 1):
            out["first" if step == 0 else "final"] = [p.detach().clone() for p in params]
    return out


def run_ours(name: str, dtype=torch.float32) -> dict:
    """Our name on the same matrices, the YAML's hyperparameters with NS in float32."""
    from configs import load_config, to_object
    from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)
    from optim import build_optimizer
    cfg = to_object(load_config([f"optimizer={name}", "optimizer.ns_dtype=float32"])).optimizer
    model = torch.nn.Module()
    model.ws = torch.nn.ParameterList(torch.nn.Parameter(w) for w in matrices(dtype))
    opt = build_optimizer(model, cfg, log=lambda *a, **k: None)
    out = {}
    for step, grads in enumerate(gradients(dtype)):
        for p, g in zip(model.ws, grads):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * LR_FACTORS[step]
        opt.step()
        if step in (0, STEPS - 1):
            out["first" if step == 0 else "final"] = [p.detach().clone() for p in model.ws]
    return out


def max_rel(ours: list, theirs: list) -> float:
    """Per matrix ||ours - theirs|| / ||theirs||, the largest."""
    return max(((a.double() - b.double()).norm() / b.double().norm()).item()
               for a, b in zip(ours, theirs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modded-nanogpt", type=Path, required=True, help="a modded-nanogpt checkout")
    ap.add_argument("--fixture", type=Path, default=None, help="write the CI test's fixture here")
    args = ap.parse_args()
    if not all((args.modded_nanogpt / f).is_file() for f, *_ in RECORDS.values()):
        sys.exit(f"error: {args.modded_nanogpt} lacks the records' files; pass a checkout of {COMMIT}")
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "-C", str(args.modded_nanogpt), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    print(f"their checkout: {COMMIT.split('@')[0]}@{commit}")
    import compare_published as cp
    inits = {}
    for name, (file, *_rest) in RECORDS.items():
        theirs, ours = their_init(args.modded_nanogpt, name), our_init(INITS[name])
        inits[name] = {"file": file, "init": INITS[name], "fingerprint": cp.fingerprint(theirs)}
        same = theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
        worst = max(((theirs[k] - ours[k]).abs().max().item() for k in theirs), default=0.0) \
            if theirs.keys() == ours.keys() else float("inf")
        print(f"{name} init ({file}) vs model.init={INITS[name]}: "
              f"{'bitwise equal' if same else 'DIFFERENT'}, max |diff| {worst:.1e} "
              f"over {len(theirs)} tensors")
    cases = {}
    for name, (file, *_rest) in RECORDS.items():
        theirs, ours = run_theirs(args.modded_nanogpt, name), run_ours(name)
        cases[name] = {"file": file, **theirs}
        w0 = matrices()
        moved = lambda ws: [w - a for w, a in zip(ws, w0)]  # noqa: E731  (what the steps changed)
        print(f"{name} ({file}): max rel diff of the weights, step 1 "
              f"{max_rel(ours['first'], theirs['first']):.1e}, step {STEPS} "
              f"{max_rel(ours['final'], theirs['final']):.1e}; of W_t - W_0, step 1 "
              f"{max_rel(moved(ours['first']), moved(theirs['first'])):.1e}, step {STEPS} "
              f"{max_rel(moved(ours['final']), moved(theirs['final'])):.1e}")
    if args.fixture:
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"commit": commit, "repo": COMMIT.split("@")[0], "shapes": SHAPES,
                    "steps": STEPS, "seed": SEED, "lr_factors": LR_FACTORS, "cases": cases,
                    "inits": inits},
                   args.fixture)
        print(f"fixture written: {args.fixture}")


if __name__ == "__main__":
    main()

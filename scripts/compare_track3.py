"""Track 3 in the harness against modded-nanogpt's own train_gpt_simple.py, step for step on a CPU.

    python scripts/compare_track3.py --modded-nanogpt PATH [--out docs/results/track3_equivalence]
        [--fixture tests/fixtures/track3_equivalence.pt]

Their side: the code of records/track_3_optimization/train_gpt_simple.py from a checkout, run
here: its architecture and optimizer sections, its initialization loop, its optimizer
construction and its set_hparams (exec'd from the file's own text between its banners), with only
CUDA and torch.distributed patched (PATCHES: a one-process stand-in for dist, the embedding kept
in float32 instead of bf16, Newton-Schulz in float32 instead of bf16, no torch.compile), stepped
as its training loop steps (a backward of the summed loss per micro-batch, set_hparams(step),
each optimizer's step, zero_grad). Our side: train.py in this process with experiment=track3's
settings at the reduced size (model.arch=track3, optimizer=track3_baseline, schedule cooldown,
summed loss), its task swapped for the same batches and its model for their initial weights
(scripts/compare_published.py run_ours).

Reduced size: 2 layers x 256 wide, head_dim 128 (2 heads), 2 x 2 sequences of 128 tokens a step
(two micro-batches: their accumulation), 20 steps of a 20-step schedule, Tiny Shakespeare
characters (vocabulary 65, padded to 128 on both sides), float32, one thread. Checks: the same
seed gives the same initial weights; logits and loss on one batch; the 20 steps' losses and final
weights for track3_baseline (result #36) and for AdamW on their groups (hidden matrices at lr
0.0015, the other groups as #36's AdamW).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import compare_published as cp  # noqa: E402  (run_ours, fingerprint, head_commit)

FILE = "records/track_3_optimization/train_gpt_simple.py"
COMMIT = "KellerJordan/modded-nanogpt@f411b3d346aa52d3504324ca93c230fd84c6c07f"
STEPS, BLOCK, BATCH, ACCUM, SEED = 20, 128, 2, 2, 0
LAYERS, WIDTH, VOCAB_PADDED = 2, 256, 128
OURS = ["model=track3_mini", "model.arch=track3", f"model.n_layer={LAYERS}", f"model.n_embd={WIDTH}",
        "model.head_dim=128", "model.embed_dtype=float32", "model.pad_vocab_to=64",
        f"train.block_size={BLOCK}", f"train.batch_size={BATCH}", f"train.grad_accum_steps={ACCUM}",
        f"train.max_iters={STEPS}", "train.warmup_iters=0", "train.schedule=cooldown",
        "train.decay_frac=0.7", "train.min_lr_ratio=0.0", "train.grad_clip=0.0",
        "train.loss_reduction=sum", "train.eval_interval=1000", "train.eval_iters=1",
        "train.log_interval=1", "train.ckpt_interval=0", "train.final_eval_tokens=0",
        "device=cpu", "dtype=float32", "compile=false", "threads=1", f"seed={SEED}",
        "wandb.enabled=false"]
CASES = {
    "track3_baseline": ["optimizer=track3_baseline", "optimizer.ns_dtype=float32"],
    # AdamW on every parameter in their groups: the hidden matrices at Track 3's Adam lr 0.0015
    # (result #2), embed / head / scalars as #36's AdamW; weight decay 0.001 on all four groups.
    "adamw": ["optimizer=adamw", "optimizer.lr=0.0015", "optimizer.weight_decay=0.001",
              "optimizer.betas=[0.8,0.95]", "optimizer.eps=1e-10", "optimizer.fused=true",
              "optimizer.roles.embed.lr=0.7", "optimizer.roles.head.lr=0.004",
              "optimizer.roles.scalar.lr=0.015", "optimizer.roles.scalar.weight_decay=0.001"],
}
THEIR_ADAMW = '''optimizer1 = AdamW([dict(params=[model.embed.weight], lr=0.7),
                    dict(params=[model.proj.weight], lr=0.004),
                    dict(params=[p for p in model.parameters() if p.ndim < 2], lr=0.015),
                    dict(params=[p for p in model.blocks.parameters() if p.ndim >= 2], lr=0.0015)],
                   betas=(0.8, 0.95), eps=1e-10, weight_decay=0.001, fused=True)
optimizers = [optimizer1]
'''

# (old, new, why): each must occur in their file's text (or the checkout is not the one we read)
PATCHES = [
    ("nn.Embedding(vocab_size, model_dim).bfloat16()", "nn.Embedding(vocab_size, model_dim)",
     "dtype: float32 on both sides here (theirs stores it in bf16: experiment=track3 does too)"),
    ("X = G.bfloat16()", "X = G.float()", "dtype: Newton-Schulz in float32 on both sides here"),
    ("@torch.compile\ndef muon_update", "def muon_update", "no torch.compile on a CPU"),
]


class OneProcess:
    """torch.distributed for one process: rank 0 of 1; collectives leave tensors as they are."""
    @staticmethod
    def get_world_size():
        return 1

    @staticmethod
    def get_rank():
        return 0

    @staticmethod
    def all_gather(outputs, tensor):
        if outputs[0] is not tensor:
            outputs[0].copy_(tensor)

    @staticmethod
    def all_reduce(tensor, op=None):
        return None


def section(text: str, start: str, stop: str) -> str:
    i, j = text.index(start), text.index(stop)
    return text[i:j]


def their_code(checkout: Path) -> dict:
    """Their file's sections, patched: 'classes' (architecture + optimizer), 'init' (the init
    loop), 'optimizers' (their optimizer construction), 'schedule' (set_hparams)."""
    text = (checkout / FILE).read_text()
    for old, new, _why in PATCHES:
        if old not in text:
            sys.exit(f"error: {FILE} has no {old!r}; this script reads {COMMIT}: check out that commit")
        text = text.replace(old, new, 1)
    dedent = lambda s: "\n".join(line[4:] if line.startswith("    ") else line  # noqa: E731
                                 for line in s.splitlines())
    return {"classes": section(text, "class RMSNorm", "########################################\n#                Setup"),
            "init": dedent(section(text, "    # initialize model parameters", "    # create the optimizer(s)")),
            "optimizers": dedent(section(text, "    # create the optimizer(s)", "    # learning rate schedule")),
            "schedule": dedent(section(text, "    # learning rate schedule", "    ########################################\n    #        Training"))}


class CaptureLogits(types.ModuleType):
    """torch.nn.functional, with cross_entropy remembering the logits it was given."""
    def __init__(self):
        super().__init__("F")
        self.logits = None

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, logits, *args, **kwargs):
        self.logits = logits.detach().clone()
        return torch.nn.functional.cross_entropy(logits, *args, **kwargs)


def their_model(code: dict, seed: int):
    """Their GPT at the reduced size, initialized by their loop from `seed`; and its namespace."""
    F = CaptureLogits()
    scope = {"torch": torch, "Tensor": torch.Tensor, "nn": torch.nn, "F": F, "dist": OneProcess,
             "AdamW": torch.optim.AdamW}
    exec(compile(code["classes"], FILE, "exec"), scope)
    torch.manual_seed(seed)
    model = scope["GPT"](vocab_size=VOCAB_PADDED, num_layers=LAYERS, model_dim=WIDTH)
    scope["model"] = model
    exec(compile(code["init"], FILE, "exec"), scope)
    return model, scope, F


def run_theirs(code: dict, case: str, batches, seed: int) -> dict:
    """Their training loop's steps on the shared batches: per-step mean losses, weights after
    the first step and at the end."""
    model, scope, _ = their_model(code, seed)
    scope["train_steps"] = STEPS
    exec(compile(code["optimizers"] if case == "track3_baseline" else THEIR_ADAMW, FILE, "exec"), scope)
    if case == "track3_baseline":
        for opt in scope["optimizers"]:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
    else:
        for group in scope["optimizer1"].param_groups:
            group["initial_lr"] = group["lr"]
    exec(compile(code["schedule"], FILE, "exec"), scope)
    losses, first = [], None
    for step in range(STEPS):
        micro = batches[step * ACCUM:(step + 1) * ACCUM]
        total = 0.0
        for x, y in micro:
            loss = model(x, y)
            loss.backward()
            total += loss.item() / y.numel()
        scope["set_hparams"](step)
        for opt in scope["optimizers"]:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(total / ACCUM)
        if step == 0:
            first = ours_names(model.state_dict())
    return {"losses": losses, "first": first, "state": ours_names(model.state_dict())}


def ours_names(state: dict) -> dict:
    """Their parameter names as ours: the head `proj` is our `lm_head`."""
    return {("lm_head." + k[5:] if k.startswith("proj.") else k): v.detach().clone()
            for k, v in state.items()}


def their_names(state: dict) -> dict:
    return {("proj." + k[8:] if k.startswith("lm_head.") else k): v for k, v in state.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modded-nanogpt", type=Path, required=True, help="a modded-nanogpt checkout")
    ap.add_argument("--text", type=Path, default=REPO.parent / "shared/data/tinyshakespeare.txt")
    ap.add_argument("--out", type=Path, default=None, help="write README table and results.json here")
    ap.add_argument("--fixture", type=Path, default=None, help="write the CI test's fixture here")
    args = ap.parse_args()
    if not (args.modded_nanogpt / FILE).is_file():
        sys.exit(f"error: {args.modded_nanogpt} has no {FILE}; pass a checkout of "
                 f"{COMMIT.split('@')[0]}")
    if not args.text.is_file():
        sys.exit(f"error: --text {args.text} is not a file; pass Tiny Shakespeare's input.txt")
    torch.set_num_threads(1)
    code = their_code(args.modded_nanogpt)
    commit = cp.head_commit(args.modded_nanogpt)
    work = Path(tempfile.mkdtemp(prefix="compare_track3_"))
    batches, val, vocab = shared_batches(args.text, work)

    # 1. the same seed, the same initial weights; logits and loss on one batch
    theirs, _, F = their_model(code, SEED)
    ours = our_model()
    init_theirs = ours_names(theirs.state_dict())
    init_diff = cp.max_diff({k: v for k, v in ours.state_dict().items()}, init_theirs)
    # the head starts at zero (their init): logits are compared with a random head on both sides
    with torch.no_grad():
        theirs.proj.weight.copy_(torch.randn(theirs.proj.weight.shape,
                                             generator=torch.Generator().manual_seed(1)) * 0.05)
    ours.load_state_dict(ours_names(theirs.state_dict()))
    x, y = batches[0]
    with torch.no_grad():
        loss_sum = theirs(x, y).item()
        logits_theirs = F.logits.view(y.shape[0], y.shape[1], -1)
        logits_ours, loss_ours = ours(x, y, return_logits=True)
    logits_rel = ((logits_ours - logits_theirs).abs().max() / logits_theirs.abs().max()).item()
    loss_rel = abs(loss_ours.item() - loss_sum / y.numel()) / (loss_sum / y.numel())
    print(f"their checkout: {COMMIT.split('@')[0]}@{commit}")
    print(f"init (seed {SEED}): max |ours - theirs| {init_diff:.1e}; logits max rel diff "
          f"{logits_rel:.1e}; loss {loss_sum / y.numel():.6f} theirs (sum / tokens) vs "
          f"{loss_ours.item():.6f} ours, rel diff {loss_rel:.1e}")

    # 2. 20 steps
    rows, fixture_cases = {}, {}
    for case, extra in CASES.items():
        t = run_theirs(code, case, batches, SEED)
        o = cp.run_ours([*OURS, *extra], init_theirs, batches, val, vocab, work / f"ours_{case}",
                        steps=STEPS, accum=ACCUM, block=BLOCK)
        steps = [abs(a - b) for a, b in zip(o["losses"], t["losses"])]
        rows[case] = {"overrides": [*OURS, *extra], "theirs_losses": t["losses"],
                      "ours_losses": o["losses"], "step_diffs": steps,
                      "max_loss_rel": max(d / abs(b) for d, b in zip(steps, t["losses"])),
                      "max_weight_diff": cp.max_diff(o["state"], t["state"])}
        fixture_cases[case] = {"overrides": [*OURS, *extra], "losses": t["losses"],
                               "first": cp.fingerprint(t["first"]), "final": cp.fingerprint(t["state"])}
        print(f"{case}: max rel |d loss| over {STEPS} steps {rows[case]['max_loss_rel']:.1e}, "
              f"max |d weight| {rows[case]['max_weight_diff']:.1e}", flush=True)
    table = report(rows, init_diff, logits_rel, loss_rel, commit)
    print("\n" + table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table)
        (args.out / "results.json").write_text(json.dumps(
            {"commit": commit, "init_max_diff": init_diff, "logits_max_rel": logits_rel,
             "loss_rel": loss_rel, "cases": rows}, indent=1))
    if args.fixture:
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"commit": commit, "file": FILE, "vocab": vocab, "seed": SEED,
                    "init": cp.fingerprint(init_theirs),
                    "train": [(a.to(torch.uint8), b.to(torch.uint8)) for a, b in batches],
                    "val": tuple(t.to(torch.uint8) for t in val),
                    "logits": logits_theirs, "loss_sum": loss_sum, "cases": fixture_cases},
                   args.fixture)
        print(f"fixture written: {args.fixture}")


def our_model():
    from configs import load_config, to_object
    from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)
    from model import build_model
    from model.config import GPTConfig
    cfg = to_object(load_config(OURS))
    torch.manual_seed(SEED)
    return build_model(GPTConfig(**{**vars(cfg.model), "block_size": BLOCK, "vocab_size": 65}))


def shared_batches(text: Path, work: Path):
    """Our task's batches at this size (random windows of Tiny Shakespeare's characters)."""
    from configs import load_config, to_object
    from trainer.config import RunConfig  # noqa: F401,E402 (registers configs/config.yaml's root)
    from data.task import build_task
    cfg = to_object(load_config([*OURS, "optimizer=track3_baseline", "data=shakespeare_char",
                                 f"data.source={text}", f"data.root={work / 'data'}"]))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        task = build_task(cfg)
    own = lambda b: tuple(t.contiguous() for t in b)  # noqa: E731
    batches = [own(task.get_batch("train", BATCH, step=s, micro_step=m))
               for s in range(STEPS) for m in range(ACCUM)]
    return batches, own(task.get_batch("val", BATCH, step=0)), task.vocab_size


def report(rows: dict, init_diff: float, logits_rel: float, loss_rel: float, commit: str) -> str:
    lines = [f"Against {COMMIT.split('@')[0]}@{commit} `{FILE}`, 2 layers x 256, 20 steps, float32:", "",
             "| check | result |", "|---|---|",
             f"| initial weights, same seed | max \\|Δ\\| {init_diff:.1e} |",
             f"| logits, one batch | max relative \\|Δ\\| {logits_rel:.1e} |",
             f"| loss (theirs: sum / tokens) | relative \\|Δ\\| {loss_rel:.1e} |"]
    for case, r in rows.items():
        lines.append(f"| {case}: {STEPS} steps' losses | max relative \\|Δ\\| {r['max_loss_rel']:.1e} |")
        lines.append(f"| {case}: weights after step {STEPS} | max \\|Δ\\| {r['max_weight_diff']:.1e} |")
    lines += ["", "| step | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for s in range(STEPS):
        lines.append(f"| {s} | " + " | ".join(
            f"{r['theirs_losses'][s]:.6f} / {r['ours_losses'][s]:.6f}" for r in rows.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

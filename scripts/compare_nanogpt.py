"""Side by side with nanoGPT: its train.py and ours on the baby GPT (issue 2's acceptance run),
one training at a time, and a table of speed and loss per seed.

    python scripts/compare_nanogpt.py --nanogpt /path/to/nanoGPT [--seeds 1337 1 2] [--beta2 0.95 0.99]
    python scripts/compare_nanogpt.py --nanogpt /path/to/nanoGPT --device cuda   # bf16, compiled

For each (beta2, seed): nanoGPT's `train.py config/train_shakespeare_char.py` with the baby
settings of our command (block 64, batch 12, 2000 iters, dropout 0, cosine to 1e-4, eval_iters
20), then `python train.py model=baby data=shakespeare_char optimizer=adamw optimizer.lr=1e-3
optimizer.betas=[0.9,<beta2>] ...`. nanoGPT fixes its seed at 1337; the script runs a copy of
its train.py whose seed is a config value (one line changed). Both use the same Tiny Shakespeare
characters (nanoGPT's data/shakespeare_char is prepared from --text if missing).

Both sides get the same precision: --dtype and --compile (default auto) are resolved once, as
train.py resolves dtype=auto and compile=auto (trainer/precision.py: on CUDA bf16, or float16
without native bf16, compiled; on CPU float32, eager), and passed to both explicitly (nanoGPT
would pick bf16 on CUDA by itself, and we would too, but one resolution leaves no doubt). The
header line before the table says what they were.

Columns: ms/iter is the median of the per-iteration times each logs (nanoGPT: its `iter N: ...
time` lines except evaluation iterations; ours: `ms_per_step` of metrics.jsonl; both cover
forward, backward and optimizer step); logged val is the eval_iters=20 estimate each prints at
step 2000; full val is the loss of the final checkpoint on every non-overlapping 64-token window
of the val split (1742 windows instead of 240 random ones), the number to compare.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs.errors import UserError  # noqa: E402
from trainer.config import COMPILE, DTYPES  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from trainer.precision import Precision, resolve_precision  # noqa: E402

BABY = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000)


def fail(message: str) -> None:
    """Bad input: one `error: ...` line, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def both_sides_precision(device: str, dtype: str, compile: str) -> Precision:
    """The dtype and compile both trainings get: ours resolved as train.py would on `device`.
    nanoGPT autocasts only on CUDA (its CPU context is a no-op), so a CPU comparison is float32."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: CUDA is not available here")
    try:
        precision = resolve_precision(device, dtype, compile)
    except (UserError, RuntimeError) as exc:   # float16 off CUDA; a device torch cannot name
        fail(f"--device {device} --dtype {dtype}: {exc}")
    if not device.startswith("cuda") and precision.dtype != "float32":
        fail(f"--dtype {dtype}: nanoGPT runs float32 on {device} whatever its dtype (it autocasts "
             "only on CUDA); use --dtype float32 or --device cuda")
    return precision


def seeded_nanogpt(src: Path, dst: Path) -> Path:
    """A copy of nanoGPT whose train.py reads `seed` from the command line."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "out*"))
    train = (dst / "train.py").read_text()
    if "torch.manual_seed(1337 + seed_offset)" not in train:
        fail("this nanoGPT's train.py does not seed with 1337 + seed_offset; "
             "pass a nanoGPT checkout from github.com/karpathy/nanoGPT")
    train = train.replace("torch.manual_seed(1337 + seed_offset)", "torch.manual_seed(seed + seed_offset)")
    train = train.replace("\nbeta2 = 0.95", "\nbeta2 = 0.95\nseed = 1337", 1)
    (dst / "train.py").write_text(train)
    return dst


def nanogpt_command(out: Path, seed: int, beta2: float, device: str, precision: Precision) -> list[str]:
    """nanoGPT's train.py command (run in its checkout); its configurator reads Python literals."""
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", f"--device={device}",
           f"--dtype={precision.dtype}", f"--compile={precision.compile}", "--eval_iters=20",
           "--log_interval=1", f"--block_size={BABY['block_size']}",
           f"--batch_size={BABY['batch_size']}", f"--n_layer={BABY['n_layer']}", f"--n_head={BABY['n_head']}",
           f"--n_embd={BABY['n_embd']}", f"--max_iters={BABY['max_iters']}",
           f"--lr_decay_iters={BABY['max_iters']}", "--dropout=0.0", f"--seed={seed}",
           f"--beta2={beta2}", "--always_save_checkpoint=True", f"--out_dir={out}"]


def our_command(text: Path, out: Path, seed: int, beta2: float, device: str,
                precision: Precision) -> list[str]:
    """Our train.py command (run in this repository)."""
    return [sys.executable, "train.py", "model=baby", "data=shakespeare_char", f"data.source={text}",
            f"device={device}", f"dtype={precision.dtype}", f"compile={str(precision.compile).lower()}",
            "optimizer=adamw", "optimizer.lr=1e-3", f"optimizer.betas=[0.9,{beta2}]",
            f"train.batch_size={BABY['batch_size']}", f"train.block_size={BABY['block_size']}",
            f"train.max_iters={BABY['max_iters']}", f"seed={seed}", f"out_dir={out}", "overwrite=true"]


def run_nanogpt(nano: Path, out: Path, seed: int, beta2: float, device: str,
                precision: Precision) -> dict:
    cmd = nanogpt_command(out, seed, beta2, device, precision)
    log = subprocess.run(cmd, cwd=nano, capture_output=True, text=True, check=True).stdout
    eval_every = 250  # config/train_shakespeare_char.py's eval_interval
    times = [float(t) for it, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", log)
             if int(it) % eval_every != 0]
    val = re.findall(rf"step {BABY['max_iters']}: train loss [\d.]+, val loss ([\d.]+)", log)
    return {"ms": statistics.median(times), "logged": float(val[-1]), "ckpt": out / "ckpt.pt"}


def run_ours(text: Path, out: Path, seed: int, beta2: float, device: str,
             precision: Precision) -> dict:
    cmd = our_command(text, out, seed, beta2, device, precision)
    subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {"ms": statistics.median(r["ms_per_step"] for r in recs if "ms_per_step" in r),
            "logged": summary["final_val_loss"], "ckpt": out / "ckpt.pt"}


def load_model(ckpt: Path, nano_model) -> torch.nn.Module:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own files, just written
    if "model_args" in state:  # nanoGPT's checkpoint; its constructor prints a parameter count
        with contextlib.redirect_stdout(io.StringIO()):
            model = nano_model.GPT(nano_model.GPTConfig(**state["model_args"]))
    else:
        c = state["config"]["model"]
        model = GPT(GPTConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                              block_size=BABY["block_size"], vocab_size=state["model"]["transformer.wte.weight"].shape[0],
                              bias=c["bias"], pad_vocab_to=1))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def full_val_loss(model, val_bin: Path, block: int = BABY["block_size"]) -> float:
    data = np.memmap(val_bin, dtype=np.uint16, mode="r")
    n = (len(data) - 1) // block
    x = torch.from_numpy(data[: n * block].astype(np.int64)).view(n, block)
    y = torch.from_numpy(data[1: n * block + 1].astype(np.int64)).view(n, block)
    total = sum(model(x[i:i + 256], y[i:i + 256])[1].item() * len(x[i:i + 256]) for i in range(0, n, 256))
    return total / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--text", type=Path, default=REPO.parent / "shared/data/tinyshakespeare.txt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    ap.add_argument("--beta2", type=float, nargs="+", default=[0.95, 0.99])
    ap.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temp dir)")
    ap.add_argument("--device", default="cpu", help="the device of both trainings (cpu, cuda)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="both trainings' autocast dtype; auto: bfloat16 on CUDA (float16 without "
                         "native bf16), float32 on CPU")
    ap.add_argument("--compile", default="auto", choices=COMPILE,
                    help="torch.compile both models; auto: true on CUDA, false on CPU")
    args = ap.parse_args(argv)
    if not (args.nanogpt / "train.py").is_file():
        fail(f"no train.py in --nanogpt {args.nanogpt}; pass a nanoGPT checkout")
    if not args.text.is_file():
        fail(f"--text {args.text} is not a file; pass Tiny Shakespeare's input.txt")
    precision = both_sides_precision(args.device, args.dtype, args.compile)
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_nanogpt_"))
    nano = seeded_nanogpt(args.nanogpt, work / "nanoGPT") if not (work / "nanoGPT").exists() else work / "nanoGPT"
    char_dir = nano / "data" / "shakespeare_char"
    if not (char_dir / "val.bin").exists():
        shutil.copy(args.text, char_dir / "input.txt")  # its prepare.py downloads only if missing
        subprocess.run([sys.executable, "prepare.py"], cwd=char_dir, check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("nanogpt_model", nano / "model.py")
    nano_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano_model)
    os.environ.setdefault("WANDB_MODE", "offline")

    print(f"device {args.device}, dtype {precision.dtype}, compile {str(precision.compile).lower()} "
          f"(both sides; {precision.reason})\n", flush=True)
    print(f"| beta2 | seed | nanoGPT ms/iter | ours ms/iter | nanoGPT val (logged / full) | "
          f"ours val (logged / full) |\n|---|---|---|---|---|---|", flush=True)
    rows = []
    for beta2 in args.beta2:
        for seed in args.seeds:
            n = run_nanogpt(nano, work / f"nano_b{beta2}_s{seed}", seed, beta2, args.device, precision)
            o = run_ours(args.text, work / f"ours_b{beta2}_s{seed}", seed, beta2, args.device, precision)
            for r in (n, o):
                r["full"] = full_val_loss(load_model(r["ckpt"], nano_model), char_dir / "val.bin")
            rows.append((beta2, n, o))
            print(f"| {beta2} | {seed} | {n['ms']:.1f} | {o['ms']:.1f} | {n['logged']:.4f} / {n['full']:.4f} "
                  f"| {o['logged']:.4f} / {o['full']:.4f} |", flush=True)
    for beta2 in args.beta2:
        ns = [n for b, n, _ in rows if b == beta2]
        os_ = [o for b, _, o in rows if b == beta2]
        mean = lambda rs, k: statistics.mean(r[k] for r in rs)  # noqa: E731
        print(f"| {beta2} | mean | {mean(ns, 'ms'):.1f} | {mean(os_, 'ms'):.1f} | {mean(ns, 'logged'):.4f} / "
              f"{mean(ns, 'full'):.4f} | {mean(os_, 'logged'):.4f} / {mean(os_, 'full'):.4f} |")
    print(f"\nruns kept in {work}")


if __name__ == "__main__":
    main()

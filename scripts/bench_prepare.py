"""Our tokenizing pipeline (`python -m data.prepare`) against nanoGPT's, on one local corpus.

    python scripts/bench_prepare.py              # a 200 MB JSONL corpus (several minutes)
    python scripts/bench_prepare.py --quick      # a 20 MB one (a minute or two)
    python scripts/bench_prepare.py --size-mb 500 --num-proc 8 --workdir /scratch/bench

The corpus: JSONL documents {"text": ...}, each a contiguous span of whole lines of Tiny
Shakespeare (/work/shared/data/tinyshakespeare.txt, or --text) at a random offset, of a random
length (log-normal around 4 KB, like OpenWebText's documents), until --size-mb; seeded, written
once into --workdir and reused. Nothing comes from the hub.

The two pipelines, each timed in its own subprocess (Python start-up and imports included):
  ours     python -m data.prepare data=local data.files=[corpus] data.tokenizer=r50k_base
           data.val_fraction=0.0005 data.split_seed=2357 data.num_proc=N (data/prepare.py:
           documents streamed chunk by chunk through tiktoken's encode_ordinary_batch on N
           threads, appended to the .bin, resumable);
  nanoGPT  the steps of nanoGPT's data/openwebtext/prepare.py, written out below
           (nanogpt_steps): datasets.load_dataset("json"), train_test_split(test_size=0.0005,
           seed=2357, shuffle=True), test renamed val, map(encode_ordinary + eot, num_proc=N)
           into an Arrow cache, then per split a uint16 np.memmap filled shard by shard
           (1024 contiguous shards, fewer for a split with fewer documents).
Both use GPT-2's BPE: tiktoken's "gpt2" when its files are at hand, else "r50k_base", which
has the same ranks, pattern and end-of-text id (50256), hence the same ids.

Same documents, same order: both split with the same train_test_split(test_size=0.0005,
seed=2357, shuffle=True) on the same table, so train.bin and val.bin must be equal byte for
byte (compared in full); "ids equal" says whether they are.

Measured per pipeline: tokens/s = tokens written (train + val) / the subprocess's wall time;
peak RSS, largest process = ru_maxrss of the subprocess and the children it waited for
(os.wait4: the max over those processes, not their sum); peak RSS, all processes = the
largest sum of VmRSS over the subprocess and its live descendants, sampled every 50 ms from
/proc (datasets' map runs N worker processes, each with its own copy of the tokenizer; a
sample can miss a short spike). The targets compare the all-processes figure: what the
machine must hold.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
VAL_FRACTION, SPLIT_SEED = 0.0005, 2357    # nanoGPT's openwebtext split


# ---- the corpus ----------------------------------------------------------------------------

def make_corpus(text_path: Path, size_mb: float, out: Path, seed: int = 0) -> Path:
    """JSONL documents of random line spans of `text_path`, about size_mb MB in all; reused
    if written before (the name holds size and seed)."""
    if out.exists():
        return out
    lines = text_path.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    target, size = int(size_mb * 1e6), 0
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while size < target:
            chars = int(rng.lognormvariate(8.3, 0.8))       # median ~4 KB
            start = rng.randrange(len(lines))
            doc, n = [], 0
            for line in lines[start:]:
                doc.append(line)
                n += len(line)
                if n >= chars:
                    break
            row = json.dumps({"text": "".join(doc).strip()}) + "\n"
            f.write(row)
            size += len(row.encode())
    os.replace(tmp, out)
    return out


# ---- nanoGPT's steps -----------------------------------------------------------------------

def gpt2_encoding():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:   # offline without the gpt2 files: r50k_base is the same BPE
        return tiktoken.get_encoding("r50k_base")


def nanogpt_steps(corpus: str, out_dir: str, num_proc: int, cache_dir: str) -> None:
    """nanoGPT data/openwebtext/prepare.py's steps on a local JSONL (hub download replaced by
    load_dataset("json")), written from its description."""
    import numpy as np
    from datasets import load_dataset

    enc = gpt2_encoding()
    dataset = load_dataset("json", data_files=[corpus], num_proc=num_proc, cache_dir=cache_dir)
    split = dataset["train"].train_test_split(test_size=VAL_FRACTION, seed=SPLIT_SEED, shuffle=True)
    split["val"] = split.pop("test")

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    tokenized = split.map(process, remove_columns=["text"], desc="tokenizing the splits",
                          num_proc=num_proc)
    for name, dset in tokenized.items():
        arr_len = np.sum(dset["len"], dtype=np.uint64)
        arr = np.memmap(os.path.join(out_dir, f"{name}.bin"), dtype=np.uint16, mode="w+",
                        shape=(int(arr_len),))
        total_batches = min(1024, len(dset))   # nanoGPT: 1024 (its val split has 4k documents)
        idx = 0
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx,
                               contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx:idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()


# ---- measuring a subprocess ----------------------------------------------------------------

def tree_rss(root: int) -> int:
    """Bytes resident in `root` and its live descendants (VmRSS from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def measure(cmd: list[str], env: dict) -> dict:
    """Run cmd; its wall seconds, largest single-process peak RSS (wait4) and sampled peak
    RSS of its whole process tree, in MiB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output.decode()[-3000:]}")
    return {"seconds": wall, "rss_max_mib": usage.ru_maxrss / 1024,
            "rss_tree_mib": peak[0] / 2**20}


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 20 MB corpus instead of 200 MB")
    ap.add_argument("--size-mb", type=float, default=None, help="corpus size (default 200)")
    ap.add_argument("--num-proc", type=int, default=os.cpu_count(),
                    help="tokenizer threads (ours) / map processes (nanoGPT)")
    ap.add_argument("--text", default=str(SHAKESPEARE), help="the text documents are cut from")
    ap.add_argument("--workdir", default=None,
                    help="keeps the corpus between runs (default: a temporary folder)")
    ap.add_argument("--nanogpt-steps", nargs=4, metavar=("CORPUS", "OUT", "NUM_PROC", "CACHE"),
                    help=argparse.SUPPRESS)    # the nanoGPT subprocess
    args = ap.parse_args(argv)
    if args.nanogpt_steps:
        corpus, out, num_proc, cache = args.nanogpt_steps
        return nanogpt_steps(corpus, out, int(num_proc), cache)

    size = args.size_mb or (20 if args.quick else 200)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = make_corpus(Path(args.text), size, work / f"corpus_{size:g}MB_seed0.jsonl")
    n_docs = sum(1 for _ in open(corpus, "rb"))
    print(f"corpus: {corpus} ({corpus.stat().st_size / 1e6:.0f} MB, {n_docs:,} documents; "
          f"{time.perf_counter() - t0:.0f}s to write or find); num_proc {args.num_proc}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    outs = {"ours": work / "ours", "nanoGPT": work / "nanogpt"}
    for d in outs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    cmds = {
        "ours": [sys.executable, "-m", "data.prepare", "data=local", "data.name=bench",
                 f"data.root={outs['ours']}", f"data.files=[{corpus}]", "data.tokenizer=r50k_base",
                 f"data.val_fraction={VAL_FRACTION}", f"data.split_seed={SPLIT_SEED}",
                 f"data.num_proc={args.num_proc}"],
        "nanoGPT": [sys.executable, str(Path(__file__).resolve()), "--nanogpt-steps", str(corpus),
                    str(outs["nanoGPT"]), str(args.num_proc), str(outs["nanoGPT"] / "hf_cache")],
    }
    bins = {"ours": outs["ours"] / "bench", "nanoGPT": outs["nanoGPT"]}
    results = {}
    for name, cmd in cmds.items():
        results[name] = measure(cmd, env)
        results[name]["tokens"] = sum((bins[name] / f"{s}.bin").stat().st_size // 2
                                      for s in ("train", "val"))
        results[name]["sha"] = {s: digest(bins[name] / f"{s}.bin") for s in ("train", "val")}
    equal = results["ours"]["sha"] == results["nanoGPT"]["sha"]

    print(f"{'pipeline':10s} {'tokens':>12s} {'seconds':>8s} {'tokens/s':>11s} "
          f"{'peak RSS all procs':>19s} {'largest proc':>13s}")
    for name, r in results.items():
        print(f"{name:10s} {r['tokens']:12,d} {r['seconds']:8.1f} "
              f"{r['tokens'] / r['seconds']:11,.0f} {r['rss_tree_mib']:15,.0f} MiB "
              f"{r['rss_max_mib']:9,.0f} MiB")
    print(f"ids equal (train.bin and val.bin, byte for byte): {'yes' if equal else 'NO'}")
    ours, ref = results["ours"], results["nanoGPT"]
    rate = (ours["tokens"] / ours["seconds"]) / (ref["tokens"] / ref["seconds"])
    rss = ours["rss_tree_mib"] / ref["rss_tree_mib"]
    print("\ntargets:")
    print(f"  {'tokens/s ours / nanoGPT, >= 1':44s} {rate:7.2f}  {'met' if rate >= 1 else 'MISSED'}")
    print(f"  {'peak RSS ours / nanoGPT, <= 1':44s} {rss:7.2f}  {'met' if rss <= 1 else 'MISSED'}")
    print(f"  {'token ids equal':44s} {'':7s}  {'met' if equal else 'MISSED'}")
    for d in outs.values():
        shutil.rmtree(d, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

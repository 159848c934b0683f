"""Pre-tokenized shards (modded-nanogpt's FineWeb10B, `data=fineweb10B`): their file format,
their download, and the check that they are whole.

    python -m data.prepare data=fineweb10B data.shards=18

A shard is 256 int32 (magic 20240520, version 1, token count, then zeros) and the uint16
GPT-2 tokens: 1024 + 2 * count bytes. <root>/<name>/ holds fineweb_val_000000.bin and
fineweb_train_000001.bin .. fineweb_train_<shards>.bin; the train stream is the train shards in
name order, as modded-nanogpt's `distributed_data_generator` reads them.
The shards are served where they lie (data/lm.py memory-maps each past its header) rather than
joined into one train.bin: no second copy on disk (10B tokens are 20 GB), training starts at
once, and more shards can be downloaded later without redoing the others.
Download: `huggingface_hub.hf_hub_download` resumes a file interrupted mid-way (it keeps the
partial file under <folder>/.cache/huggingface/ until it is complete, then moves it in place), and
a shard already in place is checked, not fetched again, so re-running an interrupted prepare
finishes it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from configs.errors import UserError

MAGIC, VERSION = 20240520, 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPE = np.dtype(np.uint16)
VOCAB_SIZE, EOT, TOKENIZER = 50257, 50256, "r50k_base"   # GPT-2's tokens


def val_name() -> str:
    return "fineweb_val_%06d.bin" % 0


def train_name(i: int) -> str:
    return "fineweb_train_%06d.bin" % i


def shard_names(cfg) -> list[str]:
    """The files a prepare with data.shards=N fetches: the val shard, then train 1..N."""
    return [val_name()] + [train_name(i) for i in range(1, cfg.shards + 1)]


def write_shard(path: Path, tokens) -> None:
    """Write `tokens` as a shard (the format modded-nanogpt's data/fineweb.py writes)."""
    tokens = np.asarray(tokens)
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = MAGIC, VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(DTYPE).tobytes())


def shard_tokens(path: Path, fix: str) -> int:
    """The token count of a whole shard; anything else (bad magic or version, a size that
    disagrees with the header) is a UserError naming the file and `fix`."""
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"{path}: size {size} bytes, shorter than a shard's header ({HEADER_BYTES} "
                        f"bytes); {fix}")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise UserError(f"{path}: magic number {magic}, not {MAGIC}: not a token shard; {fix}")
    if version != VERSION:
        raise UserError(f"{path}: shard version {version}, only {VERSION} is known; {fix}")
    if size != HEADER_BYTES + DTYPE.itemsize * count:
        raise UserError(f"{path}: size {size} bytes, header says {count} tokens "
                        f"({HEADER_BYTES + DTYPE.itemsize * count} bytes); {fix}")
    return count


def fix_line(path: Path, command: str) -> str:
    return f"delete it and run: {command}"


def open_shards(cfg, folder: Path, command: str) -> dict | None:
    """A meta dict (as meta.json's, plus "shards": per split [(path, tokens)]) of the folder's
    val shard and train shards 1..data.shards, each checked; None when any is missing."""
    names = shard_names(cfg)
    if not all((folder / n).is_file() for n in names):
        return None
    counts = [(folder / n, shard_tokens(folder / n, fix_line(folder / n, command))) for n in names]
    shards = {"val": counts[:1], "train": counts[1:]}
    return {"name": cfg.name, "tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE,
            "dtype": DTYPE.name, "eot_token": EOT, "shards": shards,
            "tokens": {s: sum(n for _, n in v) for s, v in shards.items()}}


def missing_shards(cfg, folder: Path) -> list[str]:
    return [n for n in shard_names(cfg) if not (folder / n).is_file()]


def download_shards(cfg, folder: Path, command: str) -> dict:
    """Fetch the shards not yet in `folder` from the hub (data.shard_repo), check every one,
    and return open_shards' meta."""
    from tqdm.auto import tqdm

    if cfg.shards < 1:
        raise UserError(f"data.shards={cfg.shards}: download at least one train shard "
                        "(data.shards=N fetches the val shard and train shards 1..N)")
    names = shard_names(cfg)
    fetched = 0
    for name in tqdm(names, unit="shard", desc=f"{cfg.name} shards"):
        path = folder / name
        if not path.is_file():
            fetch(cfg.shard_repo, name, folder)
            fetched += 1
        shard_tokens(path, fix_line(path, command))   # a bad shard stops here, named
    meta = open_shards(cfg, folder, command)
    print(f"{folder}: {len(names)} shards ({fetched} downloaded now), train "
          f"{meta['tokens']['train']:,} / val {meta['tokens']['val']:,} tokens")
    return meta


def fetch(repo: str, name: str, folder: Path) -> None:
    import huggingface_hub

    try:
        huggingface_hub.hf_hub_download(repo_id=repo, filename=name, repo_type="dataset",
                                        local_dir=str(folder))
    except Exception as exc:   # network, hub, disk: the same command resumes
        why = " ".join(str(exc).split())[:300]
        raise UserError(f"could not download {name} from {repo} ({type(exc).__name__}: {why}); "
                        "re-run the same command to resume (shards already here are kept)") from None
    if not (folder / name).is_file():
        raise UserError(f"the download of {name} from {repo} left no {folder / name}; re-run "
                        "the same command")

"""Prepare a dataset once: text -> token ids -> <root>/<name>/{train,val}.bin + meta.json.

    python -m data.prepare data=shakespeare_char
    python -m data.prepare data=shakespeare data.source=../shared/data/tinyshakespeare.txt
    python -m data.prepare data=local data.files=[a.jsonl,b.parquet]
    python -m data.prepare data=openwebtext data.num_proc=16
    python -m data.prepare data=fineweb10B data.shards=18   (downloads tokens: data/shards.py)

Sources: a local file (data.source, or data.files for `local`), else a download (data.url,
a small raw text) or the hub (data.hf_path). Files ending in .jsonl/.json/.parquet are tables
of documents (one per row, column data.text_field), read with `datasets.load_dataset` like the
hub; anything else is raw UTF-8 text (data/sources.py reads them).
Splits, as nanoGPT: documents go to val by `train_test_split(test_size=val_fraction,
seed=split_seed, shuffle=True)`; a raw text (its files joined) is ONE document whose first
(1 - val_fraction) of the characters are train and the rest val.
End-of-text: with a BPE tokenizer each document is followed by the end-of-text token, so the
model sees where documents end. A raw text gets none (it is one document, cut in two by the
split), so each split's ids are exactly `encode_ordinary` of its text, as nanoGPT's
shakespeare prepare writes them. The char tokenizer has no such token: its vocabulary is the
corpus's characters (65 for Tiny Shakespeare).

The output is valid only once meta.json exists and agrees with the .bin sizes: the .bin files
are written as *.bin.tmp, renamed, and meta.json is written last, so an interrupted prepare
leaves a folder that training treats as not prepared. A write that fails (a full disk) is one
UserError naming the file (its partial files are removed), and a dataset prepared before stays
valid.
Resume: tokens are written chunk by chunk (data.chunk_docs documents, or raw-text pieces), and
after each chunk the .bin.tmp is synced and `prepare.progress.json` records the chunks done, so
a prepare that is killed (SIGKILL, SIGTERM, Ctrl-C) resumes from its last finished chunk when
the same command runs again (OpenWebText takes hours). The record names what decides the
bytes (source files with sizes and mtimes, tokenizer, split, chunking); if any of it changed,
the partial files are discarded and the prepare starts over.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from configs.errors import UserError, run_cli, write_atomic, write_error
from data.sources import TABLE_FORMATS, download, local_inputs, raw_text_source, table_source

SPLITS = ("train", "val")
PIECE_CHARS = 1 << 14  # a raw text is tokenized in pieces of about this many characters
PROGRESS = "prepare.progress.json"   # an unfinished prepare's chunks done, for a resume


def dataset_dir(cfg) -> Path:
    return Path(cfg.root).expanduser() / cfg.name


def prepare_command(cfg) -> str:
    root = "" if cfg.root == "data_cache" else f" data.root={cfg.root}"
    shards = f" data.shards={cfg.shards}" if cfg.shard_repo else ""
    return f"python -m data.prepare data={cfg.name}{root}{shards}"


def open_prepared(cfg) -> dict | None:
    """meta.json of a prepared dataset, None when it is not prepared (no meta.json).
    A meta.json that disagrees with the .bin files or the config is a UserError."""
    folder = dataset_dir(cfg)
    root = Path(cfg.root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"data.root={cfg.root} is a file, not a directory; pass another data.root=")
    if cfg.shard_repo:   # pre-tokenized shards: no meta.json, each shard's header says it all
        from data.shards import open_shards
        return open_shards(cfg, folder, prepare_command(cfg))
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / 'meta.json'} is unreadable ({exc}); re-run {prepare_command(cfg)}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path = folder / f"{split}.bin"
        size = path.stat().st_size if path.exists() else None
        if size != meta["tokens"][split] * itemsize:
            raise UserError(f"{path} has {size} bytes but meta.json says {meta['tokens'][split]} "
                            f"{meta['dtype']} tokens; re-run {prepare_command(cfg)}")
    if meta["tokenizer"] != cfg.tokenizer:
        raise UserError(f"{folder} was prepared with tokenizer {meta['tokenizer']} but "
                        f"data.tokenizer={cfg.tokenizer}; re-run {prepare_command(cfg)} or use "
                        "another data.name")
    return meta


def check_inputs(cfg) -> None:
    """Refuse now what the first run would refuse when it opens or auto-prepares the dataset: a
    damaged prepared folder, or no prepared one and unreadable local inputs (sweep.py checks
    this before it launches any run)."""
    if open_prepared(cfg) is None and cfg.auto_prepare:
        local_inputs(cfg)


# ---- tokenizers -----------------------------------------------------------------------------

def make_tokenizer(cfg, chars: set):
    """(encode: list[str] -> list[list[int]], end-of-text id or None, vocab_size, meta extras)."""
    if cfg.tokenizer == "char":
        itos = sorted(chars)
        stoi = {c: i for i, c in enumerate(itos)}
        return (lambda texts: [[stoi[c] for c in t] for t in texts]), None, len(itos), \
            {"itos": itos, "stoi": stoi}
    import tiktoken

    if cfg.tokenizer not in tiktoken.list_encoding_names():
        raise UserError(f"data.tokenizer={cfg.tokenizer} is unknown; use char or a tiktoken "
                        f"encoding ({', '.join(tiktoken.list_encoding_names())})")
    try:
        enc = tiktoken.get_encoding(cfg.tokenizer)
    except Exception as exc:  # its files are downloaded on first use
        raise UserError(f"could not load the {cfg.tokenizer} tokenizer ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); go online once or set TIKTOKEN_CACHE_DIR "
                        "to a folder holding its files")
    encode = lambda texts: enc.encode_ordinary_batch(texts, num_threads=cfg.num_proc)  # noqa: E731
    return encode, enc.eot_token, enc.n_vocab, {}


# ---- writing --------------------------------------------------------------------------------

@contextmanager
def locked(folder: Path):
    """One prepare per folder at a time (e.g. every torchrun rank auto-preparing at once)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "w")
    except OSError as exc:
        raise UserError(f"cannot create {folder} to prepare the dataset in ({exc.strerror}); "
                        "pass another data.root=") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Progress:
    """prepare.progress.json: per split, the chunks written to its .bin.tmp (and their bytes
    and tokens), under the identity of what decides those bytes. Saved after every chunk, once
    the .bin.tmp is on disk, so the record never claims bytes a crash could lose."""

    def __init__(self, folder: Path, identity: dict):
        self.path, self.identity = folder / PROGRESS, identity
        self.splits: dict = {}

    def load(self, tmp: dict) -> None:
        """Take over a previous prepare's record if it is this prepare's (same identity) and its
        files hold what it claims; else start over (and say why, when there was one)."""
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            saved = {}
        short = [s for s, rec in saved.get("splits", {}).items()
                 if not tmp[s].exists() or tmp[s].stat().st_size < rec["bytes"]]
        if saved.get("identity") != self.identity or short:
            print(f"{self.path.parent}: an unfinished prepare of other inputs (or with missing "
                  "files) was there; starting over")
            self.discard(tmp)
            return
        self.splits = saved["splits"]

    def chunks_done(self, split: str) -> dict:
        return self.splits.get(split, {"chunks": 0, "bytes": 0, "tokens": 0})

    def save(self, split: str, f, chunks: int, tokens: int) -> None:
        f.flush()
        os.fsync(f.fileno())
        self.splits[split] = {"chunks": chunks, "bytes": f.tell(), "tokens": tokens}
        write_atomic(self.path, json.dumps({"identity": self.identity, "splits": self.splits}))

    def discard(self, tmp: dict) -> None:
        for p in [*tmp.values(), self.path]:
            p.unlink(missing_ok=True)
        self.splits = {}


def identity(cfg, paths: list[Path], source: str) -> dict:
    """What decides the bytes a prepare writes: a resume continues only the same prepare."""
    files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return {"name": cfg.name, "tokenizer": cfg.tokenizer, "source": source, "files": files,
            "hf_name": cfg.hf_name, "text_field": cfg.text_field, "val_fraction": cfg.val_fraction,
            "split_seed": cfg.split_seed, "chunk_docs": cfg.chunk_docs, "piece_chars": PIECE_CHARS}


def write_tokens(path: Path, split: str, batches, encode, eot, dtype, bar,
                 progress: Progress) -> tuple[int, str]:
    """Tokenize batch by batch, appending to `path`, from the first chunk `progress` does not
    have; returns (token count, sha256). A failed write (a full disk) is a UserError naming
    the split's file."""
    done = progress.chunks_done(split)
    count, sha = done["tokens"], hashlib.sha256()
    try:
        if done["chunks"]:
            with open(path, "r+b") as f:   # drop a chunk written after the last record
                f.truncate(done["bytes"])
                while block := f.read(1 << 24):
                    sha.update(block)
            print(f"{path.name}: resuming after chunk {done['chunks']} ({count:,} tokens written)")
        with open(path, "ab" if done["chunks"] else "wb") as f:
            for chunk, texts in enumerate(batches(done["chunks"]), start=done["chunks"] + 1):
                ids = encode(texts)
                if eot is not None:
                    for doc in ids:
                        doc.append(eot)
                block = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype).tobytes()
                f.write(block)
                sha.update(block)
                count += len(block) // dtype.itemsize
                progress.save(split, f, chunk, count)
                bar.update(len(texts) if bar.unit == "docs" else sum(map(len, texts)))  # docs or chars
    except OSError as exc:
        raise write_error(path.with_suffix(""), exc) from None
    return count, sha.hexdigest()


def prepare(cfg, *, only_if_missing: bool = False) -> dict:
    """Write <root>/<name>/{train,val}.bin and meta.json; returns the meta."""
    folder = dataset_dir(cfg)
    with locked(folder):
        if only_if_missing and (meta := open_prepared(cfg)) is not None:
            return meta  # another process prepared it while we waited for the lock
        if cfg.shard_repo:
            from data.shards import download_shards
            return download_shards(cfg, folder, prepare_command(cfg))
        return _prepare(cfg, folder)


def _prepare(cfg, folder: Path) -> dict:
    from tqdm.auto import tqdm

    t0 = time.time()
    if cfg.source or cfg.files:
        paths = local_inputs(cfg)
        source = ",".join(str(p.resolve()) for p in paths)
    elif cfg.url:
        paths, source = [download(cfg.url, folder / "input.txt")], cfg.url
    elif cfg.hf_path:
        paths, source = [], f"hub:{cfg.hf_path}"
    else:
        raise UserError(f"data={cfg.name} has no input; pass data.source=<file> or data.files=[...]")
    tables = [p for p in paths if p.suffix in TABLE_FORMATS]
    if tables and len(tables) != len(paths):
        raise UserError(f"data.files mixes raw text and JSONL/parquet "
                        f"({', '.join(map(str, paths))}); use one kind")

    tmp = {s: folder / f"{s}.bin.tmp" for s in SPLITS}
    progress = Progress(folder, identity(cfg, paths, source))
    progress.load(tmp)
    with tempfile.TemporaryDirectory() as cache_dir:  # local tables' Arrow cache, thrown away after
        splits, chars, unit = (table_source(cfg, tables, cache_dir) if tables or not paths
                               else raw_text_source(cfg, paths, PIECE_CHARS))
        encode, eot, vocab_size, extras = make_tokenizer(cfg, chars)
        dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
        tokens, sha256 = {}, {}
        try:
            for split, (total, batches) in splits.items():
                with tqdm(total=total, unit=unit, unit_scale=True, desc=f"{cfg.name} {split}") as bar:
                    if unit == "docs":
                        bar.update(min(total, progress.chunks_done(split)["chunks"] * cfg.chunk_docs))
                    # end-of-text after documents, never inside a raw text's pieces
                    tokens[split], sha256[split] = write_tokens(
                        tmp[split], split, batches, encode, eot if unit == "docs" else None,
                        dtype, bar, progress)
        except UserError:
            progress.discard(tmp)   # a failed write: free the disk (a kill keeps them to resume)
            raise
        # A previous dataset here stays valid until this point; from here until the new
        # meta.json lands the folder is "not prepared".
        (folder / "meta.json").unlink(missing_ok=True)
        for split in SPLITS:
            os.replace(tmp[split], folder / f"{split}.bin")
        progress.path.unlink(missing_ok=True)

    meta = {"name": cfg.name, "tokenizer": cfg.tokenizer, "vocab_size": vocab_size,
            "dtype": dtype.name, "eot_token": eot, "tokens": tokens, "sha256": sha256,
            "source": source, "val_fraction": cfg.val_fraction,
            "split_seed": cfg.split_seed if unit == "docs" else None, **extras}
    # last: from now on the folder is prepared
    write_atomic(folder / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False))
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    print(f"prepared {folder}: train {tokens['train']:,} / val {tokens['val']:,} tokens "
          f"({dtype.name}, vocab {vocab_size}) | {sum(tokens.values()) / seconds:,.0f} tokens/s "
          f"in {seconds:.1f}s | peak memory {peak:,.0f} MiB")
    return meta


def main(argv: list[str] | None = None) -> int:
    from configs import load_config, to_object
    from data.config import PrepareFile  # noqa: F401 (registers configs/prepare.yaml's root)

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    return run_cli(lambda: prepare(to_object(load_config(argv, config_name="prepare")).data))


if __name__ == "__main__":
    sys.exit(main())

"""Where a prepare's documents come from (data/prepare.py turns them into token files): local
raw text or JSONL / parquet tables, a downloaded raw text, or the hub through `datasets`. Each
source gives, per split, its size and an iterator of batches (lists) of texts that can start at
batch k (a resumed prepare skips what it has written)."""
from __future__ import annotations

import itertools
import os
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from configs.errors import UserError

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def readable(path: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{key}={path} does not exist; point it at a text, JSONL or parquet file")
    if p.is_dir():
        raise UserError(f"{key}={path} is a directory; point it at a text, JSONL or parquet file")
    try:
        p.open("rb").close()
    except OSError as exc:
        raise UserError(f"{key}={path} cannot be read ({exc.strerror}); fix its permissions or "
                        "point it at a readable file")
    return p


def local_inputs(cfg) -> list[Path]:
    """The local files a prepare reads (data.source, or data.files), each checked readable."""
    if not (cfg.source or cfg.files):
        return []
    key = "data.source" if cfg.source else "data.files"
    return [readable(p, key) for p in ([cfg.source] if cfg.source else cfg.files)]


def download(url: str, dest: Path) -> Path:
    if dest.exists():
        return dest
    print(f"downloading {url}")
    tmp = dest.with_suffix(".tmp")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not download {url} ({exc}); download it yourself and pass "
                        "data.source=<path>")
    os.replace(tmp, dest)
    return dest


def read_lines(paths):
    for p in paths:
        with open(p, encoding="utf-8") as f:
            try:
                yield from f
            except UnicodeDecodeError as exc:
                raise UserError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                "convert it to UTF-8, or point data.source at a text file")


def text_pieces(paths, start: int, stop: int, piece_chars: int):
    """Characters [start, stop) of the joined files, cut into pieces of about piece_chars at
    "x\\nY" (a lone newline between non-space characters). GPT-2's pre-tokenizer never merges
    across such a newline ("\\n\\n" and "\\n\\xa0" are tokens; other encodings also merge
    " \\n"), so tokenizing piece by piece equals tokenizing the whole span (tested for r50k_base).
    A file without such line ends is read as one piece."""
    buf, size, pos = [], 0, 0
    for line in read_lines(paths):
        part = line[max(start - pos, 0):max(stop - pos, 0)]
        pos += len(line)
        if not part:
            if pos >= stop:
                break
            continue
        last = buf[-1] if buf else ""
        if (size >= piece_chars and len(last) >= 2 and last[-1] == "\n"
                and not last[-2].isspace() and not part[0].isspace()):
            yield "".join(buf)
            buf, size = [], 0
        buf.append(part)
        size += len(part)
    if buf:
        yield "".join(buf)


def batched(iterable, n: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def raw_text_source(cfg, paths, piece_chars: int):
    """(splits, chars, unit): per split (total, batches) of the joined raw text, tokenized in
    pieces of about piece_chars characters."""
    n, chars = 0, set()
    for line in read_lines(paths):
        n += len(line)
        if cfg.tokenizer == "char":
            chars.update(line)
    cut = int(n * (1 - cfg.val_fraction))
    if min(cut, n - cut) == 0:
        raise UserError(f"{', '.join(map(str, paths))} {'holds' if len(paths) == 1 else 'hold'} "
                        f"{n} characters: too few for a train and a val split (data.val_fraction="
                        f"{cfg.val_fraction}); point data.source at more text")
    spans = {"train": (0, cut), "val": (cut, n)}
    # batches(start): the batches from number `start` on (the text before is read and skipped)
    splits = {s: (b - a, lambda start=0, a=a, b=b: itertools.islice(
                  batched(text_pieces(paths, a, b, piece_chars), cfg.chunk_docs), start, None))
              for s, (a, b) in spans.items()}
    return splits, chars, "chars"


@contextmanager
def quiet_datasets():
    """No progress bars or log lines from `datasets` while it reads local files (quick, and a
    file it cannot parse is our one error line, not its log)."""
    import datasets

    bars, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def table_source(cfg, paths, cache_dir):
    """(splits, chars, unit) of a document table: local JSONL/parquet files or the hub."""
    import datasets

    try:
        if paths:
            formats = {TABLE_FORMATS[p.suffix] for p in paths}
            if len(formats) > 1:
                raise UserError(f"data.files mixes JSONL and parquet "
                                f"({', '.join(map(str, paths))}); use one format")
            with quiet_datasets():
                ds = datasets.load_dataset(formats.pop(), data_files=[str(p) for p in paths],
                                           split="train", cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset(cfg.hf_path, cfg.hf_name, split="train",
                                       num_proc=cfg.num_proc if cfg.num_proc > 1 else None)
    except UserError:
        raise
    except Exception as exc:  # network, hub or parse errors: all are about the input
        what = ", ".join(map(str, paths)) or cfg.hf_path
        while exc.__cause__ is not None:   # the reason, not the wrapper
            exc = exc.__cause__
        why = " ".join(str(exc).split())[:300]
        raise UserError(f"could not load {what} ({type(exc).__name__}: {why}); fix the input or "
                        "pass data.source=<local JSONL/parquet file>") from None
    if cfg.text_field not in ds.column_names:
        raise UserError(f"the rows have no column {cfg.text_field!r} (columns: {ds.column_names}); "
                        "set data.text_field")
    ds = ds.select_columns([cfg.text_field])
    try:
        parts = ds.train_test_split(test_size=cfg.val_fraction, seed=cfg.split_seed, shuffle=True)
    except ValueError as exc:
        raise UserError(f"cannot split {len(ds)} documents with data.val_fraction={cfg.val_fraction} ({exc})")
    parts = {"train": parts["train"], "val": parts["test"]}  # nanoGPT renames test to val

    def batches(part, start=0):
        """The batches of chunk_docs documents from number `start` on."""
        for i in range(start * cfg.chunk_docs, len(part), cfg.chunk_docs):
            yield part[i:i + cfg.chunk_docs][cfg.text_field]

    chars = set()
    if cfg.tokenizer == "char":
        for texts in batches(ds):
            chars.update(*texts)
    splits = {s: (len(p), lambda start=0, p=p: batches(p, start)) for s, p in parts.items()}
    return splits, chars, "docs"

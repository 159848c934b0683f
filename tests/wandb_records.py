"""Reading an offline W&B run (<out_dir>/wandb/offline-run-*/run-<id>.wandb) in tests: the file
is W&B's transaction log, a LevelDB-style log of wandb_internal_pb2.Record protobufs (wandb 0.31
has no Python reader of its own; `wandb sync` uploads the same records)."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768        # records are framed in 32 KiB blocks
HEADER = 7           # the file's (":W&B", magic, version) and each chunk's (crc32, length, type)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path, timeout_s: float = 60.0) -> list:
    """The run's records, once W&B's service has written them all (its exit record): it writes
    the file on its own, a little after the run's process is done with it."""
    deadline = time.time() + timeout_s
    while True:
        out = parse(Path(path).read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in out) or time.time() > deadline:
            return out
        time.sleep(0.2)


def parse(data: bytes) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    assert data[:4] == b":W&B", "not a W&B transaction log"
    out, pos, chunks = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:                    # a block's tail too short for a header: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0:                        # zeroes to the end of the block
            pos += left - HEADER
            continue
        chunks += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def offline_runs(out_dir: Path) -> list[Path]:
    """The .wandb files of a run directory, oldest first (a resumed run adds one)."""
    return sorted(Path(out_dir).glob("wandb/offline-run-*/run-*.wandb"))


def history(recs: list) -> list[dict]:
    """Each logged row: {key: value} with W&B's _step."""
    return [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]


def metrics(recs: list) -> dict:
    """define_metric's records by name (or glob)."""
    return {r.metric.name or r.metric.glob_name: r.metric for r in recs
            if r.WhichOneof("record_type") == "metric"}


def run_record(recs: list):
    return next(r.run for r in recs if r.WhichOneof("record_type") == "run")


def config(recs: list) -> dict:
    """The run's config: its run record's, updated by later config records."""
    out = {i.key: json.loads(i.value_json) for i in run_record(recs).config.update}
    for r in recs:
        if r.WhichOneof("record_type") == "config":
            out.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return out

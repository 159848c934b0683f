"""The schemas of the `data` group (DataConfig, one YAML per dataset in configs/data/) and the
`task` group (TaskConfig, configs/task/): torch-free, each validates itself."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from configs.errors import UserError
from configs.schema import register_root


@dataclass
class DataConfig:
    name: str = "shakespeare_char"          # folder name under root
    root: str = "data_cache"                 # prepared datasets live in <root>/<name>/
    tokenizer: str = "char"                  # char | r50k_base (GPT-2 BPE) | any tiktoken encoding
    source: Optional[str] = None             # a local raw text / JSONL / parquet file instead of downloading
    url: Optional[str] = None                # download address of a small raw-text dataset
    hf_path: Optional[str] = None            # hub id for `datasets.load_dataset` (openwebtext)
    hf_name: Optional[str] = None
    text_field: str = "text"                 # the text column of JSONL / parquet / hub rows
    files: List[str] = field(default_factory=list)  # `local`: text, JSONL or parquet paths
    val_fraction: float = 0.1                # share of documents (or of a raw text's characters) held out
    split_seed: int = 2357                   # nanoGPT's seed for the openwebtext val split
    num_proc: int = 2                        # tokenizer threads (and hub download processes)
    chunk_docs: int = 1024                   # documents tokenized per batch while streaming
    auto_prepare: bool = False               # train.py prepares it on first use if missing
    # pre-tokenized shards (data/shards.py), downloaded instead of tokenized: fineweb10B
    shard_repo: Optional[str] = None         # hub dataset repo of the shards (kjj0/fineweb10B-gpt2)
    shards: int = 0                          # train shards 1..N to download and train on (100M tokens each)
    # how train batches are drawn (data/lm.py): random windows, or Track 3's contiguous stream
    sampling: str = "random"                 # random | sequential
    val_tokens: Optional[int] = None         # sequential: val/loss over the first this many val tokens (None: all)

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (exclusive)")
        if self.num_proc < 1 or self.chunk_docs < 1:
            raise UserError(f"data.num_proc={self.num_proc} and data.chunk_docs={self.chunk_docs} "
                            "must both be at least 1")
        if self.sampling not in SAMPLINGS:
            raise UserError(f"data.sampling={self.sampling} is unknown; use {' or '.join(SAMPLINGS)}")
        if self.val_tokens is not None and self.val_tokens < 1:
            raise UserError(f"data.val_tokens={self.val_tokens} must be at least 1 (or null: the "
                            "whole val split)")
        if self.shard_repo and self.shards < 1:
            raise UserError(f"data.shards={self.shards} must be at least 1: the train shards "
                            f"1..N of {self.shard_repo} to download and train on")


SAMPLINGS = ("random", "sequential")


TASKS = ("lm", "grokking")
GROKKING_OPERATIONS = ("division", "addition", "subtraction", "multiplication")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


# Peak bytes per (a, b) pair while data/grokking.py builds the task (int64 tokens and targets,
# the shuffle, the split copies): 146-195 measured at moduli 4001 and 2003; rounded up.
PAIR_BYTES = 200


def physical_memory() -> int:
    """This machine's RAM in bytes (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class TaskConfig:
    """The `task` config group's schema (configs/task/<name>.yaml): what a run learns."""
    name: str = "lm"                     # lm | grokking
    # grokking (configs/task/grokking.yaml, data/grokking.py)
    operation: str = "division"          # division | addition | subtraction | multiplication
    modulus: int = 97
    train_fraction: float = 0.5
    acc_threshold: float = 0.99          # memorization: train accuracy at least this
    stop_when_solved: bool = False       # end the run once val accuracy is 100% (see data/grokking.py)

    def __post_init__(self):
        p, op, frac = self.modulus, self.operation, self.train_fraction
        if self.name not in TASKS:
            raise UserError(f"task.name={self.name} is unknown; use {' or '.join(TASKS)}")
        if op not in GROKKING_OPERATIONS:
            raise UserError(f"task.operation={op!r} is unknown; choose one of: "
                            f"{', '.join(GROKKING_OPERATIONS)}")
        if p < 2:
            raise UserError(f"task.modulus={p} must be at least 2 (97 is the usual choice)")
        if op == "division" and not is_prime(p):
            raise UserError(f"task.modulus={p} is not prime, so {op} mod {p} is undefined for "
                            f"some b; use a prime modulus such as 97 or 113")
        if not 0 < frac < 1:
            raise UserError(f"task.train_fraction={frac} must lie strictly between 0 and 1 "
                            f"(0.5 is the usual choice)")
        if not 0 < self.acc_threshold <= 1:
            raise UserError(f"task.acc_threshold={self.acc_threshold} must lie in (0, 1]")
        pairs = p * (p - 1) if op == "division" else p * p   # b != 0 for division
        need, have = pairs * PAIR_BYTES, physical_memory()
        if have and need > have / 2:
            largest = next(q for q in range(int((have / 2 / PAIR_BYTES) ** 0.5), 1, -1)
                           if is_prime(q))
            raise UserError(f"task.modulus={p}: its {pairs:,} pairs need about {need / 2**30:,.0f} "
                            f"GiB to build (inputs, targets, the shuffled splits), more than half of this machine's "
                            f"{have / 2**30:,.0f} GiB; use a modulus of at most {largest}")
        if not 0 < round(frac * pairs) < pairs:
            raise UserError(f"task.train_fraction={frac} leaves an empty split of the {pairs} "
                            f"pairs mod {p}; use a fraction nearer 0.5 or a larger modulus")


@dataclass
class PrepareFile:
    """The root of configs/prepare.yaml: `python -m data.prepare data=<name> data.<key>=...`
    reads the data group only."""
    data: DataConfig = field(default_factory=DataConfig)


register_root("prepare", PrepareFile, store_as="prepare_schema")

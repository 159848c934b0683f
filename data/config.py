"""The `data` config group's schema: one dataclass, one YAML per dataset in configs/data/."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from configs.errors import UserError


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

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (exclusive)")
        if self.num_proc < 1 or self.chunk_docs < 1:
            raise UserError(f"data.num_proc={self.num_proc} and data.chunk_docs={self.chunk_docs} "
                            "must both be at least 1")

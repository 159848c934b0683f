"""The `data` config group's schema: one dataclass, one YAML per dataset in configs/data/."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class DataConfig:
    name: str = "shakespeare_char"          # folder name under root
    root: str = "data_cache"                 # prepared datasets live in <root>/<name>/
    tokenizer: str = "char"                  # char | r50k_base (GPT-2 BPE)
    source: Optional[str] = None             # local raw file(s) instead of downloading
    url: Optional[str] = None                # download address of a small raw-text dataset
    hf_path: Optional[str] = None            # hub id for `datasets.load_dataset` (openwebtext)
    hf_name: Optional[str] = None
    text_field: str = "text"
    files: List[str] = field(default_factory=list)  # `local`: text, JSONL or parquet paths
    val_fraction: float = 0.1                # share of documents (or text) held out
    split_seed: int = 2357                   # nanoGPT's seed for the openwebtext val split
    num_proc: int = 2                        # tokenizer threads/processes
    chunk_docs: int = 1024                   # documents tokenized per batch while streaming
    auto_prepare: bool = False               # train.py prepares it on first use if missing

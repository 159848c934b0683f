"""Shared test fixtures: the offline stand-ins of ../shared when present, else generated text."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The config roots register on their owners' import (configs/schema.py): load_config in tests
# composes run, sweep and prepare configs.
import data.config  # noqa: E402,F401
import sweeper.config  # noqa: E402,F401
import trainer.config  # noqa: E402,F401

# tiktoken's r50k_base works offline from the shared cache (see ../shared/README.md).
if (SHARED / "tiktoken-cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Tiny Shakespeare from ../shared; skipped where a clone has no ../shared."""
    p = SHARED / "data" / "tinyshakespeare.txt"
    if not p.is_file():
        pytest.skip("../shared/data/tinyshakespeare.txt not present")
    return p


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """About 60 kB of English-like text: the first part of Tiny Shakespeare when present,
    else generated words, so the data pipeline is testable on any clone."""
    out = tmp_path_factory.mktemp("text") / "small.txt"
    src = SHARED / "data" / "tinyshakespeare.txt"
    if src.is_file():
        out.write_text(src.read_text()[:60_000])
    else:
        import random
        rng = random.Random(0)
        words = "the king shall speak of love and war to thee my lord good night".split()
        lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(1000)]
        out.write_text("\n".join(lines))
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread, and tests stay stable on a busy 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Data: `prepare` writes token files, `shards` downloads and checks pre-tokenized shards
(fineweb10B), `lm` serves language-model batches, `grokking` builds the
modular-arithmetic task; `task` defines the Task protocol train.py drives and `build_task`.
The configs (data/config.py) are torch-free; nothing here is imported until asked for."""


def __getattr__(name):
    if name == "build_task":
        from data.task import build_task
        return build_task
    raise AttributeError(name)

"""The registry of the config roots. Each primary config (configs/<name>.yaml) is checked
against a root dataclass its owner registers here, beside the code it configures; this package
imports none of them (it is the bottom layer every package may import):

    config.yaml   RunConfig    trainer/config.py   (model, data, optimizer, task, train, wandb)
    sweep.yaml    SweepFile    sweeper/config.py
    prepare.yaml  PrepareFile  data/config.py      (python -m data.prepare)

The owner's import registers its root: train.py, sweep.py and data.prepare import theirs, and a
load_config of a root nobody registered is one error naming the module to import. Nothing here
imports torch: loading a config is cheap.
"""
from __future__ import annotations

# root name -> (the dataclass, its ConfigStore name, which the YAML's defaults list names)
_ROOTS: dict = {}
# for the error only: the module that registers each root
OWNERS = {"config": "trainer.config", "sweep": "sweeper.config", "prepare": "data.config"}
_stored: set = set()


def register_root(config_name: str, root: type, store_as: str) -> None:
    """`root` checks configs/<config_name>.yaml; its defaults list names it `store_as`."""
    _ROOTS[config_name] = (root, store_as)


def root_of(config_name: str) -> type:
    if config_name not in _ROOTS:
        owner = OWNERS.get(config_name, "the module that defines its root dataclass")
        raise RuntimeError(f"configs/{config_name}.yaml has no schema registered: import {owner} "
                           "first (its import registers the root)")
    return _ROOTS[config_name][0]


def schemas() -> dict:
    """The root dataclass of each registered primary config."""
    return {name: root for name, (root, _) in _ROOTS.items()}


def register_schemas() -> None:
    """Put every registered root into Hydra's ConfigStore (once each)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, (root, store_as) in _ROOTS.items():
        if name not in _stored:
            cs.store(name=store_as, node=root)
            _stored.add(name)

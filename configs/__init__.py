"""Config loading: Hydra's compose API over the YAML groups in this folder.

`load_config(["optimizer=namo_d", "optimizer.lr=3e-3"])` returns a validated, typed config.
The schema (configs/schema.py) is a tree of dataclasses, so a misspelled key, a wrong type or
an unknown group option is rejected here, before any work starts, as one UserError line.
"""
from __future__ import annotations

from pathlib import Path

from configs.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent


def config_groups() -> dict[str, list[str]]:
    """The choices of each config group, e.g. {"optimizer": ["adamw", "muon", ...]}."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONFIG_DIR.iterdir())
        if d.is_dir() and not d.name.startswith("_") and any(d.glob("*.yaml"))
    }


def _describe(exc: BaseException) -> str:
    """One line from Hydra's and OmegaConf's multi-line errors, keeping the useful part."""
    from hydra.errors import MissingConfigException

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        first = first.split(": ", 1)[-1] if first.startswith("In '") else first
        return f"{first}; choose one of: {', '.join(exc.options)}"
    if first.startswith("Could not override"):
        key = first.split("'")[1]
        return (f"unknown config key '{key}' (misspelled?); the keys and their types are in "
                f"configs/schema.py, the choices in `python train.py --help`")
    # Merge errors hide the reason (a type mismatch) in the chained exceptions.
    inner = exc.__cause__ or exc.__context__
    while inner is not None and (inner.__cause__ or inner.__context__) is not None \
            and "$VALUE" not in str(inner.__cause__ or inner.__context__):
        inner = inner.__cause__ or inner.__context__
    if inner is not None and str(inner).strip() not in ("", "None") \
            and not first.startswith(str(inner).strip().splitlines()[0]):
        first += ": " + str(inner).strip().splitlines()[0]
    return first


def load_config(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose `configs/<config_name>.yaml` with command-line style overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from configs.schema import register_schemas, schemas

    register_schemas()
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        OmegaConf.resolve(cfg)
        schema = schemas().get(config_name)
        if schema is not None:  # keys added with `+key=...` must exist in the schema too
            OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(cfg))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"bad config: {_describe(exc)}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def to_object(cfg):
    """The typed dataclass tree behind a composed config (runs __post_init__ checks)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(f"bad config: {_describe(exc)}") from None

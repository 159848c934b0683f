"""Config loading: the YAML groups in this folder, through Hydra's command line (run_hydra: the
@hydra.main application of train.py) or its compose API (load_config: sweep.py, data.prepare,
tests, scripts).

`load_config(["optimizer=namo_d", "optimizer.lr=3e-3"])` returns a validated, typed config.
Its schema is a tree of dataclasses, each defined beside the code it configures and registered
by its owner (configs/schema.py), so a misspelled key, a wrong type or an unknown group option
is rejected, before any work starts, as one UserError line; run_hydra keeps that contract for
Hydra's whole command line (-m, --cfg, --info, -sc, hydra.*). This package imports no other
package of the project: every package may import it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

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
    if first.startswith("Ambiguous value"):   # a sweep (a,b) outside -m
        return (f"{first}: add -m (--multirun) to run one job per value, or write a list as "
                f"key=[a,b]")
    if first.startswith("Could not override"):
        key = first.split("'")[1]
        return (f"unknown config key '{key}' (misspelled?); the keys and their types are in "
                f"the config dataclasses (configs/schema.py lists them), the choices in "
                f"`python train.py --help`")
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
    """Compose `configs/<config_name>.yaml` with command-line style overrides, resolved and
    checked as a Hydra run would be (out_dir: hydra.run.dir, as no job runs here)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    from configs.schema import register_schemas, root_of

    root_of(config_name)   # registered by its owner's import, or a RuntimeError naming it
    register_schemas()
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        with read_write(cfg), open_dict(cfg):   # as Hydra's run_job does before a job starts
            cfg.hydra.runtime.output_dir = os.path.abspath(cfg.hydra.run.dir)
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"bad config: {_describe(exc)}") from None
    try:
        check(cfg, config_name)
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
    return cfg


def check(cfg, config_name: str = "config") -> None:
    """Resolve `cfg` in place (in a Hydra job, or with HydraConfig set: ${hydra:...}) and check
    it against its schema again: keys added with `+key=...` must exist in the schema too."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from configs.schema import schemas

    try:
        OmegaConf.resolve(cfg)
        schema = schemas().get(config_name)
        if schema is not None:
            OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(cfg))
    except OmegaConfBaseException as exc:
        raise UserError(f"bad config: {_describe(exc)}") from None


def run_hydra(app: Callable[[], None], argv: list[str], prog: str) -> int:
    """Run the @hydra.main function `app` (train.py's job) on `argv`, all of Hydra's command
    line, keeping this project's contract: bad input (an unknown option, an override that does
    not parse, a key or choice that does not exist, a wrong type or value, or the UserError of a
    job) is one UserError line for run_cli (exit 2) instead of Hydra's several lines and exit 1,
    and a refused run leaves no directory behind. Returns the exit code: 0, or that of a
    SystemExit (--help: 0; a job ends the process with its own: 2 bad input, 3 interrupted)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from configs.schema import register_schemas

    try:
        args, extra, made = run_directory(argv, prog)
    except SystemExit as exc:   # --version
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    # argparse takes one run of positional overrides: the extra ones go right after the user's
    at = len(argv) - argv[::-1].index(args.overrides[-1]) if args.overrides else len(argv)
    register_schemas()
    saved = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [prog, *argv[:at], *extra, *argv[at:]]
    os.environ["HYDRA_FULL_ERROR"] = "1"   # Hydra raises instead of printing and exiting 1
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except (HydraException, OmegaConfBaseException) as exc:
        if raised_in(exc, getattr(app, "__wrapped__", app)):
            raise   # a crash of the job (its own bad input is a SystemExit(2)), not bad input
        code = 2  # Hydra's: e.g. a job of -m whose overrides do not compose
        raise UserError(f"bad config: {_describe(exc)}") from None
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved[1]
        for d in made if code == 2 else []:   # a refused run leaves no empty directory
            try:
                d.rmdir()
            except OSError:   # not empty: kept
                break
    return code


def run_directory(argv: list[str], prog: str):
    """Hydra's parse of `argv` (its errors one line) and the checks before Hydra runs: the
    config of a run (and of --cfg) checked as a run checks it, and a run's directory made, as
    Hydra makes it before the job starts, from the resolved out_dir, which is Hydra's run
    directory too (one timestamp for both). Returns (Hydra's arguments, the overrides to add,
    the directories made: deepest first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.main import get_args_parser


    parser = get_args_parser()

    def refuse(message: str):
        if message.startswith("unrecognized arguments") and "=" in message:
            message += " (the key=value overrides come in one run, after or before the options)"
        raise UserError(f"{message}; see `python {prog} --help`")
    parser.error = refuse        # argparse would print its usage and the error: two lines
    args = parser.parse_args(argv)
    given = {}
    for arg in args.overrides:
        try:
            o = OverridesParser.create().parse_override(arg)
        except HydraException as exc:
            raise UserError(f"cannot parse {arg!r} ({_describe(exc)}); quote a value with "
                            "special characters (key='a b'), see Hydra's override grammar: "
                            "https://hydra.cc/docs/advanced/override_grammar/basic") from None
        given[o.key_or_group] = o
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.multirun and torchrun:
        raise UserError("-m under torchrun would run every job in every process; use sweep.py "
                        "for jobs of several processes (sweep.nproc_per_run=N)")
    if args.multirun and "out_dir" in given and not given["out_dir"].is_sweep_override() \
            and "${" not in given["out_dir"].input_line:
        raise UserError("with -m each job's out_dir is its own directory under hydra.sweep.dir; "
                        "pass hydra.sweep.dir=... instead of out_dir=...")
    run = not (args.multirun or args.cfg or args.info or args.shell_completion or args.help
               or args.hydra_help)
    if not (run or args.cfg):
        return args, [], []
    out_dir = Path(to_object(load_config(args.overrides)).out_dir).absolute()
    extra = [f"hydra.runtime.output_dir='{quoted(out_dir)}'"] if args.cfg else []  # --resolve
    if "hydra.run.dir" in given:
        return args, extra, []
    if run and torchrun and int(os.environ["RANK"]) > 0 and "out_dir" not in given:
        out_dir = Path(".")   # not its own clock's: rank 0 broadcasts its out_dir
    made = [d for d in (out_dir, *out_dir.parents) if run and not d.exists()]
    if run:
        make_out_dir(out_dir)
    return args, [*extra, f"hydra.run.dir='{quoted(out_dir)}'"], made


def make_out_dir(out_dir: Path) -> Path:
    """Create out_dir (and its parents); a path that is not a directory or cannot be created is
    a UserError."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir={out_dir} exists and is not a directory; pass another out_dir=")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create out_dir={out_dir} ({exc.strerror}); pass another "
                        "out_dir=") from None
    return out_dir


def raised_in(exc: BaseException, function: Callable) -> bool:
    """Whether `exc` was raised inside a call of `function`."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not function.__code__:
        tb = tb.tb_next
    return tb is not None


def quoted(path: Path) -> str:
    """`path` inside a single-quoted value of a Hydra override."""
    return str(path).replace("\\", "\\\\").replace("'", "\\'")


def to_object(cfg):
    """The typed dataclass tree behind a composed config (runs __post_init__ checks)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(f"bad config: {_describe(exc)}") from None

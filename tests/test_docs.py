"""The docs hold together: every relative link of README.md and docs/ resolves, the results index
(docs/results/README.md) links every study folder and no other, and the commands the README and
the guides show compose (train.py's config is checked; a sweep's points are made and one run of
each curve composed, nothing runs). Fast: no training, no data read."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import train  # noqa: F401  (registers RunConfig, the root load_config checks)
from configs import load_config
from sweeper.config import load_sweep, lr_grids
from sweeper.points import canonical, make_points, split_args, validate_points

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), RESULTS / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links that point into the repository, anchors cut."""
    targets = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#")[0])
    return targets


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_results_index_lists_every_study_folder():
    folders = {p.name for p in RESULTS.iterdir() if p.is_dir()}
    linked = {Path(t).parts[0] for t in relative_links(RESULTS / "README.md")
              if len(Path(t).parts) > 1}   # into a study's folder (RERUNS.md is a page)
    assert linked == folders, (f"not in the index: {sorted(folders - linked)}; "
                               f"in the index but no folder: {sorted(linked - folders)}")
    # each study's own README, the link the table row gives
    for name in folders:
        assert (RESULTS / name / "README.md").is_file(), name
        assert f"]({name}/README.md)" in (RESULTS / "README.md").read_text(), name


def commands(page: Path) -> list[list[str]]:
    """The shell commands of a page's ```bash blocks, continuation lines joined, comments cut."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if words:
                out.append(words)
    return out


def placeholder(words: list[str]) -> bool:
    """A command written with a stand-in the reader fills in (`...`, `<out_dir>`, path/to)."""
    return any("..." in w or "<" in w or "path/to" in w for w in words)


def train_commands(pages) -> list[tuple[str, list[str]]]:
    """(page, overrides) of every train.py command that runs one job (no -m, -sc, --info),
    each once."""
    out = []
    for page in pages:
        for words in commands(page):
            if "train.py" not in words or placeholder(words):
                continue
            args = words[words.index("train.py") + 1:]
            if any(a in ("-m", "--multirun", "-sc", "--info") for a in args):
                continue
            args = [a for a in args if not a.startswith("-") and a not in ("job", "hydra", "all")]
            if args not in [a for _, a in out]:
                out.append((page.name, args))
    return out


def sweep_commands(pages) -> list[tuple[str, list[str]]]:
    """(page, args) of every sweep.py command that launches or plans a preset, each once."""
    out = []
    for page in pages:
        for words in commands(page):
            if "sweep.py" not in words or placeholder(words):
                continue
            args = words[words.index("sweep.py") + 1:]
            if args and args[0] in ("plan", "run"):
                args = args[1:]
            if not args or "=" not in args[0] or not any(a.startswith("sweep=") for a in args):
                continue    # report / export-wandb read a finished sweep's directory
            if args not in [a for _, a in out]:
                out.append((page.name, args))
    return out


TRAIN = train_commands(PAGES[:-1])
SWEEPS = sweep_commands(PAGES[:-1])


def test_the_quick_start_and_tour_are_checked():
    readme = [args for page, args in TRAIN + SWEEPS if page == "README.md"]
    assert [] in readme                                     # `python train.py`, the default job
    assert ["optimizer=namo_d", "optimizer.lr=3e-3"] in readme
    assert any("sweep=cpu_decisive" in a for a in readme)
    assert any("sweep=track3" in a for a in readme)


@pytest.mark.parametrize("page,args", TRAIN, ids=[f"{p}: {' '.join(a)}" for p, a in TRAIN])
def test_train_commands_compose(page, args):
    load_config(args)


@pytest.mark.parametrize("page,args", SWEEPS, ids=[f"{p}: {' '.join(a)}" for p, a in SWEEPS])
def test_sweep_commands_compose(page, args, tmp_path):
    """The sweep file takes the command's sweep.* keys, and one run of each curve composes with
    its train.py overrides (what `python sweep.py` checks before launching; no data is read)."""
    sweep_args, train_args = split_args(args)
    cfg, _ = load_sweep(sweep_args)
    points = make_points(cfg, lr_grids(cfg), canonical(list(cfg.overrides) + train_args))
    assert points
    validate_points(points, [], tmp_path, check_data=False)

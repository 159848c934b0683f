"""The GPU presets are the published runs: each preset's composed config (what `python train.py
--cfg job` prints for one of its points) carries the values the authors' code sets, written out
here from their files; and our training loop replays the authors' own 20 steps (the fixture
scripts/compare_published.py made from their code, tests/fixtures/published_equivalence.pt)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from sweeper.points import plan

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "published_equivalence.pt"
NAMO_AT = "minxin-zhg/namo@a3f37b01dc8addf1a626be851168a8cacdcd34f9"
BEYOND_AT = "Ocram7/BeyondMuon@56dd187895a3bff0f96ed82354eec40aec997cfa"

# Read from their files at those commits. NAMO: src/hydra_configs/{main,model/gpt2-s,optim/*}.yaml
# and scripts/sweeps/{adam,muon,namo,namo_d,gpt2m_*}.yaml; src/train_gpt2.py (warmup s / warmup,
# AdamW without decay on wte, wpe, lm_head); nanogpt/model.py (nn.GELU()).
NAMO_SHARED = {"model.bias": False, "model.gelu": "exact", "model.dropout": 0.0,
               "train.block_size": 1024, "train.max_iters": 10000, "train.schedule": "constant",
               "train.warmup_iters": 2000, "train.warmup_from_zero": True, "train.grad_clip": 1.0,
               "train.eval_interval": 500, "train.eval_iters": 200, "dtype": "bfloat16",
               "compile": "true", "optimizer.betas": [0.9, 0.95]}
NAMO_OPTIM = {  # their optim/*.yaml: lr is swept; the rest fixed
    "adamw": {"optimizer.weight_decay": 0.1, "optimizer.decay_embeddings": False},
    "muon": {"optimizer.weight_decay": 0.1, "optimizer.momentum": 0.95, "optimizer.nesterov": True,
             "optimizer.vector_weight_decay": 0.0, "optimizer.vector_lr": None,
             "optimizer.ns_steps": 5, "optimizer.scale": "moonlight"},
    "namo": {"optimizer.weight_decay": 0.1, "optimizer.momentum": 0.95, "optimizer.mu2": 0.99,
             "optimizer.vector_weight_decay": 0.0, "optimizer.vector_lr": None,
             "optimizer.decay_style": "adaptive", "optimizer.eps": 1e-8},
    "namo_d": {"optimizer.weight_decay": 0.1, "optimizer.momentum": 0.95, "optimizer.mu2": 0.99,
               "optimizer.vector_weight_decay": 0.0, "optimizer.vector_lr": None,
               "optimizer.decay_style": "adaptive", "optimizer.eps": 1e-8},
}
NAMO_GRID = [5e-4, 6e-4, 9e-4, 1.3e-3, 1.8e-3, 2.5e-3, 3.5e-3, 5e-3, 7e-3, 9e-3]
MEDIUM = {"model.n_layer": 24, "model.n_head": 16, "model.n_embd": 1024, "train.batch_size": 40,
          "train.grad_accum_steps": 12}
MEDIUM_GRID = {"adamw": [6e-4, 9e-4, 1.3e-3, 1.8e-3, 2.5e-3], "muon": [6e-4, 9e-4, 1.3e-3, 1.8e-3, 2.5e-3],
               "namo": [5e-3, 7e-3, 9e-3, 1.2e-2, 1.5e-2], "namo_d": [5e-3, 7e-3, 9e-3, 1.2e-2, 1.5e-2]}
CLAMPS = [0.12, 0.40, 0.75, 0.90]     # gpt2m_namo_d.yaml's optim.col_state_clamp_c

# BeyondMuon: train.py's defaults and config/gpt-124M-NS/*.py; the grids from assets/*.png.
SPECTRAL_SHARED = {"model.n_layer": 12, "model.n_head": 12, "model.n_embd": 768, "model.bias": False,
                   "model.gelu": "exact", "model.dropout": 0.0, "train.block_size": 1024,
                   "train.batch_size": 30, "train.grad_accum_steps": 16, "train.max_iters": 200000,
                   "train.schedule": "cosine", "train.warmup_iters": 2000,
                   "train.warmup_from_zero": False, "train.grad_clip": 1.0,
                   "train.eval_interval": 1000, "train.eval_iters": 200,
                   "optimizer.weight_decay": 0.0, "optimizer.vector_weight_decay": 0.0,
                   "optimizer.route": "all_2d", "optimizer.split_qkv": True,
                   "optimizer.betas": [0.9, 0.95], "dtype": "bfloat16", "compile": "true"}
SPECTRAL = {  # name: (matrix lr grid, vector lr, absolute min lr, extra)
    "adam": ([6e-4, 3e-3, 4e-3, 6e-3, 8e-3, 1e-2], 3e-4, 3e-6, {"optimizer.eps": 1e-8}),
    "adams": ([6e-4, 6e-3, 8e-3, 9e-3, 1e-2, 2e-2], 3e-4, 3e-6, {}),
    "adamq": ([6e-4, 6e-3, 1e-2, 2e-2, 3e-2, 4e-2], 6e-4, 3e-6, {}),
    "adamz": ([1e-3, 3e-3, 6e-3, 7e-3, 8e-3, 1e-2], 3e-4, 3e-6,
              {"optimizer.ns_steps": 15, "optimizer.scale": "original"}),
    "msgd": ([0.1, 0.5, 1.0, 2.0, 5.0, 10.0], 3e-4, 1e-6, {"optimizer.momentum": 0.9}),
    "msgds": ([1e-2, 3e-2, 1e-1, 1.25e-1, 2e-1, 3e-1], 3e-4, 1e-6, {"optimizer.momentum": 0.9}),
    "msgdq": ([3e-3, 6e-3, 1e-2, 3e-2, 4e-2, 5e-2], 3e-4, 1e-6, {"optimizer.momentum": 0.9}),
    "msgdz": ([3e-3, 6e-3, 7e-3, 8e-3, 9e-3, 1e-2], 3e-4, 1e-6,
              {"optimizer.momentum": 0.9, "optimizer.ns_steps": 15, "optimizer.scale": "original"}),
}


def cfg_job(overrides: list[str], capsys) -> dict:
    """What `python train.py --cfg job <overrides>` prints, parsed."""
    capsys.readouterr()
    assert train.main(["--cfg", "job", *overrides]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def same(ours, published) -> bool:
    if isinstance(published, (float, list)):
        return ours == pytest.approx(published)
    if isinstance(published, str):   # compile=true reaches --cfg job as Hydra parsed it ("True")
        return str(ours).lower() == published
    return ours == published


def check(cfg: dict, expected: dict) -> None:
    wrong = {k: (get(cfg, k), v) for k, v in expected.items() if not same(get(cfg, k), v)}
    assert not wrong, f"(ours, published): {wrong}"


def points(preset: str):
    return plan([f"sweep={preset}"], []).points


@pytest.mark.parametrize("preset,size,grid", [
    ("namo_gpt2", {"model.n_layer": 12, "model.n_head": 12, "model.n_embd": 768,
                   "train.batch_size": 60, "train.grad_accum_steps": 8}, None),
    ("namo_gpt2_medium", MEDIUM, MEDIUM_GRID)])
def test_namo_presets_are_the_published_runs(preset, size, grid, capsys):
    pts = points(preset)
    assert {p.optimizer for p in pts} == set(NAMO_OPTIM)
    for opt in NAMO_OPTIM:
        lrs = sorted({p.lr for p in pts if p.optimizer == opt})
        assert lrs == pytest.approx(grid[opt] if grid else NAMO_GRID)
        one = next(p for p in pts if p.optimizer == opt)
        cfg = cfg_job(one.overrides, capsys)
        check(cfg, {**NAMO_SHARED, **size, **NAMO_OPTIM[opt]})
        tokens = get(cfg, "train.batch_size") * get(cfg, "train.grad_accum_steps") * 1024
        assert tokens == 491_520   # 4 GPUs x (60 x 2 | 40 x 3) sequences x 1024
    if preset == "namo_gpt2_medium":   # NAMO-D over their clamp grid, each lr
        seen = {(p.lr, cfg_c) for p in pts if p.optimizer == "namo_d"
                for cfg_c in [p.grid.get("optimizer.clamp_c")]}
        assert sorted({c for _, c in seen}) == pytest.approx(CLAMPS) and len(seen) == 20


def test_namo_clamp_is_the_published_clamp_sweep(capsys):
    pts = points("namo_clamp")
    assert sorted({p.grid["optimizer.clamp_c"] for p in pts}) == pytest.approx(CLAMPS)
    assert sorted({p.lr for p in pts}) == pytest.approx(MEDIUM_GRID["namo_d"])
    check(cfg_job(pts[0].overrides, capsys), {**NAMO_SHARED, **MEDIUM, **NAMO_OPTIM["namo_d"]})


@pytest.mark.parametrize("preset,steps", [("spectral_gpt2", 200000), ("spectral_gpt2_10k", 10000)])
def test_spectral_presets_are_the_published_runs(preset, steps, capsys):
    pts = points(preset)
    for name, (grid, vector_lr, min_lr, extra) in SPECTRAL.items():
        mine = [p for p in pts if p.optimizer == name]
        assert sorted(p.lr for p in mine) == pytest.approx(grid)
        cfg = cfg_job(mine[0].overrides, capsys)
        check(cfg, {**SPECTRAL_SHARED, "train.max_iters": steps, "optimizer.vector_lr": vector_lr,
                    "train.min_lr": min_lr, **extra})
        assert get(cfg, "train.batch_size") * get(cfg, "train.grad_accum_steps") * 1024 == 491_520


# ---- the authors' own steps, replayed -------------------------------------------------------

@pytest.fixture(scope="module")
def published():
    spec = importlib.util.spec_from_file_location("compare_published",
                                                  REPO / "scripts" / "compare_published.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_published"] = module
    spec.loader.exec_module(module)
    return module, torch.load(FIXTURE, weights_only=True)


def test_fixture_names_the_authors_commits(published):
    module, fx = published
    assert {f"{r}@{c}" for r, c in zip(("minxin-zhg/namo", "Ocram7/BeyondMuon"),
                                       (fx["commits"]["namo"], fx["commits"]["beyondmuon"]))} \
        == {NAMO_AT, BEYOND_AT} == set(module.COMMITS.values())
    assert set(fx["cases"]) == {"adamw", "muon", "namo", "namo_d", "adam", "adamz", "msgd"}


@pytest.mark.parametrize("name", ["adamw", "muon", "namo", "namo_d", "adam", "adamz", "msgd"])
def test_our_loop_replays_the_authors_20_steps(published, name, tmp_path):
    """Their script's per-step losses on the fixture's batches from its weights (made by
    scripts/compare_published.py from their code): ours within 1e-5 at every step, and the final
    weights' per-tensor sums of squares within 1e-4 (relative)."""
    module, fx = published
    case = fx["cases"][name]
    batches = [(x.long(), y.long()) for x, y in fx["train"]]
    ours = module.run_ours(case["overrides"], fx["init"], batches, tuple(t.long() for t in fx["val"]),
                           fx["vocab"], tmp_path)
    diffs = [abs(a - b) for a, b in zip(ours["losses"], case["losses"])]
    assert len(diffs) == fx["steps"] and max(diffs) <= 1e-5, diffs
    mine = module.fingerprint(ours["state"])
    for key, (sumsq, _) in case["fingerprint"].items():
        assert mine[key][0] == pytest.approx(sumsq, rel=1e-4), key


def test_p0_newton_schulz_is_theirs_in_float64(published):
    """Their 15-step quintic (AdamZ's p = 0) on an update with zero rows, run in float64 by the
    script: ours gives the same matrix to rounding (in float32 the two association orders differ
    by as much as one input ulp moves either: the table's kernel line)."""
    from optim.spectral import newton_schulz
    _, fx = published
    G = fx["kernel"]["input"]
    ours = newton_schulz(G, steps=15, dtype=torch.float64)
    assert (ours - fx["kernel"]["theirs_float64"]).abs().max().item() < 1e-12

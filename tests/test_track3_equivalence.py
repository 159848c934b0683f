"""Track 3's code, replayed without a checkout: the fixture scripts/compare_track3.py made from
modded-nanogpt's train_gpt_simple.py (its commit recorded) holds their initial weights'
fingerprint, their logits and summed loss on one batch, and their losses and weights over 20
steps of result #36 (track3_baseline) and of AdamW on their groups. Ours must give the same."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import compare_track3 as ct  # noqa: E402
import compare_published as cp  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "track3_equivalence.pt"


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def our_init():
    model = ct.our_model()   # our Track3GPT from the same seed, at the script's size
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fixture_names_their_commit(fx):
    assert f"KellerJordan/modded-nanogpt@{fx['commit']}" == ct.COMMIT
    assert fx["file"] == "records/track_3_optimization/train_gpt_simple.py"


def test_same_seed_same_initial_weights(fx):
    _, init = our_init()
    mine = cp.fingerprint(init)
    assert mine.keys() == fx["init"].keys()
    for key, (sumsq, signed) in fx["init"].items():
        assert mine[key] == pytest.approx([sumsq, signed], rel=1e-12, abs=1e-12), key


def test_logits_and_summed_loss_on_one_batch(fx):
    model, _ = our_init()
    with torch.no_grad():   # the script's random head (theirs starts at zero)
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape,
                                               generator=torch.Generator().manual_seed(1)) * 0.05)
        x, y = (t.long() for t in fx["train"][0])
        logits, loss = model(x, y, return_logits=True)
    want = fx["logits"]
    assert ((logits - want).abs().max() / want.abs().max()).item() < 1e-5
    assert loss.item() == pytest.approx(fx["loss_sum"] / y.numel(), rel=1e-5)


@pytest.mark.parametrize("case", ["track3_baseline", "adamw"])
def test_our_loop_takes_their_steps(fx, case, tmp_path):
    """Their per-step losses within 1e-5 (relative) for 20 steps; the weights after their first
    step and after the last within 1e-4 (relative sums of squares per tensor)."""
    _, init = our_init()
    c = fx["cases"][case]
    batches = [(a.long(), b.long()) for a, b in fx["train"]]
    val = tuple(t.long() for t in fx["val"])
    run = cp.run_ours(c["overrides"], init, batches, val, fx["vocab"], tmp_path / "all",
                      steps=ct.STEPS, accum=ct.ACCUM, block=ct.BLOCK)
    rel = [abs(a - b) / b for a, b in zip(run["losses"], c["losses"])]
    assert max(rel) <= 1e-5, rel
    one = cp.run_ours(c["overrides"] + ["train.max_iters=1"], init, batches, val, fx["vocab"],
                      tmp_path / "one", steps=1, accum=ct.ACCUM, block=ct.BLOCK)
    for state, key in ((one["state"], "first"), (run["state"], "final")):
        mine = cp.fingerprint(state)
        for name, (sumsq, _) in c[key].items():
            assert mine[name][0] == pytest.approx(sumsq, rel=1e-4, abs=1e-12), (key, name)

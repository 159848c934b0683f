"""The hyperball names of issue 28 (muonh, adamh, normuonh: Track 3's results #5, #4, #8) against
float64 references written here from the records' equations (not calling optim/), on GPT-2's
(= Track 3's) hidden shapes and on the reduced Track 3 model's; the norm of every hidden matrix
preserved to 1e-12; the records' own code through tests/fixtures/hyperball.pt
(scripts/compare_hyperball.py); resume; bad input. 2 ranks == 1 process and ZeRO-1 are in
tests/test_muon_family.py (VARIANTS) and tests/test_distributed_optim.py."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from configs import load_config, to_object
from configs.errors import UserError
from optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
NAMES = ["muonh", "adamh", "normuonh"]
GPT2_SHAPES = [(768, 768), (3072, 768), (768, 3072)]          # q / k / v / attn.proj, mlp.fc, mlp.proj
TRACK3_MINI_SHAPES = [(256, 256), (256, 256), (1024, 256), (256, 1024)]   # model.n_embd=256


def quiet(*args, **kwargs):
    pass


def yaml_config(name, *overrides):
    return to_object(load_config([f"optimizer={name}", *overrides])).optimizer


# ---- the records' equations in float64 ---------------------------------------------------------

def ref_hyperball(W, U, lr, eps=1e-10):
    """scale_invariant_update_: W' = W - lr U ||W|| / max(||U||, eps), back to radius ||W||."""
    r = W.norm()
    new = W - lr * U * r / max(U.norm(), eps)
    return new / max(new.norm(), eps) * r


def ref_newton_schulz(G, steps, eps=1e-7):
    """zeropower_via_newtonschulz5: the cubic (2, -1.5, 0.5) on the wide orientation."""
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = 2 * X + (-1.5 * A + 0.5 * A @ A) @ X
    return X.T if tall else X


class Reference:
    """One record's optimizer on one matrix, in float64, with its own state."""
    def __init__(self, name, shape, ns_steps=12):
        self.name, self.ns_steps, self.t = name, ns_steps, 0
        m, n = shape
        self.M = torch.zeros(shape, dtype=torch.float64)     # momentum / Adam's m
        self.V = torch.zeros(shape, dtype=torch.float64)     # Adam's v
        self.v = torch.zeros((m, 1) if m >= n else (1, n), dtype=torch.float64)   # NorMuonH's

    def direction(self, G):
        self.t += 1
        m, n = G.shape
        if self.name == "adamh":   # betas (0.9, 0.95), eps 1e-8, bias-corrected
            self.M = 0.9 * self.M + 0.1 * G
            self.V = 0.95 * self.V + 0.05 * G * G
            return (self.M / (1 - 0.9 ** self.t)) / ((self.V / (1 - 0.95 ** self.t)).sqrt() + 1e-8)
        self.M = self.M + 0.05 * (G - self.M)               # mu 0.95
        O = ref_newton_schulz(G + 0.95 * (self.M - G), self.ns_steps) * math.sqrt(max(1, m / n))
        if self.name == "muonh":
            return O
        v_new = (O * O).mean(dim=1 if m >= n else 0, keepdim=True)   # beta2 0.95, eps 1e-10
        self.v = self.v + 0.05 * (v_new - self.v)
        return O / self.v.clamp_min(1e-10).sqrt()

    def step(self, W, G, lr):
        return ref_hyperball(W, self.direction(G), lr)


def run_both(name, shapes, steps, ns_steps, seed=0):
    """Ours (float64 weights; Newton-Schulz in float32, its widest) and the references on the
    same matrices and gradients, at the YAML's lr times a falling factor; the weights of both
    after every step."""
    g = torch.Generator().manual_seed(seed)
    W0 = [0.02 * torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
             for _ in range(steps)]
    cfg = yaml_config(name, "optimizer.ns_dtype=float32", f"optimizer.ns_steps={ns_steps}")
    model = torch.nn.Module()
    model.ws = torch.nn.ParameterList(torch.nn.Parameter(w.clone()) for w in W0)
    opt = build_optimizer(model, cfg, log=quiet)
    refs, W = [Reference(name, s, ns_steps) for s in shapes], [w.clone() for w in W0]
    ours_after, refs_after = [], []
    for t, step_grads in enumerate(grads):
        lr = cfg.lr * (1 - t / (steps + 1))
        for p, G in zip(model.ws, step_grads):
            p.grad = G.clone()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * (1 - t / (steps + 1))
        opt.step()
        W = [r.step(w, G, lr) for r, w, G in zip(refs, W, step_grads)]
        ours_after.append([p.detach().clone() for p in model.ws])
        refs_after.append(W)
    return W0, ours_after, refs_after


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# float32 Newton-Schulz against float64: ~1e-6 of the step; Adam's update is float64 throughout
STEP_TOL = {"muonh": 2e-5, "adamh": 1e-12, "normuonh": 2e-5}


@pytest.mark.parametrize("name", NAMES)
def test_one_step_on_gpt2_shapes(name):
    """One step on 768x768, 3072x768, 768x3072 (Newton-Schulz cut to 2 steps: the matmuls of 12
    take a minute here; the link is the same): the step W_1 - W_0 matches the record's equations,
    and every matrix keeps its norm to 1e-12."""
    W0, ours, refs = run_both(name, GPT2_SHAPES, steps=1, ns_steps=2)
    for w0, a, b in zip(W0, ours[0], refs[0]):
        assert rel(a - w0, b - w0) < STEP_TOL[name], (name, a.shape, rel(a - w0, b - w0))
        assert abs(a.norm() / w0.norm() - 1).item() < 1e-12, (name, a.shape)
        # the step has the size the records give it: lr ||W|| before the renormalization
        assert (a - w0).norm().item() == pytest.approx(0.018 * w0.norm().item(), rel=2e-4)


@pytest.mark.parametrize("name", NAMES)
def test_several_steps_on_track3_shapes(name):
    """4 steps with the record's 12 Newton-Schulz steps on the reduced Track 3 model's hidden
    shapes (q/k/v/attn.proj, mlp.fc, mlp.proj at width 256), a falling lr: the weights after
    every step match the references and keep their norms to 1e-12."""
    W0, ours, refs = run_both(name, TRACK3_MINI_SHAPES, steps=4, ns_steps=12, seed=1)
    for t, (step_ours, step_refs) in enumerate(zip(ours, refs)):
        for w0, a, b in zip(W0, step_ours, step_refs):
            assert rel(a - w0, b - w0) < STEP_TOL[name], (name, t, a.shape, rel(a - w0, b - w0))
            assert abs(a.norm() / w0.norm() - 1).item() < 1e-12, (name, t, a.shape)


# ---- the records' own code: tests/fixtures/hyperball.pt ------------------------------------------

@pytest.fixture(scope="module")
def fixture():
    return torch.load(REPO / "tests/fixtures/hyperball.pt", weights_only=True)


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_records_code(name, fixture):
    """Our name, the YAML's hyperparameters (float32, NS in float32), replays the record's own
    optimizer class (scripts/compare_hyperball.py ran it at the commit the fixture names) to
    1e-5 relative, per matrix, after the first and the last step; the steps themselves
    (W_t - W_0) to 2e-5."""
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_hyperball as ch
    assert fixture["commit"] == ch.COMMIT.split("@")[1] and fixture["steps"] == ch.STEPS
    assert fixture["cases"][name]["file"] == ch.RECORDS[name][0]
    ours, theirs, w0 = ch.run_ours(name), fixture["cases"][name], ch.matrices()
    for when in ("first", "final"):
        for w, a, b in zip(w0, ours[when], theirs[when]):
            assert rel(a.double(), b.double()) < 1e-5, (name, when, a.shape)
            assert rel(a.double() - w.double(), b.double() - w.double()) < 2e-5, (name, when)


@pytest.mark.parametrize("name", NAMES)
def test_the_records_init(name, fixture):
    """model.init=normal_scaled (#5) / torch_scaled (#4, #8) gives, from the same seed, the
    initial weights the record's own init section gave (fingerprints to 1e-12); the default init
    (projections and head zero) does not."""
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_hyperball as ch
    import compare_published as cp
    want = fixture["inits"][name]
    assert want["file"] == ch.RECORDS[name][0] and want["init"] == ch.INITS[name]
    mine = cp.fingerprint(ch.our_init(ch.INITS[name]))
    assert mine.keys() == want["fingerprint"].keys()
    for key, pair in want["fingerprint"].items():
        assert mine[key] == pytest.approx(pair, rel=1e-12, abs=1e-12), (name, key)
    default = cp.fingerprint(ch.our_init("default"))
    assert default["blocks.0.attn.proj.weight"][0] == 0 != want["fingerprint"]["blocks.0.attn.proj.weight"][0]


def test_init_is_track3_only():
    with pytest.raises(UserError, match="model.init=normal_scaled is an init of model.arch=track3"):
        to_object(load_config(["model.init=normal_scaled"]))
    with pytest.raises(UserError, match="model.init='kaiming' is not one of"):
        to_object(load_config(["model=track3_mini", "model.init=kaiming"]))


# ---- the Track 3 model, resume, bad input ---------------------------------------------------------

def track3_mini():
    from model import build_model
    from model.config import GPTConfig
    cfg = to_object(load_config(["model=track3_mini", "model.arch=track3", "model.n_layer=1",
                                 "model.n_embd=128", "model.head_dim=64"]))
    torch.manual_seed(0)
    return build_model(GPTConfig(**{**vars(cfg.model), "block_size": 16, "vocab_size": 65}))


@pytest.mark.parametrize("name", NAMES)
def test_track3_model_routing_and_zero_matrices(name):
    """On model=track3 the chain takes exactly the blocks' matrices and keeps their norms; its
    init's zero projections are logged (they stay zero under the hyperball step)."""
    model, lines = track3_mini(), []
    opt = build_optimizer(model, yaml_config(name, "optimizer.ns_dtype=float32"),
                          log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    chain = {id(p) for g in opt.parts["matrix"].param_groups for p in g["params"]}
    blocks = {n for n, p in model.named_parameters() if id(p) in chain}
    assert blocks == {n for n, p in model.named_parameters()
                      if n.startswith("blocks.") and p.ndim == 2}
    assert any("2 hidden matrices are zero" in line for line in lines), lines
    norms = {n: p.norm().item() for n, p in model.named_parameters() if n in blocks}
    x = torch.randint(0, 65, (2, 16))
    for _ in range(3):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in blocks:
            assert p.norm().item() == pytest.approx(norms[n], rel=1e-6, abs=0), n


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip(name):
    from test_optim import assert_resumes_exactly
    assert_resumes_exactly(yaml_config(name, "optimizer.split_qkv=true"))


@pytest.mark.parametrize("override", ["optimizer.weight_decay=0.1", "optimizer.cautious_wd=true"])
def test_weight_decay_is_refused(override):
    model = torch.nn.Module()
    model.ws = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(8, 8))])
    with pytest.raises(UserError, match="^optimizer=muonh keeps every hidden matrix's norm"):
        build_optimizer(model, yaml_config("muonh", override), log=quiet)


@pytest.mark.parametrize("name", NAMES)
def test_the_yamls_record_command_loads(name):
    """The record's command in configs/optimizer/<name>.yaml loads, with the record's init."""
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_hyperball as ch
    text = (REPO / "configs" / "optimizer" / f"{name}.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("#   experiment=track3"))
    args = []
    for line in text[start:]:
        if not line.startswith("#   "):
            break
        args += line[1:].split()
    cfg = to_object(load_config(args))
    assert cfg.optimizer.name == name and cfg.model.init == ch.INITS[name]

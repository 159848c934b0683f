"""model/track3.py is Track 3's GPT (modded-nanogpt records/track_3_optimization/
train_gpt_simple.py): each piece against a reference written here from their definitions (the
RoPE as per-pair rotations, attention as an explicit float64 softmax, their init rule, their
soft-cap), not against our own code. Bitwise equality with their classes themselves is checked
outside CI, where a checkout of their repository exists."""
import math

import pytest
import torch
import torch.nn.functional as F

from configs.errors import UserError
from model import GPTConfig, build_model
from model.gpt import GPT
from model.track3 import MLP, CausalSelfAttention, Rotary, Track3GPT

D, HD, V = 256, 128, 200   # two 128-wide heads; vocab 200 pads to 256


def cfg(**kw):
    return GPTConfig(**{"arch": "track3", "n_layer": 2, "n_head": D // HD, "n_embd": D,
                        "head_dim": HD, "block_size": 64, "vocab_size": V, **kw})


def randomize(model, seed=0):
    """Non-zero weights everywhere (their init zeroes the head and the output projections)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.3)
                    + (1 if name.endswith("gains") else 0))


def rope_reference(x, head_dim):
    """Pair j = (x[j], x[j + hd/2]) rotated by pos * w_j, w_j = 1024^(-j / (hd/4 - 1)) for the
    first hd/4 pairs and 0 for the rest; float64, one pair at a time. x: (B, T, H, hd)."""
    x = x.double()
    y = x.clone()
    half, quarter = head_dim // 2, head_dim // 4
    for t in range(x.shape[1]):
        for j in range(half):
            w = (1 / 1024) ** (j / (quarter - 1)) if j < quarter else 0.0
            c, s = math.cos(t * w), math.sin(t * w)
            a, b = x[:, t, :, j], x[:, t, :, j + half]
            y[:, t, :, j] = a * c + b * s
            y[:, t, :, j + half] = -a * s + b * c
    return y


def test_rope_is_half_truncated_pairwise_rotation():
    x = torch.randn(2, 9, 3, HD)
    got = Rotary(HD)(x)
    torch.testing.assert_close(got.double(), rope_reference(x, HD), rtol=1e-5, atol=1e-5)
    # the last quarter of the frequencies is zero: those pairs pass through unrotated
    torch.testing.assert_close(got[..., 3 * HD // 4:], x[..., 3 * HD // 4:])


def test_attention_scale_qk_norm_and_causal_mask_against_float64_softmax():
    torch.manual_seed(0)
    attn = CausalSelfAttention(D, HD)
    randomize(attn)
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        got = attn(x)
    B, T, H = 2, 11, D // HD
    xd = x.double()
    def lin(m, z):
        return z @ m.weight.double().T + m.bias.double()
    def rms(z):   # no gains; eps (float32's) is negligible at these magnitudes
        return z / torch.sqrt(z.square().mean(-1, keepdim=True))
    q, k, v = (lin(m, xd).view(B, T, H, HD) for m in (attn.q, attn.k, attn.v))
    q, k = rope_reference(rms(q), HD), rope_reference(rms(k), HD)
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    y = torch.softmax(q @ k.transpose(-1, -2) * 0.12 + mask, dim=-1) @ v
    want = lin(attn.proj, y.transpose(1, 2).reshape(B, T, D))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_mlp_is_relu_squared():
    torch.manual_seed(0)
    mlp = MLP(D)
    randomize(mlp)
    x = torch.randn(3, 5, D)
    h = x.double() @ mlp.fc.weight.double().T + mlp.fc.bias.double()
    want = torch.where(h > 0, h * h, 0) @ mlp.proj.weight.double().T + mlp.proj.bias.double()
    with torch.no_grad():   # run in float64: Linear casts its weights to the input's dtype
        torch.testing.assert_close(mlp(x.double()), want, rtol=1e-12, atol=1e-12)


def test_parameter_names_and_shapes():
    m = Track3GPT(cfg())
    assert m.vocab_size == 256 and m.num_params(non_embedding=False) == sum(
        p.numel() for p in m.parameters())
    block = {"attn.q.weight": (D, D), "attn.q.bias": (D,), "attn.k.weight": (D, D),
             "attn.k.bias": (D,), "attn.v.weight": (D, D), "attn.v.bias": (D,),
             "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
             "mlp.fc.weight": (4 * D, D), "mlp.fc.bias": (4 * D,),
             "mlp.proj.weight": (D, 4 * D), "mlp.proj.bias": (D,),
             "norm1.gains": (D,), "norm2.gains": (D,)}
    want = [("embed.weight", (256, D))]
    want += [(f"blocks.{i}.{n}", s) for i in range(2) for n, s in block.items()]
    want += [("lm_head.weight", (256, D)), ("lm_head.bias", (256,)),
             ("norm1.gains", (D,)), ("norm2.gains", (D,))]
    # their order (embed, blocks, head, norm1, norm2), which their init loop walks
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == want
    assert m.lm_head.weight is not m.embed.weight   # untied
    assert m.num_params() == sum(p.numel() for p in m.parameters()) - 256 * D
    assert m.flops_per_token(64) == 6 * m.num_params() + 12 * 2 * D * 64


def test_init_follows_their_rule():
    torch.manual_seed(0)
    m = Track3GPT(cfg(n_layer=3, vocab_size=1000))
    for name, p in m.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight", "lm_head.weight")) or \
                name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif name.endswith("gains"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name == "embed.weight":
            assert abs(p.std().item() - 1) < 0.02 and abs(p.mean().item()) < 0.02
        else:   # q, k, v, fc: N(0, 0.33 / fan_in)
            want = math.sqrt(0.33 / p.shape[1])
            assert abs(p.std().item() / want - 1) < 0.03 and abs(p.mean().item()) < 0.1 * want, name


def test_logits_are_soft_capped_and_loss_is_their_mean_cross_entropy():
    torch.manual_seed(0)
    m = Track3GPT(cfg())
    randomize(m)
    with torch.no_grad():
        m.lm_head.weight.mul_(200)   # raw logits well past the cap
    raw = {}
    m.lm_head.register_forward_hook(lambda mod, inp, out: raw.update(z=out))
    idx = torch.randint(0, V, (2, 16))
    targets = torch.randint(0, V, (2, 16))
    targets[0, :5] = -1
    with torch.no_grad():
        logits, loss = m(idx, targets, return_logits=True)
    z = raw["z"].double()
    assert logits.dtype == torch.float32 and z.abs().max() > 50
    capped = 15 * z / torch.sqrt(z * z + 225)
    torch.testing.assert_close(logits.double(), capped, rtol=1e-6, atol=1e-5)
    assert logits.abs().max() < 15
    logp = torch.log_softmax(capped, dim=-1)
    keep = targets >= 0
    want = -logp[keep.nonzero(as_tuple=True) + (targets[keep],)].mean()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)


def test_bf16_embedding_runs_the_forward_in_bf16():
    m = Track3GPT(cfg(embed_dtype="bfloat16"))
    assert m.embed.weight.dtype == torch.bfloat16 and m.lm_head.weight.dtype == torch.float32
    seen = {}
    m.lm_head.register_forward_hook(lambda mod, inp, out: seen.update(dtype=out.dtype))
    logits, loss = m(torch.randint(0, V, (1, 8)), torch.randint(0, V, (1, 8)), return_logits=True)
    assert seen["dtype"] == torch.bfloat16 and logits.dtype == torch.float32
    assert Track3GPT(cfg()).embed.weight.dtype == torch.float32   # our default


def test_forward_backward_on_cpu():
    torch.manual_seed(0)
    m = Track3GPT(cfg())
    idx = torch.randint(0, V, (2, 32))
    logits, loss = m(idx, torch.roll(idx, -1, 1), return_logits=True)
    assert logits.shape == (2, 32, 256)
    assert abs(loss.item() - math.log(256)) < 1e-4   # the zero head: uniform over the padded vocab
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["lm_head.weight"].abs().sum() > 0


def test_build_model_dispatches_at_call_time(monkeypatch):
    assert type(build_model(cfg())) is Track3GPT
    gpt_cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    assert type(build_model(gpt_cfg)) is GPT
    import model.gpt   # scripts/compare_published.py swaps model.gpt.GPT: build_model sees it

    class Patched(GPT):
        pass
    monkeypatch.setattr(model.gpt, "GPT", Patched)
    assert type(build_model(gpt_cfg)) is Patched


@pytest.mark.parametrize("kw,msg", [
    ({"arch": "llama"}, "model.arch='llama' is not one of gpt2, track3"),
    ({"n_embd": 200, "n_head": 1}, "not a multiple of model.head_dim=128"),
    ({"n_head": 4}, "model.n_head=4 must be model.n_embd // model.head_dim = 2"),
    ({"embed_dtype": "float16"}, "model.embed_dtype='float16' is not one of float32, bfloat16"),
    ({"bias": False}, "has a bias on every Linear"),
])
def test_bad_track3_config_is_one_error_line(kw, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(".", r"\.")) as e:
        cfg(**kw)
    assert "\n" not in str(e.value)


def test_presets_compose_to_track3_shape():
    from configs import load_config, to_object
    c = to_object(load_config(["model=track3"]))
    m, t = c.model, c.train
    assert (m.arch, m.n_layer, m.n_embd, m.head_dim, m.n_head, m.embed_dtype) == \
        ("track3", 12, 768, 128, 6, "bfloat16")
    assert t.block_size * t.batch_size * t.grad_accum_steps == 524_288
    mini = to_object(load_config(["model=track3_mini"])).model
    assert (mini.arch, mini.n_layer, mini.n_embd, mini.head_dim) == ("track3", 2, 256, 128)
    # the defaults leave the GPT-2 presets as they were
    assert to_object(load_config(["model=gpt2"])).model.arch == "gpt2"

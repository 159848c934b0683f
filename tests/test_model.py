"""The GPT is faithful to GPT-2: transformers' GPT2LMHeadModel weights give the same logits."""
import os

import pytest
import torch

from model import GPT, GPTConfig

try:
    import transformers
except ImportError:
    # transformers is in pyproject's dev extras: CI (CI set, as CI services do) must have it, so
    # there a missing transformers fails the run instead of silently skipping the equivalence
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        raise
    pytest.skip("transformers is not installed (pip install -e '.[dev]')", allow_module_level=True)


@pytest.mark.parametrize("n_layer,n_head,n_embd", [(2, 2, 64), (3, 4, 96)])
def test_matches_transformers_gpt2(n_layer, n_head, n_embd):
    hf_cfg = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=n_embd,
                                     n_layer=n_layer, n_head=n_head, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=32,
                         vocab_size=101)).eval()
    ours.load_hf_state_dict(hf.state_dict())
    idx = torch.randint(0, 101, (3, 32))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert got.shape[-1] == 128  # vocabulary padded to a multiple of 64
    torch.testing.assert_close(got[..., :101], expected, rtol=1e-5, atol=1e-5)


def test_init_and_counts():
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65)
    m = GPT(cfg)
    assert m.vocab_size == 128 and m.lm_head.weight is m.transformer.wte.weight
    # Residual projections use GPT-2's 0.02 / sqrt(2 n_layer); others 0.02.
    proj = m.transformer.h[0].attn.c_proj.weight
    assert abs(proj.std().item() - 0.02 / (2 * 4) ** 0.5) < 2e-3
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 2e-3
    n = sum(p.numel() for p in m.parameters())
    assert m.num_params(non_embedding=False) == n
    assert m.flops_per_token(64) == 6 * m.num_params() + 12 * 4 * 128 * 64


def test_gpt2_small_size():
    m = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257))
    assert m.vocab_size == 50304
    assert 123e6 < m.num_params(non_embedding=False) < 125e6  # "124M"


@pytest.mark.parametrize("shape", [(7, 513), (2, 3, 64)])
def test_cpu_tanh_gelu_matches_float64_reference(shape):
    """The sigmoid-form CPU GELU is GPT-2's tanh GELU: values and gradients against ATen's
    tanh GELU in float64, on fresh inputs spanning the range where the curve bends."""
    from model.gpt import gelu_tanh
    x = (torch.randn(shape) * 4).requires_grad_()
    grad = torch.randn(shape)
    y = gelu_tanh(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    x64 = x.detach().double().requires_grad_()
    y64 = torch.nn.functional.gelu(x64, approximate="tanh")
    (dx64,) = torch.autograd.grad(y64, x64, grad.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-5, atol=1e-5)
    # Other dtypes go through ATen's fused kernel unchanged.
    xb = x.detach().bfloat16()
    assert torch.equal(gelu_tanh(xb), torch.nn.functional.gelu(xb, approximate="tanh"))


def test_null_n_head_keeps_the_head_width_across_a_width_ladder():
    from configs.errors import UserError
    from model.config import GPTConfig

    assert [GPTConfig(n_embd=w, n_head=None, head_dim=32).n_head for w in (64, 128, 256)] == [2, 4, 8]
    with pytest.raises(UserError, match="not a multiple of model.head_dim=32"):
        GPTConfig(n_embd=100, n_head=None, head_dim=32)

"""DynMuon's links (a Chain, optim/rules.py): Track 3 result #28 (modded-nanogpt
records/track_3_optimization/results/20260519_dynmuon/train_gpt_simple_dynmuon.py; arXiv
2605.17109), U Σ^p Vᵀ of Nesterov heavy-ball momentum with p on a schedule.

    G' = G / grad_divisor,  B <- mu B + G',  X = mu B + G' (Nesterov; else X = B)
    p_t = p_end + (p_start - p_end) / (1 + exp((q - tau) / w)),  q = (t - 1) / power_steps
    D = (||X||_F + ns_eps)^p_t C polar(Xn)   (spectral.taylor_power: C = A^(p/2) to second order)
    W <- (1 - lr wd) W - lr sqrt(max(1, m / n)) D
(the record sets p from its 0-based step before each optimizer step: t - 1 here). With the
record's p_start 0.25, p_end -0.25, tau = w = 0.04: p_1 = 0.116, 0 at 4% of the run, -0.25 after.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from optim import polar, spectral
from optim.rules import _zeros, resolve_ns_dtype


def scheduled_power(group, t: int) -> float:
    """p at step t (1-based): the record's get_dynmuon_p(t - 1, power_steps)."""
    u = ((t - 1) / float(group["power_steps"]) - group["power_tau"]) / group["power_width"]
    anneal = 0.0 if u > 700 else 1.0 / (1.0 + math.exp(u))   # exp overflows past ~709
    return group["power_end"] + (group["power_start"] - group["power_end"]) * anneal


def dynmuon_momentum(group, grads, states, out):
    """B <- mu B + G / grad_divisor; out = mu B + G / grad_divisor with Nesterov, else B. Also
    puts this step's p in group["scheduled_power"]: the transform sees the group, not the
    state's step count (every rank computes the same p; a resumed run recomputes it)."""
    mu, d = group["momentum"], group["grad_divisor"]
    group["scheduled_power"] = scheduled_power(group, states[0]["step"])
    scaled = torch._foreach_div(grads, d) if d != 1 else list(grads)
    bufs = _zeros(states, "momentum_buffer", [g.shape for g in grads], grads[0])
    torch._foreach_mul_(bufs, mu)
    torch._foreach_add_(bufs, scaled)
    torch._foreach_copy_(out, bufs)
    if group["nesterov"]:
        torch._foreach_mul_(out, mu)
        torch._foreach_add_(out, scaled)


def dynmuon_transform(group, X: Tensor, work=None) -> Tensor:
    """(||X|| + ns_eps)^p C polar(Xn) at this step's p (spectral.taylor_power), the polar
    factor by optimizer.ns (the record: 12 cubic Newton-Schulz steps)."""
    dtype = resolve_ns_dtype(group["ns_dtype"], X.device)
    polar_factor = lambda Y: polar.orthogonalize(  # noqa: E731
        Y, method=group["ns"], steps=group["ns_steps"], dtype=dtype, eps=group["ns_eps"],
        work=work, norm=group.get("ns_norm", "frobenius"))
    return spectral.taylor_power(X, group["scheduled_power"], polar_factor, eps=group["ns_eps"])

"""Tail-EMA readout (train.eval_ema; modded-nanogpt Track 3 result #45,
20260611_tailema_2720_submission: maybe_update_tail_ema and TAIL_EMA_APPLY_*): an EMA of the
weights over the last steps of a run, blended into the weights once at the end, before the final
evaluation. Owns the EMA buffers and their checkpoint state.

As the record: after the optimizer step that completes step S >= start, the EMA is a copy of
the weights at S = start, then ema <- lerp(ema, W, 1 / tau); at the end W <- lerp(W, ema, lam)
for good (the record: tau 150, lam 0.6, start 2000 of 2720). Its scope "nonembed" (every
parameter but the token embedding `embed.weight`): here every parameter but the one named like
TOKEN_EMBEDDING (model/gpt.py's wte, tied to the head; model/track3.py's embed).
"""
from __future__ import annotations

from fnmatch import fnmatch

import torch

from configs.errors import UserError

TOKEN_EMBEDDING = ("*wte.weight", "embed.weight", "*.embed.weight")


class TailEma:
    def __init__(self, model: torch.nn.Module, *, tau: float, lam: float, start: int):
        from optim.params import named_params
        named, aliases = named_params(model)
        self.params = [p for n, p in named if torch.is_floating_point(p) and not any(
            fnmatch(a, pat) for a in aliases[id(p)] for pat in TOKEN_EMBEDDING)]
        self.tau, self.lam, self.start = tau, lam, start
        self.ema: list[torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After the optimizer step that completed `step` (the loop's step count)."""
        if step < self.start:
            return
        if self.ema is None:
            self.ema = [p.detach().clone() for p in self.params]
            return
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 / self.tau)

    @torch.no_grad()
    def apply(self) -> bool:
        """W <- lerp(W, ema, lam); False (nothing done) before start, as the record."""
        if self.ema is None or self.lam == 0:
            return False
        torch._foreach_lerp_([p.detach() for p in self.params], self.ema, self.lam)
        return True

    def state_dict(self) -> dict:
        return {"ema": None if self.ema is None else [e.clone() for e in self.ema]}

    def load_state_dict(self, state: dict | None, step: int) -> None:
        """`state` None: a checkpoint written without the EMA, accepted while `step` is before
        its first update."""
        if state is None:
            if step >= self.start:
                raise UserError(f"the checkpoint (step {step}) has no train.eval_ema state and "
                                f"the EMA starts at step {self.start}; resume with "
                                "train.eval_ema=false")
            return
        ema = state["ema"]
        if ema is not None and len(ema) != len(self.params):
            raise UserError(f"the checkpoint's train.eval_ema state has {len(ema)} tensors, this "
                            f"model {len(self.params)}; resume with the same model")
        self.ema = None if ema is None else [e.to(p.device) for e, p in zip(ema, self.params)]

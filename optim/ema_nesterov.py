"""EMA-Nesterov (arXiv 2605.25395; modded-nanogpt Track 3 result #39,
20260522_ema_nesterov_muon, class EMA_Nesterov): a wrapper around any optimizer of the registry
(optimizer.ema_nesterov), owning its two buffers per parameter and their checkpoint state.

Per step, as the record orders it:
  lookahead(step)   before the forward/backward (and before the loop sets this step's lr): for
                    start <= step < stop, W <- W + beta_t m with beta_t = beta x lr / peak lr of
                    the first AdamW-backup group (the record's first inner group is its AdamW's;
                    the lr is the one the previous step set); the gradient is taken there;
  step()            the inner optimizer steps from that lookahead position, then the EMA of the
                    whole displacement since the last step: m <- lerp(m, W - W_prev, 1 - gamma),
                    W_prev <- W (every step, the lookahead included, outside the window too).
The lookahead is never undone: evaluations and checkpoints see W after the inner step.
Elementwise on replicated parameters, so every rank computes the same numbers.
"""
from __future__ import annotations

import torch

from configs.errors import UserError


class EmaNesterov(torch.optim.Optimizer):
    """The inner optimizer's param_groups and state are this one's (the loop sets group["lr"],
    GradScaler unscales them); the state_dict is {"inner": ..., "ema_nesterov": buffers}."""

    def __init__(self, inner: torch.optim.Optimizer, *, gamma: float, beta: float, start: int,
                 stop: int | None):
        self.inner = inner
        self.gamma, self.beta, self.start, self.stop = gamma, beta, start, stop
        super().__init__(inner.param_groups, defaults={})
        self.param_groups, self.state = inner.param_groups, inner.state
        self.params = [p for g in inner.param_groups for p in g["params"]]
        with torch.no_grad():
            self.lookahead_buf = [torch.zeros_like(p) for p in self.params]
            self.prev = [p.detach().clone() for p in self.params]   # the record's prev_params
        self.current_beta = 0.0

    @property
    def ns_dtype(self):
        return getattr(self.inner, "ns_dtype", None)

    @property
    def parts(self):
        return self.inner.parts

    def lr_ratio(self) -> float:
        """lr / peak lr of the first AdamW-backup group (the record's get_lr_lambda), or of the
        first group when there is no backup; 0 for a group with peak lr 0."""
        group = next((g for g in self.param_groups if g.get("kind") == "vector"),
                     self.param_groups[0])
        peak = group.get("base_lr", group["lr"])
        return group["lr"] / peak if peak else 0.0

    @torch.no_grad()
    def lookahead(self, step: int) -> None:
        """The record's nesterov_step: call before the forward/backward of `step`."""
        active = step >= self.start and (self.stop is None or step < self.stop)
        self.current_beta = self.beta * self.lr_ratio() if active else 0.0
        if active:
            torch._foreach_add_(self.params, self.lookahead_buf, alpha=self.current_beta)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        self.inner.step()
        look = torch._foreach_sub(self.params, self.prev)
        torch._foreach_lerp_(self.lookahead_buf, look, 1 - self.gamma)
        torch._foreach_copy_(self.prev, self.params)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(),
                "ema_nesterov": {"lookahead": [b.clone() for b in self.lookahead_buf],
                                 "prev": [p.clone() for p in self.prev]}}

    def load_state_dict(self, state_dict: dict) -> None:
        mine = state_dict.get("ema_nesterov") if isinstance(state_dict, dict) else None
        if mine is None or "inner" not in state_dict:
            raise UserError("the saved optimizer state has no EMA-Nesterov buffers: the run was "
                            "started without optimizer.ema_nesterov.enabled=true; resume with it off")
        if len(mine["lookahead"]) != len(self.params):
            raise UserError(f"the saved EMA-Nesterov state has {len(mine['lookahead'])} buffers, "
                            f"this optimizer {len(self.params)} parameters; resume with the same "
                            "model and optimizer")
        self.inner.load_state_dict(state_dict["inner"])
        # loading may replace the inner group dicts (CombinedOptimizer does)
        self.param_groups, self.state = self.inner.param_groups, self.inner.state
        with torch.no_grad():
            for dst, src in zip(self.lookahead_buf + self.prev, mine["lookahead"] + mine["prev"]):
                dst.copy_(src)

    def consolidate_state_dict(self, to: int = 0) -> None:
        if hasattr(self.inner, "consolidate_state_dict"):
            self.inner.consolidate_state_dict(to=to)

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "inner", None) is not None and hasattr(self, "params"):
            raise NotImplementedError("add the group to the inner optimizer")
        super().add_param_group(param_group)

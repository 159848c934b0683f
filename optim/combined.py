"""Several optimizers over disjoint parameters, stepped, saved and loaded as one optimizer."""
from __future__ import annotations

from collections import ChainMap

import torch

from configs.errors import UserError


class CombinedOptimizer(torch.optim.Optimizer):
    """E.g. a matrix optimizer for the hidden weights plus the AdamW backup for the rest.

    Its param_groups are the parts' own group dicts, so `group["lr"] = ...` here reaches the
    part that owns the group; its state_dict is one entry per part.
    """

    def __init__(self, **parts: torch.optim.Optimizer):
        if not parts:
            raise UserError("the optimizer has no parameters to train; check "
                            "optimizer.matrix_patterns / optimizer.vector_patterns")
        self.parts = parts
        self.ns_dtype: str | None = None   # the matrix part's Newton-Schulz dtype, for summary.json
        super().__init__(self._groups(), defaults={})
        self.state = ChainMap(*(opt.state for opt in parts.values()))  # a read-only view
        self._built = True

    def _groups(self) -> list[dict]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()   # closure() with grad
        # a part that gathers across ranks (MatrixOptimizer) starts first and finishes last:
        # the others step while its all-gather is in flight
        split = [opt for opt in self.parts.values() if hasattr(opt, "start_step")]
        for opt in self.parts.values():
            opt.start_step() if opt in split else opt.step()
        for opt in split:
            opt.finish_step()
        return loss

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.parts):
            raise UserError(f"the saved optimizer state has parts {sorted(state_dict)}, this "
                            f"optimizer has {sorted(self.parts)}; resume with the same optimizer")
        for name, opt in self.parts.items():
            opt.load_state_dict(state_dict[name])
        self.param_groups = self._groups()  # loading replaced the parts' group dicts
        self.state = ChainMap(*(opt.state for opt in self.parts.values()))  # and state dicts

    def consolidate_state_dict(self, to: int = 0) -> None:
        """ZeRO-1: gather the parts' sharded states before state_dict(); call on every rank."""
        for opt in self.parts.values():
            if hasattr(opt, "consolidate_state_dict"):
                opt.consolidate_state_dict(to=to)

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_built", False):
            raise NotImplementedError("add the group to one of CombinedOptimizer.parts")
        super().add_param_group(param_group)

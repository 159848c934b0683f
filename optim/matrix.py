"""The matrix-optimizer engine: runs a Chain (optim/rules.py) on stacks of same-shape matrices,
in one process or shared across the ranks of torch.distributed, with ZeRO-1 state sharding and
checkpoints that load at any world size.

A param group holds the matrices of one shape (a split (3C, C) q/k/v weight counts as three
(C, C) matrices), its hyperparameters and `matrix_shape`; each step the precondition writes the
group's matrices into one (S, m, n) stack, so the transform is one batched call per shape. On
CPU the stack and the transform's buffers persist from step to step (a Workspace per group:
torch's CPU allocator returns large blocks to the OS, so fresh ones page-fault on every step);
on GPUs the caching allocator already reuses memory, and nothing is kept.

Under torch.distributed (torchrun, world size W > 1) the matrix-sized work is shared: each shape
group's stack of S matrices is cut into W slices of k = ceil(S / W) rows, rank r transforms rows
[r k, (r + 1) k) and an all-gather assembles the stack (as modded-nanogpt and Dion do).
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor

from optim.rules import Chain, apply_update, post_transform, uw_floor
from optim.spectral import Workspace


def world_and_rank(distributed: bool) -> tuple[int, int]:
    """(W, r) of the default process group if `distributed` and one is initialized, else (1, 0)."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class MatrixOptimizer(torch.optim.Optimizer):
    """A Chain over matrix parameters, one param group per matrix shape (`matrix_shape`).

    distributed (world size W > 1): rank r runs the transform on its k = ceil(S / W) rows of each
        stack and all_gather_into_tensor assembles the stack. DDP has all-reduced the gradients,
        so the elementwise links and the step sizes (cheap, computed by every rank on the whole
        stack) agree bit for bit, and so do the parameters. The state stays replicated: the
        checkpoint is the single-process one.
    shard_state (ZeRO-1, implies distributed): rank r also keeps the state of its rows only, runs
        the whole chain on them, and the updated rows are all-gathered. consolidate_state_dict()
        (a collective) rebuilds the unsharded per-parameter state that state_dict() returns, and
        load_state_dict() keeps this rank's rows of it, so checkpoints load at any world size.
    """

    def __init__(self, groups: list[dict], chain: Chain, distributed: bool = True,
                 shard_state: bool = False, **defaults):
        self.chain = chain
        self.world, self.rank = world_and_rank(distributed or shard_state)
        self.shard_state = shard_state and self.world > 1
        self._full_state = None   # consolidate_state_dict()'s result, for one state_dict()
        self._work: dict[int, Workspace] = {}   # per group index, CPU only (see the module doc)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()   # closure() with grad
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            work = self._workspace(i, params[0].device) if params else None
            if params and self.shard_state:
                self._update_own_rows(group, work)
            elif params:
                m, n = group["matrix_shape"]
                self._run_chain(group, [p.view(-1, m, n) for p in params],
                                [p.grad.view(-1, m, n) for p in params],
                                [self.state[p] for p in params], self._transform, work)
        return loss

    def _workspace(self, index: int, device: torch.device) -> Workspace | None:
        if device.type != "cpu":
            return None
        return self._work.setdefault(index, Workspace())

    def _run_chain(self, group: dict, W: list[Tensor], G: list[Tensor], states: list[dict],
                   transform, work: Workspace | None) -> None:
        """The chain on the (-1, m, n) views W with gradients G: precondition into the stack X,
        `transform` on it, step size, the chain's apply (W <- rho W - eta D, or the hyperball step)."""
        for s in states:  # the matrices of a group step together
            s["step"] = s.get("step", 0) + 1
        shape = (sum(len(g) for g in G), *G[0].shape[1:])
        X = (G[0].new_empty(shape) if work is None
             else work.get("stack", shape, G[0].dtype, G[0].device))
        self.chain.precondition(group, G, states, list(X.split([len(g) for g in G])))
        D = post_transform(self.chain, group, transform(group, X, work), states,
                           [len(g) for g in G])
        eta, rho = self.chain.step_size(group, G, X, states)
        eta = uw_floor(group, W, D, eta)   # optimizer.uw_floor; unchanged when off
        apply = self.chain.apply or apply_update   # looked up per call: tests patch it
        apply(W, D, eta, rho, [len(w) for w in W], work, cautious=group.get("cautious_wd", False))

    # ---- distributed: a share of the rows per rank -----------------------------------------

    def _rows(self, S: int) -> tuple[int, int, int]:
        """k = ceil(S / W) rows per rank, and this rank's [lo, hi) (short or empty at the end)."""
        k = -(-S // self.world)
        return k, min(self.rank * k, S), min((self.rank + 1) * k, S)

    def _gather_rows(self, mine: Tensor, k: int, S: int, to: int | None = None) -> Tensor | None:
        """The (S, ...) stack from every rank's rows (each padded to k for the collective), on
        every rank, or with `to` on that rank only (None elsewhere)."""
        if len(mine) < k:
            mine = torch.cat([mine, mine.new_zeros(k - len(mine), *mine.shape[1:])])
        if to is None:
            out = mine.new_empty(self.world * k, *mine.shape[1:])
            # synchronous: no torn updates. torch 2.13 renamed all_gather_into_tensor.
            all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            all_gather(out, mine.contiguous())
            return out[:S]
        parts = [torch.empty_like(mine) for _ in range(self.world)] if self.rank == to else None
        dist.gather(mine.contiguous(), parts, dst=to)
        return torch.cat(parts)[:S] if parts else None

    def _transform(self, group: dict, X: Tensor, work: Workspace | None = None) -> Tensor:
        """The transform of the whole stack. Across ranks: each transforms its rows, and the
        results are gathered in the dtype that holds them exactly (bf16 for Newton-Schulz in
        bf16), then cast back; an identity transform is not shared at all."""
        if self.world == 1 or self.chain.identity(group):
            return self.chain.transform(group, X, work)
        k, lo, hi = self._rows(len(X))
        mine = self.chain.transform(group, X[lo:hi], work) if hi > lo else X[lo:hi]
        dtype = self.chain.result_dtype(group, X)
        return self._gather_rows(mine.to(dtype), k, len(X)).to(X.dtype)

    def _own_rows(self, group: dict) -> tuple[list[Tensor], list[tuple[Tensor, slice]], int, int]:
        """Every parameter of the group as a (-1, m, n) view; this rank's rows as (param, rows of
        that parameter) pairs; k; the stack height S. Rows are counted over all of the group's
        parameters, with or without a gradient, so the owner of a row never changes."""
        m, n = group["matrix_shape"]
        W = [p.view(-1, m, n) for p in group["params"]]
        S = sum(len(w) for w in W)
        k, lo, hi = self._rows(S)
        own, start = [], 0
        for p, w in zip(group["params"], W):
            a, b = max(lo - start, 0), min(hi - start, len(w))
            if a < b:
                own.append((p, slice(a, b)))
            start += len(w)
        return W, own, k, S

    def _update_own_rows(self, group: dict, work: Workspace | None) -> None:
        """ZeRO-1: the chain on this rank's rows with their (sharded) state, then the updated
        rows of every rank are all-gathered into the parameters."""
        m, n = group["matrix_shape"]
        W, own, k, S = self._own_rows(group)
        stepping = [(p, rows) for p, rows in own if p.grad is not None]
        if stepping:
            self._run_chain(group, [p.view(-1, m, n)[rows] for p, rows in stepping],
                            [p.grad.view(-1, m, n)[rows] for p, rows in stepping],
                            [self.state[p] for p, _ in stepping], self.chain.transform, work)
        mine = torch.cat([p.view(-1, m, n)[rows] for p, rows in own]) if own else W[0][:0]
        full = self._gather_rows(mine, k, S)
        torch._foreach_copy_(W, list(full.split([len(w) for w in W])))

    # ---- ZeRO-1 checkpoints: consolidate to the unsharded format, load any world size -------

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather the sharded state on rank `to`, as per-parameter state (on the CPU) for its
        next state_dict(). A collective: every rank calls it."""
        if not self.shard_state:
            return
        # The state's layout comes from rank 0, which holds the first rows of every group.
        layout = [self._layout(group) for group in self.param_groups]
        dist.broadcast_object_list(layout, src=0)
        full = defaultdict(dict)
        for group, keys in zip(self.param_groups, layout):
            W, own, k, S = self._own_rows(group)
            for key, spec in keys.items():
                if key == "step":   # the matrices of a group step together
                    for p in group["params"]:
                        full[p]["step"] = spec
                    continue
                shape, dtype = spec
                mine = [self.state[p].get(key, W[0].new_zeros(rows.stop - rows.start, *shape,
                                                              dtype=dtype)) for p, rows in own]
                mine = torch.cat(mine) if mine else W[0].new_zeros(0, *shape, dtype=dtype)
                stack = self._gather_rows(mine, k, S, to=to)
                if stack is not None:
                    for p, rows in zip(group["params"], stack.cpu().split([len(w) for w in W])):
                        full[p][key] = rows.clone()
        self._full_state = full if self.rank == to else None

    def _layout(self, group: dict) -> dict:
        """{key: (shape after the row dim, dtype)} of this rank's state in the group, and
        "step": the group's step count."""
        for p, _ in self._own_rows(group)[1]:
            if self.state.get(p):
                return {key: v if key == "step" else (tuple(v.shape[1:]), v.dtype)
                        for key, v in self.state[p].items()}
        return {}

    def state_dict(self) -> dict:
        if not self.shard_state:
            return super().state_dict()
        if self._full_state is None:
            raise RuntimeError(f"MatrixOptimizer with sharded state: call consolidate_state_dict("
                               f"to={self.rank}) on every rank before state_dict() on rank "
                               f"{self.rank}")
        sharded, self.state = self.state, self._full_state
        try:
            return super().state_dict()
        finally:
            self.state, self._full_state = sharded, None

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads unsharded state (any world size's checkpoint); with shard_state, keeps this
        rank's rows only. A hyperparameter missing from the saved param groups (a checkpoint
        written before it existed) takes this optimizer's default (the current config's)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not self.shard_state:
            return
        full, self.state = self.state, defaultdict(dict)
        for group in self.param_groups:
            for p, rows in self._own_rows(group)[1]:
                if p in full:
                    self.state[p] = {key: v[rows].clone() if isinstance(v, Tensor) else v
                                     for key, v in full[p].items()}

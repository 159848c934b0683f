"""The matrix-optimizer engine: runs a Chain (optim/rules.py) on stacks of same-shape matrices,
in one process or shared across the ranks of torch.distributed, and the plan that shares them;
its checkpoints are one process's and load at any world size.

A param group holds the matrices of one shape (a split (3C, C) q/k/v weight counts as three
(C, C) matrices), its hyperparameters and `matrix_shape`; each step the precondition writes the
group's matrices into one (S, m, n) stack, so the transform is one batched call per shape. On
CPU the stack and the transform's buffers persist from step to step (a Workspace per group:
torch's CPU allocator returns large blocks to the OS, so fresh ones page-fault on every step);
on GPUs the caching allocator already reuses memory, and nothing is kept.

Under torch.distributed (torchrun, world size W > 1) whole parameters are dealt to the ranks
across all shape groups by plan() (largest Newton-Schulz cost first, onto the least-loaded
rank). Each rank runs the whole chain (momentum, transform, post link, step size) on its own
matrices only and keeps their state only (ZeRO-1 whether or not train.zero is set). One
asynchronous all-gather per step moves every update D, in the dtype that holds it exactly (bf16
after the iterations in bf16), and its per-matrix eta / rho where they are tensors, as one flat
byte buffer; then every rank applies W <- rho W - eta D (the chain's apply) to every matrix, as
one process does, so N ranks give one process's parameters bit for bit.
"""
from __future__ import annotations

import heapq
from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor

from optim.rules import Chain, apply_update, post_transform, uw_floor
from optim.spectral import Workspace

ALIGN = 16   # bytes: each block of the flat buffer starts where any dtype may view it


def world_and_rank(distributed: bool) -> tuple[int, int]:
    """(W, r) of the default process group if `distributed` and one is initialized, else (1, 0)."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


# ---- the plan: which rank owns which parameter ---------------------------------------------

def ns_cost(k: int, m: int, n: int) -> int:
    """FLOPs of one Newton-Schulz iteration on k m x n matrices (X Xᵀ, A A and B X on the wide
    side: 4 r² c + 2 r³, r = min(m, n)): the plan's cost of a parameter."""
    r, c = min(m, n), max(m, n)
    return k * (4 * r * r * c + 2 * r ** 3)


def plan(shapes: list[tuple[int, int, int]], world: int) -> list[int]:
    """The owning rank of each parameter, given its (k, m, n) (k matrices of m x n) in the
    engine's order: greedy, largest cost first (ties: the earlier parameter) onto the least
    loaded rank (ties: the lower rank). Pure and deterministic, so every rank computes the
    same plan; a packed q/k/v weight stays whole (its update is one contiguous block)."""
    loads = [(0, r) for r in range(world)]
    owners = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: (-ns_cost(*shapes[i]), i)):
        load, r = heapq.heappop(loads)
        owners[i] = r
        heapq.heappush(loads, (load + ns_cost(*shapes[i]), r))
    return owners


def param_shapes(groups: list[dict]) -> list[tuple[int, int, int]]:
    """(k, m, n) of every parameter of the groups, in order."""
    return [(p.numel() // (m * n), m, n) for g in groups for p in g["params"]
            for m, n in [g["matrix_shape"]]]


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _view(buf: Tensor, offset: int, dtype: torch.dtype, shape) -> Tensor:
    """The bytes of `buf` from `offset` seen as a `dtype` tensor of `shape` (no copy)."""
    n = torch.Size(shape).numel() * dtype.itemsize
    return buf[offset:offset + n].view(dtype).view(shape)


class MatrixOptimizer(torch.optim.Optimizer):
    """A Chain over matrix parameters, one param group per matrix shape (`matrix_shape`).

    distributed (world size W > 1): rank r owns the parameters plan() gives it, runs the chain
        on them with their state, and the updates are all-gathered and applied on every rank
        (module doc). Every rank keeps every parameter's step count (an int), the state tensors
        of its own parameters only; consolidate_state_dict() (a collective) rebuilds the
        single-process state that state_dict() returns, and load_state_dict() keeps this rank's
        part of any world size's checkpoint. shard_state (train.zero) implies distributed.
    """

    def __init__(self, groups: list[dict], chain: Chain, distributed: bool = True,
                 shard_state: bool = False, **defaults):
        self.chain = chain
        self.world, self.rank = world_and_rank(distributed or shard_state)
        self.shard_state = self.world > 1   # sharing the work is sharing the state
        self._full_state = None   # consolidate_state_dict()'s result, for one state_dict()
        self._work: dict[int, Workspace] = {}   # per group index, CPU only (see the module doc)
        self._comm = Workspace()                # CPU: the flat send and gathered buffers
        self._pending = None                    # start_step()'s gather, for finish_step()
        super().__init__(groups, defaults)
        params = [p for g in self.param_groups for p in g["params"]]
        self.owner = dict(zip(params, plan(param_shapes(self.param_groups), self.world)))

    def sharing(self) -> str:
        """The start-up line's account of the plan on this world size."""
        loads = [0] * self.world
        for (k, m, n), r in zip(param_shapes(self.param_groups), self.owner.values()):
            loads[r] += ns_cost(k, m, n)
        balance = max(loads) * self.world / max(sum(loads), 1)
        return (f"whole matrices dealt to {self.world} ranks by Newton-Schulz FLOPs (max/mean "
                f"{balance:.2f}), each running the chain on its own and keeping their state; "
                f"updates all-gathered in one buffer")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()   # closure() with grad
        self.start_step()
        self.finish_step()
        return loss

    @torch.no_grad()
    def start_step(self) -> None:
        """One process: the whole step. W > 1: the chain on this rank's matrices and the
        all-gather started; finish_step() applies the updates. CombinedOptimizer steps the
        AdamW backup in between, while the gather is in flight."""
        if self.world == 1:
            for i, group in enumerate(self.param_groups):
                self._step_alone(i, group)
        else:
            self._pending = self._start_shared()

    @torch.no_grad()
    def finish_step(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._finish_shared(*pending)

    def _workspace(self, index: int, device: torch.device) -> Workspace | None:
        if device.type != "cpu":
            return None
        return self._work.setdefault(index, Workspace())

    def _count(self, params: list[Tensor]) -> None:
        for p in params:  # the matrices of a group step together
            s = self.state[p]
            s["step"] = s.get("step", 0) + 1

    def _update(self, group: dict, W: list[Tensor], G: list[Tensor], states: list[dict],
                work: Workspace | None):
        """The chain on the (-1, m, n) views W with gradients G: precondition into the stack X,
        the transform, the post link, the step size and optimizer.uw_floor; (D, eta, rho)."""
        shape = (sum(len(g) for g in G), *G[0].shape[1:])
        X = (G[0].new_empty(shape) if work is None
             else work.get("stack", shape, G[0].dtype, G[0].device))
        self.chain.precondition(group, G, states, list(X.split([len(g) for g in G])))
        D = post_transform(self.chain, group, self.chain.transform(group, X, work), states,
                           [len(g) for g in G])
        eta, rho = self.chain.step_size(group, G, X, states)
        return D, uw_floor(group, W, D, eta), rho   # uw_floor: eta unchanged when off

    def _apply(self, group: dict, W: list[Tensor], D, eta, rho, work) -> None:
        """The chain's apply (W <- rho W - eta D, or the hyperball step) on views W."""
        apply = self.chain.apply or apply_update   # looked up per call: tests patch it
        apply(W, D, eta, rho, [len(w) for w in W], work, cautious=group.get("cautious_wd", False))

    def _step_alone(self, i: int, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        m, n = group["matrix_shape"]
        W = [p.view(-1, m, n) for p in params]
        work = self._workspace(i, params[0].device)
        self._count(params)
        D, eta, rho = self._update(group, W, [p.grad.view(-1, m, n) for p in params],
                                   [self.state[p] for p in params], work)
        self._apply(group, W, D, eta, rho, work)

    # ---- distributed: own matrices, one flat all-gather, the apply everywhere ---------------

    def _forms(self, group: dict, params: list[Tensor]) -> tuple:
        """What every rank knows of the group's step without its matrices: D's gathered dtype,
        and eta and rho as the step size gives them: a float (its value: a function of the
        group and the step count, so not gathered) or (dtype, width) of a (S, 1, width)
        tensor. Found by the step size (and uw_floor) on zero matrices, with throwaway state."""
        m, n = group["matrix_shape"]
        empty = params[0].grad.new_empty(0, m, n)
        states = [{"step": self.state[params[0]]["step"]}]
        eta, rho = self.chain.step_size(group, [empty], empty, states)
        eta = uw_floor(group, [empty], empty, eta)
        dtype = self.chain.result_dtype(group, empty)
        if self.chain.post is not None:   # post links compute in float32 or wider
            dtype = torch.promote_types(torch.promote_types(dtype, empty.dtype), torch.float32)
        form = lambda x: (x.dtype, x.shape[-1]) if isinstance(x, Tensor) else float(x)  # noqa: E731
        return dtype, form(eta), form(rho)

    def _stepping(self) -> list[tuple | None]:
        """Per group: (its parameters with a gradient, their _forms), or None when none has one
        (DDP leaves the same gradients None on every rank). Advances their step counts."""
        steps = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            self._count(params)
            steps.append((params, self._forms(group, params)) if params else None)
        return steps

    def _layout(self, steps: list[tuple | None]) -> tuple[list[dict], int]:
        """Per rank, {group index: {"D" / "eta" / "rho": byte offset}} of its blocks in its
        segment of the flat buffer (eta and rho only where tensors), and the segment size: the
        largest rank's, as the collective wants equal parts (plan() keeps them near equal)."""
        layouts, segment = [], 0
        for r in range(self.world):
            offsets, at = {}, 0
            for i, step in enumerate(steps):
                if step is None:
                    continue
                params, (dtype, eta, rho) = step
                m, n = self.param_groups[i]["matrix_shape"]
                rows = sum(p.numel() // (m * n) for p in params if self.owner[p] == r)
                if not rows:
                    continue
                sizes = {"D": rows * m * n * dtype.itemsize}
                sizes.update({name: rows * f[1] * f[0].itemsize
                              for name, f in (("eta", eta), ("rho", rho)) if isinstance(f, tuple)})
                offsets[i] = {}
                for name, size in sizes.items():
                    offsets[i][name], at = at, at + _aligned(size)
            layouts.append(offsets)
            segment = max(segment, at)
        return layouts, segment

    def _buffer(self, name: str, nbytes: int, device: torch.device) -> Tensor:
        if device.type == "cpu":
            return self._comm.get(name, (nbytes,), torch.uint8, device)
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def _start_shared(self):
        """Every group's chain on this rank's matrices, packed into its segment; the all-gather
        started (async_op: the AdamW backup steps meanwhile, see start_step)."""
        steps = self._stepping()
        if not any(steps):
            return None
        device = next(s[0][0].device for s in steps if s)
        layouts, segment = self._layout(steps)
        send = self._buffer("send", segment, device)
        for i, group in enumerate(self.param_groups):
            mine = [p for p in (steps[i][0] if steps[i] else []) if self.owner[p] == self.rank]
            if not mine:
                continue
            m, n = group["matrix_shape"]
            D, eta, rho = self._update(group, [p.view(-1, m, n) for p in mine],
                                       [p.grad.view(-1, m, n) for p in mine],
                                       [self.state[p] for p in mine],
                                       self._workspace(i, device))
            self._pack(send, layouts[self.rank][i], steps[i][1], D, eta, rho)
        gathered = self._buffer("gathered", self.world * segment, device)
        # torch 2.13 renamed all_gather_into_tensor
        all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        handle = all_gather(gathered, send, async_op=True)
        return handle, gathered, steps, layouts, segment

    def _pack(self, send: Tensor, offsets: dict, forms: tuple, D: Tensor, eta, rho) -> None:
        """D (in the gathered dtype) and the tensor step sizes into this rank's blocks; a float
        step size must be the one every rank found (_forms)."""
        dtype = forms[0]
        if self.chain.post is not None and torch.promote_types(D.dtype, dtype) != dtype:
            raise RuntimeError(f"the post link returned {D.dtype}, wider than the {dtype} the "
                               f"engine gathers: MatrixOptimizer._forms needs its dtype")
        _view(send, offsets["D"], dtype, D.shape).copy_(D)   # exact: result_dtype holds D
        for name, x, form in (("eta", eta, forms[1]), ("rho", rho, forms[2])):
            if isinstance(form, tuple) and isinstance(x, Tensor) and x.dtype == form[0] \
                    and x.shape == (len(D), 1, form[1]):
                _view(send, offsets[name], x.dtype, x.shape).copy_(x)
            elif isinstance(form, tuple) or isinstance(x, Tensor) or x != form:
                raise RuntimeError(f"the step size's {name} ({type(x).__name__}) differs from "
                                   f"the form it takes on zero matrices ({form}): the "
                                   f"distributed engine cannot share it")

    def _finish_shared(self, handle, gathered: Tensor, steps: list, layouts: list[dict],
                       segment: int) -> None:
        """Wait once for the gather, then the chain's apply on every group, every matrix, with
        D and eta / rho read from each owner's segment (views, no copies of D)."""
        handle.wait()
        for i, group in enumerate(self.param_groups):
            if steps[i] is None:
                continue
            params, (dtype, eta, rho) = steps[i]
            m, n = group["matrix_shape"]
            D, scalars, rows = [], {"eta": [], "rho": []}, defaultdict(int)
            for p in params:
                r, k = self.owner[p], p.numel() // (m * n)
                at = {name: r * segment + off for name, off in layouts[r][i].items()}
                D.append(_view(gathered, at["D"] + rows[r] * m * n * dtype.itemsize, dtype,
                               (k, m, n)))
                for name, form in (("eta", eta), ("rho", rho)):
                    if isinstance(form, tuple):
                        scalars[name].append(_view(gathered, at[name] + rows[r] * form[1]
                                                   * form[0].itemsize, form[0], (k, 1, form[1])))
                rows[r] += k
            eta, rho = (torch.cat(scalars[name]) if scalars[name] else form
                        for name, form in (("eta", eta), ("rho", rho)))
            self._apply(group, [p.view(-1, m, n) for p in params], D, eta, rho,
                        self._workspace(i, params[0].device))

    # ---- checkpoints: consolidate to the single-process format, load any world size ---------

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every parameter's state from its owner on rank `to` (on the CPU), for its
        next state_dict(). A collective: every rank calls it."""
        if self.world == 1:
            return
        params = [p for g in self.param_groups for p in g["params"]]
        specs = [None] * self.world
        dist.all_gather_object(specs, {i: self._spec(self.state[p]) for i, p in enumerate(params)
                                       if self.owner[p] == self.rank and self.state.get(p)})
        full = defaultdict(dict)
        for i, p in enumerate(params):
            src = self.owner[p]
            for key, (is_tensor, spec) in specs[src].get(i, {}).items():
                if not is_tensor:
                    full[p][key] = spec
                    continue
                t = (self.state[p][key].contiguous() if self.rank == src
                     else torch.empty(spec[0], dtype=spec[1], device=p.device))
                dist.broadcast(t, src=src)
                if self.rank == to:
                    full[p][key] = t.cpu().clone()
        self._full_state = full if self.rank == to else None

    @staticmethod
    def _spec(state: dict) -> dict:
        """{key: (True, (shape, dtype)) for a tensor, (False, value) otherwise} of one state."""
        return {key: (True, (tuple(v.shape), v.dtype)) if isinstance(v, Tensor) else (False, v)
                for key, v in state.items()}

    def state_dict(self) -> dict:
        if self.world == 1:
            return super().state_dict()
        if self._full_state is None:
            raise RuntimeError(f"MatrixOptimizer shared by {self.world} ranks: call "
                               f"consolidate_state_dict(to={self.rank}) on every rank before "
                               f"state_dict() on rank {self.rank}")
        sharded, self.state = self.state, self._full_state
        try:
            return super().state_dict()
        finally:
            self.state, self._full_state = sharded, None

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads single-process state (any world size's checkpoint); shared by W > 1 ranks,
        keeps the state of this rank's parameters and every step count. A hyperparameter
        missing from the saved param groups (a checkpoint written before it existed) takes
        this optimizer's default (the current config's)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if self.world == 1:
            return
        full, self.state = self.state, defaultdict(dict)
        for p, s in full.items():
            self.state[p] = (s if self.owner[p] == self.rank
                             else {k: v for k, v in s.items() if not isinstance(v, Tensor)})

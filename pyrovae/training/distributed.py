"""Data-parallel training with ``torch.distributed``: who this process is, and the gradient all-reduce.

``torchrun --nproc-per-node N -m pyrovae train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment; :func:`setup`
joins them in one process group (NCCL for CUDA devices, Gloo for the CPU). Every rank draws the
same permutation of the training set each epoch and trains on its shard of every global batch
(:meth:`Context.shard`); :class:`GradientSum` adds the ranks' gradients (and losses) with one
all-reduce per step. The ELBO is a *sum* over the batch, so summing (not averaging) the shards'
gradients gives exactly the gradient one process computes on the whole global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pyrovae.errors import PyrovaeError


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup() created the process group, so teardown() ends it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, metrics and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch of indices (sizes differ by at most 1)."""
        if not self.active:
            return batch
        return batch.tensor_split(self.world_size)[self.rank]

    def rank_seed(self, seed: int) -> int:
        """Seed for this rank's sampling noise: rank 0 keeps ``seed`` (a one-process run's)."""
        return seed if self.rank == 0 else (seed + 1_000_003 * self.rank) % 2**32


def setup(device: str) -> Context:
    """Join the process group that torchrun describes in the environment, if any.

    Reuses a group the caller already made; otherwise starts one (NCCL for ``cuda``, Gloo for
    ``cpu``) from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``.
    """
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), _local_rank(), owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world == 1:
        return Context()
    if not dist.is_available():
        raise PyrovaeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed: "
                           "train in one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PyrovaeError(f"WORLD_SIZE={world} is set but {', '.join(missing)} not: start "
                           "data-parallel training with torchrun --nproc-per-node N -m pyrovae train")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise PyrovaeError("--device cuda with several processes needs NCCL, which this PyTorch "
                           "build lacks: use --device cpu (Gloo) or one process")
    local_rank = _local_rank()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def device_name(ctx: Context, device: str) -> str:
    """``cuda`` means this rank's own GPU (``cuda:LOCAL_RANK``) when several processes run."""
    if not ctx.active or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise PyrovaeError(f"--device {device} under torchrun: every process takes its own GPU, "
                           "cuda:LOCAL_RANK; pass --device cuda")
    return f"cuda:{ctx.local_rank}"


def teardown(ctx: Context, failed: bool = False) -> None:
    """Wait for every rank, then end the process group if :func:`setup` made it. A rank leaving
    with an error skips the barrier: the others may be waiting in a collective it never joins."""
    if ctx.owns_group and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(ctx: Context, tensors: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank (initial weights must agree exactly)."""
    if ctx.active:
        for t in tensors:
            dist.broadcast(t.data, src=0)


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (``flag`` itself in one process): one small broadcast."""
    if not ctx.active:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


class GradientSum:
    """Sum the gradients of ``params`` and a loss over all ranks: one all-reduce per step.

    With several ranks the gradients live as views in one flat buffer (loss in its last slot),
    so the all-reduce needs no copies; :meth:`zero` clears it for the next step. Gradients made
    anew (a CUDA graph's backward sets its own) are gathered into the buffer and written back.
    A parameter without a gradient (a rank with an empty shard) takes part as zeros. Issues no
    host synchronisation, so it may sit between two captured CUDA graphs.
    """

    def __init__(self, ctx: Context, params: Iterable[torch.nn.Parameter], clip_norm: float | None = None):
        self.ctx, self.clip_norm = ctx, clip_norm
        self.params = [p for p in params if p.requires_grad]
        self.flat: torch.Tensor | None = None
        self.views: list[torch.Tensor] = []
        if ctx.active and self.params:
            first = self.params[0]
            total = sum(p.numel() for p in self.params)
            self.flat = torch.zeros(total + 1, dtype=first.dtype, device=first.device)
            offset = 0
            for p in self.params:
                self.views.append(self.flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            self.zero()

    def zero(self) -> None:
        """Zero the gradients for the next step (in the flat buffer when several ranks run)."""
        if self.flat is None:
            for p in self.params:
                p.grad = None
            return
        self.flat.zero_()
        for p, view in zip(self.params, self.views, strict=True):
            p.grad = view

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) the gradients in place, then clip their global norm to ``clip_norm``
        (when set); return the summed loss (0-dim tensor)."""
        loss = self._reduce(loss)
        if self.clip_norm is not None:  # the norm stays on the device: no host read
            grads = [p for p in self.params if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.clip_norm, foreach=True)
        return loss

    def _reduce(self, loss: torch.Tensor) -> torch.Tensor:
        if self.flat is None:
            return loss
        in_place = all(p.grad is v for p, v in zip(self.params, self.views, strict=True))
        if not in_place:
            for p, view in zip(self.params, self.views, strict=True):
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
        self.flat[-1].copy_(loss.reshape(()))
        dist.all_reduce(self.flat)
        if not in_place:
            for p, view in zip(self.params, self.views, strict=True):
                if p.grad is None:
                    p.grad = view.clone()
                else:
                    p.grad.copy_(view)
        return self.flat[-1].clone()  # the buffer is zeroed for the next step


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise PyrovaeError(f"{name}={os.environ[name]!r} is not a whole number") from None


def _local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)

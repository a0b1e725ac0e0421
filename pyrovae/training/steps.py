"""The SVI step, two ways: eager, or captured once as a CUDA graph and replayed.

A step takes a batch (a tuple of tensors, the model's inputs) and returns that batch's loss as a
0-dim device tensor; gradients are summed over data-parallel ranks before the optimizer's update.
Both ways run the same ``loss_fn(*batch)``: the estimator's ``differentiable_loss`` (one
implementation per estimator, :mod:`pyrovae.infer.estimators`), which reads nothing on the host.
The KL weight lives in a device tensor that the loop fills in place.

* :class:`EagerStep` -- loss, backward, gradient sum, update. Works for every estimator.
* :class:`GraphStep` -- forward, backward and the (capturable) Adam update recorded once in CUDA
  graphs and replayed for every batch: no Python, no Pyro bookkeeping, no kernel-launch cost per
  step. Capture needs a static batch shape (the loop drops each epoch's last partial batch),
  device-side constants only, and noise from the default CUDA generator (Pyro's samplers use it,
  and PyTorch advances it on every replay).

:func:`choose` turns ``--compile {eager,graph,auto}`` into a mode, with the reason when ``auto``
falls back to eager.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pyrovae.errors import PyrovaeError
from pyrovae.infer.registry import capture_problem
from pyrovae.training.distributed import GradientSum

COMPILE_MODES = ("eager", "graph", "auto")
WARMUP_STEPS = 3  # eager steps (real training steps) on a side stream before capture

LossFn = Callable[..., torch.Tensor]  # loss_fn(*batch) -> 0-dim tensor
Batch = tuple[torch.Tensor, ...]


def choose(compile: str, device: torch.device, estimator: str) -> tuple[str, str | None]:
    """``(mode, why)``: ``"eager"`` or ``"graph"``, and why ``auto`` chose eager (else None).

    ``graph`` where it cannot work raises :class:`PyrovaeError` with the reason.
    """
    if compile not in COMPILE_MODES:
        raise PyrovaeError(f"unknown --compile {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    if compile == "eager":
        return "eager", None
    if device.type != "cuda":
        why = f"CUDA graphs need a CUDA device, and this run trains on {device}"
    elif not hasattr(torch.cuda, "CUDAGraph"):
        why = "this PyTorch build has no CUDA graphs"
    else:
        why = capture_problem(estimator)
    if why is None:
        return "graph", None
    if compile == "graph":
        raise PyrovaeError(f"--compile graph: {why}; use --compile eager (or auto, which falls "
                           "back to eager by itself)")
    return "eager", why


class EagerStep:
    """``loss_fn(*batch)``, backward, gradient sum over ranks, optimizer update."""

    def __init__(self, loss_fn: LossFn, optimizer: torch.optim.Optimizer, grad_sum: GradientSum):
        self.loss_fn, self.optimizer, self.grad_sum = loss_fn, optimizer, grad_sum

    def __call__(self, batch: Batch) -> torch.Tensor:
        if len(batch[0]):
            loss = self.loss_fn(*batch)
            if loss.requires_grad:
                loss.backward()
            loss = loss.detach()
        else:  # a data-parallel rank whose shard of a small last batch is empty
            loss = torch.zeros((), device=batch[0].device)
        loss = self.grad_sum(loss)
        self.optimizer.step()
        self.grad_sum.zero()
        return loss


class CudaGraphs:
    """What :class:`GraphStep` needs of CUDA: a side stream for warm-up, capture, replay.

    ``capture(fn)`` records ``fn()`` in a new graph and returns ``(graph, output)``; the output
    tensors are static, refreshed in place by every ``replay(graph)``.
    """

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.stream: torch.cuda.Stream | None = None  # warm-up and capture, on the run's GPU

    def _stream(self) -> torch.cuda.Stream:
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=self.device)
        return self.stream

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        stream = self._stream()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), warnings.catch_warnings():
            # warm-up steps run the capturable optimizer outside capture, on purpose
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            yield
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, fn: Callable[[], Any], pool: Any = None) -> tuple[torch.cuda.CUDAGraph, Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=self._stream()):
            output = fn()
        return graph, output

    def pool(self, graph: torch.cuda.CUDAGraph) -> Any:
        return graph.pool()

    def replay(self, graph: torch.cuda.CUDAGraph) -> None:
        graph.replay()


class GraphStep:
    """The whole step replayed from CUDA graphs; returns the loss as a 0-dim device tensor.

    ``loss_fn(*batch)`` must be capture-ready (no host synchronisation) and ``optimizer`` built
    with ``capturable=True``. The first :data:`WARMUP_STEPS` calls train eagerly on a side stream
    (as capture requires); the next one records two graphs, gradients and update, with the
    all-reduce of data-parallel runs between them, and every later call copies the batch into the
    static inputs and replays them. The batch must keep its shapes. ``graphs`` stands in for CUDA
    in tests.
    """

    def __init__(self, loss_fn: LossFn, optimizer: torch.optim.Optimizer, grad_sum: GradientSum,
                 graphs: CudaGraphs | None = None, device: torch.device | None = None):
        self.loss_fn, self.optimizer, self.grad_sum = loss_fn, optimizer, grad_sum
        self.graphs = graphs or CudaGraphs(device)
        self.calls = 0
        self.captured: tuple[Any, Any] | None = None  # (gradient graph, update graph)
        self.static_batch: Batch | None = None
        self.static_loss: torch.Tensor | None = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        self.calls += 1
        if self.calls <= WARMUP_STEPS:
            with self.graphs.side_stream():
                loss = self.grad_sum(self.forward_backward(batch))
                self.optimizer.step()
            return loss
        if self.captured is None:
            self._capture(batch)
        elif [t.shape for t in batch] != [t.shape for t in self.static_batch]:
            raise PyrovaeError(f"a captured step takes batches of shapes "
                               f"{[tuple(t.shape) for t in self.static_batch]}, got "
                               f"{[tuple(t.shape) for t in batch]}: the loop must drop partial batches")
        for static, t in zip(self.static_batch, batch, strict=True):
            static.copy_(t)
        grads, update = self.captured
        self.graphs.replay(grads)
        loss = self.grad_sum(self.static_loss)
        self.graphs.replay(update)
        return loss.clone()

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """The batch's loss (detached, on the device) with its gradients written into the
        parameters' ``.grad``: what the first graph records. Reads nothing on the host."""
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates (in capture: static) grads
        loss = self.loss_fn(*batch)
        loss.backward()
        return loss.detach()

    def _capture(self, batch: Batch) -> None:
        self.static_batch = tuple(t.clone() for t in batch)

        def gradients():
            self.static_loss = self.forward_backward(self.static_batch)

        grads, _ = self.graphs.capture(gradients)
        update, _ = self.graphs.capture(self.optimizer.step, pool=self.graphs.pool(grads))
        self.captured = (grads, update)

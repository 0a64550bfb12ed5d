"""One epoch of optimisation steps, eager or replayed from a CUDA graph.

A training step of the MR-CCL model is about 2,300 small kernels (three encoders, a
noised second view, nine NT-Xent terms, their backward pass, Adam). Eager PyTorch
launches them one by one from Python, so on a GPU a step costs the launch overhead, not
the arithmetic. On a GPU the whole step (batch gather, standardising, noise, forward,
backward, Adam) is therefore captured once into a CUDA graph and replayed for every
full-size batch; an epoch's odd-size last batch runs eagerly. Set MER_TUNE_CUDA_GRAPHS=0
to train eagerly on a GPU too. On the CPU every step is eager.

The loss is summed on the device and read once per epoch: no per-step synchronisation.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np
import torch

from mer_tune.errors import MerTuneError
from mer_tune.method.config import OptimConfig
from mer_tune.method.losses import fused_kernels

# loss_fn(standardised batch per modality, labels of the batch or None, the batch's
# sample indices) -> scalar loss
LossFn = Callable[[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor], torch.Tensor]
WARMUP_STEPS = 3  # eager steps before capture: lazy initialisation happens outside the graph


@functools.cache
def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    # One side stream per process: each stream that runs a matmul keeps its own cuBLAS
    # workspace for the life of the process, so a stream per stage would add up.
    return torch.cuda.Stream(device)


def graphs_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("MER_TUNE_CUDA_GRAPHS", "1") != "0"


def autocast(device: torch.device, graphed: bool = False):
    """bf16 autocast on a GPU; full precision on the CPU (where it brings no speed here).
    A CUDA graph needs autocast's weight-cast cache off: a cached cast would be captured
    once and then replayed with stale weights."""
    return torch.autocast(
        device.type,
        dtype=torch.bfloat16,
        enabled=device.type == "cuda",
        cache_enabled=False if graphed else None,
    )


class Stepper:
    """Adam steps of `model` on batches of sample indices: `batch(idx)` gives their
    standardised features, `targets[pos]` their labels (None for contrastive stages)."""

    def __init__(
        self,
        model: torch.nn.Module,
        batch: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        loss_fn: LossFn,
        optim: OptimConfig,
        device: torch.device,
        targets: torch.Tensor | None = None,
    ):
        self.model, self.batch, self.loss_fn = model, batch, loss_fn
        self.device, self.targets = device, targets
        self.graphed = graphs_enabled(device)
        self.opt = torch.optim.Adam(
            model.parameters(),
            lr=optim.lr,
            weight_decay=optim.weight_decay,
            capturable=self.graphed,  # Adam's step counter lives on the GPU inside a graph
            # On the CPU one fused kernel updates every parameter, instead of a dozen
            # small ones per parameter tensor.
            fused=True if device.type == "cpu" and fused_kernels() else None,
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.full = optim.batch_size

    def epoch(
        self, batches: list[np.ndarray], label_batches: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one step per batch. Returns (sum of loss x batch size, last batch's loss),
        both still on the device."""
        self.model.train()
        sizes = [len(b) for b in batches]
        # One upload per epoch; each step then reads its slice on the device.
        flat = torch.as_tensor(np.concatenate(batches), device=self.device)
        flat_pos = (
            torch.as_tensor(np.concatenate(label_batches), device=self.device)
            if label_batches is not None
            else None
        )
        total = torch.zeros((), device=self.device)
        loss = total
        start = 0
        for size in sizes:
            idx = flat[start : start + size]
            pos = flat_pos[start : start + size] if flat_pos is not None else None
            start += size
            if self.graphed and size == self.full:
                loss = self._graph_step(idx, pos)
            else:
                loss = self._eager_step(idx, pos)
            total = total + loss * size
        return total, loss

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the graph and its private memory pool: a pool outlives its graph in the
        allocator's cache, and a trial captures one graph per training stage."""
        if self.graph is not None:
            self.graph = self.static_idx = self.static_pos = self.static_loss = None
            self.opt.zero_grad(set_to_none=True)  # the gradients live in the pool too
            torch.cuda.empty_cache()

    def _forward(self, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        x = self.batch(idx)
        y = self.targets[pos] if self.targets is not None and pos is not None else None
        with autocast(self.device, graphed=self.graphed):
            return self.loss_fn(x, y, idx)

    def _eager_step(self, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        loss = self._forward(idx, pos)
        # Once a graph exists its gradient buffers must stay: zero them in place.
        self.opt.zero_grad(set_to_none=self.graph is None)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _graph_step(self, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        if self.graph is None:
            if self.warm < WARMUP_STEPS:
                self.warm += 1
                side = _warmup_stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    loss = self._eager_step(idx, pos)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return loss
            try:
                self._capture(idx, pos)
            except RuntimeError as err:
                # A failed capture can leave the stream state behind it unusable: stop
                # the trial with the way out rather than train on in an unknown state.
                raise MerTuneError(
                    f"CUDA graph capture failed ({str(err).splitlines()[0]}); "
                    "set MER_TUNE_CUDA_GRAPHS=0 to train with eager steps"
                ) from err
        self.static_idx.copy_(idx)
        if pos is not None:
            self.static_pos.copy_(pos)
        self.graph.replay()
        return self.static_loss.clone()

    def _capture(self, idx: torch.Tensor, pos: torch.Tensor | None) -> None:
        self.static_idx = idx.clone()
        self.static_pos = pos.clone() if pos is not None else None
        self.opt.zero_grad(set_to_none=True)  # backward in the graph allocates them
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._forward(self.static_idx, self.static_pos)
            loss.backward()
            self.opt.step()
        self.static_loss = loss.detach()
        self.graph = graph

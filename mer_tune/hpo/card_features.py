"""One copy of the features per GPU, shared by every trial on that card (--share-features).

A GPU trial uploads the whole feature set to its card (1.55 GiB at MER2024-SEMI scale),
so eight trials on one card held eight copies. With --share-features, one Ray actor per
(search, node, card) uploads them once and hands out CUDA IPC handles
(torch.multiprocessing's reduce_tensor); a trial on that card opens them as tensors over
the holder's memory and only reads them (batches are gathered from them). The holder is
a detached named actor, so that it outlives the trial that created it; the search driver
ends its holders when the search ends (`release`).

A trial that cannot open the shared copy (no holder could start, an IPC error) uploads
its own, as without the flag, and says so in its log. On the CPU a trial already reads
the one copy in Ray's object store, so nothing here runs; the tests drive the holder
with CPU tensors in shared memory through the same reduce / rebuild calls.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import numpy as np

from mer_tune.data.layout import MODALITIES, MERData

NAMESPACE = "mer-tune"
OPEN_TIMEOUT = 300.0  # seconds for a holder to upload the features and answer
PREFIX = "features-"


class FeatureHolder:
    """A Ray actor: the features of one search on one card (or, in tests, in shared CPU
    memory), and the handles that open them in another process."""

    def __init__(self, data: MERData, device: str, visible: str | None) -> None:
        if visible is not None:
            # The trial's card, set before CUDA starts in this process: with no GPU of its
            # own, Ray shows this actor none.
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
        import torch

        if device == "cpu":  # by file name: any process can open it, not only a child
            torch.multiprocessing.set_sharing_strategy("file_system")
        self.arrays = {}
        for m in MODALITIES:
            stored = np.asarray(data.features[m])
            if device == "cpu":  # a copy in shared memory (the object store's is read-only)
                self.arrays[m] = torch.tensor(stored).share_memory_()
            else:
                self.arrays[m] = torch.as_tensor(stored, device=device)

    def handles(self) -> dict[str, Any]:
        """Per modality, (rebuild function, its arguments): what opens the tensor elsewhere.
        A CUDA tensor's are plain values (the IPC handle); a CPU tensor's storage is
        reduced by hand to its shared-memory file name, since Ray's pickler would copy
        the bytes where multiprocessing's passes a handle."""
        from torch.multiprocessing.reductions import reduce_storage, reduce_tensor

        out = {}
        for m, t in self.arrays.items():
            if t.is_cuda:
                out[m] = reduce_tensor(t)
            else:
                where = reduce_storage(t.untyped_storage())
                out[m] = (_view, (where, t.dtype, t.shape, t.stride(), t.storage_offset()))
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.arrays.values())


def open_handles(handles: dict[str, Any]) -> dict[str, Any]:
    """The tensors behind FeatureHolder.handles(), opened in this process."""
    return {m: rebuild(*args) for m, (rebuild, args) in handles.items()}


def _view(where: tuple, dtype: Any, shape: Any, stride: Any, offset: int) -> Any:
    """A CPU tensor over the shared-memory storage `where` (rebuild function, arguments)."""
    import torch

    rebuild, args = where
    return torch.empty(0, dtype=dtype).set_(rebuild(*args), offset, shape, stride)


def holder_name(search: str, node_id: str, visible: str) -> str:
    """The holder of `search`'s features on one card of one node (names stay plain)."""
    card = re.sub(r"[^0-9A-Za-z]+", "_", visible)
    return f"{PREFIX}{search}/{node_id[:16]}/{card}"  # a search name holds no "/"


def open_shared(data_ref: list, search: str, device: str = "cuda") -> dict[str, Any]:
    """In a trial: the features on this trial's card, opened from the card's holder (the
    first trial on the card to ask starts it). Raises on any failure: the caller then
    uploads its own copy."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if device == "cuda" else None
    if device == "cuda" and (not visible or "," in visible):
        raise RuntimeError(f"CUDA_VISIBLE_DEVICES={visible!r}: not one card")
    holder = (
        ray.remote(FeatureHolder)
        .options(
            name=holder_name(search, node, visible or device),
            namespace=NAMESPACE,
            get_if_exists=True,  # the first trial on the card starts it, the others join
            lifetime="detached",
            num_cpus=0,
            num_gpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote(data_ref[0], device, visible)  # Ray hands the actor the data itself
    )
    # Bounded: a holder that cannot come up leaves the trial to upload its own copy.
    return open_handles(ray.get(holder.handles.remote(), timeout=OPEN_TIMEOUT))


def release(search: str, wait: float = 30.0) -> int:
    """End every holder of `search` (its holders' key: name and run, on any node);
    returns how many there were. Waits up to `wait` seconds for them to be gone, since
    ray.kill only asks: a holder still listed would still hold its card memory."""
    import ray

    def listed() -> list[str]:
        return [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == NAMESPACE and actor["name"].startswith(f"{PREFIX}{search}/")
        ]

    ended = 0
    for name in listed():
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
            ended += 1
        except ValueError:  # ended meanwhile
            pass
    deadline = time.monotonic() + wait
    while ended and listed() and time.monotonic() < deadline:
        time.sleep(0.1)
    return ended

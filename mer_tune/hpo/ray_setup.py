"""Starting or joining Ray for a search, and asking a GPU node how large its card is."""

from __future__ import annotations

import os
import socket

from mer_tune.errors import MerTuneError


def check_address(address: str | None) -> None:
    if not address or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError):
        raise MerTuneError(f"--address {address}: no Ray cluster answers there") from None


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    check_address(address)
    # A Ray started here for this search serves this machine only: its ports listen on
    # 127.0.0.1, not on the machine's network address.
    local = {} if address or os.environ.get("RAY_ADDRESS") else {"_node_ip_address": "127.0.0.1"}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            **local,
        )
    except (ConnectionError, RuntimeError) as err:
        raise MerTuneError(f"--address {address}: cannot connect to Ray ({err})") from None


def card_bytes(gpus: float) -> int | None:
    """Memory of the card a trial would get, asked on a GPU node (None without CUDA, as
    with a fake GPU resource, or when no GPU node comes up within a minute)."""
    import ray

    @ray.remote(num_gpus=gpus, num_cpus=0)
    def probe() -> int | None:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(0).total_memory

    ref = probe.remote()
    done, _ = ray.wait([ref], timeout=60)
    if not done:
        ray.cancel(ref, force=True)
        return None
    return ray.get(ref)

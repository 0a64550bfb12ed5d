"""Starting or joining Ray for a search, and asking a GPU node how large its card is."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
from pathlib import Path

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
    own_sigterm = _sigterm_handler()
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
    if callable(own_sigterm):
        # Ray's driver handler exits at once (a C stack dump, no resume line): the
        # program's own (cli/process.py: SIGTERM as Ctrl-C) is put back.
        signal.signal(signal.SIGTERM, own_sigterm)
    private_ray_files()


def _sigterm_handler():
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread handles signals
    return signal.getsignal(signal.SIGTERM)


def private_ray_files(home: Path | None = None) -> list[Path]:
    """Ray writes its auth token (what guards its daemons, which listen on every
    interface) readable by every local user: ~/.ray 0755, the token 0644. Tightened to
    0700 and 0600 where this user owns them; returns what was changed."""
    folder = (home or Path.home()) / ".ray"
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or folder / "auth_token")
    changed = []
    for path, mode in ((folder, 0o700), (token, 0o600)):
        try:
            info = path.stat()
            if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & ~mode:
                os.chmod(path, mode)
                changed.append(path)
        except OSError:  # absent, or not ours to change: Ray's own business
            continue
    return changed


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

"""The stages every trial of a search shares, trained once before the trials start.

In a thresholds search every trial reads pretraining and finetuning from the stage cache
once one trial has trained them. Until then the other trials wait on the cache's lock,
and on a CPU machine their cores stand idle beside the one that trains (in `make run`,
half of the machine for the first half of the search). So when the searched parameters
leave a prefix of the stages unchanged (stages.shared_upto) and the cache is on, one Ray
task trains that prefix first, with a node's CPUs as its torch threads (a step is 1.47x
faster on two threads than on one: benchmarks/RESULTS.md), and the trials then start
with it cached.

A failure here is only reported: the trials then train those stages themselves and fail
or succeed as they would have without this step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mer_tune.data.layout import MERData
from mer_tune.hpo.record import SearchRecord
from mer_tune.hpo.spaces import Space
from mer_tune.method.config import Config
from mer_tune.method.stages import STAGES, shared_upto


def shared_stages(sp: Space) -> list[str]:
    """The stages (in order) that no parameter of `sp` changes: every trial shares them."""
    upto = shared_upto(set(sp.params))
    names = list(STAGES)
    return names[: names.index(upto) + 1] if upto else []


def task_resources(record: SearchRecord) -> tuple[float, float]:
    """(CPUs, GPUs) of the task. On a GPU, a trial's share: the card does the work. On
    CPUs, the most CPUs one node has, up to what the search's concurrent trials hold and
    what the cluster has free now (other work may hold some: the task must not wait for
    CPUs the trials could start without)."""
    cpus, gpus = record.cpus_per_trial, record.gpus_per_trial
    if gpus > 0:
        return cpus, gpus
    import ray

    node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    free = ray.available_resources().get("CPU", 0)
    return max(cpus, min(node, free, record.concurrency * cpus)), 0.0


def _train(
    data: MERData,
    base: dict[str, Any],
    threads: int,
    use_gpu: bool,
    cache_dir: str,
    cache_key: str | None,
    timeout: float | None,
    upto: str,
) -> dict[str, list[float]]:
    """Runs in the Ray task; returns the stages' per-epoch curves (for the parent run)."""
    import torch

    from mer_tune.hpo.cache import StageStore
    from mer_tune.method import malloc, pipeline
    from mer_tune.method.config import build_config

    torch.set_num_threads(threads)
    malloc.tune_malloc()
    cache = StageStore(
        cache_dir, key=bytes.fromhex(cache_key) if cache_key else None, timeout=timeout
    )
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    curves: dict[str, list[float]] = {}

    def report(kind: str, **f: Any) -> None:
        if kind != "epoch":
            return
        where = "pretrain" if f["stage"] == "pretrain" else f"fold{f['fold']}/{f['stage']}"
        for name, value in f.items():
            if name not in ("fold", "stage", "epoch") and isinstance(value, int | float):
                curves.setdefault(f"shared/{where}/{name}", []).append(float(value))

    pipeline.warm(data, build_config(base), cache, upto, device, report)
    return curves  # empty when every stage was in the cache already (a resumed search)


CANCEL_WAIT_S = 10.0


class SharedStagesTask:
    """The shared stages' Ray task, started: the search opens its MLflow runs meanwhile,
    then waits for it (`wait`), or stops it (`cancel`)."""

    def __init__(self, ref: Any, stages: list[str], threads: int, timeout: float | None):
        self.ref, self.stages, self.threads, self.timeout = ref, stages, threads, timeout
        self.started = time.monotonic()

    def cancel(self) -> None:
        """Stop the task, and wait until its worker is gone (up to CANCEL_WAIT_S): it
        must not write into the stage cache after the search has given up on it."""
        import ray

        ray.cancel(self.ref, force=True)
        ray.wait([self.ref], timeout=CANCEL_WAIT_S)

    def wait(
        self,
        on_event: Callable[..., None],
        log_curves: Callable[[dict[str, list[float]]], None],
    ) -> dict[str, Any] | None:
        """Wait for the task; its per-epoch curves go to `log_curves`. Returns what was
        done (stages, threads, seconds), or None when the stages were in the cache
        already or the task failed (each said in a note)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        named = " and ".join(self.stages)
        try:
            # The timeout counts from the task's start, as a trial's does.
            left = self.timeout - (time.monotonic() - self.started) if self.timeout else None
            curves = ray.get(self.ref, timeout=max(left, 0.0) if left is not None else None)
        except GetTimeoutError:
            self.cancel()
            why = f"took longer than --trial-timeout {self.timeout:g} s"
        except RayError as err:
            why = f"failed ({_first_line(err)})"
        except BaseException:  # Ctrl-C: stop the task with the search
            self.cancel()
            raise
        else:
            if not curves:  # all in the cache already: the record of their training stands
                on_event("note", row={"text": f"{named}: in the stage cache already"})
                return None
            seconds = time.monotonic() - self.started
            log_curves(curves)
            threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
            on_event(
                "note",
                row={"text": f"{named} trained once for every trial ({threads}, {seconds:.1f} s)"},
            )
            return {"stages": self.stages, "threads": self.threads, "seconds": round(seconds, 2)}
        on_event(
            "note",
            row={
                "text": f"training {named} ahead of the trials {why}: each trial trains them itself"
            },
        )
        return None


def start_shared_stages(
    data_ref: Any, base: Config, record: SearchRecord, sp: Space, cache_key: str | None
) -> SharedStagesTask | None:
    """Start training the stages every trial shares into the search's stage cache, in
    one Ray task (`data_ref`: the trials' data in the object store). None when nothing
    is shared or the cache is off."""
    stages = shared_stages(sp)
    if not stages or not record.cache_dir:
        return None
    import ray

    cpus, gpus = task_resources(record)
    threads = max(1, int(cpus))
    task = ray.remote(_train).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    ref = task.remote(
        data_ref,  # Ray hands the task the data itself, read from the object store
        base.to_dict(),
        threads,
        gpus > 0,
        record.cache_dir,
        cache_key,
        record.trial_timeout,
        stages[-1],
    )
    return SharedStagesTask(ref, stages, threads, record.trial_timeout)


def _first_line(err: BaseException) -> str:
    """The task's own error, not Ray's wrapping of it."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__

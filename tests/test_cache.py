import io
import threading
import time

import numpy as np
import pytest
import torch

from mer_tune.data.pack import load
from mer_tune.hpo import cache as cache_module
from mer_tune.hpo.cache import ArrowFiles, CacheWaitTimeout, StageStore, key_digest
from mer_tune.method import pipeline
from mer_tune.method.config import with_overrides


def test_same_config_scores_identically_with_and_without_the_cache(tmp_path, tiny_dir, fast_cfg):
    data = load(tiny_dir)
    plain = pipeline.run(data, fast_cfg)
    store = StageStore(tmp_path / "cache")
    first = pipeline.run(data, fast_cfg, cache=store)
    second = pipeline.run(data, fast_cfg, cache=StageStore(tmp_path / "cache"))
    assert plain.weighted_f1 == first.weighted_f1 == second.weighted_f1
    np.testing.assert_array_equal(
        plain.predictions.filter(like="prob_"), second.predictions.filter(like="prob_")
    )
    assert set(second.cache_hits) == {"pretrain", "finetune", "pseudo"}
    assert first.cache_hits == ["pretrain"]  # computed in fold 0, shared by fold 1


def test_downstream_change_reuses_upstream_stages(tmp_path, tiny_dir, fast_cfg):
    data = load(tiny_dir)
    pipeline.run(data, fast_cfg, cache=StageStore(tmp_path / "c"))
    store = StageStore(tmp_path / "c")
    pipeline.run(data, with_overrides(fast_cfg, {"self_training.thresholds.sad": 0.3}), cache=store)
    assert "finetune" in store.hits and "pseudo" not in store.hits
    store = StageStore(tmp_path / "c")
    voted = pipeline.run(data, with_overrides(fast_cfg, {"voting.weights.text": 0.0}), cache=store)
    assert {"pretrain", "finetune", "pseudo"} <= set(store.hits)
    assert set(voted.cache_hits) == {"pretrain", "finetune", "pseudo"}  # nothing retrained
    store = StageStore(tmp_path / "c")
    decided = pipeline.run(
        data, with_overrides(fast_cfg, {"decision.offsets.sad": 1.5}), cache=store
    )
    assert set(decided.cache_hits) == {"pretrain", "finetune", "pseudo"}  # the decision stage too


def _three_users_at_once(root) -> tuple[list, list]:
    """Three threads ask for the same missing stage; returns (compute calls, results)."""
    calls, results = [], []

    def slow():
        calls.append(1)
        time.sleep(0.5)
        return {"w": torch.ones(3), "a": np.arange(4)}

    threads = [
        threading.Thread(
            target=lambda: results.append(StageStore(root).get_or_compute("s", {"k": 1}, slow))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return calls, results


# A URI store's lease waits a settle time and polls (seconds): the slow tier.
@pytest.mark.parametrize("where", ["folder", pytest.param("uri", marks=pytest.mark.slow)])
def test_concurrent_users_compute_a_shared_stage_once(tmp_path, where):
    root = tmp_path if where == "folder" else f"file://{tmp_path}"
    calls, results = _three_users_at_once(root)
    assert len(calls) == 1 and len(results) == 3
    assert all(np.array_equal(r["a"], np.arange(4)) for r in results)


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove_checksum"])
def test_a_corrupt_entry_is_recomputed(tmp_path, damage):
    store = StageStore(tmp_path)
    store.get_or_compute("s", {"k": 1}, lambda: {"w": torch.arange(100.0)})
    blob = next(tmp_path.glob("*.pt"))
    if damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:50])
    elif damage == "flip":
        raw = bytearray(blob.read_bytes())
        raw[-20] ^= 0xFF
        blob.write_bytes(bytes(raw))
    else:
        next(tmp_path.glob("*.sha256")).unlink()
    calls = []
    again = StageStore(tmp_path).get_or_compute(
        "s", {"k": 1}, lambda: calls.append(1) or {"w": torch.arange(100.0)}
    )
    assert calls == [1]
    assert torch.equal(again["w"], torch.arange(100.0))


def test_cache_info_and_clear(tmp_path):
    store = StageStore(tmp_path)
    store.get_or_compute("pretrain", {"k": 1}, lambda: {"w": torch.ones(10)})
    store.get_or_compute("finetune", {"k": 1}, lambda: {"w": torch.ones(10)})
    info = store.info()["stages"]
    assert info["pretrain"]["entries"] == 1 and info["finetune"]["bytes"] > 0
    (tmp_path / "notes.txt").write_text("mine")
    assert store.clear() == 2 and store.info()["stages"] == {}
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only mer-tune's files go


@pytest.mark.slow  # lease settle and poll times
def test_a_uri_store_shares_entries_and_recomputes_a_corrupt_one(tmp_path):
    """Any pyarrow filesystem URI (here file://) works like a folder."""
    root = f"file://{tmp_path}/shared"
    calls, _ = _three_users_at_once(root)
    assert len(calls) == 1
    store = StageStore(root)
    assert store.get_or_compute("s", {"k": 1}, lambda: 1 / 0)["a"].tolist() == [0, 1, 2, 3]
    assert store.info()["stages"]["s"]["entries"] == 1
    (tmp_path / "shared" / next(p.name for p in (tmp_path / "shared").glob("*.pt"))).write_bytes(
        b"junk"
    )
    assert StageStore(root).get_or_compute("s", {"k": 1}, lambda: {"a": np.arange(2)})[
        "a"
    ].tolist() == [0, 1]


KEY = b"k" * 32


def _entry(tmp_path, key=KEY):
    store = StageStore(tmp_path, key=key)
    store.get_or_compute("s", {"k": 1}, lambda: {"w": torch.arange(5.0)})
    return store, next(tmp_path.glob("*.pt"))


def _again(root, key=KEY):
    calls = []
    store = StageStore(root, key=key)
    value = store.get_or_compute("s", {"k": 1}, lambda: calls.append(1) or {"w": torch.zeros(5)})
    return store, calls, value


def test_a_forged_entry_with_a_matching_checksum_is_refused_and_recomputed(tmp_path):
    import hashlib

    _, blob = _entry(tmp_path)
    forged = io.BytesIO()
    torch.save({"w": torch.full((5,), 666.0)}, forged)
    blob.write_bytes(forged.getvalue())
    digest = blob.name.removesuffix(".pt")
    (tmp_path / f"{digest}.sig").unlink()
    (tmp_path / f"{digest}.sha256").write_text(hashlib.sha256(forged.getvalue()).hexdigest())
    store, calls, value = _again(tmp_path)
    assert calls == [1] and torch.equal(value["w"], torch.zeros(5))
    assert store.info()["rejected"] == 1
    # another search's key never serves this one's entries, and leaves them alone
    _, calls, _ = _again(tmp_path, key=b"x" * 32)
    assert calls == [1]
    store, calls, value = _again(tmp_path)
    assert calls == [] and store.rejected == 0


def test_an_entry_that_does_not_load_is_deleted_and_recomputed(tmp_path):
    import hashlib
    import hmac

    _, blob = _entry(tmp_path)
    junk = b"\x80\x04not a torch file at all"
    blob.write_bytes(junk)  # signed correctly, yet torch.load fails (UnpicklingError)
    (tmp_path / blob.name.replace(".pt", ".sig")).write_bytes(
        hmac.new(KEY, junk, hashlib.sha256).hexdigest().encode()
    )
    store, calls, _ = _again(tmp_path)
    assert calls == [1] and store.info()["rejected"] == 1
    _, calls, _ = _again(tmp_path)
    assert calls == []  # the recomputed entry is good


def test_a_transient_read_error_deletes_nothing(tmp_path, monkeypatch):
    _, blob = _entry(tmp_path)
    good = blob.read_bytes()
    store = StageStore(tmp_path, key=KEY)
    real = store.files.read

    def flaky(name):
        if name.endswith(".pt"):
            raise OSError("connection reset")
        return real(name)

    monkeypatch.setattr(store.files, "read", flaky)
    deleted = []
    monkeypatch.setattr(store.files, "delete", lambda name: deleted.append(name))
    monkeypatch.setattr(store.files, "write", lambda name, b: None)
    store.get_or_compute("s", {"k": 1}, lambda: {"w": torch.zeros(5)})
    assert deleted == [] and store.rejected == 0
    assert blob.read_bytes() == good


class _SlowFiles(ArrowFiles):
    """A store whose writes take `delay` seconds to land, as a busy S3 bucket's can."""

    delay = 0.6

    def write(self, name, blob):
        time.sleep(self.delay)
        super().write(name, blob)


@pytest.mark.slow  # seconds of waiting or a subprocess: CI runs it, `make check` not
def test_leases_on_a_slow_store_admit_one_computer(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "ArrowFiles", _SlowFiles)
    calls, results = _three_users_at_once(f"file://{tmp_path}/slow")
    assert len(calls) == 1 and len(results) == 3


def test_a_dead_trials_lease_expires_and_only_the_owner_releases(tmp_path, monkeypatch):
    root = f"file://{tmp_path}/c"
    store = StageStore(root)
    digest = key_digest("s", {"k": 1})
    lease = f"{digest}.lock"
    # A lease left by a SIGKILLed trial two minutes ago is taken over, not waited on.
    store.files.write(lease, f"deadbeef {time.time() - 2 * cache_module.LEASE_SECONDS}".encode())
    waits = []
    monkeypatch.setattr(cache_module, "POLL_SECONDS", 0.37)  # told apart from the settle time
    monkeypatch.setattr(cache_module.time, "sleep", lambda s: waits.append(s))
    assert store.get_or_compute("s", {"k": 1}, lambda: 7) == 7
    assert cache_module.POLL_SECONDS not in waits  # it never waited for the dead owner
    monkeypatch.undo()
    assert store.files.read(lease) is None  # released: it was ours

    # Someone else's live lease: we wait for it, bounded by the trial timeout.
    store.files.write(lease, f"other {time.time()}".encode())
    waiting = StageStore(root, timeout=2)
    with pytest.raises(CacheWaitTimeout, match="waited 2 s"), waiting.files.lock(lease, 2):
        pass
    assert store.files.read(lease).startswith(b"other")  # never deleted by a waiter

    # A holder whose lease was taken over (a long stall) does not delete the new owner's.
    store.files.delete(lease)
    with store.files.lock(lease, None):
        store.files.write(lease, f"newowner {time.time()}".encode())
    assert store.files.read(lease).startswith(b"newowner")


def test_a_folder_lock_wait_is_bounded_too(tmp_path):
    from filelock import FileLock

    store = StageStore(tmp_path, timeout=1)
    digest = key_digest("s", {"k": 1})
    with FileLock(str(tmp_path / f"{digest}.lock")), pytest.raises(CacheWaitTimeout):
        store.get_or_compute("s", {"k": 1}, lambda: 1)


def test_failed_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    store = StageStore(tmp_path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    from mer_tune import outputs

    monkeypatch.setattr(outputs, "fsync_replace", full_disk)
    with pytest.raises(OSError):
        store.get_or_compute("s", {"k": 1}, lambda: {"w": torch.ones(3)})
    assert not list(tmp_path.glob(".*.tmp"))


def test_warming_the_shared_stages_leaves_only_the_searched_one_to_a_trial(
    tmp_path, tiny_dir, fast_cfg
):
    data = load(tiny_dir)
    pipeline.warm(data, fast_cfg, StageStore(tmp_path / "c"), "finetune")
    names = StageStore(tmp_path / "c").files.names()
    stored = {n.split("-")[0] for n in names if cache_module.ENTRY.fullmatch(n)}
    assert stored == {"pretrain", "finetune"}  # nothing after the last shared stage
    store = StageStore(tmp_path / "c")
    trial = with_overrides(fast_cfg, {"self_training.thresholds.sad": 0.3})
    warmed = pipeline.run(data, trial, cache=store)
    assert set(warmed.cache_hits) == {"pretrain", "finetune"}  # in every fold
    assert warmed.weighted_f1 == pipeline.run(data, trial).weighted_f1  # same as untouched

import threading
import time

import numpy as np
import pytest
import torch

from mer_tune import pipeline
from mer_tune.cache import StageStore, key_digest
from mer_tune.config import with_overrides
from mer_tune.data import load


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
    assert voted.seconds["finetune"] < 0.5


def test_key_changes_with_any_upstream_value_and_only_then(fast_cfg):
    base = pipeline.stage_keys(fast_cfg, "fp", 0)
    for path, value in [
        ("model.hidden", 32),
        ("noise.kind", "mask"),
        ("optim.lr", 0.01),
        ("seed", 5),
    ]:
        changed = pipeline.stage_keys(with_overrides(fast_cfg, {path: value}), "fp", 0)
        for stage in ("pretrain", "finetune", "pseudo"):
            assert key_digest(stage, changed[stage]) != key_digest(stage, base[stage]), (
                path,
                stage,
            )
    other_data = pipeline.stage_keys(fast_cfg, "other", 0)
    assert key_digest("pretrain", other_data["pretrain"]) != key_digest(
        "pretrain", base["pretrain"]
    )
    other_fold = pipeline.stage_keys(fast_cfg, "fp", 1)
    assert other_fold["pretrain"] == base["pretrain"] and other_fold["finetune"] != base["finetune"]
    over = pipeline.stage_keys(with_overrides(fast_cfg, {"oversample.target": 10}), "fp", 0)
    assert over["pretrain"] == base["pretrain"] and over["finetune"] != base["finetune"]


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


@pytest.mark.parametrize("where", ["folder", "uri"])
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
    info = store.info()
    assert info["pretrain"]["entries"] == 1 and info["finetune"]["bytes"] > 0
    assert store.clear() == 2 and store.info() == {}


def test_a_uri_store_shares_entries_and_recomputes_a_corrupt_one(tmp_path):
    """Any pyarrow filesystem URI (here file://) works like a folder."""
    root = f"file://{tmp_path}/shared"
    calls, _ = _three_users_at_once(root)
    assert len(calls) == 1
    store = StageStore(root)
    assert store.get_or_compute("s", {"k": 1}, lambda: 1 / 0)["a"].tolist() == [0, 1, 2, 3]
    assert store.info()["s"]["entries"] == 1
    (tmp_path / "shared" / next(p.name for p in (tmp_path / "shared").glob("*.pt"))).write_bytes(
        b"junk"
    )
    assert StageStore(root).get_or_compute("s", {"k": 1}, lambda: {"a": np.arange(2)})[
        "a"
    ].tolist() == [0, 1]

"""--share-features: one holder per card uploads the features once; every trial on the
card opens that copy. Driven here with CPU tensors in shared memory through the same
reduce / rebuild calls a card uses (the CUDA path itself needs a GPU:
benchmarks/card_sharing.py, which leaves out the Ray actor)."""

import numpy as np
import pytest

from mer_tune.data.layout import MODALITIES
from mer_tune.data.pack import load
from mer_tune.hpo import card_features


def _holders(search: str) -> list[str]:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return [n for n in names if n.startswith(f"{card_features.PREFIX}{search}/")]


def test_trials_on_one_card_open_the_one_copy_its_holder_uploaded(ray_session, tiny_dir):
    import ray

    data = load(tiny_dir).shareable()
    ref = ray.put(data)

    @ray.remote(num_cpus=0)
    def trial(mark: float | None) -> dict[str, float]:
        arrays = card_features.open_shared([ref], "s1", device="cpu")
        if mark is not None:  # written through one trial's view...
            arrays["audio"][0, 0] = mark
        return {m: float(arrays[m][0, 0]) for m in MODALITIES}

    try:
        first = ray.get([trial.remote(None) for _ in range(3)])  # at once: one holder
        assert _holders("s1") == [card_features.holder_name("s1", _node(), "cpu")]
        for seen in first:
            for m in MODALITIES:
                assert seen[m] == pytest.approx(float(np.asarray(data.features[m])[0, 0]))
        ray.get(trial.remote(1000.0))  # exact in float16, as the features are stored
        assert ray.get(trial.remote(None))["audio"] == 1000.0  # ...seen by the next: shared
        assert card_features.open_shared([ref], "s2", device="cpu")  # another search's own
        assert len(_holders("s2")) == 1
        assert card_features.release("s1") == 1
        assert _holders("s1") == [] and len(_holders("s2")) == 1  # only that search's
    finally:
        card_features.release("s1")
        card_features.release("s2")


def test_a_trial_that_cannot_tell_its_card_starts_no_holder_and_keeps_its_own(
    ray_session, tiny_dir
):
    import ray

    from mer_tune.hpo.trial import _card_features

    data = load(tiny_dir).shareable()
    ref = ray.put(data)

    @ray.remote(num_cpus=0, runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0,1"}})
    def trial():
        return _card_features(data, [ref], "s3")

    # Two cards visible: no holder is started, and no shared features come back (the
    # trial then uploads its own, as without the flag).
    assert ray.get(trial.remote()) is None
    assert _holders("s3") == []


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def test_share_features_on_cpu_trials_says_it_does_nothing(search_env, tiny_dir):
    from conftest import tiny_search

    res = tiny_search(search_env, tiny_dir, trials=1, share_features=True, holdout=0)
    assert "--share-features: the trials run on the CPU, where it has no effect" in res.notes
    assert (res.results["status"] == "FINISHED").all()

"""Tune's saved state made to agree with itself before a search resumes.

Tune saves a search in three files: the trials (experiment_state-*.json), its search
generator with the concurrency limiter (search_gen_state-*.json: how many trials were
made, which are running) and the Optuna searcher (searcher-state-*.pkl: the study, and
which study trial each Tune trial is). A background thread copies them into the search
folder one by one while the driver may already be saving the next step, so a driver
killed at the wrong moment leaves files from different steps. Restored as they are,
Tune and its searcher then disagree about which trials exist: the limiter waits for a
trial Tune never made (the resumed search hangs), the generator counts a trial Tune lost
(the search ends short), or the study never hears of a trial Tune ran.

Tune's trials are taken as the truth, the one file the restore reads first, and the
other two are brought in line with them: the generator's count, the limiter's running
trials, and the study (a trial Tune ran is added or told its result; a suggestion Tune
lost is marked failed, with a note, and asked again next). When the files agree nothing
is rewritten.
"""

from __future__ import annotations

import glob
import os
import pickle
from pathlib import Path
from typing import Any

from mer_tune.outputs import atomic_write

LOST = "mer_tune.lost"  # the study trial's note on a suggestion Tune lost


FILES = {
    "trials": "experiment_state-*.json",
    "generator": "search_gen_state-*.json",
    "searcher": "searcher-state-*.pkl",
}


def newest(ray_dir: Path, pattern: str) -> Path | None:
    """The file Tune's restore reads for `pattern`: the greatest name (names carry the
    session's start time)."""
    found = glob.glob(os.path.join(glob.escape(str(ray_dir)), pattern))
    return Path(max(found)) if found else None


def first_save_missing(ray_dir: Path) -> str | None:
    """Which of Tune's three files `ray_dir` lacks (a driver killed before Tune's first
    save was whole), or None. Every later save rewrites all three, so only a search
    killed as its first trial started lacks one."""
    if not ray_dir.is_dir():
        return None
    return next((kind for kind, p in FILES.items() if newest(ray_dir, p) is None), None)


def agree(ray_dir: Path, searcher: Any) -> list[str]:
    """Bring the newest generator and searcher files in `ray_dir` in line with Tune's
    newest trials. `searcher` is a fresh searcher of the search's own class (its state is
    loaded from the file). Returns what was changed, one phrase each (empty: nothing)."""
    import ray.cloudpickle as cloudpickle
    from ray.tune import ExperimentAnalysis

    gen_file = newest(ray_dir, FILES["generator"])
    searcher_file = newest(ray_dir, FILES["searcher"])
    if not gen_file or not searcher_file or not newest(ray_dir, FILES["trials"]):
        return []  # see first_save_missing
    trials = ExperimentAnalysis(str(ray_dir)).trials
    running = {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}
    changed: list[str] = []

    gen = cloudpickle.loads(gen_file.read_bytes())
    limiter = gen.get("name:ConcurrencyLimiter")
    if gen["counter"] != len(trials):
        changed.append(f"the generator counted {gen['counter']} trials, Tune has {len(trials)}")
        gen["counter"] = len(trials)
    if limiter is not None and set(limiter["live_trials"]) != running:
        changed.append("the concurrency limiter's running trials")
        limiter["live_trials"] = set(running)
        limiter["num_unfinished_live_trials"] = len(running)
    if changed:  # 0600, as Tune's own files in the private search folder
        blob = cloudpickle.dumps(gen)
        atomic_write(gen_file, lambda tmp: tmp.write_bytes(blob), 0o600)

    searcher.restore(str(searcher_file))
    study_changes = _study_agrees(searcher, trials)
    if study_changes:
        atomic_write(searcher_file, lambda tmp: searcher.save(str(tmp)), 0o600)
    return changed + study_changes


def _study_agrees(searcher: Any, trials: list) -> list[str]:
    """The searcher's study made to hold each of Tune's trials, told as Tune ended it; a
    study trial Tune does not have is a lost suggestion."""
    import optuna
    from ray.tune.utils import flatten_dict

    study, ot_trials = searcher._ot_study, searcher._ot_trials
    state = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    adopted, told, lost = 0, 0, 0
    for trial in trials:
        if trial.trial_id not in ot_trials:
            ot_trials[trial.trial_id] = _adopt(study, searcher, trial.config)
            state[ot_trials[trial.trial_id].number] = optuna.trial.TrialState.RUNNING
            adopted += 1
        running = state[ot_trials[trial.trial_id].number] == optuna.trial.TrialState.RUNNING
        ended = trial.status in ("TERMINATED", "ERROR")
        if ended and running and trial.trial_id not in searcher._completed_trials:
            # As Tune tells it: an errored trial without its result (FAIL, not a score
            # from part of the way), a finished one with its flattened last result.
            error = trial.status == "ERROR"
            result = None if error else flatten_dict(trial.last_result)
            searcher.on_trial_complete(trial.trial_id, result, error=error)
            told += 1
    if adopted:
        # The sampler's state is from before these trials were suggested: unchanged, its
        # next random draw would repeat the first of them.
        study.sampler.reseed_rng()
    known = {t.trial_id for t in trials}
    for trial_id in [k for k in ot_trials if k not in known]:
        ot_trial = ot_trials.pop(trial_id)
        if state[ot_trial.number] != optuna.trial.TrialState.RUNNING:
            # Ended and told (Tune's trials were saved before it even started): the study
            # keeps what it learnt; the resume drops its row and run, Tune runs another.
            continue
        ot_trial.set_user_attr(LOST, "suggested, then lost when the driver was killed")
        study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(ot_trial.params)  # the next suggestion asks it again
        lost += 1
    return [
        f"{n} {what}"
        for n, what in (
            (adopted, "trial(s) added to the study"),
            (told, "result(s) told to the study"),
            (lost, "lost suggestion(s) to ask again"),
        )
        if n
    ]


def _adopt(study: Any, searcher: Any, config: dict):
    """A running study trial with the parameters of a Tune trial the study never saw."""
    import optuna

    space = searcher._space if isinstance(searcher._space, dict) else searcher._space.params
    params = {k: v for k, v in config.items() if k in space}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=params,
            distributions={k: space[k] for k in params},
        )
    )
    return optuna.trial.Trial(study, study.get_trials(deepcopy=False)[-1]._trial_id)


def relink_callbacks(ray_dir: Path, callbacks: list) -> bool:
    """Tune restores a run with the callbacks saved in its tuner.pkl. mer-tune's logger is
    saved as a reference to its search (callback.py), which loads as `callbacks`; a search
    saved by an earlier release holds a copy of its old logger instead (its MLflow client
    and rows as they were), and gets `callbacks` written in its place. Returns whether
    the file was rewritten."""
    import io

    import ray.cloudpickle as cloudpickle

    path = ray_dir / "tuner.pkl"
    if not path.exists():
        return False
    from ray.tune import RunConfig

    state = _Lenient(io.BytesIO(path.read_bytes())).load()
    values = state.values() if isinstance(state, dict) else []
    run_config = next((v for v in values if isinstance(v, RunConfig)), None)
    saved = list(getattr(run_config, "callbacks", None) or [])
    if run_config is None or all(any(c is mine for mine in callbacks) for c in saved):
        return False
    run_config.callbacks = list(callbacks)
    blob = cloudpickle.dumps(state)
    atomic_write(path, lambda tmp: tmp.write_bytes(blob), 0o600)
    return True


class _Lenient(pickle.Unpickler):
    """Loads a tuner.pkl whose old logger refers to mer-tune names that have since moved
    (the logger is replaced, so what they were no longer matters)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (AttributeError, ModuleNotFoundError):
            if module.split(".")[0] != "mer_tune":
                raise
            return _Moved


def _Moved(*args: Any, **kwargs: Any) -> None:
    """Stands in for a name an old logger referred to."""

"""MLflow records of a search: one parent run, one nested child run per trial. This is the
only module that writes to MLflow.

Every write happens on the driver (a sqlite store has one writer; with a cluster, the
driver logs over HTTP to `mlflow server`), so trials never contend for the store.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mer_tune.errors import MerTuneError

MAX_PARAM_LEN = 6000


def redact(uri: str | None) -> str | None:
    """The URI with any password replaced by ***, for printing and for files."""
    if not uri or "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def resolve_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir.
    An http(s) URI's user:password moves to MLFLOW_TRACKING_USERNAME / _PASSWORD, where
    MLflow's client reads them, and the URI is returned without them."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative sqlite paths would move with each process's working dir.
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        if parts.username is not None or parts.password is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username or "")
            os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password or "")
            return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return uri


def _basic_auth() -> dict[str, str]:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user and not password:
        return {}
    token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the store cannot be used: a server that
    does not answer, or refuses the credentials; a sqlite folder that is not writable."""
    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        # /health answers without credentials; listing experiments proves them.
        probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
            request = urllib.request.Request(probe, headers=_basic_auth())
            with urllib.request.urlopen(request, timeout=timeout):
                pass
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise MerTuneError(
                    f"--tracking-uri {shown}: the MLflow server refused the credentials "
                    f"({err.code}); give them as http://USER:PASSWORD@host or in "
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
                ) from None
            raise MerTuneError(f"--tracking-uri {shown}: the server answered {err.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise MerTuneError(
                f"--tracking-uri {shown}: MLflow server unreachable ({reason})"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise MerTuneError(f"--tracking-uri {uri}: cannot write in {folder}")
    elif "://" not in uri and not uri.startswith("databricks"):
        # A folder, or a typo such as http//host, which MLflow would read as one: its
        # file store is retired (MLflow refuses it), so say what to give instead.
        raise MerTuneError(
            f"--tracking-uri {shown}: MLflow cannot use it (not a URI; give "
            "sqlite:///PATH.db or http://HOST:PORT)"
        )
    else:
        # Any other store (a database URI, Databricks): opened here, so that a store
        # MLflow cannot use fails now rather than after the training.
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:  # MLflow, SQLAlchemy, a missing driver: all end here
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            first = first.split(". ")[0][:200]  # the first sentence says it
            secret = urllib.parse.urlsplit(uri).password
            for form in {secret, urllib.parse.unquote(secret or "")} - {None, ""}:
                first = first.replace(form, "***")  # an error may quote the URI
            raise MerTuneError(f"--tracking-uri {shown}: MLflow cannot use it ({first})") from None


def _private_artifact_root(location: str | None) -> None:
    """A local artifact folder (./mlruns beside a sqlite store) that does not exist yet
    is made with mode 0700 before MLflow makes it with the umask's."""
    if not location or not location.startswith(("file:", "/", ".")):
        return  # a server's or a bucket's
    root = Path(urllib.parse.urlsplit(location).path).parent
    if not root.exists():
        with contextlib.suppress(OSError):  # MLflow then makes it, or says why not
            root.mkdir(mode=0o700, parents=True)
            os.chmod(root, 0o700)


def ui_command(uri: str, experiment_id: str) -> str:
    uri = redact(uri) or uri
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   "
        f"# then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    )


class SearchRecorder:
    """Creates and fills the parent run and the child runs of one search."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        new_db = db is not None and not db.exists()
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )
        if new_db and db.exists():
            os.chmod(db, 0o600)  # the runs of a store mer-tune made are its user's alone
        _private_artifact_root(self.client.get_experiment(self.experiment_id).artifact_location)
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self._steps: dict[str, int] = {}

    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_id = run.info.run_id
        self.client.log_batch(
            self.parent_id, params=[Param(k, _text(v)) for k, v in params.items()]
        )
        return self.parent_id

    def resume_parent(self, run_id: str) -> None:
        """Reattach to a search's parent run and its children (after an interruption)."""
        self.parent_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        for run in self.child_runs():
            trial_id = run.data.tags.get("ray.trial_id")
            if trial_id:
                self.children[trial_id] = run.info.run_id

    def drop_orphans(self, trial_ids: set[str]) -> None:
        """Delete child runs of trials that Ray never recorded (a driver killed between
        starting a trial and saving its state): they stand for no trial."""
        for run in self.child_runs():
            if run.data.tags.get("ray.trial_id") not in trial_ids:
                self.client.delete_run(run.info.run_id)

    def __getstate__(self) -> dict:
        # Ray pickles the run config (and this recorder inside the callback); the
        # client is rebuilt from the URI on unpickling.
        state = self.__dict__.copy()
        state.pop("client", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.uri)

    def child_runs(self) -> list:
        """Every child run of the search, page by page (a batched search can have many)."""
        query = f"tags.mlflow.parentRunId = '{self.parent_id}'"
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=10000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def start_child(self, trial_id: str, name: str, params: dict[str, Any]) -> str:
        if trial_id in self.children:  # a retried or restored trial keeps its run
            self.client.update_run(self.children[trial_id], status="RUNNING")
            return self.children[trial_id]
        tags = {"mlflow.parentRunId": self.parent_id, "ray.trial_id": trial_id}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.children[trial_id] = run.info.run_id
        self.client.log_batch(
            run.info.run_id, params=[Param(k, _text(v)) for k, v in params.items()]
        )
        return run.info.run_id

    def log_finished(
        self,
        trial_id: str,
        name: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, Any],
        status: str,
    ) -> str:
        """A trial that is already over as one child run, in three calls (a batched trial
        is milliseconds of work: its run is written whole). A run left for the same trial
        by a driver killed before it saved its results is replaced."""
        if trial_id in self.children:
            self.client.delete_run(self.children.pop(trial_id))
        # Created with its parent tag: a run interrupted before its next write is still
        # found (and dropped) by a resume.
        tags = {"mlflow.parentRunId": self.parent_id, "ray.trial_id": trial_id} | tags
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={k: _text(v) for k, v in tags.items()}
        )
        now = int(time.time() * 1000)
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite(v)],
            params=[Param(k, _text(v)) for k, v in params.items()],
        )
        self.client.set_terminated(
            run.info.run_id, status="FINISHED" if status == "FINISHED" else "FAILED"
        )
        self.children[trial_id] = run.info.run_id
        return run.info.run_id

    def log_metrics(
        self, trial_id: str, metrics: dict[str, float], step: int | None = None
    ) -> None:
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if _finite(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_artifacts(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(path), folder)

    def log_prediction(self, config_yaml: str, submission: Path, params: dict, tags: dict) -> str:
        """One run for `mer-tune predict`: its config, parameters and the submission file."""
        run = self.client.create_run(self.experiment_id, run_name="predict", tags=tags)
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in params.items()])
        self.client.log_text(run_id, config_yaml, "config.yaml")
        self.client.log_artifact(run_id, str(submission))
        self.client.set_terminated(run_id)
        return run_id

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite(v)]
        if batch and self.parent_id:
            self.client.log_batch(self.parent_id, metrics=batch)

    def log_parent_history(self, series: dict[str, list[float]]) -> None:
        """Curves on the parent run, one value per step (the shared stages' epochs)."""
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, values in series.items()
            for step, v in enumerate(values)
            if _finite(v)
        ]
        for start in range(0, len(batch), 1000):  # log_batch takes 1,000 metrics at most
            if self.parent_id:
                self.client.log_batch(self.parent_id, metrics=batch[start : start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, _text(v)) for k, v in tags.items()])

    def finish_child(self, trial_id: str, status: str, tags: dict[str, Any] | None = None) -> None:
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def kill_running_children(self) -> None:
        """Every child run of the search still RUNNING ended as KILLED."""
        for run in self.child_runs():
            if run.info.status == "RUNNING":
                self.set_tags(run.info.run_id, {"mer_tune.status": "KILLED"})
                self.client.set_terminated(run.info.run_id, status="KILLED")

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _text(v: Any) -> str:
    return str(v)[:MAX_PARAM_LEN]

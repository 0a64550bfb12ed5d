"""A search's folder, STORAGE/NAME: the one place its paths and files are named.

search.yaml       settings, data record, MLflow ids (no passwords)
base_config.yaml  the config every trial starts from
space.yaml        the space searched (resume reads it)
holdout.csv       the outer holdout's names and labels
cache.key         the key that signs stage cache entries (mode 0600)
results.csv       one row per trial; confirm.csv, verdict.json after the confirm step
trial-outputs/    each trial's holdout and test predictions and its splits
ray/              Ray Tune's experiment state (pickled: trust the folder like code)
cache/            the stage cache, unless --cache-dir put it elsewhere
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mer_tune import user_yaml
from mer_tune.errors import MerTuneError, UsageError
from mer_tune.hpo.record import SearchRecord
from mer_tune.outputs import plain_name, write_text

# search.yaml keys read by type; a hand-edited value of another type is refused by name.
STATE_TYPES: dict[str, type] = {
    "trials": int,
    "seed": int,
    "holdout_size": int,
    "confirm_top": int,
    "confirm_seeds": int,
    "cache_dir": str,
    "tracking_uri": str,
    "experiment": str,
    "parent_run_id": str,
    "objectives": list,
    "from_searches": list,
    "dataset": dict,
}
RESULTS_COLUMNS = ("trial", "status")


def damaged(path: Path, what: str) -> MerTuneError:
    return MerTuneError(
        f"{path}: damaged or edited by hand ({what}); mer-tune writes this file: restore it, "
        "or rerun the search"
    )


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) file of the search folder that must hold a mapping."""
    try:
        value = yaml.safe_load(path.read_text())
    except OSError as err:
        raise damaged(path, err.strerror or type(err).__name__) from None
    except UnicodeDecodeError:
        raise damaged(path, "not UTF-8 text") from None
    except yaml.YAMLError:
        raise damaged(path, "not valid YAML or JSON") from None
    if not isinstance(value, dict):
        raise damaged(path, f"not a mapping but {type(value).__name__}")
    return value


def read_table(
    path: Path, required: tuple[str, ...] = (), numeric: tuple[str, ...] = (), **read_csv
) -> pd.DataFrame:
    """A CSV file of the search folder, with the columns its readers index and numbers
    where they compute; anything else is one line naming the file."""
    try:
        table = pd.read_csv(path, **read_csv)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=list(required))
    except OSError as err:
        raise damaged(path, err.strerror or type(err).__name__) from None
    except UnicodeDecodeError:
        raise damaged(path, "not UTF-8 text") from None
    except pd.errors.ParserError:
        raise damaged(path, "not a valid CSV table") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise damaged(path, f"no column {missing[0]!r}")
    for column in numeric:
        if column in table.columns:
            try:
                table[column] = pd.to_numeric(table[column])
            except (ValueError, TypeError):
                raise damaged(path, f"column {column!r} holds a non-number") from None
    return table


def storage_root(storage: str | Path) -> Path:
    """The folder that holds searches: a path, on shared storage (NFS) for a cluster."""
    if "://" in str(storage):
        raise UsageError(
            f"--storage {storage}: URIs are not supported; give a folder every node can "
            "reach (an NFS mount); the stage cache alone can live at a URI (--cache-dir)"
        )
    return Path(storage).resolve()


@dataclass(frozen=True)
class SearchFolder:
    path: Path

    @classmethod
    def named(cls, root: Path, name: str, option: str) -> SearchFolder:
        """The search NAME in the storage folder `root`, never a path outside it: a plain
        name (no '/', no '..'), and not a symbolic link, through which `cache clear`, a
        resume or a report would act on another folder's search."""
        path = root / plain_name(name, option)
        if path.is_symlink():
            raise UsageError(
                f"{option} {name}: {path} is a symbolic link; a search is a folder in {root} itself"
            )
        return cls(path)

    @classmethod
    def of(cls, storage: str | Path, name: str, option: str) -> SearchFolder:
        """The existing search NAME in STORAGE (`option` names where the name came from)."""
        folder = cls.named(storage_root(storage), name, option)
        if not folder.state_file.exists():
            raise MerTuneError(f"{folder.path}: no search of that name (see --storage)")
        return folder

    @property
    def name(self) -> str:
        return self.path.name

    state_file = property(lambda self: self.path / "search.yaml")
    base_file = property(lambda self: self.path / "base_config.yaml")
    space_file = property(lambda self: self.path / "space.yaml")
    holdout_file = property(lambda self: self.path / "holdout.csv")
    key_file = property(lambda self: self.path / "cache.key")
    results_file = property(lambda self: self.path / "results.csv")
    best_file = property(lambda self: self.path / "best_config.yaml")
    outputs = property(lambda self: self.path / "trial-outputs")
    ray_dir = property(lambda self: self.path / "ray")
    plots = property(lambda self: self.path / "plots")
    study_db = property(lambda self: self.path / "optuna.db")
    default_cache = property(lambda self: self.path / "cache")

    def state(self) -> dict[str, Any]:
        """search.yaml, with its cache folder as an absolute path (what trials are given)."""
        state = read_mapping(self.state_file)
        for key, kind in STATE_TYPES.items():
            if state.get(key) is not None and not isinstance(state[key], kind):
                raise damaged(self.state_file, f"{key} is not a {kind.__name__}")
        where = state.get("cache_dir")
        if where and "://" not in where and not Path(where).is_absolute():
            state["cache_dir"] = str((self.path / where).resolve())
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """search.yaml written, a cache folder inside this folder recorded relative to it:
        a copied or moved search then reads (and `cache clear` clears) its own copy, not
        the cache of the folder it was copied from."""
        where = state.get("cache_dir")
        if where and "://" not in where and Path(where).is_relative_to(self.path.resolve()):
            state = state | {"cache_dir": str(Path(where).relative_to(self.path.resolve()))}
        write_text(self.state_file, user_yaml.dump(state))

    def record(self) -> SearchRecord:
        """search.yaml as a typed SearchRecord (record.py)."""
        return SearchRecord.from_dict(self.state())

    def write_record(self, record: SearchRecord) -> None:
        self.write_state(record.to_dict())

    def base(self):
        """The base config, read as mer-tune's own file (as `space`)."""
        from mer_tune.method import legacy
        from mer_tune.method.config import build_config

        values, _ = legacy.upgrade(read_mapping(self.base_file))
        return build_config(values, source=str(self.base_file))

    def space(self, base=None):
        """The space searched. Read as mer-tune's own file (an earlier release wrote YAML
        aliases for repeated values), then checked as any space is."""
        from mer_tune.hpo.spaces import space_from_dict

        raw = read_mapping(self.space_file)
        return space_from_dict(raw, base, self.space_file.stem, str(self.space_file))

    def results(self) -> pd.DataFrame | None:
        """results.csv as a table (None: no such file). A search stopped before any
        trial ended wrote it empty: a table of no rows then."""
        if not self.results_file.exists():
            return None
        table = read_table(self.results_file, RESULTS_COLUMNS, ("trial", "weighted_f1"))
        if "weighted_f1" not in table.columns:
            if (table["status"] == "FINISHED").any():
                raise damaged(self.results_file, "no column 'weighted_f1'")
            table["weighted_f1"] = pd.Series(dtype=float)
        return table

    def required_results(self) -> pd.DataFrame:
        """results.csv of a search that has one; else one line saying what is missing."""
        if not self.path.is_dir():
            raise MerTuneError(f"{self.path}: no search of that name (see --storage)")
        table = self.results()
        if table is None:
            raise MerTuneError(
                f"{self.results_file}: missing (the search stopped before its first trial "
                "ended, or the file was removed)"
            )
        return table

    def cache_dir(self) -> str:
        """Where this search's stage cache is (its --cache-dir, a URI or a folder)."""
        return self.record().cache_dir or str(self.default_cache)

    def cache_key(self) -> str | None:
        """The hex key that signs this search's cache entries (None: an older search)."""
        return self.key_file.read_text().strip() if self.key_file.exists() else None

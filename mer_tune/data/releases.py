"""The challenge releases mer-tune reads as they come: which files hold the labels and
the test names in a MER2024-SEMI and a MER2025-SEMI (Track 1) folder."""

from __future__ import annotations

from pathlib import Path

from mer_tune.errors import MerTuneError

# Each challenge's release as it comes: its label file (a CSV with name and discrete, and
# the pickled form read only with --trust-pickle) and its test names.
LAYOUTS = {
    "MER2024-SEMI": {
        "labels": "label-disdim.csv",
        "pickled": "label-6way.npz",
        "test": "test-names.csv",
    },
    "MER2025-SEMI": {
        "labels": "track1_train_disdim.csv",
        "pickled": "track1_label_6way.npz",
        "test": "track_all_candidates.csv",  # every test sample is among them
    },
}


def find_layout(root: Path) -> str:
    """Which release's files `root` holds (MER2024-SEMI when it holds neither's labels);
    one line naming the files when it holds both."""
    found = {
        name: [f for f in (files["labels"], files["pickled"]) if (root / f).exists()]
        for name, files in LAYOUTS.items()
    }
    present = [name for name, files in found.items() if files]
    if len(present) > 1:
        named = ", ".join(f for files in found.values() for f in files)
        raise MerTuneError(
            f"{root}: holds the label files of two releases ({named}); keep one release's"
        )
    return present[0] if present else "MER2024-SEMI"

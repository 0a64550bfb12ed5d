"""A wheel built from the checkout works outside it: the shipped spaces travel with it."""

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(dest: Path) -> Path:
    """The checkout as git sees it, untracked new files included, ignored ones not (or,
    outside git, all but build outputs)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        ignore = shutil.ignore_patterns(".venv", "build", "*.egg-info", ".git", "__pycache__")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return dest
    for name in listed.stdout.splitlines():
        if not (ROOT / name).is_file():  # deleted in the working tree
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_the_wheel_installs_and_finds_its_spaces_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    src = _tracked_copy(tmp_path / "src")  # no stale build/ of the checkout in the wheel
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The fresh environment borrows the dependencies (not mer-tune) from this one.
    (next(venv.glob("lib/python*/site-packages")) / "deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q"]
    subprocess.run([*pip, str(next(wheels.glob("*.whl")))], check=True, timeout=300)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mer_tune; print(mer_tune.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert str(venv) in where.stdout  # the wheel's copy, not the checkout
    out = subprocess.run(
        [str(venv / "bin" / "mer-tune"), "spaces"], capture_output=True, text=True,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("thresholds", "noise", "voting", "oversampling", "full"):
        assert f"{name}:" in out.stdout

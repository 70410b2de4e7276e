"""The built distributions carry every file of the package: each module, SQL file, template and
static asset under ``src/conveyor`` is in the wheel (built from the sdist, as ``python -m build``
does, so the sdist is complete too). A glob that misses a new folder fails here, not on a user's
machine.

CI builds the distributions once and points ``CONVEYOR_DIST_DIR`` at them; otherwise the test
builds them (about 10 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "conveyor"
# Made by tools and runs, never shipped.
SKIPPED_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def source_files() -> set[str]:
    """Every file of the package in the source tree, as ``conveyor/...`` paths."""
    return {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*")
        if path.is_file()
        and not SKIPPED_PARTS & set(path.relative_to(PACKAGE).parts)
        and path.suffix not in SKIPPED_SUFFIXES
    }


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("CONVEYOR_DIST_DIR")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def only(directory: Path, pattern: str) -> Path:
    found = list(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {found}"
    return found[0]


def test_the_wheel_carries_every_file_of_the_package(dist_dir: Path) -> None:
    with zipfile.ZipFile(only(dist_dir, "conveyor-*.whl")) as wheel:
        shipped = {name for name in wheel.namelist() if name.startswith("conveyor/")}
    expected = source_files()
    assert {"conveyor/demo_app/schema.sql", "conveyor/web/static/dashboard.js"} <= expected
    assert sorted(expected - shipped) == []
    assert sorted(shipped - expected) == []


def test_the_sdist_carries_every_file_of_the_package(dist_dir: Path) -> None:
    with tarfile.open(only(dist_dir, "conveyor-*.tar.gz")) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    shipped = {name.removeprefix("src/") for name in names if name.startswith("src/conveyor/")}
    missing = source_files() - shipped
    assert sorted(missing) == []

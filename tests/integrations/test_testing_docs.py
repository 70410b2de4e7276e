"""docs/testing.md shows the files of docs/examples/ verbatim, and only those, so every sample
on the page is code that the suite runs (pytest collects docs/examples too)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "testing.md"
INCLUDE = re.compile(r"<!-- include: (\S+) -->\n```python\n(.*?)```", re.S)


def test_every_sample_is_an_example_file_verbatim() -> None:
    text = PAGE.read_text()
    included = INCLUDE.findall(text)
    assert len(included) == text.count("```python"), "a python sample that is not an include"
    for path, body in included:
        assert body == (ROOT / path).read_text(), f"{path} differs from its copy in testing.md"


def test_every_example_file_is_shown_and_collected() -> None:
    shown = {path for path, _ in INCLUDE.findall(PAGE.read_text())}
    files = {f"docs/examples/{p.name}" for p in (ROOT / "docs" / "examples").glob("*.py")}
    assert shown == files
    assert any(name.startswith("docs/examples/test_") for name in files)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'testpaths = \[[^]]*"docs/examples"', pyproject)

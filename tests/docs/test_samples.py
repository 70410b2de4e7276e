"""Every code sample in docs/ is a file that this module runs, shown verbatim.

The Markdown conventions, checked here for every page under docs/ but the lead's security.md:
- a ```python or ```sql block is the whole of the file named by the ``<!-- include: PATH -->``
  line just above it;
- a ```sh block is preceded by ``<!-- run -->`` (each command line is run here and must exit 0,
  or N when the line ends with ``# exit N``) or ``<!-- not run: REASON -->``;
- ```text blocks are output and help text, not code.

The sample files under docs/examples/guides/ run as scripts (``python FILE``) in a schema of their
own, with ``CONVEYOR_DATABASE_URL`` and ``CONVEYOR_SCHEMA`` set the way a deployment sets them.
They check their own outcome with ``assert``, whatever the schema already holds: it holds another
app's schedule and jobs, and each sample (each run block) runs twice. SQL samples run with the
schema name ``conveyor`` pointed at the test's schema (the one substitution). Test ids named in
the docs must exist, and the generated reference pages must match what docs/reference/generate.py
makes of the code.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from conveyor import Conveyor
from conveyor.cli import main as cli_main
from conveyor.options import JOB_OPTIONS, QUEUE_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDES = DOCS / "examples" / "guides"
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name != "security.md")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
INCLUDE = re.compile(r"<!-- include: (\S+) -->")
RUN = re.compile(r"<!-- (run|not run: [^>]+) -->")
EXIT = re.compile(r"\s+# exit (\d+)$")
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def _blocks(page: Path) -> Iterator[tuple[str, str, str]]:
    """(language, body, the line just above the block) of every fenced block of a page."""
    text = page.read_text()
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        yield match.group(1), match.group(2), before


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_code_sample_is_an_included_file_or_a_marked_command(page: Path) -> None:
    for language, body, before in _blocks(page):
        where = f"{_name(page)}: a ```{language} block"
        if language in ("python", "sql"):
            include = INCLUDE.fullmatch(before)
            assert include, f"{where} without an <!-- include: PATH --> line above it"
            path = ROOT / include.group(1)
            assert path.is_file(), f"{where} includes {include.group(1)}, which does not exist"
            assert body == path.read_text(), f"{where} differs from {include.group(1)}"
        elif language == "sh":
            assert RUN.fullmatch(before), f"{where} not marked run or not run (with a reason)"
        else:
            assert language == "text", f"{where}: use python, sql, sh or text"


def _included() -> set[Path]:
    return {
        ROOT / m.group(1)
        for page in PAGES
        for _, _, before in _blocks(page)
        if (m := INCLUDE.fullmatch(before))
    }


def test_every_guide_sample_is_shown_in_a_page() -> None:
    files = {p for p in GUIDES.iterdir() if p.suffix in (".py", ".sql")}
    assert files, "no samples found"
    assert files <= _included(), f"not shown in any page: {sorted(files - _included())}"


@pytest.fixture
def deployment(
    conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The environment a deployed app finds: the DSN and schema variables, the samples' folder
    as the working directory, and no sample module left imported afterwards."""
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", conveyor_dsn)
    monkeypatch.setenv("CONVEYOR_SCHEMA", conveyor_schema)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(GUIDES)
    monkeypatch.syspath_prepend(str(GUIDES))
    yield
    _forget_samples()


@pytest.fixture
def in_use(deployment: None, conveyor_schema: str) -> None:
    """The schema a reader tries the samples in is in use: another app's schedule and jobs."""
    with Conveyor(schema=conveyor_schema) as neighbour:
        neighbour.schedule("neighbour.nightly", "0 3 * * *", queue="neighbour.cleanup")
        neighbour.send("neighbour.cleanup", {"n": 1})
        neighbour.send("neighbour.later", {"n": 2}, start_after=3600)


def _forget_samples() -> None:
    """Close and unload the sample modules, as if the process that imported them ended."""
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(str(GUIDES)):
            _close_apps(vars(module))
            del sys.modules[name]


def _close_apps(namespace: dict[str, object]) -> None:
    for value in namespace.values():
        if isinstance(value, Conveyor):
            value.close()


def _run_python(path: Path) -> None:
    """``python FILE``, in this process; its apps are closed even when it fails."""
    namespace: dict[str, object] = {"__name__": "__main__", "__file__": str(path)}
    try:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    finally:
        _close_apps(namespace)
        namespace.clear()
        _forget_samples()


def _run_sql(path: Path, dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        quoted = sql.Identifier(schema).as_string(conn)
        conn.execute(path.read_text().replace("conveyor.", f"{quoted}."))


def _run_blocks() -> list[tuple[str, str]]:
    return [
        (_name(page), body)
        for page in PAGES
        for language, body, before in _blocks(page)
        if language == "sh" and before == "<!-- run -->"
    ]


@pytest.mark.usefixtures("in_use")
@pytest.mark.parametrize(("page", "block"), _run_blocks(), ids=lambda v: v.split("\n")[0][:60])
def test_shell_block_runs(page: str, block: str, conveyor_dsn: str, conveyor_schema: str) -> None:
    # The lines of a block run in order, each on what the ones before it left; the whole block
    # twice, as a reader who tries it again does.
    for line in block.splitlines() * 2:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        expected = 0
        found = EXIT.search(line)
        if found:
            expected = int(found.group(1))
            line = line[: found.start()]
        command = line.split("  # ", 1)[0].strip()
        try:
            code = _run_words(shlex.split(command), conveyor_dsn, conveyor_schema)
        finally:
            _forget_samples()  # each command line is a process of its own
        assert code == expected, f"{page}: `{command}` exited {code}, expected {expected}"


def _run_by_blocks() -> set[Path]:
    """The files a ``<!-- run -->`` block runs (``python FILE``): they run there, in order."""
    files = set()
    for _, block in _run_blocks():
        for line in block.splitlines():
            words = line.split()
            if words[:1] == ["python"]:
                files.add(GUIDES / words[1])
            elif words[:2] == ["psql", "-f"]:
                files.add(GUIDES / words[2])
    return files


@pytest.mark.usefixtures("in_use")
@pytest.mark.parametrize(
    "sample",
    sorted(set(GUIDES.glob("*.py")) - _run_by_blocks()),
    ids=lambda p: p.name,
)
def test_python_sample_runs(sample: Path) -> None:
    # Twice: the second run finds what the first one left.
    _run_python(sample)
    _run_python(sample)


def test_sql_samples_run(deployment: None, conveyor_dsn: str, conveyor_schema: str) -> None:
    for path in sorted(set(GUIDES.glob("*.sql")) - _run_by_blocks()):
        _run_sql(path, conveyor_dsn, conveyor_schema)


def _run_words(words: list[str], dsn: str, schema: str) -> int:
    if words[0] == "conveyor":
        result = CliRunner().invoke(cli_main, words[1:], catch_exceptions=False)
        return result.exit_code
    if words[0] == "python" and len(words) == 2:
        path = GUIDES / words[1]
        if path.suffix == ".sql":
            _run_sql(path, dsn, schema)
        else:
            _run_python(path)
        return 0
    if words[:2] == ["psql", "-f"]:
        _run_sql(GUIDES / words[2], dsn, schema)
        return 0
    raise AssertionError(f"this test runs conveyor, python FILE and psql -f FILE, not {words}")


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def test_every_test_named_in_the_docs_exists() -> None:
    named = 0
    for page in PAGES:
        for match in TEST_ID.finditer(page.read_text()):
            path, test = ROOT / match.group(1), match.group(2)
            assert path.is_file(), f"{_name(page)} names {match.group(1)}, which does not exist"
            if test:
                assert test.startswith("test_"), f"{_name(page)} names {match.group(0)}: not a test"
                assert test in _defined(path), f"{_name(page)} names {match.group(0)}: no such test"
            named += 1
    assert named >= 10


def test_the_generated_reference_matches_the_code() -> None:
    script = DOCS / "reference" / "generate.py"
    spec = importlib.util.spec_from_file_location("docs_reference", script)
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name, render in generate.PAGES.items():
        committed = (DOCS / "reference" / name).read_text()
        assert committed == render(), (
            f"docs/reference/{name} is out of date: run .venv/bin/python docs/reference/generate.py"
        )


def test_links_between_pages_resolve() -> None:
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    for page in [*PAGES, ROOT / "README.md"]:
        for target in link.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{_name(page)} links to missing {target}"


def test_the_configuration_reference_names_every_option() -> None:
    page = (DOCS / "reference" / "configuration.md").read_text()
    names = {*JOB_OPTIONS, *QUEUE_OPTIONS}
    for func in (Conveyor.__init__, Conveyor.run_worker_async, Conveyor.schedule):
        for p in inspect.signature(func).parameters.values():
            if p.name not in ("self", "name"):
                names.add(f"**{p.name}" if p.kind is p.VAR_KEYWORD else p.name)
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "conveyor").rglob("*.py"))
    names |= set(re.findall(r"\"((?:CONVEYOR_[A-Z_]+)|DATABASE_URL)\"", source))
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert not missing, f"docs/reference/configuration.md does not name {missing}"

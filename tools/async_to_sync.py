"""Generate the sync twin of each async source file, so sync and async share one source.

    python tools/async_to_sync.py          # rewrite the generated files
    python tools/async_to_sync.py --check  # exit 1 if a generated file is out of date (CI)

The rewrite is mechanical (await/async removed, Async* types renamed, ``*_async`` names stripped),
in the spirit of psycopg's own async-to-sync generator. It never bridges at run time, so the sync
API can join the caller's sync transaction.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    ("src/conveyor/_store/store_async.py", "src/conveyor/_store/store.py"),
    ("src/conveyor/_store/migrate_async.py", "src/conveyor/_store/migrate.py"),
    ("src/conveyor/_client_async.py", "src/conveyor/_client.py"),
    ("tests/integration/test_enqueue_async.py", "tests/integration/test_enqueue_sync.py"),
    ("tests/integration/test_queues_async.py", "tests/integration/test_queues_sync.py"),
]
RULES = [
    (r"\basync def (\w+)_async\(", r"def \1("),
    (r"\basync def ", "def "),
    (r"\bawait ", ""),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncConnectionPool\b", "ConnectionPool"),
    (r"\bAsync(Connection|Conn|Store|Migrator|Client|Cursor)\b", r"\1"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\bimport asyncio\b", "import time"),
    (r"\b(\w+)_async\b", r"\1"),
    (r"^pytestmark = pytest\.mark\.asyncio\n", ""),
]


def convert(text: str, source: str) -> str:
    """The sync twin of an async source text."""
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    text = _without_repeated_imports(text)
    header = (
        f"# Generated from {source}\n# by tools/async_to_sync.py: edit that file, not this one.\n"
    )
    return _formatted(header + text)


def _without_repeated_imports(text: str) -> str:
    """Drop a plain ``import x`` seen before: ``import asyncio`` becomes ``import time``, which
    the file may import already."""
    seen: set[str] = set()
    lines = []
    for line in text.splitlines(keepends=True):
        if re.fullmatch(r"import \w+\n?", line):
            if line.strip() in seen:
                continue
            seen.add(line.strip())
        lines.append(line)
    return "".join(lines)


def _formatted(text: str) -> str:
    """Format like the rest of the tree, so removing ``await`` never leaves odd line breaks."""
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run(
        [str(ruff) if ruff.exists() else "ruff", "format", "--quiet", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for source, target in PAIRS:
        src = ROOT / source
        if not src.exists():
            continue
        wanted = convert(src.read_text(encoding="utf-8"), source)
        dst = ROOT / target
        if dst.exists() and dst.read_text(encoding="utf-8") == wanted:
            continue
        if check:
            stale.append(target)
        else:
            dst.write_text(wanted, encoding="utf-8")
            print(f"wrote {target}")
    if stale:
        print("out of date (run python tools/async_to_sync.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

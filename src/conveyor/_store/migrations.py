"""The numbered migration files: discovery, checksums and the SQL they render to.

Files are ``NNNN_name.sql`` under ``sql/migrations``, forward-only and never edited once released:
the checksum of each applied file is kept in the ``migration`` table and a changed file is refused.
The one exception is a file in ``REWRITTEN``: a released version of it, whose checksum is listed
there, leaves a schema that this release's files would also leave (see the file), so a schema
that applied it counts as having applied the file.

A file starts with header lines ``-- conveyor: <flag>[, <flag>...]``:

- ``breaking`` or ``non-breaking``: whether code of the previous releases stops working on the
  schema once the file is applied. Workers run on a schema that a newer release migrated
  further only when every migration they do not know is non-breaking (rolling deploys: old
  workers keep running, and restarting, while the new schema lands). A file that says neither
  counts as breaking, so a forgotten header can only make old workers refuse to start.
- ``no-transaction``: the file runs outside a transaction (for ``CREATE INDEX CONCURRENTLY``),
  under a session-level lock instead of a transaction-level one, one statement at a time in
  autocommit (a file sent whole would run as one implicit transaction, where PostgreSQL refuses
  ``CONCURRENTLY``). Each statement must be safe to run again after a failure part-way through
  (``DROP INDEX CONCURRENTLY IF EXISTS`` before ``CREATE INDEX CONCURRENTLY``, ``CREATE OR
  REPLACE``): the file is recorded as applied only once its last statement succeeded.

The flag is recorded in the ``migration`` table when the file is applied, where older releases,
which do not ship the file, read it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from psycopg import sql

from conveyor._store.queries import queries, render
from conveyor.errors import MigrationChecksumMismatch

FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")
HEADER = "-- conveyor:"
FLAGS = frozenset({"breaking", "non-breaking", "no-transaction"})

# The checksums of released versions of files rewritten since, by version.
REWRITTEN: dict[int, frozenset[str]] = {
    # 0012_history copied the whole history inside its transaction (acks waited for it).
    12: frozenset({"f52a0b5dd4713a2065823a9a8e804f87e85c2f8476e5f6629f5add8ad40d274c"}),
}


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    template: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file as shipped (before the schema name is rendered in)."""
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    @property
    def flags(self) -> frozenset[str]:
        """The flags of the file's header lines."""
        return header_flags(self.template)

    @property
    def transactional(self) -> bool:
        """False when the file must run outside a transaction."""
        return "no-transaction" not in self.flags

    @property
    def breaking(self) -> bool:
        """True unless the file declares itself non-breaking."""
        return "non-breaking" not in self.flags

    def sql(self, schema: str) -> str:
        """The file's SQL for ``schema``."""
        return render(self.template, schema)

    def statements(self, schema: str) -> list[str]:
        """The file's SQL for ``schema``, one statement per item (see :func:`split_statements`)."""
        return split_statements(self.sql(schema))

    def sql_in_transaction(self, schema: str) -> str:
        """The file's SQL for ``schema`` as one script a transaction can run: a no-transaction
        file's ``CREATE``/``DROP INDEX CONCURRENTLY`` without ``CONCURRENTLY`` (for a schema that
        nothing else uses yet, such as the scratch schema ``doctor`` builds)."""
        if self.transactional:
            return self.sql(schema)
        return ";\n".join(_CONCURRENTLY.sub(r"\1", s) for s in self.statements(schema)) + ";\n"


_CONCURRENTLY = re.compile(
    r"^(\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX))\s+CONCURRENTLY\b", re.I
)
# The tokens a statement splitter must step over whole: comments, quoted identifiers, string
# constants (standard and E'' escapes) and dollar-quoted bodies; anything else one char at a time.
_TOKEN = re.compile(
    r"""--[^\n]*
      | /\*
      | "(?:[^"]|"")*"
      | (?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'
      | '(?:[^']|'')*'
      | \$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$
      | ;
      | [^-/"'$;Ee]+
      | .""",
    re.X | re.S,
)


def concurrent(statement: str) -> bool:
    """Whether ``statement`` is a ``CREATE`` or ``DROP INDEX CONCURRENTLY``: it waits for every
    older transaction of the database, but blocks no reader or writer of the table meanwhile."""
    return _CONCURRENTLY.match(statement) is not None


def split_statements(script: str) -> list[str]:
    """The statements of a SQL script, without their ``;``, in order; comments and blank text
    between them dropped. Semicolons inside comments (nested ``/* */`` too), quoted identifiers,
    string constants and dollar-quoted bodies (function bodies, ``DO`` blocks) do not split."""
    found: list[str] = []
    current: list[str] = []
    code = False  # whether the current statement has more than comments and blanks
    pos = 0
    while pos < len(script):
        match = _TOKEN.match(script, pos)
        assert match is not None  # the last alternative matches any character
        token = match.group()
        end = match.end()
        if token == "/*":
            depth = 1
            while depth and end < len(script):
                if script.startswith("/*", end):
                    depth, end = depth + 1, end + 2
                elif script.startswith("*/", end):
                    depth, end = depth - 1, end + 2
                else:
                    end += 1
            if depth:
                raise ValueError("unterminated /* comment in a migration")
            current.append(" ")
        elif token.startswith("--"):
            current.append(" ")
        elif token == ";":
            if code:
                found.append("".join(current).strip())
            current, code = [], False
        else:
            if token.startswith("$") and token.endswith("$") and len(token) > 1:
                close = script.find(token, end)
                if close < 0:
                    raise ValueError(f"unterminated {token} quote in a migration")
                end = close + len(token)
                token = script[match.start() : end]
            current.append(token)
            code = code or not token.isspace()
        pos = end
    if code:
        found.append("".join(current).strip())
    return found


def header_flags(template: str) -> frozenset[str]:
    """The flags of the ``-- conveyor:`` lines that open a migration file."""
    found: set[str] = set()
    for line in template.splitlines():
        if not line.startswith(HEADER):
            break
        found.update(f.strip() for f in line[len(HEADER) :].split(",") if f.strip())
    unknown = found - FLAGS
    if unknown:
        raise RuntimeError(f"unknown migration flags {sorted(unknown)}: use {sorted(FLAGS)}")
    if {"breaking", "non-breaking"} <= found:
        raise RuntimeError("a migration is breaking or non-breaking, not both")
    return frozenset(found)


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this release, in version order."""
    folder = resources.files("conveyor") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = FILE_NAME.fullmatch(entry.name)
        if match:
            template = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), template))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must run 1..N without gaps, found {versions}")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where a database schema stands relative to this release."""

    applied: tuple[int, ...]
    pending: tuple[Migration, ...]
    unknown: tuple[int, ...]
    #: The unknown (newer) migrations that were applied as breaking.
    unknown_breaking: tuple[int, ...] = ()

    @property
    def current(self) -> bool:
        """True when nothing is pending and the database knows no newer migration."""
        return not self.pending and not self.unknown

    @property
    def runnable(self) -> bool:
        """True when this release's code works on the schema: nothing is pending and every
        newer migration is non-breaking (a rolling deploy under way)."""
        return not self.pending and not self.unknown_breaking


@dataclass(frozen=True, slots=True)
class Applied:
    """A row of the ``migration`` table."""

    checksum: str
    breaking: bool


def status(applied: dict[int, Applied]) -> MigrationStatus:
    """Compare the applied versions (their checksums and flags) with the shipped files."""
    shipped = {m.version: m for m in migrations()}
    for version, row in applied.items():
        checksum = row.checksum
        known = shipped.get(version)
        if (
            known is not None
            and known.checksum != checksum
            and checksum not in REWRITTEN.get(version, frozenset())
        ):
            raise MigrationChecksumMismatch(
                f"migration {version:04d}_{known.name} changed after it was applied "
                "(migrations are forward-only: add a new file instead)"
            )
    return MigrationStatus(
        applied=tuple(sorted(applied)),
        pending=tuple(m for v, m in sorted(shipped.items()) if v not in applied),
        unknown=tuple(sorted(v for v in applied if v not in shipped)),
        unknown_breaking=tuple(
            sorted(v for v, row in applied.items() if v not in shipped and row.breaking)
        ),
    )


def pending_sql(pending: tuple[Migration, ...], schema: str) -> str:
    """The SQL a DBA would run to apply ``pending`` by hand, with the bookkeeping rows."""
    named = queries(schema)
    parts = [
        f"-- Conveyor migrations for schema {schema!r}",
        named["migration_bootstrap"].sql + ";",
    ]
    for m in pending:
        parts.append(f"-- {m.version:04d}_{m.name}")
        if m.transactional:
            parts.append("BEGIN;")
        parts.append(m.sql(schema).strip())
        values = {
            "version": m.version,
            "name": m.name,
            "checksum": m.checksum,
            "breaking": m.breaking,
        }
        literals = {k: sql.Literal(v).as_string() for k, v in values.items()}
        parts.append(named["migration_record"].sql % literals + ";")
        if m.transactional:
            parts.append("COMMIT;")
    return "\n".join(parts) + "\n"

"""The claims of docs/security.md that no other suite holds: SQL is never built from input in
Python, and a least-privilege role can do the daily work but not change the schema."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, Job, JobState

ROOT = Path(__file__).resolve().parents[2]


def formatted(node: ast.expr) -> bool:
    """True for an f-string, a %-format or a str.format() call: text built at run time."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
    )


def test_no_python_source_formats_sql() -> None:
    """No statement the package sends is text built at run time: what reaches ``execute`` (or
    ``psycopg.sql.SQL``) is a named query from the .sql files or a literal; identifiers go
    through ``psycopg.sql.Identifier`` and values travel as parameters."""
    offenders = []
    for path in sorted((ROOT / "src" / "conveyor").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in ("execute", "executemany", "SQL") and formatted(node.args[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def grants_block() -> str:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    match = re.search(r"```sql\n(.*?)```", doc, re.S)
    assert match is not None
    return match.group(1)


@pytest.fixture
def role(conveyor_dsn: str, conveyor_schema: str) -> str:
    name = f"conveyor_worker_{os.getpid()}"
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        block = grants_block().replace("SCHEMA conveyor", f"SCHEMA {conveyor_schema}")
        conn.execute(block.replace("app_worker", name))  # type: ignore[arg-type]
    yield name
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_least_privilege_role_can_send_and_work_but_not_alter_the_schema(
    conveyor_dsn: str, conveyor_schema: str, role: str
) -> None:
    dsn = psycopg.conninfo.make_conninfo(conveyor_dsn, user=role)
    with Conveyor(dsn, schema=conveyor_schema) as app:

        @app.job("least.q")
        def handler(job: Job) -> int:
            return 2 * int(job.data["n"])

        a = app.send("least.q", {"n": 1})
        b = app.send("least.q", {"n": 2}, depends_on=[a], on_complete="least.done")
        app.create_queue("least.limited", concurrency=1)
        app.schedule("least.tick", every=60, queue="least.q", data={"n": 0})
        assert app.drain(queues=["least.q"]) == 2
        assert app.get_job(b).state is JobState.COMPLETED
        assert app.migration_status().current
    for statement in (
        "ALTER TABLE {}.job ADD COLUMN x int",
        "DROP TABLE {}.job_archive",
        "TRUNCATE {}.job",
        "CREATE TABLE {}.intruder (x int)",
        "CREATE OR REPLACE FUNCTION {}.send(q text) RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ):
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(
                sql.SQL(statement).format(sql.Identifier(conveyor_schema))  # type: ignore[arg-type]
            )

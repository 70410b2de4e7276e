"""``python shop.py``, as the SQLAlchemy example's README runs it: both orders are confirmed, and
its table is in the shop's own schema (it was created in ``public`` of the user's database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

pytest.importorskip("sqlalchemy")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app"


def test_shop_runs_with_its_tables_in_its_own_schema(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    shop_schema = f"{conveyor_schema}_shop"
    env = {
        **os.environ, "CONVEYOR_DATABASE_URL": conveyor_dsn, "CONVEYOR_SCHEMA": conveyor_schema,
        "SHOP_SCHEMA": shop_schema,
    }  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "shop.py"], cwd=EXAMPLE, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        first, first_ok, second, second_ok = done.stdout.split()
        assert (first_ok, second_ok) == ("True", "True")
        with psycopg.connect(conveyor_dsn) as conn:
            rows = conn.execute(
                "SELECT table_schema FROM information_schema.tables WHERE table_name = 'orders'"
                " AND table_schema = %s",
                (shop_schema,),
            ).fetchall()
            assert rows == [(shop_schema,)]
            ids = conn.execute(f'SELECT id FROM "{shop_schema}".orders ORDER BY id').fetchall()
            assert [i for (i,) in ids] == [int(first), int(second)]
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{shop_schema}" CASCADE')

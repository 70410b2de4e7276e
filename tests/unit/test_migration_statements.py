"""A no-transaction migration is run statement by statement: how a file is split."""

from __future__ import annotations

import pytest

from conveyor._store.migrations import Migration, concurrent, migrations, split_statements


def test_statements_split_on_semicolons_outside_quotes_and_comments() -> None:
    script = """-- a comment; not a statement
CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $fn$ BEGIN RETURN 'x;y'; END $fn$;
/* a; /* nested; */ comment; */ SELECT 'it''s;', "odd;name", E'\\';', $$;$$, date'2020-01-01';
DO $$ BEGIN PERFORM 1; END $$
;
-- trailing comment only
"""
    assert split_statements(script) == [
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $fn$ BEGIN RETURN 'x;y'; END $fn$",
        "SELECT 'it''s;', \"odd;name\", E'\\';', $$;$$, date'2020-01-01'",
        "DO $$ BEGIN PERFORM 1; END $$",
    ]


def test_an_unterminated_quote_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\$fn\$"):
        split_statements("DO $fn$ BEGIN END;")


def test_the_fetch_split_runs_concurrently_and_in_a_transaction_without() -> None:
    split = next(m for m in migrations() if m.name == "fetch_split")
    assert not split.transactional and not split.breaking
    statements = split.statements("conveyor")
    built = [s for s in statements if concurrent(s) and s.startswith("CREATE")]
    assert len(built) == 4 and all(s.startswith("CREATE INDEX CONCURRENTLY") for s in built)
    # Each index is dropped first, so the file can run again after failing part-way.
    for create in built:
        name = create.split()[3]
        assert statements.index(f'DROP INDEX CONCURRENTLY IF EXISTS "conveyor".{name}') < (
            statements.index(create)
        )
    inside = split.sql_in_transaction("conveyor")
    assert "CONCURRENTLY" not in inside and "CREATE INDEX job_fetch_free_idx" in inside


def test_a_transactional_file_is_its_own_sql_in_a_transaction() -> None:
    m = Migration(99, "x", "-- conveyor: non-breaking\nCREATE INDEX CONCURRENTLY i ON t (x);")
    assert m.sql_in_transaction("s") == m.sql("s")

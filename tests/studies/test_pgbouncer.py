"""`?prepare_threshold=none`: a storage URL that goes through a transaction pooler (PgBouncer) turns off
psycopg's prepared statements, on Optuna's RDBStorage and on the journal alike (studies/storage.py)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from studies.storage import StorageError, engine_kwargs, open_journal, parse_url

PREPARED = "SELECT count(*) FROM pg_prepared_statements"


@pytest.mark.parametrize(("query", "expected"), [
    ("?prepare_threshold=none", {"prepare_threshold": None}),
    ("?prepare_threshold=None", {"prepare_threshold": None}),
    ("?prepare_threshold=0", {"prepare_threshold": 0}),  # psycopg's 0: prepare every query at once
    ("?prepare_threshold=12", {"prepare_threshold": 12}),
    ("", {}),  # psycopg's default, 5
])
def test_the_urls_prepare_threshold_reaches_psycopg_typed(query: str, expected: dict[str, Any]) -> None:
    connect_args = engine_kwargs(parse_url(f"postgresql+psycopg://u@db-host/optuna{query}"))["connect_args"]
    assert {key: value for key, value in connect_args.items() if key == "prepare_threshold"} == expected
    assert connect_args["keepalives"] == 1  # beside libpq's own options


def test_other_drivers_are_left_alone() -> None:
    assert "prepare_threshold" not in engine_kwargs(parse_url("mysql+pymysql://u@h/db"))["connect_args"]
    assert "prepare_threshold" not in engine_kwargs(parse_url("sqlite:///x.db"))["connect_args"]


@pytest.mark.parametrize("value", ["off", "-1", "5.5"])
def test_a_bad_prepare_threshold_is_bad_input_with_the_password_hidden(value: str) -> None:
    for scheme in ("postgresql+psycopg", "postgresql+journal"):
        with pytest.raises(StorageError, match="prepare_threshold must be none") as raised:
            parse_url(f"{scheme}://u:s3cret@db-host/optuna?prepare_threshold={value}")
        assert "s3cret" not in str(raised.value)


def _prepared_after_repeats(connection: psycopg.Connection[Any]) -> int:
    for _ in range(8):  # past psycopg's default threshold of 5
        connection.execute("SELECT %s::int", (1,))
    (count,) = connection.execute(PREPARED).fetchone() or (0,)
    return int(count)


@pytest.mark.parametrize(("query", "prepares"), [("", True), ("?prepare_threshold=none", False)])
def test_rdb_storage_engine_prepares_only_without_the_option(postgres_url: str, query: str,
                                                             prepares: bool) -> None:
    parsed = parse_url(postgres_url + query)
    engine = sqlalchemy.create_engine(parsed, **engine_kwargs(parsed))
    try:
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            assert (_prepared_after_repeats(driver) > 0) is prepares
    finally:
        engine.dispose()


@pytest.mark.parametrize(("query", "prepares"), [("", True), ("?prepare_threshold=none", False)])
def test_journal_prepares_only_without_the_option(postgres_url: str, query: str, prepares: bool) -> None:
    url = make_url(postgres_url).set(drivername="postgresql+journal").render_as_string(hide_password=False)
    # libpq refuses a URL parameter it does not know: connecting at all shows the option was taken out
    storage = open_journal(url + query, heartbeat=False)
    journal = storage.journal
    try:
        for _ in range(8):
            journal.read_logs(0)
        assert journal._connection is not None
        (count,) = journal._connection.execute(PREPARED).fetchone() or (0,)
        assert (count > 0) is prepares
    finally:
        journal.close()

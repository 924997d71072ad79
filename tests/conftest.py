"""Shared fixtures: real PostgreSQL and a real Kafka-protocol broker for every run.

Servers come from ``ledger.devservices`` (the same code as ``ledger demo``):
``LEDGER_TEST_DATABASE_URL`` / ``LEDGER_TEST_KAFKA_BOOTSTRAP`` when set, otherwise
testcontainers when Docker answers, otherwise the embedded PostgreSQL and Tansu. Tests
never skip for a missing service. Each test that writes gets its own database, cloned
from a migrated template, so tests cannot see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ledger.adapters.migrate import upgrade
from ledger.devservices import KafkaService, PostgresService, start_kafka, start_postgres


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="run the long soak (50 kill cycles, not 5) and any case marked slow",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cases marked ``slow`` run only with ``--slow`` (none is now: the crash matrices run
    in every ``make test``); without it they are deselected, not skipped, so the normal run
    reports no skips."""
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def slow(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--slow"))


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresService]:
    server = start_postgres("LEDGER_TEST_DATABASE_URL")
    yield server
    server.close()


@pytest.fixture(scope="session")
def template_database(pg_server: PostgresService) -> Iterator[str]:
    """A database migrated to head, cloned by every test that writes."""
    name = f"el_tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_dsn(pg_server.url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(_with_database(pg_server.url, name))
    yield name
    with psycopg.connect(_dsn(pg_server.url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(pg_server: PostgresService, template: str | None) -> str:
    name = f"el_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(_dsn(pg_server.url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def drop_database(pg_server: PostgresService, name: str) -> None:
    with psycopg.connect(_dsn(pg_server.url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server: PostgresService, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test only (SQLAlchemy URL, psycopg driver)."""
    name = create_database(pg_server, template_database)
    yield _with_database(pg_server.url, name)
    drop_database(pg_server, name)


@pytest.fixture
def empty_database_url(pg_server: PostgresService) -> Iterator[str]:
    """A fresh database with no tables (for migration tests)."""
    name = create_database(pg_server, None)
    yield _with_database(pg_server.url, name)
    drop_database(pg_server, name)


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaService]:
    broker = start_kafka("LEDGER_TEST_KAFKA_BOOTSTRAP")
    yield broker
    broker.close()

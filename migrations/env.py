"""Alembic environment: the target metadata is the SQLAlchemy Core tables of the code."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import projections.tables  # noqa: F401  (the read-model tables join the metadata)
from ledger.adapters.tables import metadata

target_metadata = metadata
config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from ledger.config import get_settings

        url = get_settings().database_url
    if not url:
        raise RuntimeError("no database URL: set LEDGER_DATABASE_URL or sqlalchemy.url")
    from ledger.devservices import normalise_pg_url

    return normalise_pg_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

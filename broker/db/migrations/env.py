"""Alembic environment: migrations run online against the configured URL."""

from alembic import context

from broker.db import make_engine
from broker.db.models import Base

config = context.config


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        # render_as_batch lets ALTERs work on SQLite, which cannot alter columns in place.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()

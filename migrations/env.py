"""Alembic environment: the URL comes from CKPT_ settings unless the caller set one."""

from __future__ import annotations

from alembic import context

from app.config import Settings
from app.db.engine import make_engine
from app.db.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=Base.metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

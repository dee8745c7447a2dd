"""Alembic environment: the URL comes from CKPT_ settings unless the caller set one."""

from __future__ import annotations

import logging
from logging.config import fileConfig

from alembic import context
from alembic.runtime.migration import MigrationInfo

from app.config import Settings
from app.db.engine import make_engine
from app.db.models import Base

config = context.config
if config.config_file_name:  # the `alembic` command line: its logging is alembic.ini's
    fileConfig(config.config_file_name, disable_existing_loggers=False)
url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url
logger = logging.getLogger("app.db.migrate")


def log_step(*, step: MigrationInfo, **_: object) -> None:
    """One line per migration applied (alembic's own INFO lines are silenced with its noise)."""
    done = "applied" if step.is_upgrade else "reverted"
    logger.info("migration %s %s: %s", step.up_revision_id, done, step.up_revision.doc)


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
            on_version_apply=log_step,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

"""The migrations on PostgreSQL: they build exactly the models, and go down and up again."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.db.engine import make_engine
from app.db.migrate import alembic_config, current_revision, head_revision, upgrade
from app.db.models import Base

pytestmark = pytest.mark.postgres_only


def test_upgrade_downgrade_upgrade_gives_exactly_the_models(database_url: str) -> None:
    assert database_url.startswith("postgresql")
    engine = make_engine(database_url)
    try:
        upgrade(database_url)
        assert current_revision(engine) == head_revision(database_url)
        command.downgrade(alembic_config(database_url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(database_url)
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert current_revision(engine) == head_revision(database_url)
    finally:
        engine.dispose()

"""Alembic on real PostgreSQL: head -> base -> head, and the models match the migrations exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, delete, inspect
from sqlalchemy.exc import IntegrityError

from db import migrate
from db.models import Base

pytestmark = pytest.mark.integration


def test_upgrade_downgrade_upgrade(empty_postgres_url: str) -> None:
    url = empty_postgres_url
    engine = create_engine(url)
    try:
        migrate.upgrade(url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        migrate.downgrade(url, "base")
        assert inspect(engine).get_table_names() == ["alembic_version"]
        migrate.upgrade(url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_autogenerate_finds_no_difference(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; run alembic revision --autogenerate: {diff}"


def test_only_one_production_model_per_task(database_url: str) -> None:
    from db.models import ModelStage, ModelTask, ModelVersion
    from db.session import session_scope

    def version(name: str, stage: ModelStage) -> ModelVersion:
        return ModelVersion(task=ModelTask.SPECIMEN_PATTERN, version=name, stage=stage,  # a task nothing else uses
                            artifact_uri=f"models/specimen_pattern/{name}/", sha256="0" * 64)

    with session_scope(database_url) as session:
        session.add_all([version("t1", ModelStage.PRODUCTION), version("t2", ModelStage.CANDIDATE)])
    try:
        with pytest.raises(IntegrityError), session_scope(database_url) as session:
            session.add(version("t3", ModelStage.PRODUCTION))
    finally:  # the database is shared with the worker tests: leave no fake production model behind
        with session_scope(database_url) as session:
            session.execute(delete(ModelVersion).where(ModelVersion.version.in_(["t1", "t2", "t3"])))

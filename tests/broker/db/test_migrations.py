"""The Alembic migrations build exactly the schema the models describe, along one line of history."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from broker.db.migrate import alembic_config, upgrade
from broker.db.models import Base


def test_one_head(tmp_path):
    script = ScriptDirectory.from_config(alembic_config(f"sqlite:///{tmp_path}/x.db"))
    assert len(script.get_heads()) == 1


def test_migrated_schema_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path}/vdi.db"
    upgrade(url)
    upgrade(url)  # a second run is a no-op
    engine = create_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()

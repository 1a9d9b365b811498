"""The Alembic migrations build exactly the schema the models describe, along one line of history."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from broker.db.migrate import alembic_config, upgrade
from broker.db.models import Base
from tests.fixtures.database import database_url


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


def test_0012_keeps_the_newest_of_two_live_sessions_of_a_user_in_a_pool(tmp_path):
    # Two brokers before 0012 could open two sessions of one user in one pool; the unique index needs one.
    url = database_url(tmp_path / "two-sessions.db")
    upgrade(url, "0011")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (username, display_name, groups) VALUES ('kim', 'Kim', '[]')")
        )
        connection.execute(
            text("INSERT INTO pools (name, display_name, kind, image, groups, memory_mib, vcpus) "
                 "VALUES ('p', 'P', 'floating', 'demo', '[]', 256, 1)")
        )  # fmt: skip
        for desktop, started in ((1, "2026-12-06 09:00:00"), (2, "2026-12-06 09:00:01")):
            connection.execute(
                text("INSERT INTO desktops (id, pool_name, domain_name, image, state, created_at) "
                     "VALUES (:id, 'p', :name, 'demo', 'running', :started)"),
                {"id": desktop, "name": f"vdi-p-{desktop}", "started": started},
            )  # fmt: skip
            connection.execute(
                text("INSERT INTO sessions (id, username, desktop_id, client_ip, state, started_at) "
                     "VALUES (:id, 'kim', :desktop, '', 'active', :started)"),
                {"id": f"s{desktop}", "desktop": desktop, "started": started},
            )  # fmt: skip
    upgrade(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, pool_name, state FROM sessions ORDER BY id")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("s1", "p", "ended"), ("s2", "p", "active")]

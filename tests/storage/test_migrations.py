"""Schema migrations and opening files that are not what we expect: real DuckDB files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from dropwire.functions.kit.errors import DatabaseUnusable
from dropwire.storage import migrate
from dropwire.storage.database import connect
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store


def tables(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def test_upgrade_applies_every_migration_in_order_and_records_it(tmp_path):
    path = tmp_path / "db.duckdb"
    with connect(path) as con:
        applied = migrate.upgrade(con)
        assert [m.version for m in applied] == list(range(1, migrate.LATEST + 1))
        recorded = migrate.applied_migrations(con)
    assert [v for v, _, _ in recorded] == [m.version for m in applied]
    assert {"entity_states", "state_history", "tasks", "task_attempts", "dead_letters"} <= tables(path)


def test_downgrade_then_upgrade_round_trips(tmp_path):
    path = tmp_path / "db.duckdb"
    with connect(path) as con:
        migrate.upgrade(con)
        undone = migrate.downgrade(con, 1)
        assert [m.name for m in undone] == ["task_id_high_water", "file_bytes_removed", "curation", "quota", "batches", "task_on_retry",
                                            "notifications", "platform", "queue"]
        assert migrate.current_version(con) == 1
    assert "tasks" not in tables(path) and "state_history" in tables(path)
    with connect(path) as con:
        migrate.downgrade(con, 0)
        assert migrate.current_version(con) == 0
        migrate.upgrade(con)
        assert migrate.current_version(con) == migrate.LATEST


def test_opening_an_old_schema_upgrades_it_and_keeps_its_rows(tmp_path):
    path = tmp_path / "db.duckdb"
    with connect(path) as con:
        migrate.upgrade(con, 1)
        con.execute("INSERT INTO entity_states VALUES ('model', 'm1', 'REGISTERED', 1, NULL, now(), now())")
        con.execute("INSERT INTO state_history VALUES ('model', 'm1', 1, NULL, 'REGISTERED', 'create', 'old', NULL, '{}', now())")
    from dropwire.functions.evaluation.states import MACHINES

    with Store.open(path, MACHINES) as store:
        assert store.states.snapshot("model", "m1").state == "REGISTERED"
        assert store.query("SELECT max(version) FROM schema_migrations")[0][0] == migrate.LATEST
        store.states.transition("model", "m1", trigger="dataset_uploaded", triggered_by="test")


def test_a_database_newer_than_the_code_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "db.duckdb"
    with connect(path) as con:
        migrate.upgrade(con)
        con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')")
    with pytest.raises(DatabaseUnusable, match=rf"schema version 99, newer than this dropwire knows \(up to {migrate.LATEST}\)"):
        Store.open(path)
    with connect(path) as con:
        assert migrate.applied_migrations(con)[-1][0] == 99


def test_a_foreign_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DatabaseUnusable, match=r"is not a dropwire database.*left untouched"):
        Store.open(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_another_applications_duckdb_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(DatabaseUnusable, match=r"not a dropwire database: it has tables \['invoices'\]"):
        Store.open(path)
    assert tables(path) == {"invoices"}


def test_downgrade_to_a_version_above_the_current_one_is_refused(tmp_path):
    with connect(tmp_path / "db.duckdb") as con:
        migrate.upgrade(con, 1)
        with pytest.raises(Exception, match="cannot downgrade to 2: the database is at version 1"):
            migrate.downgrade(con, 2)


def test_upgrade_targets_outside_the_known_versions_are_refused_and_change_nothing(tmp_path):
    with connect(tmp_path / "db.duckdb") as con:
        for target in (-1, migrate.LATEST + 1):
            with pytest.raises(Exception, match=f"there is no schema version {target}; versions run from 0 to {migrate.LATEST}"):
                migrate.upgrade(con, target)
        assert migrate.current_version(con) == 0
        assert migrate.upgrade(con, 0) == [] and [m.version for m in migrate.upgrade(con, 2)] == [1, 2]


def test_a_partial_downgrade_undoes_only_the_versions_above_its_target(tmp_path):
    with connect(tmp_path / "db.duckdb") as con:
        migrate.upgrade(con)
        undone = migrate.downgrade(con, 2)
        assert [m.version for m in undone] == list(range(migrate.LATEST, 2, -1))
        assert [v for v, _, _ in migrate.applied_migrations(con)] == [1, 2]
        assert {"entity_states", "tasks"} <= {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def test_a_migration_that_fails_midway_is_rolled_back_whole(tmp_path, monkeypatch):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        task_id = store.queue.enqueue(TaskSpec(name="kept"))
    # A next migration whose third statement fails, after two that would have changed things.
    broken = migrate.Migration(migrate.LATEST + 1, "broken", "CREATE TABLE half_done (x INTEGER);\n"
                               "ALTER TABLE tasks ADD COLUMN extra INTEGER;\nINSERT INTO no_such_table VALUES (1);",
                               "DROP TABLE half_done;")
    monkeypatch.setattr(migrate, "MIGRATIONS", [*migrate.MIGRATIONS, broken])
    monkeypatch.setattr(migrate, "LATEST", broken.version)
    before = tables(path)
    with connect(path) as con:
        with pytest.raises(DatabaseUnusable, match=f"upgrade of migration {broken.version:04d}_broken failed and was rolled back"):
            migrate.upgrade(con)
        assert migrate.current_version(con) == broken.version - 1
        columns = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'").fetchall()}
        assert "extra" not in columns
        assert con.execute("SELECT name FROM tasks WHERE id = ?", [task_id]).fetchall() == [("kept",)]
    assert tables(path) == before and "half_done" not in before


def test_the_store_opens_duckdb_with_the_configured_memory_limit(tmp_path):
    """DuckDB's default (80% of the machine) let its cache grow with every large batch."""
    from dropwire.local_emulator.settings import SettingsError, load_settings

    settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(tmp_path), "DROPWIRE_DATABASE__MEMORY_LIMIT": "32MB",
                                      "DROPWIRE_DATABASE__THREADS": "1"})
    with Store.open(tmp_path / "db.duckdb", database=settings.database) as store:
        assert store.query("SELECT current_setting('memory_limit'), current_setting('threads')") == [("30.5 MiB", 1)]
    with Store.open(tmp_path / "db.duckdb") as store:  # the default
        assert store.query("SELECT current_setting('memory_limit')") == [("61.0 MiB",)]
    with pytest.raises(SettingsError, match=r"database\.memory_limit must be a size like '64MB'"):
        load_settings(environ={"DROPWIRE_DATA_DIR": str(tmp_path), "DROPWIRE_DATABASE__MEMORY_LIMIT": "lots"})
